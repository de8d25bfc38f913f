"""Fixtures shared by the client's tests: the fake Replicate API, a short clip and speech, a real
redis-server on 127.0.0.1 and the two job stores."""

import subprocess
import time

import pytest
import redis

from tests.cog_server import free_port
from tests.fake_replicate import FakeReplicate
from tests.media import small_clip, speech


@pytest.fixture
def fake():
    with FakeReplicate() as server:
        yield server


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 1 s clip (small: the fake API only re-encodes it) and 1.5 s of speech."""
    folder = tmp_path_factory.mktemp("client_media")
    return {"video": small_clip(folder / "talk.mp4", seconds=1.0, size="270:480"), "audio": speech(folder / "dub.wav", 1.5, start=1.0), "folder": folder}


def start_redis(folder, password: str | None = None) -> tuple[subprocess.Popen, str]:
    """A redis-server (installed by scripts/setup_env.sh) on a free port, no persistence, optionally
    with a password; returns it and its URL once it answers."""
    port = free_port()
    command = ["redis-server", "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", str(folder)]
    server = subprocess.Popen([*command, *(["--requirepass", password] if password else [])], stdout=subprocess.DEVNULL)
    url = f"redis://{f':{password}@' if password else ''}127.0.0.1:{port}/0"
    deadline = time.time() + 20
    while True:
        try:
            redis.Redis.from_url(url).ping()
            return server, url
        except redis.ConnectionError:
            if time.time() > deadline or server.poll() is not None:
                raise
            time.sleep(0.05)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    server, url = start_redis(tmp_path_factory.mktemp("redis"))
    yield url
    server.terminate()
    server.wait(timeout=10)


@pytest.fixture(params=["sqlite", "redis"])
def store_spec(request, tmp_path):
    """What LipSyncClient(store=...) is given: a SQLite path, or the URL of an emptied Redis."""
    if request.param == "sqlite":
        return str(tmp_path / "jobs.sqlite")
    url = request.getfixturevalue("redis_url")
    redis.Redis.from_url(url).flushdb()
    return url
