"""The job store's rules (latentsync.client.jobs) and both stores running them: a SQLite file and a
real redis-server on 127.0.0.1."""

import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time

import pytest

from latentsync.client import ClaimLost, Job, SQLiteStore, open_store
from latentsync.client.jobs import News, claimed, is_live, merged, news_of
from latentsync.config import REPO_ROOT
from latentsync.redaction import mask_credentials
from tests.client_fixtures import redis_url, start_redis, store_spec  # noqa: F401 (fixtures)

TTL = 0.5


# ---- the rules, on plain data --------------------------------------------------------------------


def test_live_jobs_are_kept_and_abandoned_ones_claimed_again():
    now = 1000.0
    assert not is_live(None, now, TTL)
    assert is_live(Job("k", status="succeeded"), now, TTL)
    assert not is_live(Job("k", status="failed"), now, TTL) and not is_live(Job("k", status="canceled"), now, TTL)
    assert is_live(Job("k", status="claimed", heartbeat_at=now - TTL / 2), now, TTL)
    assert not is_live(Job("k", status="claimed", heartbeat_at=now - TTL * 2), now, TTL)
    assert not is_live(Job("k", status="uncertain", heartbeat_at=0.0), now, TTL)  # let go: look for it at once
    assert is_live(Job("k", prediction_id="p", status="processing", heartbeat_at=0.0), now, TTL)  # Replicate holds it
    assert is_live(Job("k", prediction_id="k", status="queued", heartbeat_at=0.0), now, TTL)  # the self-hosted queue holds it
    assert is_live(Job("k", prediction_id="k", status="processing", server="gpu-1", heartbeat_at=now - 2 * TTL), now, TTL)


def test_a_take_over_keeps_what_the_previous_owner_started():
    fresh = claimed(None, "k", "t1", {"seed": 1}, 5.0)
    assert (fresh.status, fresh.owner, fresh.input, fresh.heartbeat_at) == ("claimed", "t1", {"seed": 1}, 5.0)
    taken = claimed(fresh, "k", "t2", {"seed": 2}, 9.0)
    assert (taken.status, taken.owner, taken.input) == ("uncertain", "t2", {"seed": 1})  # it may have been created
    again = claimed(Job("k", "p", "failed", {"seed": 1}, error="boom", server="gpu-1"), "k", "t3", {"seed": 1}, 9.0)
    assert (again.status, again.prediction_id, again.error, again.server) == ("claimed", None, None, None)


def test_news_only_moves_a_job_forward():
    job = Job("k", "p1", "starting")
    processing = merged(job, News("p1", "processing"), 1.0)
    done = merged(processing, News("p1", "succeeded", "https://out/x.mp4"), 2.0)
    assert done.status == "succeeded" and done.output_url == "https://out/x.mp4"
    assert merged(done, News("p1", "processing"), 3.0) is None  # late
    assert merged(done, News("p1", "succeeded", "https://out/x.mp4"), 3.0) is None  # repeated
    assert merged(done, News("p1", "failed", error="late"), 3.0) is None
    assert merged(job, News("p0", "succeeded"), 3.0) is None  # another prediction's
    assert news_of({"id": "p", "status": "succeeded", "output": {"video": "https://v", "report": {}}}).output_url == "https://v"


# ---- the stores ----------------------------------------------------------------------------------


def test_one_claim_at_a_time_and_a_stale_owner_is_fenced_off(store_spec):
    store = open_store(store_spec, claim_ttl_s=TTL)
    job, won = store.claim("key", "first", {"seed": 1})
    assert won and job.owner == "first" and store.get("key").input == {"seed": 1}
    job, won = store.claim("key", "second")
    assert not won and job.status == "claimed"  # its owner is creating it: wait for them
    time.sleep(TTL * 1.5)  # the first owner stopped refreshing
    job, won = store.claim("key", "second", {"seed": 2})
    assert won and job.status == "uncertain" and job.input == {"seed": 1}  # look for what the first one made
    assert not store.heartbeat("key", "first")
    with pytest.raises(ClaimLost):
        store.update("key", "first", status="failed", error="too late")
    with pytest.raises(ClaimLost):
        store.record("key", "first", News("p-first", "starting"))
    job = store.record("key", "second", News("p-second", "starting"))
    assert (job.prediction_id, job.status, job.owner) == ("p-second", "starting", "second")
    assert store.by_prediction("p-second") == store.get("key") and store.by_prediction("p-first") is None


