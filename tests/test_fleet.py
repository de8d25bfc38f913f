"""The client driving a fleet: two real Cog servers running predict.py with the tiny random models
on 127.0.0.1 (started with --upload-url and WEBHOOK_AUTH_TOKEN, one prediction at a time each),
the batch command against them, and a server killed mid-batch (a preempted GPU)."""

import csv
import json
import os
import secrets
import subprocess
import sys
import threading
import time

import httpx
import pytest

from latentsync.client import LipSyncClient
from latentsync.client.batch import read_rows, run_batch
from latentsync.config import REPO_ROOT
from latentsync.media.probe import probe
from tests.cog_server import free_port, running_cog_servers
from tests.media import small_clip, speech

SECRET = secrets.token_hex(16)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet")
    callback = f"http://127.0.0.1:{free_port()}"
    env = {"WEBHOOK_AUTH_TOKEN": SECRET, "COG_MAX_CONCURRENCY": "1"}
    with running_cog_servers(folder, 2, upload_url=f"{callback}/uploads/", **env) as (servers, _):
        yield servers, callback


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fleet_media")
    notes = folder / "notes.mp4"
    notes.write_text("definitely not a video\n" * 20)
    return {"video": small_clip(folder / "talk.mp4", seconds=0.64), "audio": speech(folder / "dub.wav", 0.64, start=1.0), "notes": notes}


def write_jobs(path, rows: list[dict]):
    columns = ["video", "audio", "output", *sorted({name for row in rows for name in row} - {"video", "audio", "output"})]
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def batch_command(fleet, tmp_path, jobs):
    servers, callback = fleet
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "LATENTSYNC_FLEET_SECRET": SECRET}
    command = [sys.executable, "-m", "latentsync.client", "batch", str(jobs), "--servers", *[s.url for s in servers],
               "--callback-url", callback, "--store", str(tmp_path / "jobs.sqlite")]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)


def results_of(jobs) -> list[dict]:
    with open(jobs.with_name(f"{jobs.stem}.results.csv"), newline="") as file:
        return list(csv.DictReader(file))


def started(servers) -> list[list[str]]:
    return [server.predictions() for server in servers]


def test_a_batch_spreads_over_both_servers_and_runs_identical_rows_once(fleet, media, tmp_path):
    servers, _ = fleet
    before = started(servers)
    rows = [{"video": media["video"], "audio": media["audio"], "output": tmp_path / f"out{i}.mp4", "seed": seed} for i, seed in enumerate([1, 2, 3, 4, 5, 1])]
    jobs = write_jobs(tmp_path / "jobs.csv", rows)
    run = batch_command(fleet, tmp_path, jobs)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 done, 0 failed, 0 skipped" in run.stdout
    new = [ids[len(old):] for ids, old in zip(started(servers), before)]
    assert sum(map(len, new)) == 5 and all(new)  # 5 unique jobs, on both servers
    results = results_of(jobs)
    assert [r["status"] for r in results] == ["done"] * 6
    assert sorted(id for ids in new for id in ids) == sorted({r["job"] for r in results})  # the job key is the prediction id
    for row in rows:
        info = probe(row["output"])
        assert info.has_video and info.has_audio and (info.width, info.height) == (540, 960)
    assert rows[0]["output"].read_bytes() == rows[5]["output"].read_bytes()
    assert {r["server"] for r in results} == {s.url for s in servers}
    assert SECRET not in run.stdout + run.stderr + jobs.with_name("jobs.results.csv").read_text()

    again = batch_command(fleet, tmp_path, jobs)  # a re-run creates no prediction at all
    assert again.returncode == 0 and "0 done, 0 failed, 6 skipped" in again.stdout, again.stdout + again.stderr
    assert sum(map(len, started(servers))) == sum(map(len, before)) + 5


