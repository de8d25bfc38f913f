"""The fleet's fault handling against small stand-ins for Cog's server (tests/fake_cog.py): a
restart, a busy server, a server cut off and back, an old copy that will not stop, a client that
stops mid-job, a server that never answers; and the exchange's refusals over real HTTP."""

import base64
import hashlib
import json
import re
import secrets
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from latentsync.client import LipSyncClient, SQLiteStore
from latentsync.client.exchange import MAX_WEBHOOK_BYTES, Exchange
from tests.cog_server import free_port
from tests.fake_cog import FakeCog

TOKEN = secrets.token_hex(16)


@pytest.fixture
def callback():
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture
def cogs(callback):
    servers = [FakeCog(TOKEN, f"{callback}/uploads/", run_seconds=0.6) for _ in range(2)]
    yield servers
    for server in servers:
        server.hold_webhooks.clear()
        server.stop()


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "talk.mp4").write_bytes(b"a video")
    (tmp_path / "dub.wav").write_bytes(b"an audio track")
    return tmp_path / "talk.mp4", tmp_path / "dub.wav"


def fleet(tmp_path, servers, callback, **options) -> LipSyncClient:
    settings = {"health_interval": 0.2, "lost_after_s": 1.0, "give_up_after_s": 4.0, "poll_interval": 0.05, **options}
    return LipSyncClient(servers=[s.url for s in servers], store=tmp_path / "jobs.sqlite", output_dir=tmp_path / "outputs",
                         callback_url=callback, fleet_secret=TOKEN, **settings)


def wait_for(condition, timeout=30.0):
    deadline = time.time() + timeout
    while not condition():
        assert time.time() < deadline, "timed out"
        time.sleep(0.05)


def running_on(client, key):
    job = client.store.get(key)
    return job.server if job and job.status == "processing" else None


def test_a_restarted_server_has_its_job_dispatched_again(tmp_path, cogs, callback, inputs):
    for cog in cogs:
        cog.run_seconds = 1.5
    with fleet(tmp_path, cogs, callback) as client:
        job = client.submit(*inputs, seed=1)
        wait_for(lambda: running_on(client, job.key))
        first = next(cog for cog in cogs if cog.url == running_on(client, job.key))
        first.restart()  # between two health checks: it answers, with a new boot and no predictions
        result = client.run(*inputs, seed=1)
    assert result.job.attempts == 2 and sum(cog.started.count(job.key) for cog in cogs) == 2
    final = next(cog for cog in cogs if cog.url == result.job.server)
    assert result.path.read_bytes() == f"output {final.started.index(job.key, 1 if final is first else 0)} of {job.key}".encode()


def test_a_busy_server_sends_the_job_elsewhere(tmp_path, cogs, callback, inputs):
    busy, free = cogs
    busy.hold_webhooks.set()
    assert busy.put("someone-else", {"input": {"video": f"{busy.url}/health-check", "audio": f"{busy.url}/health-check"}})[0] == 202
    with fleet(tmp_path, cogs, callback) as client:
        result = client.run(*inputs, seed=2)
    assert result.job.server == free.url and busy.started == ["someone-else"]


def test_a_server_cut_off_and_back_runs_the_job_once_more_and_its_old_copy_counts_for_nothing(tmp_path, cogs, callback, inputs):
    only = cogs[0]
    only.run_seconds = 1.0
    only.hold_webhooks.set()  # its first copy will not finish while it is cut off
    with fleet(tmp_path, [only], callback) as client:
        job = client.submit(*inputs, seed=3)
        wait_for(lambda: running_on(client, job.key))
        first_attempt = client.store.get(job.key).attempt
        only.stop()  # cut off: the copy keeps running there
        wait_for(lambda: client.store.get(job.key).status == "queued", timeout=10)  # lost after 1 s
        only.start()
        only.hold_webhooks.clear()
        result = client.wait(job, timeout=30)
        path = client.run(*inputs, seed=3).path
    assert result.status == "succeeded" and result.attempts == 2 and result.attempt != first_attempt
    assert only.started == [job.key, job.key]  # the old copy was canceled when it answered again
    assert path.read_bytes() == f"output 1 of {job.key}".encode()


def test_an_old_copy_that_will_not_stop_is_not_adopted(tmp_path, cogs, callback, inputs):
    only = cogs[0]
    only.slow_cancel, only.slots = True, 2  # a cancel is answered, but the copy runs on; a slot stays free
    only.hold_webhooks.set()
    with fleet(tmp_path, [only], callback) as client:
        job = client.submit(*inputs, seed=4)
        wait_for(lambda: running_on(client, job.key))
        only.stop()
        wait_for(lambda: client.store.get(job.key).status == "queued", timeout=10)
        only.start()  # answers again, READY, and a PUT returns its old copy: not adopted, canceled again
        wait_for(lambda: only.puts.count(job.key) >= 3)
        assert only.started == [job.key] and client.store.get(job.key).status in ("queued", "starting")  # adopted would be processing
        only.hold_webhooks.clear()  # the old copy finishes (its webhook is stale), then a new one runs
        result = client.run(*inputs, seed=4)
    assert only.started == [job.key, job.key] and result.job.attempts == 2
    assert result.path.read_bytes() == f"output 1 of {job.key}".encode()  # the new dispatch's, not the old copy's


