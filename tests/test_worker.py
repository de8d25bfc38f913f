"""GPU workers end to end: `python -m latentsync.worker` processes that start the real Cog server
running predict.py with the tiny random models on 127.0.0.1, a real redis-server, a storage folder,
and the client's batch command: a batch over two workers, a bad row; and (slow) a worker killed
with SIGKILL mid-prediction, one stopped with SIGTERM, one in a network namespace that reaches only
Redis and the storage (S3 emulator)."""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import psutil
import pytest
import redis

from latentsync.client.jobs import News
from latentsync.client.queue import JobQueue
from latentsync.config import REPO_ROOT
from latentsync.media.probe import probe
from tests.client_fixtures import start_redis
from tests.cog_server import predictions_in, write_schema
from tests.http_fixtures import FileServer, tiny_weights_manifest
from tests.media import small_clip, speech
from tests.queue_fixtures import real_cog_env, wait_for, worker_command, worker_process


@pytest.fixture(scope="module")
def place(tmp_path_factory):
    """A redis-server, a storage folder, the tiny weights on a file server, and media."""
    folder = tmp_path_factory.mktemp("gpu_workers")
    write_schema()
    server, url = start_redis(folder)
    (folder / "storage").mkdir()
    notes = folder / "notes.mp4"
    notes.write_text("definitely not a video\n" * 20)
    media = {"video": small_clip(folder / "talk.mp4", seconds=0.64), "audio": speech(folder / "dub.wav", 0.64, start=1.0), "notes": notes,
             "long_video": small_clip(folder / "long.mp4", seconds=3.0), "long_audio": speech(folder / "long.wav", 3.0, start=1.0)}
    with FileServer(folder / "files") as files:
        manifest = tiny_weights_manifest(folder, files.url)
        yield {"folder": folder, "queue": url, "storage": f"file://{folder / 'storage'}", "manifest": manifest, "media": media}
    server.terminate()
    server.wait(timeout=10)


def start_worker(place, name: str, *extra: str, prefix=()):
    folder = place["folder"] / name
    env = real_cog_env(folder, place["manifest"])
    return worker_process(folder, worker_command(place["queue"], place["storage"], name, *extra), env, prefix)


def ready(place, *names: str) -> None:
    queue = JobQueue(place["queue"])
    wait_for(lambda: all(queue.overview()["workers"].get(n, {}).get("state") == "idle" for n in names), timeout=300, what=f"workers {names} to be ready")