def test_bad_rows_fail_with_their_reason_and_the_others_finish(fleet, media, tmp_path):
    good = {"video": media["video"], "audio": media["audio"]}
    jobs = write_jobs(tmp_path / "mixed.csv", [
        {"video": media["notes"], "audio": media["audio"], "output": tmp_path / "a.mp4"},
        {**good, "output": tmp_path / "b.mp4", "guidance_scale": 9},
        {"video": tmp_path / "missing.mp4", "audio": media["audio"], "output": tmp_path / "c.mp4"},
        {**good, "output": tmp_path / "d.mp4", "seed": 6},
    ])
    run = batch_command(fleet, tmp_path, jobs)
    assert run.returncode == 1 and "1 done, 3 failed, 0 skipped" in run.stdout, run.stdout + run.stderr
    results = results_of(jobs)
    assert [r["status"] for r in results] == ["failed", "failed", "failed", "done"]
    assert "is not a readable" in results[0]["reason"] and not results[0]["reason"].startswith(("Prediction failed", "MediaError"))
    assert results[1]["reason"] == "guidance_scale must be between 1 and 3, got 9."
    assert results[2]["reason"].startswith("Input file not found:")
    assert all("\n" not in r["reason"] for r in results)
    assert probe(tmp_path / "d.mp4").has_video and not (tmp_path / "a.mp4").exists()


@pytest.mark.slow
def test_killing_a_server_mid_batch_moves_its_jobs_to_the_other(fleet, media, tmp_path):
    """Runs last: it kills the first server."""
    servers, callback = fleet
    client = LipSyncClient(servers=[s.url for s in servers], store=tmp_path / "jobs.sqlite", output_dir=tmp_path / "outputs",
                           callback_url=callback, fleet_secret=SECRET, health_interval=0.5, lost_after_s=3.0, poll_interval=0.1)
    rows = read_rows(write_jobs(tmp_path / "jobs.csv", [
        {"video": media["video"], "audio": media["audio"], "output": tmp_path / f"k{seed}.mp4", "seed": seed} for seed in (11, 12, 13, 14)
    ]))
    outcome = {}
    batch = threading.Thread(target=lambda: outcome.update(results=run_batch(client, rows, concurrency=4, progress=False)))
    batch.start()
    victim, survivor = servers
    moved = None
    deadline = time.time() + 300
    while moved is None and time.time() < deadline:
        running = [client.store.get(client.job_key(r.video, r.audio, r.params)) for r in rows]
        moved = next((job for job in running if job and job.server == victim.url and job.status == "processing"), None)
        time.sleep(0.2)
    assert moved is not None, "no job ever ran on the first server"
    victim.kill()
    batch.join(timeout=600)
    results = outcome["results"]
    assert [r.status for r in results] == ["done"] * 4, [r.reason for r in results]
    final = client.store.get(moved.key)
    assert (final.server, final.attempts, final.status) == (survivor.url, 2, "succeeded")
    assert moved.key in survivor.predictions()  # resubmitted to the other server
    keys = [r.job for r in results]
    assert all(survivor.predictions().count(key) + victim.predictions().count(key) >= 1 for key in keys)
    for row in rows:
        assert probe(row.output).has_video
    # a late webhook of the lost dispatch changes nothing (fenced by its dispatch token)
    late = {"id": moved.key, "status": "succeeded", "output": f"{callback}/uploads/{'0' * 64}/output.mp4"}
    response = httpx.post(f"{callback}/webhooks/{moved.key}/{moved.attempt}", json=late, headers={"Authorization": f"Bearer {SECRET}"})
    assert response.status_code == 200 and response.text.startswith("stale")
    assert client.store.get(moved.key).output_url == final.output_url
    forged = httpx.post(f"{callback}/webhooks/{moved.key}/{final.attempt}", json=late, headers={"Authorization": "Bearer wrong"})
    assert forged.status_code == 401 and SECRET not in forged.text
    client.close()
    assert json.dumps([r.reason for r in results]).count(SECRET) == 0
