"""quarklab.paths: relative paths mean the project root (the folder holding notebooks/ and pyproject.toml) from any
folder inside it; model, reward and dataset parameters that are local paths are read the same way."""

from __future__ import annotations

import re

import pytest

import quarklab as ql
from quarklab.paths import locate, project_root, resolve_path
from tables import project_folder


def test_relative_paths_mean_the_project_root_from_any_folder_inside_it(tmp_path, monkeypatch):
    root = project_folder(tmp_path)
    (root / "data").mkdir()
    (root / "data" / "posts.jsonl").write_text('{"prompt": "p"}\n')
    (root / "runs" / "old" / "checkpoints").mkdir(parents=True)
    for where in (root, root / "notebooks", root / "runs" / "old" / "checkpoints"):
        monkeypatch.chdir(where)
        assert project_root() == root.resolve()
        assert resolve_path("runs/demo") == root.resolve() / "runs" / "demo"
        assert resolve_path(tmp_path / "elsewhere") == tmp_path / "elsewhere"  # absolute: as given
        assert locate("data/posts.jsonl") == str(root.resolve() / "data" / "posts.jsonl")
        assert locate("runs/old") == str(root.resolve() / "runs" / "old")
        assert locate("data/missing.csv") == str(root.resolve() / "data" / "missing.csv")  # named where looked for
        for as_given in ("tiny-tldr", "auto", "EleutherAI/gpt-j-6b", None):  # names and hub ids stay
            assert locate(as_given) == as_given
    with pytest.raises(ql.QuarkError, match=re.escape(f"'runs/gone' resolves to {root.resolve() / 'runs' / 'gone'}, "
                                                      "which does not exist")):
        resolve_path("runs/gone", must_exist=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    monkeypatch.chdir(outside)
    assert project_root() == outside.resolve() and resolve_path("runs/demo") == outside.resolve() / "runs" / "demo"


def test_a_reward_named_file_py_colon_function_is_read_from_the_project_root(tmp_path, monkeypatch):
    """A notebook's, the judge's or quarklab eval's reward "rewards/mine.py:score" is the project's file, from any
    folder inside the project; "module:function" stays as given (imported by name)."""
    root = project_folder(tmp_path)
    (root / "rewards").mkdir()
    (root / "rewards" / "mine.py").write_text("def score(prompts, completions):\n    return [1.0] * len(prompts)\n")
    monkeypatch.chdir(root / "notebooks")
    located = locate("rewards/mine.py:score")
    assert located == f"{root.resolve() / 'rewards' / 'mine.py'}:score"
    assert ql.load_reward(located)(["p"], ["c"]).tolist() == [1.0]
    assert locate("pkg.rewards:score") == "pkg.rewards:score" and locate("tiny-tldr") == "tiny-tldr"
    nb = ql.notebooks.setup("01_quantile_distributions", run_dir="runs/r", reward="rewards/mine.py:score")
    assert nb.reward == located
