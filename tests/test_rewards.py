"""quarklab.rewards: any callable is a reward; every reward is checked (length, NaN, inf, numbers) and batched;
an unknown kind or a missing model is one error."""

from __future__ import annotations

import pytest

import quarklab as ql


def test_a_python_callable_is_a_reward_scored_in_batches():
    seen = []

    def length(prompts, completions):
        seen.append(len(completions))
        return [len(c) for c in completions]

    r = ql.CheckedReward(length, batch_size=2)
    assert r(["p", "q", "r"], ["ab", "abcd", "a"]).tolist() == [2.0, 4.0, 1.0] and seen == [2, 1]
    assert ql.load_reward(length).name == "length" and ql.load_reward(r) is r


@pytest.mark.parametrize("fn, message", [
    (lambda p, c: [float("nan")] * len(c), "non-finite"),
    (lambda p, c: [1.0, float("inf")][: len(c)], "non-finite"),
    (lambda p, c: [1.0], "returned 1 values for 2"),
    (lambda p, c: ["a", "b"], "not a list of numbers"),
])
def test_a_bad_reward_gives_one_clear_error(fn, message):
    with pytest.raises(ql.QuarkError, match=message):
        ql.load_reward(fn)(["p", "q"], ["a", "b"])


def test_mismatched_inputs_and_unknown_kinds_are_errors():
    with pytest.raises(ql.QuarkError, match="2 prompts but 1 completions"):
        ql.load_reward("tiny-tldr")(["a", "b"], ["c"])
    with pytest.raises(ql.QuarkError, match="unknown reward kind"):
        ql.load_reward("tiny-tldr", kind="magic")
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_reward("./no/such/reward-model")


def test_scores_are_rounded_to_the_stated_precision_and_stay_float64():
    import numpy as np

    def fixed(prompts, completions):
        return [2.7183, 0.1, 1 / 3][: len(completions)]

    three = (["p"] * 3, ["a", "b", "c"])
    as_computed = ql.load_reward(fixed)(*three)
    assert as_computed.tolist() == [2.7183, 0.1, 1 / 3]
    single = ql.load_reward(fixed, precision="float32")(*three)
    assert single.dtype == np.float64 and single.tolist() == [float(np.float32(v)) for v in as_computed]
    assert single[1] != 0.1 and abs(single[1] - 0.1) < 2 ** -27  # 0.1 has no exact float32: the nearest one
    half = ql.load_reward(fixed, precision="float16")(*three)
    assert half[0] == 1392 * 2 ** -9 == 2.71875  # 2.7183 / 2**-9 = 1391.77: fp16's step between 2 and 4 is 2**-9
    assert half[2] == 1365 * 2 ** -12  # (1/3) / 2**-12 = 1365.33: the step between 1/4 and 1/2 is 2**-12


def test_a_checked_reward_keeps_its_precision_unless_another_is_asked_for():
    r = ql.load_reward("tiny-tldr", precision="float16")
    assert r.precision == "float16" and ql.load_reward(r) is r
    wider = ql.load_reward(r, precision="float64")
    assert wider.precision == "float64" and wider.fn is r.fn and r.precision == "float16"
    assert repr(r) == "CheckedReward('tiny-tldr', precision='float16')" and repr(wider) == "CheckedReward('tiny-tldr')"


def test_a_run_config_loads_its_reward_at_its_precision(world):
    import numpy as np

    from quarklab.config import preset
    from quarklab.rewards import config_reward

    prompts = ql.load_prompts("tiny-tldr", "test", limit=8)["prompt"].tolist()
    summaries = [" " + " ".join(p.split("POST:")[1].split()[:9]) for p in prompts]
    exact = ql.load_reward("tiny-tldr")(prompts, summaries)
    for precision, dtype in [("float64", np.float64), ("float32", np.float32), ("float16", np.float16)]:
        reward = config_reward(preset("tiny", reward_precision=precision))
        assert reward.precision == precision
        assert reward(prompts, summaries).tolist() == exact.astype(dtype).astype(np.float64).tolist()


@pytest.mark.parametrize("precision, values, message", [
    ("float16", [1.0, 7e4],
     r"'<lambda>' gave 70000 \(row 1\), beyond float16's range \(±65504\): use a wider reward precision"),
    ("bfloat16", [1.0, 2.0], "reward precision must be one of 'float64', 'float32', 'float16', got 'bfloat16'"),
])
def test_a_score_the_precision_cannot_hold_or_an_unknown_precision_is_one_error(precision, values, message):
    with pytest.raises(ql.QuarkError, match=message):
        ql.load_reward(lambda p, c: values, precision=precision)(["p", "q"], ["a", "b"])


# ---------------------------------------------------------------- your own reward, named by text

NEGATIVE_LENGTH = '''
def score(prompts, completions):
    """Shorter is better: minus the completion's length in characters."""
    return [-float(len(c)) for c in completions]

THRESHOLD = 3
'''


