"""What a self-hosted worker exposes, and how it is protected (issue 23, item 2, for the queue
that replaced the fleet's exchange): its file hand-off with Cog listens on 127.0.0.1 only, behind a
random secret, with bounded reads, time-outs and a cap on connections; it drives only a Cog on the
loopback; it posts webhooks signed so `webhook_app` takes them, and never to its own Cog; a queue
URL with a password is refused on the command line."""

import base64
import os
import socket
import time

import httpx
import pytest

from latentsync.client import LipSyncClient, SQLiteStore, webhook_app
from latentsync.client.__main__ import main as client_main
from latentsync.worker.__main__ import main as worker_main
from latentsync.worker import loopback
from latentsync.worker.cog import LocalCog
from latentsync.worker.loopback import LoopbackFiles
from tests.client_fixtures import redis_url  # noqa: F401  (fixtures)
from tests.queue_fixtures import queue_url, storage_url, wait_for, workers  # noqa: F401
from tests.test_webhooks import serve

SECRET = "whsec_" + base64.b64encode(os.urandom(24)).decode()


@pytest.fixture
def files(tmp_path):
    handoff = LoopbackFiles(tmp_path / "handoff").start()
    yield handoff
    handoff.close()


def test_the_file_handoff_listens_on_the_loopback_behind_a_secret(files, tmp_path):
    assert files.httpd.server_address[0] == "127.0.0.1"
    (tmp_path / "in.mp4").write_bytes(b"input")
    url = files.offer(tmp_path / "in.mp4", "in.mp4")
    assert httpx.get(url).content == b"input"
    root = f"http://127.0.0.1:{files.port}"
    wrong = "0" * 32
    for method, path in [("GET", "/inputs/in.mp4"), ("GET", f"/{wrong}/inputs/in.mp4"), ("PUT", f"/{wrong}/outputs/o.mp4"), ("GET", f"/{files.secret}/../in.mp4")]:
        assert httpx.request(method, root + path, content=b"x" if method == "PUT" else None).status_code == 404
    stored = httpx.put(files.upload_url + "output.mp4", content=b"an output")
    assert stored.status_code == 201 and files.output_of(stored.headers["location"])[0].read_bytes() == b"an output"
    assert files.output_of(stored.headers["location"].replace(files.secret, wrong)) is None


def test_the_file_handoff_never_trusts_a_sent_length(files):
    for length, status in [("-1", 411), ("abc", 411), (str(loopback.MAX_OUTPUT_BYTES + 1), 413)]:
        response = _raw(files.port, f"PUT /{files.secret}/outputs/o.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n\r\n")
        assert response.split(b"\r\n")[0].split()[1] == str(status).encode()
    short = _raw(files.port, f"PUT /{files.secret}/outputs/o.mp4 HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nonly this", shut=True)
    assert short.split(b"\r\n")[0].split()[1] == b"400" and os.listdir(files.outputs) == []


def test_stalled_connections_are_dropped_and_capped(files, monkeypatch):
    monkeypatch.setattr(loopback._Handler, "timeout", 1.0)
    stalled = socket.create_connection(("127.0.0.1", files.port))
    stalled.sendall(b"PUT /" + files.secret.encode() + b"/outputs/o.mp4 HTTP/1.1\r\nHost:")  # half a header
    started = time.time()
    stalled.settimeout(10)
    assert stalled.recv(100) == b"" and time.time() - started < 5  # closed by the server after its time-out
    monkeypatch.setattr(loopback._Handler, "timeout", 30.0)
    held = [socket.create_connection(("127.0.0.1", files.port)) for _ in range(loopback.MAX_CONNECTIONS)]
    time.sleep(0.3)
    extra = socket.create_connection(("127.0.0.1", files.port))
    extra.settimeout(5)
    assert extra.recv(100) == b""  # over the cap: closed at once
    for connection in held + [extra, stalled]:
        connection.close()


def test_old_outputs_no_job_took_are_removed(files):
    location = httpx.put(files.upload_url + "output.mp4", content=b"orphan").headers["location"]
    path = files.output_of(location)[0]
    os.utime(path, (time.time() - 2 * loopback.LEFTOVER_AGE_S,) * 2)
    files.remove_leftovers()
    assert not path.exists()


def test_the_worker_drives_only_a_cog_on_the_loopback():
    with pytest.raises(ValueError, match="loopback"):
        LocalCog("http://10.0.0.5:5000")


def test_a_queue_url_with_a_password_is_refused_on_the_command_line(capsys):
    assert worker_main(["--queue", "redis://:hunter2@queue:6379/0", "--storage", "file:///tmp"]) == 1
    with pytest.raises(SystemExit):
        client_main(["status", "--queue", "redis://:hunter2@queue:6379/0"])
    output = capsys.readouterr()
    assert "LATENTSYNC_QUEUE_URL" in output.err and "hunter2" not in output.out + output.err


def test_webhooks_are_signed_for_webhook_app_and_never_sent_to_the_workers_own_ports(queue_url, storage_url, tmp_path, workers):  # noqa: F811
    receiver_store = SQLiteStore(tmp_path / "receiver.sqlite")
    url, server = serve(webhook_app(SECRET, receiver_store))
    worker = workers("gpu-a", webhook_secret=SECRET)
    (tmp_path / "talk.mp4").write_bytes(b"a video")
    (tmp_path / "dub.wav").write_bytes(b"an audio track")
    try:
        with LipSyncClient(queue=queue_url, storage=storage_url, output_dir=tmp_path / "out", poll_interval=0.05) as client:
            job = client.wait(client.submit(tmp_path / "talk.mp4", tmp_path / "dub.wav", webhook=url), timeout=30)
            # the receiver verified the signature and kept the news (its store did not know the job yet)
            early = wait_for(lambda: receiver_store._connect().execute("SELECT news FROM early_news").fetchone(), timeout=10, what="the webhook")
            assert f'"prediction_id": "{job.key}"' in early["news"] and '"status": "succeeded"' in early["news"]
            link = early["news"].split('"output_url": "')[1].split('"')[0]
            assert link.startswith("file://") and open(link[len("file://"):], "rb").read() == client.run(tmp_path / "talk.mp4", tmp_path / "dub.wav").path.read_bytes()
            for target in (worker.cog.url, worker.files.base, "http://169.254.169.254/latest"):
                assert worker.worker._refuse_webhook(target + "/hook") is not None
            assert worker.worker._refuse_webhook(url) is None
    finally:
        server.should_exit = True


def _raw(port: int, request: str, shut: bool = False) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as connection:
        connection.sendall(request.encode())
        if shut:
            connection.shutdown(socket.SHUT_WR)
        return connection.recv(4096)
