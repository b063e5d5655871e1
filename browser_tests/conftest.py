"""Browser suite: a real JupyterLab server and a real Chromium driven by Playwright.

Kept out of ``make test`` (pyproject's testpaths is ``tests``); ``make test-browser`` runs it. Without
Playwright or Chromium the suite skips, unless QUARKLAB_BROWSER_REQUIRED=1 (what ``make test-browser``
sets): then it fails, so CI never passes by skipping.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

from jlab import NOTEBOOKS, ROOT  # noqa: E402
CHROMIUM = os.environ.get("QUARKLAB_CHROMIUM", "/usr/bin/chromium")
REQUIRED = os.environ.get("QUARKLAB_BROWSER_REQUIRED") == "1"


def _missing(why: str):
    if REQUIRED:
        pytest.fail(f"browser suite cannot run: {why} (run `make browser-deps`)", pytrace=False)
    pytest.skip(f"browser suite skipped: {why} (run `make browser-deps`)")


# JupyterLab's own settings for the test server: no autosave (a run must never write outputs into the
# committed notebooks), no news or update pop-ups over the page. Everything else stays at its default.
LAB_SETTINGS = {
    "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_env() -> dict:
    """The environment of a process the suite starts: offline, the project importable first."""
    path = [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", PYTHONPATH=os.pathsep.join(path))


class LabServer:
    """A JupyterLab server started as the README says (``.venv/bin/jupyter lab notebooks/`` from the
    project root), on 127.0.0.1, a free port and a random token."""

    def __init__(self, tmp: Path, log: Path):
        self.port, self.token = _free_port(), secrets.token_hex(16)
        self.url = f"http://127.0.0.1:{self.port}"
        settings = tmp / "user-settings"
        for name, value in LAB_SETTINGS.items():
            (settings / name).parent.mkdir(parents=True, exist_ok=True)
            (settings / name).write_text(json.dumps(value))
        env = _child_env()
        env.update({
            "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "workspaces"),
            "JUPYTER_CONFIG_DIR": str(tmp / "config"), "JUPYTER_RUNTIME_DIR": str(tmp / "runtime"),
        })
        jupyter = Path(sys.executable).with_name("jupyter")  # the venv's, as the README's .venv/bin/jupyter
        cmd = [str(jupyter), "lab", "notebooks/", "--no-browser", "--ip=127.0.0.1", f"--port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if os.geteuid() == 0:  # CI containers run as root; jupyter refuses that unless told
            cmd.append("--allow-root")
        self.log = log
        self._log_file = open(log, "w")
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=self._log_file, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def api(self, path: str, method: str = "GET", timeout: float = 10):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def wait_ready(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited with {self.proc.returncode}: see {self.log}\n"
                                   + self.log.read_text()[-3000:])
            try:
                self.api("/api/status", timeout=2)
                return
            except OSError:
                time.sleep(0.5)
        raise RuntimeError(f"jupyter lab did not answer on {self.url} within {timeout:.0f} s: see {self.log}")

    def sessions(self) -> list[dict]:
        return self.api("/api/sessions")

    def shutdown_kernels(self) -> None:
        for s in self.sessions():
            try:
                self.api(f"/api/sessions/{s['id']}", method="DELETE", timeout=30)
            except OSError:
                pass

    def stop(self) -> None:
        """Kernels first (through the server), then the server (its own process group, which it leads)."""
        if self.proc.poll() is None:
            try:
                self.shutdown_kernels()
                self.api("/api/shutdown", method="POST", timeout=10)
                self.proc.wait(timeout=20)
            except (OSError, subprocess.TimeoutExpired):
                pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self._log_file.close()


@pytest.fixture(scope="session")
def shots() -> Path:
    """The folder for this run's screenshots: runs/browser/<UTC timestamp>/ (or $QUARKLAB_BROWSER_SHOTS)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = Path(os.environ.get("QUARKLAB_BROWSER_SHOTS") or ROOT / "runs" / "browser" / stamp)
    folder.mkdir(parents=True, exist_ok=True)
    SHOTS.append(folder)
    return folder


SHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter):
    for folder in SHOTS:
        terminalreporter.write_line(f"browser screenshots: {folder}")


@pytest.fixture(scope="session")
def notebooks_untouched():
    """The committed notebooks, byte for byte: put back at the end whatever a test saved over them, and
    anything a notebook wrote under notebooks/ (beside the notebooks) removed, when it was not there before."""
    before = {p: p.read_bytes() for p in NOTEBOOKS.glob("*.ipynb")}
    existed = {p for p in NOTEBOOKS.iterdir()}
    yield {"notebooks": before, "existed": existed}
    for p, data in before.items():
        if p.read_bytes() != data:
            p.write_bytes(data)
    for p in NOTEBOOKS.iterdir():
        if p not in existed:
            shutil.rmtree(p) if p.is_dir() else p.unlink()


@pytest.fixture(scope="session")
def lab(browser, tmp_path_factory, shots, notebooks_untouched):
    """A JupyterLab server for the whole session; kernels and server stopped at the end."""
    server = LabServer(tmp_path_factory.mktemp("jupyter"), shots / "jupyterlab.log")
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def demo_run() -> Path:
    """The project's runs/demo, which notebook 02 as shipped reopens (and 03, 04 read). When it holds no
    checkpoint yet (a clean clone), train it once as `make demo` does, but only notebook 02
    (`quarklab notebooks run --run-dir runs/demo --only 02_training_iterations.ipynb`, a few minutes):
    the browser tests then time the notebooks as a user who ran `make demo` meets them."""
    from quarklab.runs import latest_checkpoint

    run_dir = ROOT / "runs" / "demo"
    if run_dir.is_dir() and latest_checkpoint(run_dir) is not None:
        return run_dir
    env = _child_env()
    start = time.monotonic()
    subprocess.run([sys.executable, "-m", "quarklab.cli", "notebooks", "run", "--run-dir", "runs/demo",
                    "--only", "02_training_iterations.ipynb"], cwd=ROOT, env=env, check=True)
    sys.stderr.write(f"\nruns/demo trained for the browser tests in {time.monotonic() - start:.0f} s\n")
    return run_dir


@pytest.fixture(scope="session")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _missing("the playwright package is not installed")
    if not Path(CHROMIUM).exists():
        _missing(f"no Chromium at {CHROMIUM} (Debian: apt-get install chromium; or set QUARKLAB_CHROMIUM)")
    with sync_playwright() as p:
        # Playwright's own browser download is unreachable here: Debian's Chromium, headless
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()