def test_a_reward_named_file_py_colon_function_is_that_function(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(NEGATIVE_LENGTH)
    prompts, completions = ["p", "q", "r"], ["ab", "", "a b c d"]
    for spec in (f"{tmp_path / 'my_rewards.py'}:score", tmp_path / "my_rewards.py:score"):
        reward = ql.load_reward(spec)
        assert reward(prompts, completions).tolist() == [-2.0, -0.0, -7.0]
        assert reward.name == str(spec)
    monkeypatch.chdir(tmp_path)  # a relative path is read from the working directory
    assert ql.load_reward("my_rewards.py:score", kind="callable")(prompts, completions).tolist() == [-2.0, 0.0, -7.0]
    assert ql.load_reward("./my_rewards.py:score", precision="float16").precision == "float16"


def test_a_reward_named_module_colon_function_is_imported_from_the_import_path(tmp_path, monkeypatch):
    (tmp_path / "rewardpkg").mkdir()
    (tmp_path / "rewardpkg" / "__init__.py").write_text("")
    (tmp_path / "rewardpkg" / "scores.py").write_text(NEGATIVE_LENGTH + '''
class Words:
    @staticmethod
    def count(prompts, completions):
        return [len(c.split()) for c in completions]
''')
    monkeypatch.syspath_prepend(str(tmp_path))
    assert ql.load_reward("rewardpkg.scores:score")(["p", "q"], ["abc", "de"]).tolist() == [-3.0, -2.0]
    assert ql.load_reward("rewardpkg.scores:Words.count")(["p"], ["a b  c"]).tolist() == [3.0]


@pytest.mark.parametrize("spec, named", [
    ("tiny-tldr", None), ("CarperAI/openai_summarize_tldr_rm_checkpoint", None),
    ("CarperAI/openai_summarize_tldr_rm_checkpoint/pytorch_model.bin", None), ("runs/demo/checkpoints", None),
    ("https://example.com/rm", None), ("rm:v2/folder", None), ("a folder:score", None),
    ("my_rewards.py:score", ("my_rewards.py", "score")), ("../r/My Rewards.py:f", ("../r/My Rewards.py", "f")),
    ("pkg.mod:fn", ("pkg.mod", "fn")), ("mod:Class.method", ("mod", "Class.method")),
])
def test_what_names_a_callable_and_what_does_not(spec, named):
    from quarklab.rewards import callable_spec

    assert callable_spec(spec) == named


def test_a_callable_reward_that_cannot_be_had_is_one_error(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(NEGATIVE_LENGTH)
    (tmp_path / "broken.py").write_text("import no_such_module_here\n")
    (tmp_path / "uses_missing.py").write_text("import no_such_module_here\ndef f(p, c): return [0.0] * len(c)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    cases = [
        (f"{tmp_path / 'nope.py'}:score", f"reward file '{tmp_path / 'nope.py'}' does not exist"),
        (f"{tmp_path / 'my_rewards.py'}:scor", r"has no 'scor' \(its functions and classes: \['score'\]\)"),
        (f"{tmp_path / 'my_rewards.py'}:THRESHOLD", "'THRESHOLD' is a int, not a callable"),
        (f"{tmp_path / 'broken.py'}:f", r"reward file .*broken.py' failed to run \(ModuleNotFoundError: No module "
                                        "named 'no_such_module_here'"),
        ("no_such_pkg.rewards:score", r"reward module 'no_such_pkg.rewards' not found: is it on the import path"),
        ("my_rewards:nothing", r"reward module 'my_rewards' has no 'nothing'"),
        ("uses_missing:f", r"reward module 'uses_missing' failed to import \(ModuleNotFoundError"),
    ]
    for spec, message in cases:
        with pytest.raises(ql.QuarkError, match=message):
            ql.load_reward(spec)
    with pytest.raises(ql.QuarkError, match="label='positive' picks a sequence classifier's output, and reward "
                                            ".* is a Python callable"):
        ql.load_reward(f"{tmp_path / 'my_rewards.py'}:score", label="positive")
    with pytest.raises(ql.QuarkError, match="label=0 picks .* is the tiny-tldr reward"):
        ql.load_reward("tiny-tldr", label=0)
    with pytest.raises(ql.QuarkError, match="needs a Python callable, 'module:function' or 'path/to/file.py:function'"):
        ql.load_reward("tiny-tldr", kind="callable")


def test_a_run_trains_on_a_reward_file_and_a_dataset_whose_prompts_are_in_another_column(world, tmp_path, monkeypatch):
    """``quarklab train --set reward=my_rewards.py:score --set dataset=posts.jsonl --set dataset_prompt_column=text``,
    relative paths from the project root (here, outside a project, the working directory), stored absolute in
    config.json: the pool's rewards are the function's values on the pool's texts, and
    ``quarklab eval`` of the run (a second process reading config.json) loads the same function and column."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pandas as pd

    from quarklab.protocols import evaluate_policy

    (tmp_path / "my_rewards.py").write_text(NEGATIVE_LENGTH)
    posts = ql.load_prompts("tiny-tldr", "train", limit=12)["prompt"].tolist()
    pd.DataFrame({"id": range(12), "text": posts}).to_json(tmp_path / "posts.jsonl", orient="records", lines=True)
    settings = ["reward=my_rewards.py:score", "dataset=posts.jsonl", "dataset_prompt_column=text", "iterations=1",
                "prompts_per_iteration=4", "samples_per_prompt=4", "max_new_tokens=8", "eval_prompts=2",
                "eval_max_new_tokens=8", "batch_size=8", "num_quantiles=2"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "train", "--preset", "tiny", "--run-dir", "run",
                           *[a for s in settings for a in ("--set", s)]], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    run = tmp_path / "run"
    config = json.loads((run / "config.json").read_text())
    folder = tmp_path.resolve()
    assert (config["reward"], config["dataset"], config["dataset_prompt_column"]) == (
        f"{folder / 'my_rewards.py'}:score", str(folder / "posts.jsonl"), "text")
    pool = pd.read_parquet(run / "pool" / "iter_001.parquet")
    assert len(pool) == 16 and set(pool["prompt"]) <= set(posts)
    assert pool["reward"].tolist() == [-float(len(c)) for c in pool["completion"]]
    monkeypatch.chdir(tmp_path)
    result = evaluate_policy(run, "run", prompts=2)
    assert result.samples["prompt"].tolist() == posts[:2]
    assert result.samples["reward"].tolist() == [-float(len(c)) for c in result.samples["completion"]]
