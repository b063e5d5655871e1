"""Set-up: conda and pip list the same dependencies; the command lists its subcommands."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _name(req: str) -> str:
    return re.split(r"[<>=!~ \[]", req.strip(), maxsplit=1)[0].lower()


def test_environment_yml_lists_the_same_dependencies_as_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pip_reqs = project["dependencies"] + project["optional-dependencies"]["test"]
    text = (ROOT / "environment.yml").read_text()
    conda_reqs = [line.strip()[2:] for line in text.splitlines()
                  if line.startswith("      - ") and not line.strip().startswith("- -e")]
    assert sorted(map(str.strip, conda_reqs)) == sorted(pip_reqs)
    assert "torch==2.13.0" in pip_reqs


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
