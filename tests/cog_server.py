"""Cog's real HTTP server running predict.py, with tiny weights from a local file server."""

import base64
import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from latentsync.config import REPO_ROOT
from tests.http_fixtures import FileServer, tiny_weights_manifest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def data_uri(path: Path, mime: str = "application/octet-stream") -> str:
    return f"data:{mime};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


@contextlib.contextmanager
def running_cog_server(folder: Path, **env_extra):
    """Yields (httpx client, weights file server, folder) once /health-check says READY."""
    subprocess.run([sys.executable, "-m", "scripts.cog_schema"], cwd=REPO_ROOT, check=True, capture_output=True)
    with FileServer(folder / "files") as files:
        port = free_port()
        env = {
            **os.environ,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
            "PORT": str(port),
            "LATENTSYNC_WEIGHTS_MANIFEST": str(tiny_weights_manifest(folder, files.url)),
            "LATENTSYNC_WEIGHTS_DIR": str(folder / "weights"),
            "TMPDIR": str(folder / "tmp"),
            **env_extra,
        }
        (folder / "tmp").mkdir(exist_ok=True)
        with open(folder / "server.log", "w") as log:
            process = subprocess.Popen([sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
            client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=600)
            try:
                status, deadline = None, time.time() + 300
                while time.time() < deadline and status not in ("READY", "SETUP_FAILED"):
                    time.sleep(1)
                    try:
                        status = client.get("/health-check").json()["status"]
                    except httpx.TransportError:
                        pass
                assert status == "READY", (folder / "server.log").read_text()[-3000:]
                yield client, files, folder
            finally:
                process.terminate()
                process.wait(timeout=30)
