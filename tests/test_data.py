"""Prompt sources: local files of every format, the tiny world, a hub id offline, bad input."""

from __future__ import annotations

import json

import pandas as pd
import pytest

import quarklab as ql

ROWS = [{"prompt": "SUBREDDIT: r/a\nTITLE: t\nPOST: ünï 😀\nTL;DR:", "label": "x"},
        {"prompt": "SUBREDDIT: r/b\nTITLE: u\nPOST: p\nTL;DR:", "label": "y"},
        {"prompt": "SUBREDDIT: r/b\nTITLE: u\nPOST: p\nTL;DR:", "label": "y"}]  # a duplicate prompt


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_local_files_of_each_format_load_the_same(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    df = pd.DataFrame(ROWS)
    {".jsonl": lambda: df.to_json(path, orient="records", lines=True, force_ascii=False),
     ".csv": lambda: df.to_csv(path, index=False),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    got = ql.load_prompts(path)
    assert got.columns.tolist() == ["prompt_id", "prompt", "label"]
    assert got["prompt"].tolist() == [r["prompt"] for r in ROWS]  # duplicates kept, unicode intact
    assert got["prompt_id"].tolist() == [0, 1, 2]


def test_prompts_are_stripped_only_when_asked(tmp_path):
    path = tmp_path / "padded.jsonl"
    padded = [" \n" + ROWS[0]["prompt"] + "  ", ROWS[1]["prompt"] + " \n", "\t" + ROWS[2]["prompt"]]
    pd.DataFrame({"prompt": padded, "label": ["x", "y", "y"]}).to_json(path, orient="records", lines=True)
    assert ql.load_prompts(path)["prompt"].tolist() == padded  # as written, by default
    got = ql.load_prompts(path, strip=True, limit=2)
    assert got["prompt"].tolist() == [ROWS[0]["prompt"], ROWS[1]["prompt"]]  # ends in "TL;DR:", no space after
    assert got["prompt_id"].tolist() == [0, 1] and got["label"].tolist() == ["x", "y"]


def test_real_tldr_sample_loads_with_long_posts(real_tldr):
    assert len(real_tldr) == 1945
    assert real_tldr["prompt"].str.endswith("TL;DR:").all()
    assert real_tldr["prompt"].str.len().max() > 2000


def test_tiny_world_prompts_and_limit(world):
    df = ql.load_prompts("tiny-tldr", "valid", limit=7)
    assert len(df) == 7 and df["label"].str.len().min() > 0
    with pytest.raises(ql.QuarkError, match="no split 'dev'"):
        ql.load_prompts("tiny-tldr", "dev")


def test_bad_datasets_give_one_clear_error(tmp_path):
    no_prompt = tmp_path / "np.jsonl"
    no_prompt.write_text(json.dumps({"text": "a", "label": "b"}) + "\n")
    with pytest.raises(ql.QuarkError, match="no 'prompt' column"):
        ql.load_prompts(no_prompt)
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ql.QuarkError, match="empty"):
        ql.load_prompts(empty)
    header_only = tmp_path / "h.csv"
    header_only.write_text("prompt,label\n")
    with pytest.raises(ql.QuarkError, match="is empty"):
        ql.load_prompts(header_only)
    blank = tmp_path / "blank.jsonl"
    blank.write_text(json.dumps({"prompt": "  "}) + "\n")
    with pytest.raises(ql.QuarkError, match="empty or non-text prompts"):
        ql.load_prompts(blank)
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_prompts(tmp_path / "missing.jsonl")
    other = tmp_path / "d.txt"
    other.write_text("x")
    with pytest.raises(ql.QuarkError, match="use a .jsonl"):
        ql.load_prompts(other)


def test_hub_dataset_id_fails_clearly_when_offline():
    with pytest.raises(ql.QuarkError, match="CarperAI/openai_summarize_tldr.*Offline"):
        ql.load_prompts("CarperAI/openai_summarize_tldr", "test")


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_prompts_in_another_column_are_read_by_prompt_column(tmp_path, suffix):
    path = tmp_path / f"d{suffix}"
    table = pd.DataFrame({"id": [7, 8], "text": ["first post\nTL;DR:", "second post"], "summary": ["a", "b"],
                          "label": ["x", "y"]})
    table.to_json(path, orient="records", lines=True) if suffix == ".jsonl" else table.to_csv(path, index=False)
    got = ql.load_prompts(path, prompt_column="text")
    assert got.columns.tolist() == ["prompt_id", "prompt", "label"]
    assert got["prompt"].tolist() == ["first post\nTL;DR:", "second post"] and got["label"].tolist() == ["x", "y"]
    other = ql.load_prompts(path, prompt_column="text", label_column="summary", limit=1)
    assert other.to_dict("records") == [{"prompt_id": 0, "prompt": "first post\nTL;DR:", "label": "a"}]
    assert ql.load_prompts(path, prompt_column="text", label_column=None).columns.tolist() == ["prompt_id", "prompt"]
    with pytest.raises(ql.QuarkError, match=r"has no 'body' column; its columns: \['id', 'text', 'summary', 'label'\]"):
        ql.load_prompts(path, prompt_column="body")
    with pytest.raises(ql.QuarkError, match=r"has no 'prompt' column \(dataset_prompt_column / prompt_column= names "
                                            r"another\); its columns: \['id', 'text', 'summary', 'label'\]"):
        ql.load_prompts(path)
    with pytest.raises(ql.QuarkError, match=r"has no 'ref' column \(the label\); its columns"):
        ql.load_prompts(path, prompt_column="text", label_column="ref")
    with pytest.raises(ql.QuarkError, match="1 empty or non-text prompts in column 'summary'"):
        pd.DataFrame({"summary": ["ok", " "]}).to_json(tmp_path / "e.jsonl", orient="records", lines=True)
        ql.load_prompts(tmp_path / "e.jsonl", prompt_column="summary")


def test_a_subset_or_revision_is_for_hub_datasets_only(tmp_path, world):
    path = tmp_path / "d.jsonl"
    pd.DataFrame(ROWS).to_json(path, orient="records", lines=True)
    with pytest.raises(ql.QuarkError, match=r"a subset \('short'\) applies to a hub dataset only, and this is a local"):
        ql.load_prompts(path, subset="short")
    with pytest.raises(ql.QuarkError, match=r"a revision \('v1'\) applies to a hub dataset only, and this is a "
                                            "registered name"):
        ql.load_prompts("tiny-tldr", "test", revision="v1")


def test_a_run_config_reads_its_dataset_column(tmp_path):
    from quarklab.config import preset
    from quarklab.data import config_prompts, hub_dataset_args

    path = tmp_path / "d.csv"
    pd.DataFrame({"text": ["  a  ", "b"]}).to_csv(path, index=False)
    config = preset("tiny", dataset=str(path), dataset_prompt_column="text", strip_prompts=True)
    assert config_prompts(config, "train")["prompt"].tolist() == ["a", "b"]
    assert config_prompts(config, "test", limit=1, strip=False)["prompt"].tolist() == ["  a  "]
    assert hub_dataset_args("org/data", "test") == {"path": "org/data", "split": "test"}
    assert hub_dataset_args("org/data", "train", "short", "v1") == {"path": "org/data", "split": "train",
                                                                    "name": "short", "revision": "v1"}
