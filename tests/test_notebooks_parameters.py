"""quarklab.notebooks.parameters: checking notebook parameters and reading them from a command line."""

from __future__ import annotations

import subprocess
import sys

import pytest

import quarklab as ql
from quarklab.notebooks import check_parameters, parse_value


def test_check_parameters_names_the_bad_one():
    check_parameters(run_dir="runs/x", policy="auto", reference=None, num_quantiles=3, quantile_scope="global",
                     seed=1, device="cpu", top_p=1.0, temperature=0.7)
    for bad, message in [({"num_quantiles": 0}, r"num_quantiles must be an integer >= 1, got 0"),
                         ({"quantile_scope": "per-prompt"}, r"quantile_scope must be one of 'local', 'global'"),
                         ({"top_p": 0}, r"top_p must be a number in \(0, 1\], got 0"),
                         ({"seed": "zero"}, r"seed must be an integer >= 0, got 'zero'"),
                         ({"device": "gpu"}, r"device must be 'auto', 'cpu', 'mps', 'cuda' or 'cuda:N', got 'gpu'"),
                         ({"run_dir": ""}, r"run_dir must be a folder path"),
                         ({"num_quantile": 3}, r"'num_quantile' is neither run_dir nor a QuarkConfig field")]:
        with pytest.raises(ql.QuarkError, match=message):
            check_parameters(**bad)


def test_command_line_values_of_config_fields_are_read_by_the_field_type():
    assert parse_value("3", "num_quantiles") == 3 and parse_value("0.5", "top_p") == 0.5
    assert parse_value("local", "quantile_scope") == "local" and parse_value("null", "reference") is None
    assert parse_value("123", "policy") == "123"  # a folder named 123 stays text
    assert parse_value("[2, 3]", "ks") == [2, 3] and parse_value("train", "split") == "train"  # others: JSON or text
    assert parse_value("3", "num_prompts") == 3
    with pytest.raises(ql.QuarkError, match=r"^-p: num_quantiles must be an integer >= 1, got 'three'$"):
        parse_value("three", "num_quantiles")


def test_the_cli_rejects_a_bad_config_parameter_before_running_anything(tmp_path):
    for args in (["run", "--run-dir", str(tmp_path / "run"), "-p", "quantile_scope", "per-prompt"],
                 ["sweep", "--out", str(tmp_path / "sweep"), "-p", "num_quantiles", "3", "zero"]):
        proc = subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", *args], capture_output=True,
                              text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert proc.stderr.startswith("quarklab: error: -p: ")
        assert "quantile_scope must be one of 'local', 'global', got 'per-prompt'" in proc.stderr or \
            "num_quantiles must be an integer >= 1, got 'zero'" in proc.stderr
    assert not (tmp_path / "run").exists() and not (tmp_path / "sweep").exists()
