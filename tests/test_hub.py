"""quarklab.hub: where a model, dataset or file comes from. A local path that is missing, a hub id offline or
unreachable, a folder without weights: each one clear error, at once; a hub id in the local cache loads offline."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import quarklab as ql
from quarklab.testing import cache_repo


@pytest.mark.parametrize("name", ["./no/such/model", "/abs/missing", "a/b/c"])
def test_missing_local_model_is_a_clear_error(name):
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_policy(name)
    with pytest.raises(ql.QuarkError, match="does not exist"):
        ql.load_tokenizer(name)


def test_hub_id_offline_and_folder_without_weights_are_clear_errors(tmp_path):
    with pytest.raises(ql.QuarkError, match="neither a local folder nor in the local hub cache"):
        ql.load_policy("EleutherAI/gpt-j-6b")
    with pytest.raises(ql.QuarkError, match="local folder .*save_pretrained"):
        ql.load_policy(tmp_path)


# ---------------------------------------------------------------------------- the hub, offline
# Each case runs in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE, HF_HUB_CACHE and HF_ENDPOINT
# once, at import. HF_ENDPOINT points at a closed local port, so "the hub cannot be reached" holds on any
# machine, networked or not.
UNREACHABLE = "http://127.0.0.1:9"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(root: Path, repo_id: str, repo_type: str, files: dict[str, Path]) -> Path:
    """A local hub cache holding ``repo_id`` at COMMIT, laid out as huggingface_hub writes it."""
    cache_repo(root, repo_id, files, repo_type=repo_type, commit=COMMIT)
    return root


def _python(code: str, cache: Path, offline: bool) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env.update(HF_HUB_CACHE=str(cache), HF_ENDPOINT=UNREACHABLE, PYTHONPATH=str(Path(__file__).parents[1]))
    if offline:
        env["HF_HUB_OFFLINE"] = "1"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_hub_ids_not_cached_fail_at_once_with_one_error(offline, tmp_path):
    code = """
import quarklab as ql
from quarklab.reward_models import SequenceClassifierReward
for what, load in [("model", ql.load_policy), ("tokenizer", ql.load_tokenizer),
                   ("reward model", SequenceClassifierReward), ("dataset", ql.load_prompts)]:
    try:
        load("EleutherAI/gpt-j-6b" if what != "dataset" else "CarperAI/openai_summarize_tldr")
    except ql.QuarkError as exc:
        print(exc)
"""
    out = _python(code, tmp_path, offline)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert len(lines) == 4
    for line, what in zip(lines, ["model", "tokenizer", "reward model", "dataset"]):
        local = "file" if what == "dataset" else "folder"
        assert line.startswith(f"{what} '") and f"is neither a local {local} nor in the local hub cache" in line
        assert ("HF_HUB_OFFLINE=1" if offline else f"{UNREACHABLE} cannot be reached") in line
    assert "Retrying" not in out.stderr  # huggingface_hub's back-off (about 25 s) never started


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_hub_ids_in_the_local_cache_load_offline(offline, world, tmp_path):
    policy = Path(world.policy)
    _hub_cache(tmp_path, "quarklab-test/tiny-sft", "model", {p.name: p for p in policy.iterdir() if p.is_file()})
    _hub_cache(tmp_path, "quarklab-test/prompts", "dataset", {"test.jsonl": Path(world.data_file("test"))})
    code = """
import quarklab as ql
model, tok = ql.load_policy("quarklab-test/tiny-sft"), ql.load_tokenizer("quarklab-test/tiny-sft")
print(model.num_parameters(), tok.pad_token is not None, len(ql.load_prompts("quarklab-test/prompts", "test")))
"""
    out = _python(code, tmp_path, offline)
    assert out.returncode == 0, out.stderr[-2000:]
    model, tok = ql.load_policy(policy), ql.load_tokenizer(policy)
    want = len(ql.load_prompts(world.data_file("test")))
    assert out.stdout.split() == [str(model.num_parameters()), "True", str(want)]


OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"
SUBSETS = """---
configs:
- config_name: short
  data_files:
  - split: test
    path: short/test.jsonl
- config_name: long
  data_files:
  - split: test
    path: long/test.jsonl
---
"""


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "unreachable"])
def test_a_hub_datasets_subset_revision_and_column_load_from_the_local_cache(offline, tmp_path):
    """dataset_subset, dataset_revision and dataset_prompt_column reach datasets.load_dataset: a cached dataset
    whose main branch holds one file and whose other commit holds two subsets (configs in its README)."""
    import json

    repo = tmp_path / "datasets--quarklab-test--subsets"
    for commit, files in [(COMMIT, {"test.jsonl": ["main 1", "main 2"]}),
                          (OTHER_COMMIT, {"short/test.jsonl": ["short 1", "short 2", "short 3"],
                                          "long/test.jsonl": ["long 1"], "README.md": None})]:
        for name, texts in files.items():
            path = repo / "snapshots" / commit / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(SUBSETS if texts is None else "".join(json.dumps({"text": t}) + "\n" for t in texts))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    code = f"""
import quarklab as ql
for subset, revision in [(None, None), ("short", "{OTHER_COMMIT}"), ("long", "{OTHER_COMMIT}")]:
    print(ql.load_prompts("quarklab-test/subsets", "test", prompt_column="text", subset=subset,
                          revision=revision)["prompt"].tolist())
try:
    ql.load_prompts("quarklab-test/subsets", "test", prompt_column="text", subset="medium", revision="{OTHER_COMMIT}")
except ql.QuarkError as exc:
    print(exc)
"""
    out = _python(code, tmp_path, offline)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[:3] == ["['main 1', 'main 2']", "['short 1', 'short 2', 'short 3']", "['long 1']"]
    assert lines[3].startswith(f"could not load dataset 'quarklab-test/subsets' subset 'medium' revision "
                               f"'{OTHER_COMMIT}' split 'test' from its copy in the local hub cache") and "medium" in lines[3]
