"""Self-hosted queue figures: the wall time of a 6-row batch (two rows identical: 5 predictions) on
1 and on 2 workers, and the seconds from queueing a job to a worker starting it.

Real workers (`python -m latentsync.worker`, each starting the real Cog server with the tiny
random models of ../shared/reference), a real redis-server and a storage folder, all on this
machine; the batch is the client's command line, timed from start to exit. On a CPU machine the
workers share its cores, which bounds what a second worker gains; with a GPU each they do not
compete.

    python -m scripts.benchmark_queue [--runs 2] [--json bench/queue.json]
"""

import argparse
import csv
import os
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from latentsync.client import LipSyncClient
from latentsync.client.queue import JobQueue
from latentsync.config import REPO_ROOT
from scripts.benchmark_unet import report_figures
from tests.client_fixtures import start_redis
from tests.cog_server import write_schema
from tests.http_fixtures import FileServer, tiny_weights_manifest
from tests.media import small_clip, speech
from tests.queue_fixtures import real_cog_env, wait_for, worker_command, worker_process


def batch_seconds(folder: Path, queue: str, storage: str, media: dict, seeds: list[int]) -> float:
    """Wall time of the client's batch command over one row per seed."""
    jobs = folder / f"jobs-{seeds[0]}.csv"
    with open(jobs, "w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["video", "audio", "output", "seed"])
        writer.writerows([media["video"], media["audio"], folder / f"out-{seeds[0]}-{i}.mp4", seed] for i, seed in enumerate(seeds))
    command = [sys.executable, "-m", "latentsync.client", "batch", str(jobs), "--queue", queue, "--storage", storage]
    started = time.time()
    run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    seconds = time.time() - started
    if run.returncode != 0 or f"{len(seeds)} done" not in run.stdout:
        raise RuntimeError(f"the batch failed:\n{run.stdout}\n{run.stderr}")
    return seconds


def start_latency(client: LipSyncClient, media: dict, seed: int) -> float:
    """Seconds from the job being queued (submit returned) to a worker taking it."""
    job = client.submit(media["video"], media["audio"], seed=seed)
    queued = time.time()
    while client.store.get(job.key).status == "queued":
        time.sleep(0.002)
    taken = time.time() - queued
    client.wait(job, timeout=600)
    return taken


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=2, help="batches per worker count")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    write_schema()
    results = {"machine": f"{os.cpu_count()} CPU cores, no GPU, tiny random models (shared with other work unless stated)"}
    with tempfile.TemporaryDirectory(prefix="benchmark-queue-") as root, ExitStack() as stack:
        folder = Path(root)
        server, queue = start_redis(folder)
        stack.callback(server.terminate)
        (folder / "storage").mkdir()
        storage = f"file://{folder / 'storage'}"
        media = {"video": small_clip(folder / "talk.mp4", seconds=0.64), "audio": speech(folder / "dub.wav", 0.64, start=1.0)}
        files = stack.enter_context(FileServer(folder / "files"))
        manifest = tiny_weights_manifest(folder, files.url)
        seed = 1000
        for count in (1, 2):
            with ExitStack() as workers:
                names = [f"bench-{count}-{i}" for i in range(count)]
                for name in names:
                    env = real_cog_env(folder / name, manifest)
                    workers.enter_context(worker_process(folder / name, worker_command(queue, storage, name), env))
                overview = JobQueue(queue)
                wait_for(lambda: all(overview.overview()["workers"].get(n, {}).get("state") == "idle" for n in names), timeout=600, what="the workers")
                walls = []
                for _ in range(args.runs):
                    seeds = [seed + 1, seed + 2, seed + 3, seed + 4, seed + 5, seed + 1]
                    walls.append(round(batch_seconds(folder, queue, storage, media, seeds), 1))
                    seed += 10
                results[f"6-row batch (5 predictions) on {count} worker{'s' if count > 1 else ''}, s"] = walls
                with LipSyncClient(queue=queue, storage=storage, output_dir=folder / "client", poll_interval=0.1) as client:
                    latencies = [start_latency(client, media, seed + i) for i in range(5)]
                    seed += 10
                results[f"queued to started, {count} idle worker{'s' if count > 1 else ''}: median / max, s"] = [round(statistics.median(latencies), 3), round(max(latencies), 3)]
    return report_figures(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
