"""`accelerate launch` as the tests start it: a shipped config, CPU processes over gloo, one thread each, and a free
port of its own, so that launches in two pytest-xdist workers never meet on accelerate's default port. Not a test
module: imported by the test files that launch."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "accelerate"
ENV = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_head(config: str, processes: int = 2) -> list[str]:
    """``python -m accelerate.commands.launch --config_file configs/accelerate/<config>.yaml`` for ``processes``."""
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml"),
            "--num_processes", str(processes), "--main_process_port", str(free_port())]