def test_a_refreshed_claim_is_never_taken_over(store_spec):
    store = open_store(store_spec, claim_ttl_s=TTL)
    store.claim("key", "owner")
    with store.heartbeats("key", "owner"):
        for _ in range(6):  # three times the TTL
            time.sleep(TTL / 2)
            assert not store.claim("key", "intruder")[1]
    time.sleep(TTL * 1.5)
    assert store.claim("key", "intruder")[1]


def test_webhook_news_is_recorded_once_with_its_delivery(store_spec):
    store = open_store(store_spec, claim_ttl_s=TTL)
    store.claim("key", "owner")
    # the webhook of a prediction whose create's answer has not been recorded yet is kept...
    assert store.receive(News("p1", "succeeded", "https://out/1.mp4"), webhook_id="msg_1") == "recorded"
    assert store.receive(News("p1", "succeeded", "https://out/1.mp4"), webhook_id="msg_1") == "duplicate"
    # ...and applied when it is: the create's "starting" does not win over it
    job = store.record("key", "owner", News("p1", "starting"))
    assert (job.status, job.output_url) == ("succeeded", "https://out/1.mp4")
    assert store.receive(News("p1", "processing"), webhook_id="msg_2") == "duplicate"  # late, changes nothing
    assert store.get("key").status == "succeeded"
    store.update("key", "owner", status="failed")
    store.claim("key", "retry")
    store.record("key", "retry", News("p2", "processing"))
    assert store.receive(News("p1", "succeeded", "https://out/old.mp4"), webhook_id="msg_3") == "stale"
    assert store.receive(News("p2", "succeeded", "https://out/2.mp4"), webhook_id="msg_4") == "updated"
    assert store.get("key").output_url == "https://out/2.mp4"


def test_a_workers_news_is_fenced_by_its_attempt(store_spec):
    store = open_store(store_spec, claim_ttl_s=TTL)
    store.claim("key", "owner")
    store.update("key", "owner", prediction_id="key", status="starting", server="gpu-1", attempt="a1", attempts=1, entry="1-0")
    assert store.receive(News("key", "processing"), attempt="a1") == "updated"
    store.update("key", "owner", status="queued", server=None, attempt=None)  # gpu-1 was lost: queued again
    store.update("key", "owner", status="starting", server="gpu-2", attempt="a2", attempts=2)
    assert store.receive(News("key", "succeeded", "s3://b/outputs/late.mp4"), attempt="a1") == "stale"
    assert store.receive(News("key", "succeeded", "s3://b/outputs/out.mp4"), attempt="a2") == "updated"
    assert store.receive(News("key", "succeeded", "s3://b/outputs/out.mp4"), attempt="a2") == "duplicate"  # a repeated report
    assert store.receive(News("unknown", "succeeded"), attempt="a9") == "stale"
    job = store.get("key")
    assert (job.output_url, job.server, job.attempts, job.entry) == ("s3://b/outputs/out.mp4", "gpu-2", 2, "1-0")


def test_concurrent_claims_from_threads_elect_one_owner(store_spec):
    stores = [open_store(store_spec) for _ in range(8)]
    outcomes = []
    threads = [threading.Thread(target=lambda s=s, i=i: outcomes.append(s.claim("key", f"t{i}")[1])) for i, s in enumerate(stores)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcomes) == [False] * 7 + [True]


def test_uploads_are_remembered_by_content(store_spec):
    store = open_store(store_spec)
    store.remember_upload("abc", "https://files.example/abc")
    assert store.upload_url("abc", max_age_s=60) == "https://files.example/abc"
    assert store.upload_url("abc", max_age_s=-1) is None and store.upload_url("other", 60) is None


