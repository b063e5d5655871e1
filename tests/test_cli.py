"""quarklab.cli: the quarklab command lists its subcommands and answers --help at once (importing quarklab loads
neither torch nor pandas); bad input is one line, never a traceback."""

from __future__ import annotations

import re
import subprocess
import sys


def test_importing_quarklab_and_asking_for_help_loads_no_heavy_library():
    code = ("import sys, contextlib, io, quarklab, quarklab.cli as c\n"
            "for argv in (['--help'], ['train', '--help'], ['notebooks', 'run', '--help']):\n"
            "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
            "        c.main(argv)\n"
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'matplotlib') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


def test_version():
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "--version"], capture_output=True, text=True, check=True)
    import quarklab

    assert out.stdout.strip() == f"quarklab {quarklab.__version__}"


def test_the_quarklab_command_lists_its_subcommands():
    out = subprocess.run([sys.executable, "-m", "quarklab.cli", "--help"], capture_output=True, text=True,
                         check=True).stdout
    for sub in ("world", "train", "seeds", "notebooks", "plan", "judge", "bench"):
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
