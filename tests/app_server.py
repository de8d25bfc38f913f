"""The web app (`python -m latentsync.app`) as a real server on 127.0.0.1, with the tiny random
models served as a weights manifest from a local file server, as the Cog-server tests do."""

import contextlib
import json
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


def app_process(folder: Path, weights_url: str, port: int, version: str = "1.6", args=(), env=None, **popen) -> subprocess.Popen:
    """`python -m latentsync.app` on 127.0.0.1:`port` with the tiny models' manifest pointing at
    `weights_url`; its weights, uploads and data under `folder`; `args` added to its command
    line and `env` to its environment."""
    env = {
        **os.environ,
        "LATENTSYNC_WEIGHTS_MANIFEST": str(tiny_weights_manifest(folder, weights_url)),
        "LATENTSYNC_WEIGHTS_DIR": str(folder / "weights"),
        "GRADIO_TEMP_DIR": str(folder / "gradio"),
        FAULT_FILE_VARIABLE: str(folder / "fault"),
        **(env or {}),
    }
    command = [sys.executable, "-c", RUN_APP_WITH_FAULTS, "--host", "127.0.0.1", "--port", str(port), "--version", version, "--data-dir", str(folder / "data"), *args]
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, **popen)


@contextlib.contextmanager
def running_app(folder: Path, version: str = "1.6", args=(), env=None):
    """Yields the app's URL once it answers (its login page, when it has a login); its log is
    `folder`/app.log, its data `folder`/data."""
    with FileServer(folder / "files") as files:
        port = free_port()
        with open(folder / "app.log", "w") as log:
            process = app_process(folder, files.url, port, version, args, env, stdout=log, stderr=subprocess.STDOUT)
            url = f"http://127.0.0.1:{port}/"
            try:
                deadline = time.time() + 300
                while time.time() < deadline and process.poll() is None:
                    with contextlib.suppress(httpx.TransportError):
                        if httpx.get(url, timeout=5, follow_redirects=True).status_code == 200:
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


def private_endpoint(client, api_name: str) -> int:
    """The fn_index of one of the page's private events (`api_name` is its function's name),
    made callable by `client`: gradio_client declines them, but the server takes them from
    anyone who sends the request, so they are tested as an outside client would call them."""
    [index] = [d["id"] for d in client.config["dependencies"] if d.get("api_name") == api_name]
    client.endpoints[index].is_valid = True
    return index


def json_with_nan(obj, **options) -> str:
    """json.dumps as Python's json does by default, NaN and Infinity included: httpx (and so
    gradio_client) refuses to send them, other clients do not (set over httpx._content.json_dumps)."""
    return json.dumps(obj, **{**options, "allow_nan": True})
