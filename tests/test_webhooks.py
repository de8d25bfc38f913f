"""Replicate's webhooks into the job store: the ASGI app under a real uvicorn on 127.0.0.1, signed
deliveries from the fake Replicate API, and the serve-webhooks command."""

import json
import logging
import os
import sqlite3
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from latentsync.client import LipSyncClient, SQLiteStore, handle_webhook, open_store, webhook_app
from latentsync.client.jobs import News
from latentsync.config import REPO_ROOT
from tests.client_fixtures import fake, media, redis_url, store_spec  # noqa: F401 (fixtures)
from tests.cog_server import free_port
from tests.fake_replicate import sign


def serve(app):
    """Run an ASGI app under uvicorn in a thread; returns (url, server)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}/hooks", server


@pytest.fixture
def webhook_server(fake, store_spec):
    store = open_store(store_spec)
    url, server = serve(webhook_app(fake.secret, store))
    yield url, store
    server.should_exit = True


def client_for(fake, tmp_path, store) -> LipSyncClient:
    return LipSyncClient(api_token="r8_test", base_url=fake.url, model="owner/model", store=store, output_dir=tmp_path / "outputs", poll_interval=0.05, backoff=0.05)


def signed_headers(secret: str, body: str, webhook_id: str = "msg_1") -> dict:
    timestamp = int(time.time())
    return {"webhook-id": webhook_id, "webhook-timestamp": str(timestamp), "webhook-signature": sign(secret, webhook_id, timestamp, body), "content-type": "application/json"}


def test_a_signed_webhook_updates_the_store(fake, tmp_path, media, webhook_server):
    url, store = webhook_server
    client = client_for(fake, tmp_path, store)
    assert client.webhook_secret() == fake.secret
    job = client.submit(media["video"], media["audio"], webhook=url)
    deadline = time.time() + 30
    while store.get(job.key).status != "succeeded" and time.time() < deadline:
        time.sleep(0.1)
    updated = store.get(job.key)
    assert updated.status == "succeeded" and updated.output_url.startswith(fake.url)
    assert [r.status_code for r in fake.deliveries] == [200]
    assert fake.creates[0]["_webhook"] == url


def test_bad_webhooks_are_rejected_and_repeats_change_nothing(fake, tmp_path, media, webhook_server):
    url, store = webhook_server
    client = client_for(fake, tmp_path, store)
    fake.run_seconds = 30.0
    job = client.submit(media["video"], media["audio"])
    forged = {"id": job.prediction_id, "status": "succeeded", "output": "https://evil.example/x.mp4"}
    assert fake.deliver(url, forged, secret="whsec_" + "QUJD" * 8).status_code == 401  # wrong secret
    assert fake.deliver(url, forged, timestamp=int(time.time()) - 600).status_code == 401  # stale
    legit = fake.deliver(url, {"id": job.prediction_id, "status": "processing", "output": None}, webhook_id="msg_1")
    assert legit.status_code == 200  # a genuine delivery is accepted
    headers = {k: v for k, v in legit.request.headers.items() if k.lower() != "content-length"}
    assert httpx.post(url, content=json.dumps(forged), headers=headers).status_code == 401  # its signature, another body
    replay = httpx.post(url, content=legit.request.content, headers=headers)
    assert replay.status_code == 200 and replay.text.startswith("duplicate")  # 2xx, so the sender stops; nothing changes
    assert store.get(job.key).status == "processing" and store.get(job.key).output_url is None


def test_a_malformed_secret_is_refused_at_start_and_never_echoed(caplog, tmp_path):
    """Before: replicate's validate raised 'Invalid secret key format: <the secret>' and the
    handler answered it as the response body."""
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    for secret in ("whsec_c2VjcmV0_with_underscore", "whsec_not*base64", "sk_live_abcdef", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError) as refused:
            webhook_app(secret, store)
        assert secret not in str(refused.value) and "whsec_ followed by base64" in str(refused.value)
        body = json.dumps({"id": "p1", "status": "succeeded"})
        with caplog.at_level(logging.DEBUG):
            status, message = handle_webhook(signed_headers("whsec_" + "QUJD" * 8, body), body, secret, store)
        assert (status, message) == (401, "rejected: invalid signature")
        assert secret not in caplog.text
    good = "whsec_" + "QUJD" * 8
    body = json.dumps({"id": "p1", "status": "succeeded"})
    bad_signature = {**signed_headers(good, body), "webhook-signature": "v1,@@not-base64@@"}
    assert handle_webhook(bad_signature, body, good, store) == (401, "rejected: invalid signature")


def test_oversized_and_non_utf8_bodies_are_refused(fake, webhook_server):
    """Before: any size was read into memory, and a non-UTF-8 body raised (500 and a traceback)."""
    url, store = webhook_server
    big = json.dumps({"id": "p1", "status": "succeeded", "logs": "x" * (2 * 1024 * 1024)})
    assert httpx.post(url, content=big, headers=signed_headers(fake.secret, big)).status_code == 413
    chunks = (b"x" * 65536 for _ in range(40))  # 2.5 MB without a Content-Length
    response = httpx.post(url, content=chunks, headers=signed_headers(fake.secret, "x"))
    assert response.status_code == 413
    raw = b'{"id": "p1", "status": "succeeded", "note": "\xff\xfe"}'
    response = httpx.post(url, content=raw, headers=signed_headers(fake.secret, raw.decode("latin-1")))
    assert (response.status_code, response.text) == (400, "rejected: the body is not UTF-8 text")
    unsigned = httpx.post(url, content=big)
    assert unsigned.status_code == 401  # refused on its headers, before its body is read


def test_a_delivery_the_store_could_not_take_is_taken_when_retried(fake, tmp_path):
    """Before: the id was marked seen before the update; a failed update answered 500, and the
    retry got 409 forever while the job stayed unfinished."""
    path = tmp_path / "jobs.sqlite"
    store = SQLiteStore(path, busy_timeout_s=0.2)
    store.claim("key", "owner")
    store.record("key", "owner", News("p1", "processing"))
    url, server = serve(webhook_app(fake.secret, store))
    try:
        payload = {"id": "p1", "status": "succeeded", "output": "https://out.example/1.mp4"}
        blocker = sqlite3.connect(path, isolation_level=None)
        blocker.execute("BEGIN EXCLUSIVE")  # another process holds the store
        busy = fake.deliver(url, payload, webhook_id="msg_7")
        assert busy.status_code == 503 and store.get("key").status == "processing"
        blocker.execute("ROLLBACK")
        retried = fake.deliver(url, payload, webhook_id="msg_7")
        assert retried.status_code == 200 and retried.text.startswith("updated")
        assert store.get("key").status == "succeeded" and store.get("key").output_url == "https://out.example/1.mp4"
        assert fake.deliver(url, payload, webhook_id="msg_7").text.startswith("duplicate")
        # news of a prediction whose create has not been recorded yet is kept, not dropped
        store.claim("other", "owner")
        early = fake.deliver(url, {"id": "p2", "status": "succeeded", "output": "https://out.example/2.mp4"}, webhook_id="msg_8")
        assert early.status_code == 200 and early.text.startswith("recorded")
        assert store.record("other", "owner", News("p2", "starting")).status == "succeeded"
    finally:
        server.should_exit = True


def test_serve_webhooks_takes_its_secret_from_the_environment_or_a_file(fake, tmp_path):
    """Before: the secret was given as --secret, visible to every user in the process list."""
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REPLICATE_API_TOKEN": "r8_test", "LATENTSYNC_WEBHOOK_SECRET": fake.secret}
    store = tmp_path / "jobs.sqlite"
    common = [sys.executable, "-m", "latentsync.client", "--store", str(store), "--base-url", "http://127.0.0.1:1"]
    refused = subprocess.run([*common, "serve-webhooks", "--secret", fake.secret], capture_output=True, text=True, env=env)
    assert refused.returncode == 2 and "--secret is not accepted" in refused.stderr and fake.secret not in refused.stderr
    secret_file = tmp_path / "secret"
    secret_file.write_text(fake.secret + "\n")
    for extra, environment in (([], env), (["--secret-file", str(secret_file)], {k: v for k, v in env.items() if k != "LATENTSYNC_WEBHOOK_SECRET"})):
        port = free_port()
        process = subprocess.Popen([*common, "serve-webhooks", "--port", str(port), *extra], env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{port}/"
            deadline = time.time() + 30
            while True:
                try:
                    response = fake.deliver(url, {"id": "p1", "status": "succeeded", "output": None})
                    break
                except httpx.TransportError:
                    assert time.time() < deadline and process.poll() is None
                    time.sleep(0.2)
            assert response.status_code == 200 and response.text.startswith("recorded")  # accepted: the secret was right
            assert fake.secret not in open(f"/proc/{process.pid}/cmdline").read()
        finally:
            process.terminate()
            output = process.communicate(timeout=10)[0]
        assert fake.secret not in output
