"""Fixtures for the self-hosted queue's tests: a real redis-server emptied per test, a storage
folder, workers run in this process against the Cog stand-in (tests/fake_cog.py), and worker
processes (`python -m latentsync.worker`) that start the real Cog server with the tiny models."""

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import redis

from latentsync.client.queue import JobQueue
from latentsync.client.storage import open_storage
from latentsync.config import REPO_ROOT
from latentsync.worker.cog import LocalCog
from latentsync.worker.loopback import LoopbackFiles
from latentsync.worker.worker import Worker
from tests.client_fixtures import redis_url  # noqa: F401  (a fixture)
from tests.cog_server import cog_env, predictions_in  # noqa: F401  (predictions_in: for the tests)
from tests.fake_cog import FakeCog


@pytest.fixture
def queue_url(redis_url):  # noqa: F811
    redis.Redis.from_url(redis_url).flushdb()
    return redis_url


@pytest.fixture
def storage_url(tmp_path):
    (tmp_path / "storage").mkdir()
    return f"file://{tmp_path / 'storage'}"


def wait_for(condition, timeout: float = 30.0, what: str = "the condition"):
    deadline = time.time() + timeout
    while not (value := condition()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return value


class InProcessWorker:
    """A Worker with its own Cog stand-in and loopback files, run in a thread of this process."""

    def __init__(self, queue_url: str, storage_url: str, folder: Path, name: str, lease_s: float = 2.0, inline: bool = False, **settings):
        folder.mkdir(parents=True, exist_ok=True)
        self.queue = JobQueue(queue_url, lease_s=lease_s, max_attempts=settings.pop("max_attempts", 3))
        self.files = LoopbackFiles(folder).start()
        self.cog = FakeCog(upload_url=None if inline else self.files.upload_url, run_seconds=settings.pop("run_seconds", 0.3))
        self.worker = Worker(self.queue, open_storage(storage_url), LocalCog(self.cog.url), self.files, name, folder, idle_block_s=0.2, **settings)
        self.error = None
        self.thread = threading.Thread(target=self._run, daemon=True, name=f"worker-{name}")
        self.thread.start()

    def _run(self):
        try:
            self.worker.run(ready_timeout_s=10)
        except Exception as error:  # noqa: BLE001 (kept for the test to look at)
            self.error = error

    def stop(self):
        self.cog.hold.clear()
        self.worker.stop()
        self.thread.join(timeout=30)
        self.files.close()
        if self.cog.alive:
            self.cog.stop()


@pytest.fixture
def workers(queue_url, storage_url, tmp_path):
    """Start in-process workers with `workers(name, **settings)`; all are stopped after the test."""
    started = []

    def start(name: str, **settings) -> InProcessWorker:
        worker = InProcessWorker(queue_url, storage_url, tmp_path / "workers" / name, name, **settings)
        started.append(worker)
        return worker

    yield start
    for worker in started:
        worker.stop()


def worker_command(queue_url: str, storage_url: str, name: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "latentsync.worker", "--queue", queue_url, "--storage", storage_url, "--name", name, *extra]


@contextlib.contextmanager
def worker_process(folder: Path, command: list[str], env: dict, prefix: list[str] = ()):
    """A worker process (in its own process group, as in a container), its log in folder/worker.log."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "worker.log", "w") as log:
        process = subprocess.Popen([*prefix, *command], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        yield process
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def real_cog_env(folder: Path, manifest: Path, **extra) -> dict:
    """The environment of a worker that starts the real Cog server with predict.py and the tiny models."""
    return {**cog_env(folder, manifest), "PYTHONPATH": str(REPO_ROOT), **extra}
