"""quarklab.notebooks.cells: the one setup call of each notebook, and what the notebooks record and write."""

from __future__ import annotations

import re

import pytest

import quarklab as ql
from quarklab.notebooks import Notebook, policy_source, prepare, results, setup
from tables import project_folder


def test_setup_checks_every_parameter_and_names_the_bad_one_before_writing_anything(tmp_path, monkeypatch):
    monkeypatch.chdir(project_folder(tmp_path))
    good = dict(run_dir="runs/x", policy="tiny-tldr", reward="tiny-tldr", num_quantiles=3, quantile_scope="local",
                seed=0, device="cpu", top_p=0.9, seed_run_dirs=[])
    assert isinstance(setup("01_x", **good), Notebook)
    for bad, message in [({"num_quantiles": 0}, r"^notebook parameter: num_quantiles must be an integer >= 1, got 0$"),
                         ({"quantile_scope": "per-prompt"}, r"^notebook parameter: quantile_scope must be one of "),
                         ({"top_p": 0}, r"^notebook parameter: top_p must be a number in \(0, 1\], got 0$"),
                         ({"device": "gpu"}, r"^notebook parameter: device must be "),
                         ({"run_dir": ""}, r"^notebook parameter: run_dir must be a folder path, got ''$"),
                         ({"seed_run_dirs": "runs/a"}, r"^notebook parameter: seed_run_dirs must be a list of folder "
                                                       r"paths, got 'runs/a'$"),
                         ({"extra_run_dirs": ["runs/gone"]}, r"^notebook parameter: extra_run_dirs: 'runs/gone' "
                                                             r"resolves to .*runs/gone, which does not exist"),
                         ({"policy": "auto"}, r"policy='auto' takes the latest checkpoint of .*runs/y'?, and it has none"),
                         ({"num_quantile": 3}, r"^setup: 'num_quantile' is neither run_dir, a QuarkConfig field nor "
                                               r"one of extra_run_dirs, seed_run_dirs$")]:
        with pytest.raises(ql.QuarkError, match=message):
            setup("01_x", **{**good, "run_dir": "runs/y", **bad})
        assert not (tmp_path / "proj" / "runs" / "y").exists()  # stopped before the run dir was made


def test_setup_reads_relative_paths_from_the_project_root(tmp_path, monkeypatch):
    root = project_folder(tmp_path).resolve()
    (root / "data").mkdir()
    (root / "data" / "posts.jsonl").write_text('{"prompt": "p"}\n')
    (root / "runs" / "demo" / "checkpoints" / "iter_002").mkdir(parents=True)
    (root / "runs" / "demo" / "checkpoints" / "iter_001").mkdir()
    (root / "runs" / "seed1").mkdir()
    (root / "models" / "rm").mkdir(parents=True)
    monkeypatch.chdir(root / "notebooks")  # where JupyterLab starts a notebook's kernel
    nb = setup("03_x", run_dir="runs/demo", policy="auto", reference="EleutherAI/gpt-j-6b", reward="models/rm",
               dataset="data/posts.jsonl", num_quantiles=5, seed_run_dirs=["runs/seed1", str(root / "runs" / "demo")])
    assert nb.run_dir == root / "runs" / "demo" and nb.name == "03_x"
    assert nb.policy == str(root / "runs" / "demo" / "checkpoints" / "iter_002")  # "auto": the latest checkpoint
    assert nb.reference == "EleutherAI/gpt-j-6b"  # a hub id as given
    assert nb.reward == str(root / "models" / "rm") and nb.dataset == str(root / "data" / "posts.jsonl")
    assert nb.seed_run_dirs == [root / "runs" / "seed1", root / "runs" / "demo"] and nb.num_quantiles == 5
    new = setup("01_x", run_dir="runs/new", policy="tiny-tldr", dataset="tiny-tldr")
    assert new.run_dir == root / "runs" / "new" and new.run_dir.is_dir()  # made, under the project, not notebooks/
    assert (new.policy, new.dataset) == ("tiny-tldr", "tiny-tldr") and not (root / "notebooks" / "runs").exists()
    with pytest.raises(AttributeError, match=r"notebook '01_x' has no parameter 'reward': setup was given run_dir, "
                                             r"policy, dataset"):
        new.reward
    assert "PosixPath" not in repr(new) and repr(new).startswith(f"<notebook 01_x: run_dir {root / 'runs' / 'new'}")


