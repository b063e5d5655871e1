"""quarklab.tasks: the two tasks by name, how each cuts, shows and judges a prompt, the continuation task's data
and repetition reward, and a real `quarklab train --set task=continuation` run end to end."""

from __future__ import annotations

import json
import typing

import numpy as np
import pandas as pd
import pytest

import quarklab as ql
from conftest import TINY_RUN, train_tiny
from quarklab.config import TASK_DEFAULTS, TaskName
from quarklab.errors import QuarkError
from quarklab.export import model_card
from quarklab.rewards import diversity
from quarklab.tasks import TASKS, get_task


def test_registry_names_the_config_choices_and_an_unknown_task_names_the_known_ones():
    assert list(TASKS) == list(typing.get_args(TaskName)) == list(TASK_DEFAULTS) == ["tldr", "continuation"]
    assert (get_task("tldr").reward, get_task("tldr").dataset) == ("tiny-tldr", "tiny-tldr")
    assert (get_task("continuation").reward, get_task("continuation").dataset) == ("repetition", "tiny-continuation")
    with pytest.raises(QuarkError, match="unknown task 'summaries': choose from 'tldr', 'continuation'"):
        get_task("summaries")


def test_tldr_task_is_todays_tldr_layout():
    task = get_task("tldr")
    assert task.as_prompt("my post ") == "my post\nTL;DR:"
    prompt = "SUBREDDIT: r/x\nTITLE: the title\nPOST: body\nTL;DR:"
    assert task.title_of(prompt) == "the title"
    assert task.judge_prompt(prompt, " one ", "two") == ql.judge.JUDGE_PROMPT.format(
        post="SUBREDDIT: r/x\nTITLE: the title\nPOST: body", a="one", b="two")


def test_continuation_cut_keeps_the_end(world):
    tok = ql.load_tokenizer(world.policy)
    task = get_task("continuation")
    text = " ".join(f"word{i}" for i in range(60)) + " and the last words"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    kept, cut = task.encode_prompt(tok, text, 10)
    assert cut and kept == ids[-10:] and tok.decode(kept).endswith("and the last words")
    assert task.encode_prompt(tok, text, len(ids)) == (ids, False)
    with pytest.raises(QuarkError, match="lower max_new_tokens"):
        task.encode_prompt(tok, text, 0)
    # TL;DR, for contrast, keeps the TL;DR: tail and loses the start of the post
    tldr_ids, _ = get_task("tldr").encode_prompt(tok, "POST: " + text + "\nTL;DR:", 12)
    assert tok.decode(tldr_ids).endswith("TL;DR:")


def test_continuation_free_text_shortening_and_title():
    task = get_task("continuation")
    assert task.as_prompt("  Once upon a time  \n") == "Once upon a time"
    long = "start " + "middle " * 200 + "the end"
    short = task.shorten(long, 100)
    assert len(short) <= 102 and short.startswith("start") and short.endswith("the end") and " … " in short
    assert task.shorten("short", 100) == "short"
    assert task.title_of("one two three four five six seven eight nine") == \
        "one two three four five six seven eight …"


def test_continuation_judge_prompt_asks_for_fluency_and_the_strict_answer():
    text = get_task("continuation").judge_prompt("It was a dark night.", " The wind howled. ", "night night night")
    assert "more fluent and coherent, and less repetitive" in text
    assert "Text:\nIt was a dark night.\n\nContinuation A:\nThe wind howled.\n\nContinuation B:\nnight night night" \
        in text
    assert text.endswith('Preferred: <"A" or "B">') and "TL;DR" not in text
    assert ql.judge.judge_prompt("It was a dark night.", "a", "b", task="continuation") == \
        get_task("continuation").judge_prompt("It was a dark night.", "a", "b")
    assert ql.judge.parse_answer("Comparison: A reads on.\nPreferred: A") == "A"


def test_repetition_reward_on_hand_computed_texts():
    loop = "a b a b a b a b"  # 8 words: 2-grams 2 unique of 7, 3-grams 2 of 6, 4-grams 2 of 5; 8/16 words
    assert diversity(loop) == pytest.approx((2 / 7) * (2 / 6) * (2 / 5) * (8 / 16))
    varied = " ".join(f"w{i}" for i in range(16))  # no repeated n-gram, 16 words: the best score
    assert diversity(varied) == 1.0
    assert diversity("") == 0.0
    assert diversity("just three words") == pytest.approx(3 / 16)  # no n-gram repeats, yet far from the best
    same_length_loop = " ".join(["I do not know."] * 4)  # 16 words
    assert diversity(same_length_loop) < 0.25 < diversity(varied)
    reward = ql.load_reward("repetition", precision="float32")
    scores = reward(["p"] * 4, [loop, varied, "", same_length_loop])
    assert reward.name == "repetition" and scores.dtype == np.float64
    assert scores[1] == 1.0 and scores[2] == 0.0 and scores.argmax() == 1
    assert scores[0] == np.float64(np.float32(diversity(loop)))  # rounded to reward_precision, as every reward
    with pytest.raises(QuarkError, match="the repetition reward: drop the label"):
        ql.load_reward("repetition", label=0)


