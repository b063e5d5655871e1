"""quarklab.cli: the quarklab command lists its subcommands and answers --help at once (importing quarklab loads
neither torch nor pandas); bad input is one line, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys


def heavy_libraries_loaded_by(body: str) -> str:
    """Which of torch, transformers, pandas, matplotlib a fresh interpreter has loaded after running ``body``
    (with ``sys``, ``contextlib``, ``io`` and ``quarklab.cli as c`` imported), as printed."""
    code = ("import sys, contextlib, io, quarklab, quarklab.cli as c\n" + body +
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def test_importing_quarklab_and_asking_for_help_loads_no_heavy_library():
    assert heavy_libraries_loaded_by(
        "for argv in (['--help'], ['train', '--help'], ['notebooks', 'run', '--help'], ['export', '--help']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        "        c.main(argv)\n") == "[]"


def test_version():
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "--version"], capture_output=True, text=True, check=True)
    import quarklab

    assert out.stdout.strip() == f"quarklab {quarklab.__version__}"


def test_the_quarklab_command_lists_its_subcommands():
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for sub in ("world", "train", "seeds", "notebooks", "plan", "judge", "bench", "export"):
        assert re.search(rf"^\s+{sub}\s", out, re.MULTILINE)
        subprocess.run([sys.executable, "-m", "quarklab.cli", sub, "--help"], capture_output=True, check=True)


def test_bad_input_on_the_command_line_is_one_line_not_a_traceback(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import quarklab.cli as c, sys; "
                          "sys.exit(c.main(['world', 'build', '--seed', 'x']))"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "invalid int value" in out.stderr and "Traceback" not in out.stderr


def test_train_prints_the_final_table_and_where_the_run_is(tiny_run, tmp_path):
    import shutil

    run_dir = tmp_path / "copy"
    shutil.copytree(tiny_run, run_dir)
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "train", "--resume", str(run_dir)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.strip().splitlines()
    assert lines[0].split()[0] == "iteration" and "reward" in lines[0].split()  # the final table first
    assert lines[-1].startswith(f"run: {run_dir} (config.json, metrics.jsonl, checkpoints/")


def test_train_runs_from_a_config_file_with_set_on_top_and_print_config_starts_one(world, tmp_path):
    """The file a user writes (here the tiny sizes of conftest's TINY_RUN, in YAML) over the tiny preset, --set over
    the file: the run's config.json holds exactly that. --print-config writes a file that reads back the same."""
    import json

    from conftest import TINY_RUN

    import quarklab as ql

    cli = [sys.executable, "-m", "quarklab.cli"]
    sizes = dict(item.split("=") for item in TINY_RUN)
    (tmp_path / "run.yaml").write_text("# a tiny run\n" + "".join(f"{k}: {v}\n" for k, v in sizes.items())
                                       + "seed: 3\nlr: 5e-4\n")
    proc = subprocess.run(cli + ["train", "--config", "run.yaml", "--set", "iterations=1", "--run-dir", "run"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = ql.preset("tiny").with_overrides([f"{k}={v}" for k, v in sizes.items()] + ["seed=3", "lr=5e-4",
                                                                                          "iterations=1"])
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert ql.QuarkConfig.from_dict(stored) == expected and stored["iterations"] == 1 and stored["lr"] == 5e-4
    assert [json.loads(line)["iteration"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
            if '"iteration"' in line][-1] == 1

    printed = subprocess.run(cli + ["train", "--preset", "tiny", "--config", "run.yaml", "--set", "iterations=1",
                                    "--print-config"], cwd=tmp_path, capture_output=True, text=True, check=True)
    assert printed.stdout.startswith("# quarklab train --preset tiny --config run.yaml --set iterations=1 "
                                     "--print-config\n")
    (tmp_path / "printed.yaml").write_text(printed.stdout)
    assert ql.QuarkConfig.from_file(tmp_path / "printed.yaml", ql.QuarkConfig()) == expected  # the round trip
    plan = subprocess.run(cli + ["plan", "--config", "printed.yaml", "--set", "batch_size=4"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert plan.returncode == 0 and "policy tiny-tldr: " in plan.stdout and "micro-batch 4 x" in plan.stdout, \
        plan.stderr[-2000:]

    (tmp_path / "bad.yaml").write_text("iterations: 1\nnum_quantile: 3\n")
    bad = str(tmp_path.resolve() / "bad.yaml")  # relative: from the project root (here, outside one, the folder)
    for args, message in [(["--config", "bad.yaml", "--run-dir", "bad"], f"config file {bad!r}: unknown field "
                            "'num_quantile' (did you mean 'num_quantiles'?): see quarklab train --help-config"),
                          (["--resume", "run", "--config", "run.yaml"], "--resume continues a run with its own "
                           "config.json; drop --preset/--config/--set/--print-config")]:
        proc = subprocess.run(cli + ["train"] + args, cwd=tmp_path, capture_output=True, text=True)
        assert proc.returncode == 2 and proc.stderr.strip() == f"quarklab: error: {message}"
    assert not (tmp_path / "bad").exists()  # nothing written for a bad file


def test_print_config_loads_no_heavy_library():
    assert heavy_libraries_loaded_by(
        "with contextlib.redirect_stdout(io.StringIO()) as out:\n"
        "    c.main(['train', '--preset', 'tldr-gptj', '--print-config'])\n"
        "assert 'policy: CarperAI/openai_summarize_tldr_sft' in out.getvalue()\n") == "[]"


# ------------------------------------------------------------------ one relative-path rule for every command

SMALL_RUN = ("iterations: 1\nprompts_per_iteration: 4\nsamples_per_prompt: 4\nmax_new_tokens: 8\neval_prompts: 2\n"
             "eval_max_new_tokens: 8\nbatch_size: 8\nnum_quantiles: 2\n")


def test_train_seeds_and_a_config_file_read_relative_paths_from_the_project_root_wherever_they_start(world, tmp_path):
    """``quarklab train --config run.yaml --run-dir runs/a --set reward=rewards/mine.py:score`` in ``notebooks/``
    writes ``<project>/runs/a``, its config.json naming the project's reward file (absolute, so every process and
    --resume load that file); the same command at the root finds that run and its config equal; ``quarklab seeds``
    reads it and writes its --csv in the same place from either folder."""
    import json
    import os
    from pathlib import Path

    import pandas as pd

    from tables import project_folder

    root = project_folder(tmp_path).resolve()
    (root / "rewards").mkdir()
    (root / "rewards" / "mine.py").write_text("def score(prompts, completions):\n"
                                              "    return [-float(len(c)) for c in completions]\n")
    (root / "run.yaml").write_text(SMALL_RUN)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}
    cli = [sys.executable, "-m", "quarklab.cli"]
    train = cli + ["train", "--config", "run.yaml", "--run-dir", "runs/a", "--set", "reward=rewards/mine.py:score"]
    outputs = []
    for where in (root / "notebooks", root):  # a second time from the root: the same run, nothing to do
        proc = subprocess.run(train, cwd=where, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outputs.append(proc.stdout.strip().splitlines()[-1])
    assert outputs[0] == outputs[1] and outputs[0].startswith(f"run: {root / 'runs' / 'a'} (config.json")
    assert not (root / "notebooks" / "runs").exists()
    config = json.loads((root / "runs" / "a" / "config.json").read_text())
    assert config["reward"] == f"{root / 'rewards' / 'mine.py'}:score" and config["num_quantiles"] == 2
    pool = pd.read_parquet(root / "runs" / "a" / "pool" / "iter_001.parquet")
    assert pool["reward"].tolist() == [-float(len(c)) for c in pool["completion"]]  # the file's function scored it

    printed = []
    for where in (root / "notebooks", root):
        proc = subprocess.run(cli + ["seeds", "runs/a", "--csv", "out/seeds.csv"], cwd=where, env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        printed.append(proc.stdout)
    assert printed[0] == printed[1] and f"summary: {root / 'out' / 'seeds.csv'}" in printed[0]
    assert set(pd.read_csv(root / "out" / "seeds.csv")["n"]) <= {0, 1}


def test_plan_defaults_to_the_tiny_preset_as_train_does():
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "plan"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and "policy tiny-tldr: " in out.stdout, out.stderr[-2000:]
    from quarklab.cli import build_parser

    for command in ("train", "plan"):
        assert build_parser().parse_args([command]).preset == "tiny"


# ------------------------------------------------------------------ help: defaults by the formatter

def _parsers(parser, name="quarklab"):
    """(command line, parser) of ``parser`` and every subcommand below it."""
    import argparse

    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub, child in action.choices.items():
                yield from _parsers(child, f"{name} {sub}")


def test_every_option_with_a_default_shows_it_once_and_as_the_parser_holds_it():
    """In every subcommand's --help, an option whose default is set shows "(default: VALUE)" once, VALUE the parser's
    default; an option with none (unset, off, empty) states no default; options with a fixed set list it."""
    from quarklab.cli import build_parser

    checked = 0
    for command, parser in _parsers(build_parser()):
        text = parser.format_help()
        body = text.split("options:\n", 1)[1].split("\n\n")[0]
        blocks = re.split(r"\n(?=  -)", body)
        for action in parser._actions:
            if not action.option_strings or action.help is None or action.default == "==SUPPRESS==":
                continue
            option = re.escape(action.option_strings[0])
            (block,) = [" ".join(b.split()) for b in blocks if re.match(rf"  {option}(?=[ ,]|$)", b)]
            shown = re.findall(r"\(default: ([^)]*)\)", block)
            if action.default is None or action.default is False or action.default in ("", []):
                assert "default" not in block, (command, block)
            else:
                assert shown == [str(action.default)] and block.count("default") == 1, (command, block)
                checked += 1
            if action.choices:
                assert "{" + ",".join(action.choices) + "}" in block, (command, block)
    assert checked >= 15
    from quarklab.config import PRESETS

    parsers = dict(_parsers(build_parser()))
    for command in ("train", "plan"):
        assert f"--preset {{{','.join(sorted(PRESETS))}}}" in parsers[f"quarklab {command}"].format_help()


def test_world_path_prints_the_folder_and_builds_nothing(world, tmp_path):
    import os

    cli = [sys.executable, "-m", "quarklab.cli", "world", "path"]
    built = subprocess.run(cli, capture_output=True, text=True, check=True)
    assert built.stdout.strip() == str(world.root)
    empty = subprocess.run(cli + ["--seed", "3"], capture_output=True, text=True, check=True,
                           env={**os.environ, "QUARKLAB_HOME": str(tmp_path)})
    from quarklab.world.build import WorldSpec, world_dir

    assert empty.stdout.strip() == f"{world_dir(WorldSpec(seed=3), tmp_path)} (not built: quarklab world build)"
    assert list(tmp_path.iterdir()) == []


def test_sweep_set_takes_name_equals_value_and_the_old_form_says_so(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", "sweep", "--out", str(tmp_path / "s"),
                           "-p", "seed", "1", "2", "--set", "num_quantiles", "3"], capture_output=True, text=True)
    assert proc.returncode == 2 and "argument --set: 'num_quantiles' is not NAME=VALUE: write --set NAME=VALUE" \
        in proc.stderr and not (tmp_path / "s").exists()
