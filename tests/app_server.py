"""The web app (`python -m latentsync.app`) as a real server on 127.0.0.1, with the tiny random
models served as a weights manifest from a local file server, as the Cog-server tests do."""

import contextlib
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from latentsync.config import REPO_ROOT
from tests.cog_server import free_port
from tests.faults import FAULT_FILE_VARIABLE
from tests.http_fixtures import FileServer, tiny_weights_manifest


# `python -m latentsync.app`, with `tests.faults` installed: its U-Net raises a CUDA error while
# the file `folder`/fault exists.
RUN_APP_WITH_FAULTS = "import runpy, tests.faults; tests.faults.install(); runpy.run_module('latentsync.app', run_name='__main__', alter_sys=True)"


def app_process(folder: Path, weights_url: str, port: int, version: str = "1.6", **popen) -> subprocess.Popen:
    """`python -m latentsync.app` on 127.0.0.1:`port` with the tiny models' manifest pointing at
    `weights_url`; its weights, uploads and data under `folder`."""
    env = {
        **os.environ,
        "LATENTSYNC_WEIGHTS_MANIFEST": str(tiny_weights_manifest(folder, weights_url)),
        "LATENTSYNC_WEIGHTS_DIR": str(folder / "weights"),
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        FAULT_FILE_VARIABLE: str(folder / "fault"),
    }
    command = [sys.executable, "-c", RUN_APP_WITH_FAULTS, "--host", "127.0.0.1", "--port", str(port), "--version", version, "--data-dir", str(folder / "data")]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, **popen)


@contextlib.contextmanager
def running_app(folder: Path, version: str = "1.6"):
    """Yields the app's URL once its page answers; its log is `folder`/app.log, its data
    `folder`/data."""
    with FileServer(folder / "files") as files:
        port = free_port()
        with open(folder / "app.log", "w") as log:
            process = app_process(folder, files.url, port, version, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}/"
            try:
                deadline = time.time() + 300
                while time.time() < deadline and process.poll() is None:
                    with contextlib.suppress(httpx.TransportError):
                        if httpx.get(url, timeout=5).status_code == 200:
                            break
                    time.sleep(0.2)
                else:
                    raise AssertionError((folder / "app.log").read_text()[-3000:])
                yield url
            finally:
                process.terminate()
                process.wait(timeout=30)


@pytest.fixture(scope="session")
def app(tmp_path_factory):
    """(URL, folder) of one app for every test module of the session that asks for it (starting
    it takes a while)."""
    folder = tmp_path_factory.mktemp("app")
    with running_app(folder) as url:
        yield url, folder
