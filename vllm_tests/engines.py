"""The vLLM engine processes alive under a process, as a researcher would count them (ps shows their titles)."""

from __future__ import annotations

import psutil

ENGINE_TITLE = "VLLM::"  # vLLM titles its engine core and worker processes VLLM::EngineCore, VLLM::Worker...


def engine_processes(root=None) -> list:
    """The live vLLM engine processes under ``root`` (default: this process), by the titles vLLM gives them."""
    root = root or psutil.Process()
    found = []
    for p in root.children(recursive=True):
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE and ENGINE_TITLE in " ".join(p.cmdline()):
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found