def test_tiny_continuation_data_is_derived_deterministically(world):
    sizes = {split: len(ql.load_prompts("tiny-tldr", split)) for split in ("train", "valid", "test")}
    for split, n in sizes.items():
        a = ql.load_prompts("tiny-continuation", split)
        assert len(a) == n and list(a.columns) == ["prompt_id", "prompt", "label"]
        pd.testing.assert_frame_equal(a, ql.load_prompts("tiny-continuation", split))
    posts = ql.load_prompts("tiny-tldr", "test", limit=5)
    openings = ql.load_prompts("tiny-continuation", "test", limit=5)
    for post, row in zip(posts["prompt"], openings.itertuples()):
        body = ql.tldr.parse(post).body
        assert body == f"{row.prompt} {row.label}" and row.prompt.endswith((".", "!", "?"))
        assert "TL;DR" not in row.prompt and "SUBREDDIT" not in row.prompt


def test_config_task_sets_reward_and_dataset_unless_given():
    c = ql.QuarkConfig(task="continuation")
    assert (c.reward, c.dataset) == ("repetition", "tiny-continuation")
    assert (ql.QuarkConfig().reward, ql.QuarkConfig().dataset) == ("tiny-tldr", "tiny-tldr")
    c = ql.preset("tiny").with_overrides(["task=continuation"])
    assert (c.task, c.reward, c.dataset) == ("continuation", "repetition", "tiny-continuation")
    c = ql.preset("tiny").with_overrides(["task=continuation", "reward=tiny-tldr"])
    assert (c.reward, c.dataset) == ("tiny-tldr", "tiny-continuation")
    assert ql.preset("tldr-gptj").replace(task="continuation", final_protocol=None).reward.startswith("CarperAI/")
    assert c.replace(task="tldr").dataset == "tiny-tldr"
    stored = {k: v for k, v in ql.preset("tiny").to_dict().items() if k != "task"}  # a run before tasks
    assert ql.QuarkConfig.from_stored(stored) == ql.preset("tiny")
    with pytest.raises(QuarkError, match="final_protocol='alt-card'.*task is 'continuation'"):
        ql.preset("tldr-gptj", task="continuation")


def test_sampling_cuts_prompts_as_the_task_says(sft):
    model, tok = sft
    opening = "So I have a long story. " + "It goes on and on. " * 300 + "And then it ended"
    for task, ending in (("continuation", "And then it ended"), ("tldr", "TL;DR:")):
        out = ql.sample(model, tok, [opening if task == "continuation" else opening + "\nTL;DR:"],
                        ql.SamplingParams(do_sample=False, max_new_tokens=4, task=task))
        assert out["prompt_truncated"].iloc[0] and tok.decode(out["prompt_ids"].iloc[0]).endswith(ending)
    params = ql.SamplingParams.from_config(ql.preset("tiny", task="continuation"), "greedy")
    assert params.task == "continuation"
    with pytest.raises(QuarkError, match="task"):
        ql.SamplingParams(task="poems")


def test_train_continuation_end_to_end(world, tmp_path):
    run = train_tiny(tmp_path / "continuation", TINY_RUN + ["task=continuation"])
    config = json.loads((run / "config.json").read_text())
    assert (config["task"], config["reward"], config["dataset"]) == ("continuation", "repetition",
                                                                    "tiny-continuation")
    pool = ql.runs.read_pool(run, 1)
    openings = set(ql.load_prompts("tiny-continuation", "train")["prompt"])
    assert set(pool["prompt"]) <= openings
    expected = ql.load_reward("repetition", precision=config["reward_precision"])(pool["prompt"], pool["completion"])
    np.testing.assert_array_equal(pool["reward"].to_numpy(), expected)
    metrics = ql.runs.read_metrics(run)
    assert set(metrics[metrics["kind"] == "eval"]["iteration"]) == {0, 1, 2}
    card = model_card(run, 2)  # the exported model card prompts as the task does
    assert json.dumps(get_task("continuation").example) in card and "SUBREDDIT" not in card