def test_the_sqlite_store_is_private_to_its_owner(tmp_path):
    old_umask = os.umask(0o022)
    try:
        store = SQLiteStore(tmp_path / "new" / "jobs.sqlite")
        store.claim("key", "owner")
        files = sorted((tmp_path / "new").iterdir())
        assert [f.name for f in files] == ["jobs.sqlite", "jobs.sqlite-shm", "jobs.sqlite-wal"]
        assert {oct(stat.S_IMODE(f.stat().st_mode)) for f in files} == {"0o600"}
        assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o700
        # a store an older version made world-readable is tightened when opened
        old = tmp_path / "old.sqlite"
        sqlite3.connect(old).execute("CREATE TABLE t (x)").connection.close()
        old.chmod(0o644)
        SQLiteStore(old)
        assert stat.S_IMODE(old.stat().st_mode) == 0o600
    finally:
        os.umask(old_umask)


def test_a_store_of_the_first_version_keeps_its_jobs(tmp_path):
    path = tmp_path / "v1.sqlite"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE jobs (key TEXT PRIMARY KEY, prediction_id TEXT, status TEXT NOT NULL, input TEXT, output_url TEXT,"
        " output_path TEXT, error TEXT, claimed_at REAL, updated_at REAL NOT NULL);"
        "INSERT INTO jobs VALUES ('key', 'p1', 'succeeded', '{\"seed\": 1}', 'https://out/1.mp4', NULL, NULL, 1.0, 2.0);"
    )
    db.commit()
    db.close()
    store = SQLiteStore(path)
    job = store.get("key")
    assert (job.status, job.input, job.output_url, job.owner, job.attempts) == ("succeeded", {"seed": 1}, "https://out/1.mp4", None, 0)
    assert store.claim("key", "t")[0] == job  # a finished job is answered from the store


def test_a_redis_password_never_shows(tmp_path):
    assert mask_credentials("redis://:hunter2@127.0.0.1:6379/0") == "redis://***@127.0.0.1:6379/0"
    assert mask_credentials("rediss://user:hunter2@cache.example:6380/1") == "rediss://***@cache.example:6380/1"
    assert mask_credentials("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    server, url = start_redis(tmp_path, password="hunter2")
    try:
        assert "hunter2" not in str(open_store(url))
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REPLICATE_API_TOKEN": "r8_test"}
        status = subprocess.run([sys.executable, "-m", "latentsync.client", "--store", url, "status", "no-such-job"], capture_output=True, text=True, env=env)
        assert status.returncode == 1 and "no job 'no-such-job'" in status.stderr
        assert "hunter2" not in status.stderr + status.stdout and "redis://***@127.0.0.1" in status.stderr
        wrong = subprocess.run([sys.executable, "-m", "latentsync.client", "--store", url.replace("hunter2", "wrong-pass"), "status", "x"], capture_output=True, text=True, env=env)
        assert wrong.returncode == 1 and "wrong-pass" not in wrong.stderr + wrong.stdout
    finally:
        server.terminate()
        server.wait(timeout=10)


def test_a_success_with_failed_windows_is_handed_over_but_never_reused(store_spec):
    """Windows that ran out of GPU memory kept their original frames: the result is the user's,
    but a repeat of the job runs it again rather than serving it (from the metrics or the report)."""
    store = open_store(store_spec, claim_ttl_s=TTL)
    for key, prediction in (
        ("metrics", {"status": "succeeded", "output": "https://out/x.mp4", "metrics": {"failed_windows": 2}}),
        ("report", {"status": "succeeded", "output": {"video": "https://out/x.mp4", "report": {"failed_windows": 1}}}),
    ):
        store.claim(key, "owner", {"video": "v"})
        store.update(key, "owner", prediction_id=f"p-{key}", status="processing")
        done = store.record(key, "owner", news_of({"id": f"p-{key}", **prediction}))
        assert done.status == "succeeded" and done.output_url == "https://out/x.mp4" and done.degraded and store.get(key).degraded
        _, fresh = store.claim(key, "another", {"video": "v"})
        assert fresh  # claimed again: the degraded result is not reused
    clean = news_of({"id": "p", "status": "succeeded", "output": "https://out/x.mp4", "metrics": {"failed_windows": 0}})
    assert not clean.degraded
