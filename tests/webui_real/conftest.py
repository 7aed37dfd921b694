"""Opt-in suite against a real AUTOMATIC1111 WebUI (v1.10.x) with this extension installed.

* ``WEBUI_URL=http://127.0.0.1:7861``: use a running WebUI (started with ``--api``).
* ``WEBUI_DIR=/path/to/stable-diffusion-webui``: start one for the session and stop it afterwards;
  ``WEBUI_PYTHON`` (default: ``WEBUI_DIR/venv/bin/python``), ``WEBUI_ARGS`` (extra launch.py flags, e.g.
  ``--skip-prepare-environment --use-cpu all --no-half --ckpt ...``) and ``WEBUI_PORT`` (7861) apply.
  The extension must be in ``WEBUI_DIR/extensions`` (a symlink to this checkout is fine);
  ``WEBUI_LINK_EXTENSION=1`` creates that symlink.

Without either variable every test here is skipped. Generations are small (the
suite must run on a CPU) and every request allows minutes.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = float(os.environ.get("WEBUI_TIMEOUT", "1800"))


def pytest_collection_modifyitems(config, items):
    if os.environ.get("WEBUI_URL") or os.environ.get("WEBUI_DIR"):
        return
    skip = pytest.mark.skip(reason="set WEBUI_URL or WEBUI_DIR to run the real-WebUI suite")
    for item in items:
        if "webui_real" in str(item.fspath):
            item.add_marker(skip)


def _wait_until_up(url: str, process: subprocess.Popen | None, log: Path | None) -> None:
    import requests

    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            tail = log.read_text(errors="replace")[-3000:] if log else ""
            pytest.fail(f"the WebUI exited with {process.returncode}:\n{tail}")
        try:
            if requests.get(url + "/sdapi/v1/sd-models", timeout=10).ok:
                return
        except requests.RequestException:
            pass
        time.sleep(2)
    pytest.fail(f"the WebUI at {url} did not answer within {TIMEOUT:.0f} s")


def _ensure_linked(webui_dir: Path) -> None:
    extensions = webui_dir / "extensions"
    for entry in extensions.iterdir() if extensions.is_dir() else ():
        if entry.resolve() == ROOT:
            return
    if os.environ.get("WEBUI_LINK_EXTENSION") == "1":
        (extensions / "sd-webui-dato").symlink_to(ROOT, target_is_directory=True)
        return
    pytest.fail(f"sd-webui-dato is not installed in {extensions}; link it "
                f"(ln -s {ROOT} {extensions}/sd-webui-dato) or set WEBUI_LINK_EXTENSION=1")


@pytest.fixture(scope="session")
def webui(tmp_path_factory):
    """Base URL of a WebUI with the extension; started (and stopped) here when ``WEBUI_DIR`` is set."""
    url = os.environ.get("WEBUI_URL")
    if url:
        _wait_until_up(url.rstrip("/"), None, None)
        yield url.rstrip("/")
        return
    webui_dir = Path(os.environ["WEBUI_DIR"]).resolve()
    _ensure_linked(webui_dir)
    port = os.environ.get("WEBUI_PORT", "7861")
    python = os.environ.get("WEBUI_PYTHON", str(webui_dir / "venv" / "bin" / "python"))
    args = ["--api", "--port", port, "--server-name", "127.0.0.1", *shlex.split(os.environ.get("WEBUI_ARGS", ""))]
    log = tmp_path_factory.mktemp("webui") / "webui.log"
    with open(log, "w") as out:
        process = subprocess.Popen([python, "launch.py", *args], cwd=webui_dir, stdout=out, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, process, log)
        yield url
    finally:
        try:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(process.pid, signal.SIGKILL)
        print(f"\nWebUI log: {log}")
