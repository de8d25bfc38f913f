"""Cog's real HTTP server running predict.py, with tiny weights from a local file server: one, or
several that tests can kill (a preempted GPU)."""

import base64
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
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


@dataclass
class CogServer:
    """One `python -m cog.server.http` process (in its own process group, like a container)."""

    url: str
    folder: Path
    process: subprocess.Popen
    client: httpx.Client

    def predictions(self) -> list[str]:
        """The ids of the predictions it started, from its log."""
        return predictions_in(self.folder / "server.log")

    def kill(self) -> None:
        """SIGKILL the server and its worker at once, as a preempted machine."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.kill()
        self.client.close()


def predictions_in(log: Path) -> list[str]:
    """The ids of the predictions a Cog server started, from its log (Cog logs JSON lines)."""
    ids = []
    for line in Path(log).read_text(errors="replace").splitlines():
        if line.startswith("{") and '"Starting prediction"' in line:
            ids.append(json.loads(line)["fields"]["prediction_id"])
    return ids


def cog_env(folder: Path, manifest: Path) -> dict:
    """The environment Cog's server runs predict.py in, with the weights of `manifest` kept in
    folder/weights (a worker that starts Cog passes it on)."""
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "COG_PREDICT_TYPE_STUB": "predict.py:Predictor",
        "LATENTSYNC_WEIGHTS_MANIFEST": str(manifest),
        "LATENTSYNC_WEIGHTS_DIR": str(folder / "weights"),
        "TMPDIR": str(folder / "tmp"),
    }


def _start(folder: Path, manifest: Path, args: list[str], env_extra: dict) -> CogServer:
    port = free_port()
    env = {**cog_env(folder, manifest), "PORT": str(port), **env_extra}
    with open(folder / "server.log", "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1", *args], cwd=REPO_ROOT, env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    return CogServer(url, folder, process, httpx.Client(base_url=url, timeout=600))


def _wait_ready(server: CogServer, deadline: float) -> None:
    status = None
    while time.time() < deadline and status not in ("READY", "SETUP_FAILED") and server.process.poll() is None:
        time.sleep(0.2)
        try:
            status = server.client.get("/health-check").json()["status"]
        except httpx.TransportError:
            pass
    assert status == "READY", (server.folder / "server.log").read_text()[-3000:]


def ready_again(client: httpx.Client, within_s: float = 15.0) -> bool:
    """The server says READY again within `within_s`: it reports BUSY for a moment after
    answering a prediction (most visibly one that failed at once) while it frees the slot."""
    deadline = time.time() + within_s
    while time.time() < deadline:
        if client.get("/health-check").json()["status"] == "READY":
            return True
        time.sleep(0.1)
    return False


@functools.cache
def write_schema() -> None:
    """.cog/openapi_schema.json for predict.py, once per test session (5 s: it imports the predictor)."""
    subprocess.run([sys.executable, "-m", "scripts.cog_schema"], cwd=REPO_ROOT, check=True, capture_output=True)


@contextlib.contextmanager
def running_cog_servers(folder: Path, count: int, upload_url: str | None = None, **env_extra):
    """Yields `count` CogServers, all READY, sharing one weights file server. With `upload_url`
    they upload outputs there (Cog's --upload-url); `env_extra` is added to their environment
    (e.g. WEBHOOK_AUTH_TOKEN, COG_MAX_CONCURRENCY)."""
    write_schema()
    with FileServer(folder / "files") as files:
        manifest = tiny_weights_manifest(folder, files.url)
        args = ["--upload-url", upload_url] if upload_url else []
        servers = [_start(folder / f"server{i}", manifest, args, env_extra) for i in range(count)]
        try:
            deadline = time.time() + 300
            for server in servers:
                _wait_ready(server, deadline)
            yield servers, files
        finally:
            for server in servers:
                server.stop()


@contextlib.contextmanager
def running_cog_server(folder: Path, **env_extra):
    """Yields (httpx client, weights file server, folder) once /health-check says READY."""
    with running_cog_servers(folder, 1, **env_extra) as ([server], files):
        yield server.client, files, server.folder