def test_a_notebook_records_and_writes_into_its_run_dir(tmp_path):
    nb = setup("04_tradeoffs", run_dir=tmp_path / "run")
    path = nb.record({"points": 5, "best": "token 0", "by": {"a": 1.5}})
    assert path == tmp_path / "run" / "results" / "04_tradeoffs.json"
    assert results(tmp_path / "run") == {"04_tradeoffs": {"points": 5, "best": "token 0", "by": {"a": 1.5}}}
    saved = nb.save_text("04_model_card.csv", "model,RM\nSFT,3.3\n")
    assert saved == tmp_path / "run" / "04_model_card.csv" and saved.read_text() == "model,RM\nSFT,3.3\n"
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["04_model_card.csv", "results"]  # nothing else


def test_the_config_of_a_notebook_is_its_preset_with_its_parameters_over_it(tmp_path):
    nb = setup("02_x", run_dir=tmp_path, policy="tiny-tldr", reference=None, num_quantiles=3, quantile_scope="global",
               seed=4, iterations=2, seed_run_dirs=[])
    config = nb.config("tiny", kl_coef=0.1, pool_strategy="quark", steps_per_iteration=20)
    expected = ql.preset("tiny", policy="tiny-tldr", reference=None, num_quantiles=3, quantile_scope="global", seed=4,
                         iterations=2, kl_coef=0.1, pool_strategy="quark", steps_per_iteration=20)
    assert config == expected
    with pytest.raises(ql.QuarkError, match=r"^'seed': set both as a notebook parameter and among the overrides"):
        nb.config("tiny", seed=1)


# ------------------------------------------------------------------ the notebooks' run dir, from the project root

def test_a_relative_run_dir_is_made_under_the_project_root_from_any_folder_inside_it(tmp_path, monkeypatch):
    root = project_folder(tmp_path)
    monkeypatch.chdir(root / "notebooks")
    assert prepare("runs/new") == root.resolve() / "runs" / "new" and (root / "runs" / "new").is_dir()
    assert not (root / "notebooks" / "runs").exists()
    with pytest.raises(ql.QuarkError, match=re.escape(f"of {str(root.resolve() / 'runs' / 'new')!r}, and it has none")):
        policy_source("auto", "runs/new")


# ------------------------------------------------------------------ a run config file: the notebooks' config parameter

def test_a_config_file_sets_the_parameters_left_at_their_declared_defaults(tmp_path, monkeypatch):
    """The file's values replace the parameters still at the notebook's declared defaults (01 declares num_quantiles 5,
    seed 0); one given otherwise wins; 03's policy "auto" stays the run's checkpoint; in 02 the file's other fields are
    the base of nb.config, under its parameters and extra_config. A relative file is read from the project root."""
    root = project_folder(tmp_path)
    (root / "run.yaml").write_text("num_quantiles: 3\nseed: 2\npolicy: tiny-tldr\nlr: 5e-4\nkl_coef: 0.2\n")
    monkeypatch.chdir(root / "notebooks")
    nb = setup("01_quantile_distributions", run_dir="runs/x", num_quantiles=5, seed=7, config="run.yaml")
    assert (nb.num_quantiles, nb.seed, nb.from_config) == (3, 7, {"num_quantiles": 3})
    with pytest.raises(ql.QuarkError, match=r"policy='auto' takes the latest checkpoint of .*runs/x'?, and it has"):
        setup("03_compare_tokens", run_dir="runs/x", policy="auto", config="run.yaml")
    nb = setup("02_training_iterations", run_dir="runs/x", num_quantiles=5, seed=0, samples_per_prompt=8,
               config="run.yaml")
    config = nb.config("tiny", kl_coef=0.1)
    assert (config.num_quantiles, config.seed, config.samples_per_prompt, config.lr, config.kl_coef) == (3, 2, 8, 5e-4,
                                                                                                      0.1)
    assert nb.config("tiny").kl_coef == 0.2 and setup("02_training_iterations", run_dir="runs/x").config("tiny") == \
        ql.preset("tiny")