def batch(place, jobs, *extra: str):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    command = [sys.executable, "-m", "latentsync.client", "batch", str(jobs), "--queue", place["queue"], "--storage", place["storage"], *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def write_jobs(path, rows: list[dict]):
    columns = ["video", "audio", "output", *sorted({name for row in rows for name in row} - {"video", "audio", "output"})]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def results_of(jobs) -> list[dict]:
    with open(jobs.with_name(f"{jobs.stem}.results.csv"), newline="") as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def two_workers(place):
    with start_worker(place, "gpu-a") as first, start_worker(place, "gpu-b") as second:
        ready(place, "gpu-a", "gpu-b")
        yield [first, second]


def started(place, *names) -> list[list[str]]:
    return [predictions_in(place["folder"] / name / "worker.log") for name in names]


def test_a_batch_on_two_workers_runs_identical_rows_once(place, two_workers, tmp_path):
    media, before = place["media"], started(place, "gpu-a", "gpu-b")
    rows = [{"video": media["video"], "audio": media["audio"], "output": tmp_path / f"out{i}.mp4", "seed": seed} for i, seed in enumerate([1, 2, 3, 4, 5, 1])]
    jobs = write_jobs(tmp_path / "jobs.csv", rows)
    run = batch(place, jobs)
    assert run.returncode == 0 and "6 done, 0 failed, 0 skipped" in run.stdout, run.stdout + run.stderr
    new = [ids[len(old):] for ids, old in zip(started(place, "gpu-a", "gpu-b"), before)]
    results = results_of(jobs)
    assert sum(map(len, new)) == 5 and all(new)  # 5 distinct jobs, on both workers
    assert sorted(key for ids in new for key in ids) == sorted({r["job"] for r in results})  # the job key is the prediction id
    assert {r["server"] for r in results} == {"gpu-a", "gpu-b"} and {r["attempts"] for r in results} == {"1"}
    for row in rows:
        info = probe(row["output"])
        assert info.has_video and info.has_audio and (info.width, info.height) == (540, 960)
    assert rows[0]["output"].read_bytes() == rows[5]["output"].read_bytes()
    # no port beyond the loopback: Cog (a child of each worker) and the worker listen on 127.0.0.1 only
    for worker in two_workers:
        family = [psutil.Process(worker.pid), *psutil.Process(worker.pid).children(recursive=True)]
        listening = [c.laddr.ip for p in family for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN]
        assert listening and set(listening) == {"127.0.0.1"}, listening

    again = batch(place, jobs)  # a re-run makes no prediction
    assert again.returncode == 0 and "0 done, 0 failed, 6 skipped" in again.stdout, again.stdout + again.stderr
    assert sum(map(len, started(place, "gpu-a", "gpu-b"))) == sum(map(len, before)) + 5


def test_a_bad_row_fails_once_with_its_sentence(place, two_workers, tmp_path):
    media = place["media"]
    jobs = write_jobs(tmp_path / "mixed.csv", [
        {"video": media["notes"], "audio": media["audio"], "output": tmp_path / "a.mp4"},
        {"video": media["video"], "audio": media["audio"], "output": tmp_path / "b.mp4", "guidance_scale": 9},
        {"video": media["video"], "audio": media["audio"], "output": tmp_path / "c.mp4", "seed": 6},
    ])
    run = batch(place, jobs)
    assert run.returncode == 1 and "1 done, 2 failed, 0 skipped" in run.stdout, run.stdout + run.stderr
    bad, out_of_range, good = results_of(jobs)
    assert bad["status"] == "failed" and bad["attempts"] == "1"
    assert bad["reason"] == "The video input is not a readable video file (Invalid data found when processing input)."
    assert out_of_range["reason"] == "guidance_scale must be between 1 and 3, got 9." and out_of_range["job"] == ""  # refused before the queue
    assert good["status"] == "done" and probe(tmp_path / "c.mp4").has_video and not (tmp_path / "a.mp4").exists()
    assert sum(ids.count(bad["job"]) for ids in started(place, "gpu-a", "gpu-b")) == 1  # not retried


def test_plans_and_segments_run_on_the_workers(place, two_workers, tmp_path):
    """`batch --plan` asks the workers for each row's plan and prints the total; then the rows run,
    a segment's audio going through the storage like the other inputs."""
    media = place["media"]
    (tmp_path / "name.json").write_text(json.dumps([{"start": 0.4, "end": 1.2, "audio": str(media["audio"]), "inference_steps": 25}]))
    jobs = write_jobs(tmp_path / "segments.csv", [
        {"video": media["long_video"], "audio": "", "output": tmp_path / "a.mp4", "segments": tmp_path / "name.json"},
        {"video": media["video"], "audio": media["audio"], "output": tmp_path / "b.mp4", "seed": 9},
    ])
    planned = batch(place, jobs, "--plan")
    assert planned.returncode == 0, planned.stdout + planned.stderr
    rows = [line.split() for line in planned.stdout.splitlines()[1:3]]
    # frames to regenerate, windows: the segment's 0.64 s audio covers 16 of its 20 frames (the rest is silent)
    assert [(row[0], row[2], row[3]) for row in rows] == [("1", "16/75", "1"), ("2", "16/16", "1")]
    total = sum(float(row[4]) for row in rows)
    assert planned.stdout.splitlines()[-1].startswith(f"total: 32 frames to regenerate in 2 windows, {total:.2f} GPU s") and total > 0
    assert not (tmp_path / "a.mp4").exists()

    ran = batch(place, jobs)
    assert ran.returncode == 0 and "2 done, 0 failed, 0 skipped" in ran.stdout, ran.stdout + ran.stderr
    assert abs(probe(tmp_path / "a.mp4").duration - 3.0) < 0.05  # the video's own length, not the segment audio's


@pytest.mark.slow  # two Cog servers start and a job runs twice (about a minute on 2 cores)
def test_a_worker_killed_mid_prediction_loses_its_job_to_another_after_the_lease(place, tmp_path):
    from latentsync.client import LipSyncClient

    media = place["media"]
    with LipSyncClient(queue=place["queue"], storage=place["storage"], output_dir=tmp_path / "out", poll_interval=0.2) as client:
        with start_worker(place, "gpu-doomed", "--lease", "6") as doomed:
            ready(place, "gpu-doomed")
            job = client.submit(media["long_video"], media["long_audio"], seed=21)
            taken = wait_for(lambda: (j := client.store.get(job.key)).status == "processing" and j, timeout=120, what="the job to run")
            os.killpg(doomed.pid, signal.SIGKILL)  # a preempted machine: the worker and its Cog at once
        assert taken.server == "gpu-doomed"
        with start_worker(place, "gpu-heir", "--lease", "6"):
            result = client.wait(job, timeout=600)
            assert (result.status, result.server, result.attempts) == ("succeeded", "gpu-heir", 2)
            assert predictions_in(place["folder"] / "gpu-heir" / "worker.log").count(job.key) == 1
            assert probe(client.run(media["long_video"], media["long_audio"], seed=21).path).has_video
            # the dead copy's late news changes nothing: its attempt no longer holds the job
            assert client.store.receive(News(job.key, "failed", error="late"), attempt=taken.attempt) == "stale"
            assert client.store.get(job.key).output_url == result.output_url


@pytest.mark.slow  # two Cog servers start (about a minute on 2 cores)
def test_sigterm_puts_the_job_back_within_seconds(place, tmp_path):
    from latentsync.client import LipSyncClient

    media = place["media"]
    with LipSyncClient(queue=place["queue"], storage=place["storage"], output_dir=tmp_path / "out", poll_interval=0.2) as client:
        with start_worker(place, "gpu-spot") as spot:
            ready(place, "gpu-spot")
            job = client.submit(media["long_video"], media["long_audio"], seed=22)
            wait_for(lambda: client.store.get(job.key).status == "processing", timeout=120, what="the job to run")
            noticed = time.time()
            os.kill(spot.pid, signal.SIGTERM)  # the spot instance's notice, to the worker alone
            back = wait_for(lambda: (j := client.store.get(job.key)).status == "queued" and j, timeout=30, what="the job back in the queue")
            assert time.time() - noticed < 10 and (back.attempts, back.server) == (1, None)
            assert spot.wait(timeout=60) == 0
        with start_worker(place, "gpu-next"):
            result = client.wait(job, timeout=600)
        assert (result.status, result.server, result.attempts) == ("succeeded", "gpu-next", 2)


class Namespaces:
    """Two network namespaces: "svc" holds Redis and the S3 emulator, "gpu" the worker. The gpu
    namespace is linked to svc only, and svc forwards nothing, so the worker reaches Redis and the
    storage and nothing else (not this machine, not the client); this machine reaches svc."""

    def __init__(self):
        tag = os.urandom(2).hex()
        self.subnet = int(tag, 16) % 250 + 1
        self.svc, self.gpu = f"lsq-svc-{tag}", f"lsq-gpu-{tag}"
        self.root_link = f"lqr{tag}"
        self.root_ip, self.svc_ip = f"10.231.{self.subnet}.1", f"10.231.{self.subnet}.2"  # this machine <-> svc
        self.svc_inner_ip, self.gpu_ip = f"10.232.{self.subnet}.1", f"10.232.{self.subnet}.2"  # svc <-> gpu

    def __enter__(self):
        for command in [
            f"ip netns add {self.svc}", f"ip netns add {self.gpu}",
            f"ip link add {self.root_link} type veth peer name lqs{self.root_link[3:]}", f"ip link set lqs{self.root_link[3:]} netns {self.svc}",
            f"ip addr add {self.root_ip}/30 dev {self.root_link}", f"ip link set {self.root_link} up",
            f"ip netns exec {self.svc} ip addr add {self.svc_ip}/30 dev lqs{self.root_link[3:]}", f"ip netns exec {self.svc} ip link set lqs{self.root_link[3:]} up",
            f"ip netns exec {self.svc} ip link add lqt{self.root_link[3:]} type veth peer name lqg{self.root_link[3:]}",
            f"ip netns exec {self.svc} ip link set lqg{self.root_link[3:]} netns {self.gpu}",
            f"ip netns exec {self.svc} ip addr add {self.svc_inner_ip}/30 dev lqt{self.root_link[3:]}", f"ip netns exec {self.svc} ip link set lqt{self.root_link[3:]} up",
            f"ip netns exec {self.gpu} ip addr add {self.gpu_ip}/30 dev lqg{self.root_link[3:]}", f"ip netns exec {self.gpu} ip link set lqg{self.root_link[3:]} up",
            f"ip netns exec {self.svc} ip link set lo up", f"ip netns exec {self.gpu} ip link set lo up",
        ]:
            subprocess.run(command.split(), check=True, capture_output=True)
        return self

    def __exit__(self, *exc):
        subprocess.run(["ip", "link", "del", self.root_link], capture_output=True)
        for name in (self.gpu, self.svc):
            subprocess.run(["ip", "netns", "del", name], capture_output=True)

    def prefix(self, name: str) -> list[str]:
        return ["ip", "netns", "exec", name]


def netns_unavailable() -> str | None:
    """Why this machine cannot make network namespaces, or None."""
    if os.geteuid() != 0:
        return "network namespaces need root"
    probe_name = f"lsq-probe-{os.urandom(2).hex()}"
    made = subprocess.run(["ip", "netns", "add", probe_name], capture_output=True, text=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip() or 'ip netns add failed'}"
    subprocess.run(["ip", "netns", "del", probe_name], capture_output=True)
    return None


@pytest.mark.slow  # a Cog server starts in its own network namespace (about a minute on 2 cores)
def test_a_worker_that_reaches_only_redis_and_the_storage_works(place, tmp_path):
    reason = netns_unavailable()
    if reason:
        pytest.skip(reason)
    from latentsync.client import LipSyncClient

    credentials = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    password = os.urandom(8).hex()  # Redis off the loopback wants one (and the worker takes it from its environment)
    with Namespaces() as ns:
        services = [
            subprocess.Popen([*ns.prefix(ns.svc), "redis-server", "--bind", ns.svc_ip, ns.svc_inner_ip, "--port", "6379", "--save", "", "--appendonly", "no",
                              "--requirepass", password, "--dir", str(tmp_path)], stdout=subprocess.DEVNULL),
            subprocess.Popen([*ns.prefix(ns.svc), sys.executable, "-m", "moto.server", "-H", "0.0.0.0", "-p", "5000"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
        ]
        try:
            wait_for(lambda: _answers(ns.svc_ip, 6379) and _answers(ns.svc_ip, 5000), timeout=60, what="Redis and S3 in their namespace")
            for name, value in {**credentials, "AWS_ENDPOINT_URL": f"http://{ns.svc_ip}:5000"}.items():
                os.environ[name] = value
            import boto3

            boto3.client("s3").create_bucket(Bucket="lipsync")
            folder = tmp_path / "gpu-ns"
            env = {**real_cog_env(folder, place["manifest"]), **credentials, "AWS_ENDPOINT_URL": f"http://{ns.svc_inner_ip}:5000",
                   "LATENTSYNC_WEIGHTS_DIR": str(place["folder"] / "files"),  # the weights are on its disk: it fetches nothing else
                   "LATENTSYNC_QUEUE_URL": f"redis://:{password}@{ns.svc_inner_ip}:6379/0"}
            command = [sys.executable, "-m", "latentsync.worker", "--storage", "s3://lipsync/jobs", "--name", "gpu-ns"]
            # the worker's namespace reaches nothing but svc: not this machine's address, not the weights server
            cut_off = subprocess.run([*ns.prefix(ns.gpu), sys.executable, "-c", f"import socket; s = socket.socket(); s.settimeout(3); print(s.connect_ex(('{ns.root_ip}', 22)))"], capture_output=True, text=True)
            assert cut_off.stdout.strip() not in ("0", ""), cut_off
            with worker_process(folder, command, env, prefix=ns.prefix(ns.gpu)):
                queue_url = f"redis://:{password}@{ns.svc_ip}:6379/0"
                wait_for(lambda: JobQueue(queue_url).overview()["workers"].get("gpu-ns", {}).get("state") == "idle", timeout=300, what="the worker in its namespace")
                with LipSyncClient(queue=queue_url, storage="s3://lipsync/jobs", output_dir=tmp_path / "out", poll_interval=0.2) as client:
                    result = client.run(place["media"]["video"], place["media"]["audio"], seed=23, timeout=600)
                assert result.job.server == "gpu-ns" and result.job.output_url.startswith("s3://lipsync/jobs/outputs/")
                assert probe(result.path).has_video
        finally:
            for name in list(credentials) + ["AWS_ENDPOINT_URL"]:
                os.environ.pop(name, None)
            for service in services:
                service.kill()
                service.wait(timeout=10)


def _answers(host: str, port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0
