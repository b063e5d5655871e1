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
    for args, message in [(["--config", "bad.yaml", "--run-dir", "bad"], "config file 'bad.yaml': unknown field "
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
