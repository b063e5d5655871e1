"""Set-up: conda and pip list the same dependencies, torch keeps its floor, every import is declared."""

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


def test_torch_has_a_floor_in_the_package_and_its_exact_pin_only_in_this_machines_install_step():
    """A researcher's CUDA torch (or the one vLLM pins) must not be replaced by installing quarklab."""
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert [d for d in deps if _name(d) == "torch"] == ["torch>=2.13"]
    assert "pip install --quiet torch==2.13.0" in (ROOT / "Makefile").read_text()


def test_installing_the_package_keeps_the_torch_already_installed(tmp_path):
    """pip's own resolver, asked to install quarklab here: it would install nothing, torch least of all."""
    import json

    report = tmp_path / "report.json"
    subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--no-build-isolation",
                    "--report", str(report), "-e", str(ROOT)], check=True, capture_output=True, timeout=300)
    names = [item["metadata"]["name"].lower() for item in json.loads(report.read_text())["install"]]
    assert "torch" not in names and set(names) <= {"quarklab"}


def test_every_package_the_library_imports_is_declared():
    """A package imported by quarklab/ (outside optional backends) is a dependency, not an accident of the venv."""
    import ast
    import importlib.metadata as md

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_name(r) for r in project["dependencies"]}
    optional = {"vllm", "deepspeed", "trl", "playwright"}  # extras, imported only where they are used
    mapping = md.packages_distributions()
    imported = set()
    for path in (ROOT / "quarklab").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                imported |= {a.name.split(".")[0] for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported - set(sys.stdlib_module_names) - {"quarklab"} if m in mapping}
    missing = {m for m in third_party if not {d.lower() for d in mapping[m]} & declared} - optional
    assert not missing, f"imported by quarklab/ but not declared in pyproject.toml: {sorted(missing)}"