def test_a_new_client_adopts_the_job_an_old_one_left_running(tmp_path, cogs, callback, inputs):
    server = cogs[0]
    server.hold_webhooks.set()
    old = fleet(tmp_path, [server], callback, claim_ttl_s=0.6)
    job = old.submit(*inputs, seed=5)
    wait_for(lambda: running_on(old, job.key))
    old.close()  # the process stops: no more heartbeats, nobody listening at the callback URL
    time.sleep(0.7)
    with fleet(tmp_path, [server], callback, claim_ttl_s=0.6) as new, ThreadPoolExecutor(max_workers=1) as pool:
        running = pool.submit(new.run, *inputs, seed=5)  # takes over, re-sends to the same server with the same token
        wait_for(lambda: server.puts.count(job.key) == 2)
        server.hold_webhooks.clear()
        result = running.result(timeout=30)
    assert server.started == [job.key] and result.job.attempts == 1
    assert result.path.read_bytes() == f"output 0 of {job.key}".encode()


def test_a_job_is_canceled_on_its_server(tmp_path, cogs, callback, inputs):
    server = cogs[0]
    server.hold_webhooks.set()
    with fleet(tmp_path, [server], callback) as client:
        job = client.submit(*inputs, seed=8)
        wait_for(lambda: running_on(client, job.key))
        assert client.cancel(job).status == "canceled"
        assert server.running == {}
        with pytest.raises(ValueError, match="submit without a webhook"):
            client.submit(*inputs, seed=9, webhook="https://app.example/hooks")
        assert client.store.get(client.job_key(*inputs, {"seed": 9})) is None


def test_a_server_that_never_answers_is_given_up(tmp_path, cogs, callback, inputs):
    dead, alive = cogs
    dead.stop()
    with fleet(tmp_path, cogs, callback, give_up_after_s=2.0) as client:
        results = [client.run(*inputs, seed=seed) for seed in (6, 7)]
        wait_for(lambda: client.backend.servers[dead.url].retired, timeout=15)
    assert {r.job.server for r in results} == {alive.url}


@pytest.fixture
def exchange(tmp_path, callback):
    """An exchange on its own, and one job of its store dispatched (key "a"*64, dispatch "b"*32)."""
    store = SQLiteStore(tmp_path / "jobs.sqlite")
    exchange = Exchange(tmp_path / "exchange", store, callback, secret=TOKEN)
    store.claim("a" * 64, "owner")
    store.update("a" * 64, "owner", prediction_id="a" * 64, status="starting", server="http://gpu", attempt="b" * 32)
    yield exchange
    exchange.close()


def test_the_exchange_refuses_what_is_not_its_own(tmp_path, inputs, callback, exchange):
    store, key, attempt = exchange.store, "a" * 64, "b" * 32
    hook = exchange.webhook_url(key, attempt)
    news = {"id": key, "status": "processing"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        refused = httpx.post(hook, json=news, headers=headers)
        assert refused.status_code == 401 and TOKEN not in refused.text
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert httpx.post(exchange.webhook_url(key, "c" * 32), json=news, headers=bearer).text.startswith("stale")
    assert httpx.post(hook, json={**news, "id": "d" * 64}, headers=bearer).status_code == 400
    assert httpx.post(hook, content=b"\xff\xfe", headers=bearer).status_code == 400
    assert httpx.post(hook, json=news, headers=bearer).text.startswith("updated")
    # an output sent inline (a server without --upload-url) is kept as an upload, not in the store
    inline = {"id": key, "status": "succeeded", "output": "data:video/mp4;base64," + base64.b64encode(b"inline video").decode()}
    assert httpx.post(hook, json=inline, headers=bearer).text.startswith("updated")
    output = store.get(key).output_url
    assert output.startswith(f"{callback}/uploads/") and httpx.get(output).content == b"inline video"
    assert exchange.upload_sha256(output) == output.split("/")[-2]
    # inputs: only registered files, by content
    url = exchange.input_url(inputs[0])
    assert httpx.get(url).content == b"a video" and url.endswith(".mp4")
    assert httpx.get(f"{callback}/files/{'e' * 64}.mp4").status_code == 404
    assert httpx.get(f"{callback}/uploads/../jobs.sqlite").status_code == 404
    upload = httpx.put(f"{callback}/uploads/..%2F..%2Fevil name;$(id).mp4", content=b"x")
    assert upload.status_code == 201 and re.fullmatch(rf"{callback}/uploads/[0-9a-f]{{64}}/[A-Za-z0-9_-][A-Za-z0-9._-]*", upload.headers["location"])
    assert sorted(p.name for p in (tmp_path / "exchange").iterdir()) == sorted([hashlib.sha256(b"x").hexdigest(), output.split("/")[-2]])


def test_a_success_whose_upload_was_lost_counts_as_a_failure(exchange):
    key = "a" * 64
    response = httpx.post(exchange.webhook_url(key, "b" * 32), json={"id": key, "status": "succeeded", "output": None}, headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 200
    job = exchange.store.get(key)
    assert job.status == "failed" and "output upload did not arrive" in job.error  # a re-run dispatches it again


def test_an_oversized_inline_output_fails_the_job_with_advice(callback, exchange):
    key, attempt = "a" * 64, "b" * 32
    body = json.dumps({"id": key, "status": "succeeded", "output": "data:video/mp4;base64," + "A" * (MAX_WEBHOOK_BYTES + 16)})
    response = httpx.post(exchange.webhook_url(key, attempt), content=body, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60)
    assert response.status_code == 413
    job = exchange.store.get(key)
    assert job.status == "failed" and f"--upload-url {callback}/uploads/" in job.error
