"""The self-hosted queue's rules against a real redis-server, with workers run in this process
against the Cog stand-in (tests/fake_cog.py) and a storage folder: a batch spread over workers,
a worker that stops renewing its lease, a job lost three times, bad inputs that fail once, the
client's cancel, a busy or dying Cog server, late news of a lost attempt, webhooks signed for
`handle_webhook`."""

import hashlib
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from latentsync.client import LipSyncClient
from latentsync.client.__main__ import describe_queue
from latentsync.config import REPO_ROOT
from latentsync.client.jobs import News
from latentsync.client.queue import JobQueue
from latentsync.worker.cog import CogError
from tests.fake_cog import NOT_A_VIDEO
from tests.client_fixtures import redis_url  # noqa: F401  (fixtures)
from tests.queue_fixtures import queue_url, storage_url, wait_for, workers  # noqa: F401


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "talk.mp4").write_bytes(b"a video")
    (tmp_path / "dub.wav").write_bytes(b"an audio track")
    return tmp_path / "talk.mp4", tmp_path / "dub.wav"


def client_of(queue_url, storage_url, tmp_path, **options):  # noqa: F811
    return LipSyncClient(queue=queue_url, storage=storage_url, output_dir=tmp_path / "outputs", poll_interval=0.05, max_poll_interval=0.2, **options)


def expected_output(cog, key: str, number: int, video: bytes, audio: bytes) -> bytes:
    digests = [hashlib.sha256(data).hexdigest()[:12] for data in (video, audio)]
    return f"output {number} of {key} from {digests[0]} and {digests[1]}".encode()


def held_job(client, worker, inputs, seed: int):
    """A job running on `worker`, whose prediction does not finish until the test lets it."""
    worker.cog.hold.set()
    job = client.submit(*inputs, seed=seed)
    wait_for(lambda: worker.cog.running, what="the prediction to start")
    return job


