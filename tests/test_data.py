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
