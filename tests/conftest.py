"""Shared fixtures: the real tiny world (built once, then cached) and the SFT model loaded once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach a hub: a hub id must fail at once, not after network time-outs.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

import quarklab as ql  # noqa: E402

REAL_TLDR = Path(__file__).resolve().parents[2] / "shared" / "data" / "tldr_sample.jsonl"


@pytest.fixture(scope="session")
def world() -> ql.World:
    """The default tiny world, from $QUARKLAB_HOME (built on first need, about 2 minutes)."""
    return ql.tiny_world(0, progress=False)


@pytest.fixture(scope="session")
def sft(world):
    """(model, tokenizer) of the tiny world's SFT GPT-J."""
    return ql.load_policy(world.policy), ql.load_tokenizer(world.policy)


@pytest.fixture(scope="session")
def real_tldr():
    """Real held-out Reddit TL;DR rows (../shared/data), for tests where real text matters."""
    if not REAL_TLDR.exists():
        pytest.skip("the real TL;DR sample (../shared/data/tldr_sample.jsonl) is not beside the project")
    return ql.load_prompts(REAL_TLDR)