def test_jobs_spread_over_workers_and_identical_ones_run_once(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    first, second = workers("gpu-a", run_seconds=0.5), workers("gpu-b", run_seconds=0.5)
    with client_of(queue_url, storage_url, tmp_path) as client:
        jobs = [client.submit(*inputs, seed=seed) for seed in (1, 2, 3, 4, 1)]
        assert jobs[0].status == "queued" and jobs[4].key == jobs[0].key and len({job.key for job in jobs}) == 4
        results = [client.run(*inputs, seed=seed) for seed in (1, 2, 3, 4)]
        assert sorted(first.cog.started + second.cog.started) == sorted(job.key for job in jobs[:4])  # each once
        assert first.cog.started and second.cog.started
        for result in results:
            cog = first.cog if result.job.server == "gpu-a" else second.cog
            number = cog.started.index(result.job.key)
            assert result.path.read_bytes() == expected_output(cog, result.job.key, number, b"a video", b"an audio track")
            assert result.job.output_url.startswith(storage_url + "/outputs/") and result.job.attempts == 1
        again = client.run(*inputs, seed=2)  # answered from the store: no new prediction
        assert again.path == results[1].path and len(first.cog.started + second.cog.started) == 4
        # the inputs went to the storage once, by content
        stored = sorted(p.name for p in (tmp_path / "storage" / "inputs").iterdir())
        assert stored == sorted(hashlib.sha256(p.read_bytes()).hexdigest() + p.suffix for p in inputs)
    overview = JobQueue(queue_url).overview()
    assert overview["depth"] == 0 and overview["in_flight"] == [] and set(overview["workers"]) == {"gpu-a", "gpu-b"}
    assert sum(w["done"] for w in overview["workers"].values()) == 4


def test_a_lost_attempt_is_taken_over_after_the_lease_and_its_late_news_changes_nothing(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    with client_of(queue_url, storage_url, tmp_path) as client:
        job = client.submit(*inputs, seed=5)
        queue = JobQueue(queue_url, lease_s=1.0)
        dead = queue.next("gpu-dead", block_s=1)  # a worker that takes the job, then dies
        assert queue.take(dead).status == "starting"
        queue.report(dead, News(job.key, "processing"))
        started = time.time()
        survivor = workers("gpu-b", lease_s=1.0)
        result = client.run(*inputs, seed=5, timeout=30)
        assert time.time() - started >= 0.9  # not before the lease ran out
        assert (result.job.server, result.job.attempts, result.job.status) == ("gpu-b", 2, "succeeded")
        assert survivor.cog.started == [job.key]
        # the dead attempt comes back: its renewal and its news are refused, the job stays as it is
        assert queue.renew(dead) == "lost"
        assert queue.report(dead, News(job.key, "succeeded", output_url=storage_url + "/outputs/" + "0" * 64 + ".mp4")) == "stale"
        assert queue.release(dead, "late") is None
        assert client.store.get(job.key).output_url == result.job.output_url
        assert queue.redis.xlen(queue.stream) == 0  # its entry was acknowledged and deleted


def test_a_job_lost_three_times_fails_with_the_reason(queue_url, storage_url, tmp_path, inputs):  # noqa: F811
    with client_of(queue_url, storage_url, tmp_path) as client:
        job = client.submit(*inputs, seed=6)
        queue = JobQueue(queue_url, lease_s=0.2)
        for attempt in range(1, 4):
            delivery = wait_for(lambda: queue.next(f"gpu-{attempt}", block_s=0.2), timeout=5)
            assert delivery.reclaimed == (attempt > 1)
            assert queue.take(delivery).attempts == attempt
        last = wait_for(lambda: queue.next("gpu-4", block_s=0.2), timeout=5)
        failed = queue.take(last)
        assert failed.status == "failed" and failed.error == "The job was lost 3 times (workers gone or stopped); last, worker gpu-3 stopped renewing its lease."
        assert client.wait(job, timeout=5).status == "failed"
        assert JobQueue(queue_url).overview()["failures"][0]["job"] == job.key
        assert queue.redis.xlen(queue.stream) == 0


def test_a_stopped_worker_puts_its_job_back_at_once(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    stopping = workers("gpu-a", lease_s=60.0)
    with client_of(queue_url, storage_url, tmp_path) as client:
        job = held_job(client, stopping, inputs, 7)
        stopped_at = time.time()
        stopping.worker.stop()  # what its SIGTERM handler does
        back = wait_for(lambda: (j := client.store.get(job.key)).status == "queued" and j, timeout=10)
        assert time.time() - stopped_at < 3 and stopping.cog.canceled == [job.key]
        assert (back.attempts, back.server, back.attempt) == (1, None, None)
        other = workers("gpu-b", lease_s=60.0)  # a long lease: it gets the new entry at once, not by a take-over
        result = client.run(*inputs, seed=7, timeout=30)
        assert (result.job.server, result.job.attempts) == ("gpu-b", 2) and other.cog.started == [job.key]


def test_bad_inputs_fail_once_without_retry(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    worker = workers("gpu-a")
    (tmp_path / "notes.mp4").write_bytes(NOT_A_VIDEO + b"\n")
    with client_of(queue_url, storage_url, tmp_path) as client:
        bad = client.wait(client.submit(tmp_path / "notes.mp4", inputs[1]), timeout=30)
        assert bad.status == "failed" and bad.attempts == 1
        assert bad.error.endswith("The video input is not a readable video file (Invalid data found when processing input).")
        # an input Cog's schema refuses (422): the client checks ranges first, so it is queued by hand here
        queue = JobQueue(queue_url)
        key, token = "f" * 64, "t"
        queue.store.claim(key, token)
        queue.enqueue(key, token, {"video": client.backend.input_ref(inputs[0]), "audio": client.backend.input_ref(inputs[1]), "guidance_scale": 9})
        refused = client.wait(client.store.get(key), timeout=30)
        assert refused.status == "failed" and refused.attempts == 1
        assert refused.error == "The model refused the input: guidance_scale: 9 is greater than the maximum of 3.0."
        assert worker.cog.started == [bad.key]  # the refused one never started; nothing ran twice


def test_the_client_cancels_a_running_job_on_its_worker(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    worker = workers("gpu-a", lease_s=0.8)
    with client_of(queue_url, storage_url, tmp_path) as client:
        job = held_job(client, worker, inputs, 8)
        assert client.cancel(job).status == "canceled"
        wait_for(lambda: worker.cog.canceled == [job.key], timeout=5, what="the cancel on the worker's Cog")
        wait_for(lambda: JobQueue(queue_url).redis.xlen("latentsync:queue") == 0, timeout=5)
        assert client.store.get(job.key).status == "canceled"
        worker.cog.hold.clear()
        assert client.run(*inputs, seed=9, timeout=30).job.server == "gpu-a"  # and the worker goes on


def test_a_busy_cog_is_waited_for_and_an_old_copy_is_not_adopted(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    worker = workers("gpu-a")
    with client_of(queue_url, storage_url, tmp_path) as client:
        key = client.job_key(*inputs, {"seed": 10})
        worker.cog.hold.set()
        # an old copy of this very job runs on the worker's Cog (its previous worker process died)
        old = threading.Thread(target=worker.cog.predict, args=(key, {"input": {"video": "http://127.0.0.1:9/v", "audio": "http://127.0.0.1:9/a"}}))
        old.start()
        job = client.submit(*inputs, seed=10)
        wait_for(lambda: worker.cog.canceled == [key], timeout=10, what="the old copy to be canceled")
        worker.cog.hold.clear()
        result = client.wait(job, timeout=30)
        assert result.status == "succeeded" and worker.cog.started == [key, key]
        path = client.run(*inputs, seed=10).path
        assert path.read_bytes().startswith(f"output 1 of {key}".encode())  # the new copy's output


def test_a_dying_cog_puts_the_job_back_and_stops_the_worker(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    dying = workers("gpu-a")
    with client_of(queue_url, storage_url, tmp_path) as client:
        job = held_job(client, dying, inputs, 11)
        dying.cog.stop()
        dying.thread.join(timeout=10)
        assert isinstance(dying.error, CogError)
        back = client.store.get(job.key)
        assert back.status == "queued" and back.attempts == 1
        workers("gpu-b")
        assert client.wait(back, timeout=30).server == "gpu-b"


def test_outputs_sent_inline_are_stored_too(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    workers("gpu-a", inline=True)  # a Cog server started without --upload-url (the worker's --cog-url)
    with client_of(queue_url, storage_url, tmp_path) as client:
        result = client.run(*inputs, seed=12, timeout=30)
    assert result.path.read_bytes().startswith(f"output 0 of {result.job.key}".encode())
    assert result.job.output_url == f"{storage_url}/outputs/{hashlib.sha256(result.path.read_bytes()).hexdigest()}.mp4"


def batch_command(queue_url, storage_url, jobs, *extra):  # noqa: F811
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "latentsync.client", "batch", str(jobs), "--queue", queue_url, "--storage", storage_url, *extra]
    return command, env


def write_rows(tmp_path, inputs, seeds) -> Path:
    jobs = tmp_path / "jobs.csv"
    lines = ["video,audio,output,seed"] + [f"{inputs[0]},{inputs[1]},{tmp_path / f'out{seed}.mp4'},{seed}" for seed in seeds]
    jobs.write_text("\n".join(lines) + "\n")
    return jobs


def test_jobs_outlive_a_client_killed_after_queueing_and_a_rerun_collects_them(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    jobs = write_rows(tmp_path, inputs, (31, 32, 33))
    command, env = batch_command(queue_url, storage_url, jobs)
    client = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    queue = JobQueue(queue_url)
    wait_for(lambda: queue.redis.xlen(queue.stream) == 3, timeout=60, what="the rows in the queue")
    client.kill()  # right after queueing: nobody waits for the jobs now
    client.wait(timeout=10)
    worker = workers("gpu-a")
    wait_for(lambda: queue.redis.xlen(queue.stream) == 0, timeout=30, what="the jobs to finish")
    assert len(worker.cog.started) == 3
    again = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "3 done, 0 failed, 0 skipped" in again.stdout, again.stdout + again.stderr
    assert len(worker.cog.started) == 3  # collected, not run again
    assert all((tmp_path / f"out{seed}.mp4").read_bytes().startswith(b"output ") for seed in (31, 32, 33))


def test_detach_queues_the_rows_and_a_rerun_collects_them(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    jobs = write_rows(tmp_path, inputs, (41, 42))
    command, env = batch_command(queue_url, storage_url, jobs)
    detached = subprocess.run([*command, "--detach"], env=env, capture_output=True, text=True, timeout=120)
    assert detached.returncode == 0 and "0 done, 0 failed, 0 skipped, 2 queued" in detached.stdout, detached.stdout + detached.stderr
    worker = workers("gpu-a")
    queue = JobQueue(queue_url)
    wait_for(lambda: queue.redis.xlen(queue.stream) == 0, timeout=30, what="the jobs to finish")
    status = subprocess.run([sys.executable, "-m", "latentsync.client", "status", "--queue", queue_url], env=env, capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "0 waiting, 0 in flight, 1 workers" in status.stdout and "worker gpu-a" in status.stdout and "2 done" in status.stdout
    collected = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert "2 done, 0 failed, 0 skipped" in collected.stdout and len(worker.cog.started) == 2


def test_a_worker_started_after_the_batch_began_takes_jobs(queue_url, storage_url, tmp_path, inputs, workers):  # noqa: F811
    first = workers("gpu-a", run_seconds=1.0)
    with client_of(queue_url, storage_url, tmp_path) as client:
        jobs = [client.submit(*inputs, seed=seed) for seed in range(50, 56)]
        wait_for(lambda: first.cog.running, what="the first job to start")
        late = workers("gpu-late", run_seconds=1.0)
        finished = [client.wait(job, timeout=60) for job in jobs]
    assert all(job.status == "succeeded" for job in finished)
    assert late.cog.started and {job.server for job in finished} == {"gpu-a", "gpu-late"}


def test_the_queue_status_shows_waiting_running_and_lost_jobs(queue_url, storage_url, tmp_path, inputs):  # noqa: F811
    with client_of(queue_url, storage_url, tmp_path) as client:
        for seed in (61, 62):
            client.submit(*inputs, seed=seed)
        queue = JobQueue(queue_url, lease_s=0.2)
        delivery = queue.next("gpu-x", block_s=1)
        queue.take(delivery)
        queue.beat("gpu-x", "running", delivery.key, done=3, failed=1)
        time.sleep(0.3)
        overview = queue.overview()
    assert overview["depth"] == 1 and [item["job"] for item in overview["in_flight"]] == [delivery.key]
    assert overview["in_flight"][0]["worker"] == "gpu-x" and overview["in_flight"][0]["lease_ran_out"]
    assert overview["workers"]["gpu-x"]["job"] == delivery.key and overview["workers"]["gpu-x"]["done"] == 3
    text = describe_queue(overview)
    assert text.startswith("1 waiting, 1 in flight, 1 workers") and "LEASE RAN OUT" in text
