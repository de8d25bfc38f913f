"""Batches: reading the CSV, and the batch command against the fake Replicate API (the self-hosted
queue's batch is in test_worker.py and test_queue.py)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from latentsync.client import LipSyncClient
from latentsync.client.batch import one_sentence, read_rows
from latentsync.config import REPO_ROOT
from latentsync.media.probe import probe
from tests.client_fixtures import fake, media  # noqa: F401 (fixtures)


def write(path, text: str):
    path.write_text(text)
    return path


def test_the_csv_header_is_checked_and_values_are_typed(tmp_path):
    with pytest.raises(ValueError, match=r"^short.csv needs a header row with the columns video, audio and output; it lacks output\.$"):
        read_rows(write(tmp_path / "short.csv", "video,audio\na.mp4,b.wav\n"))
    with pytest.raises(ValueError, match=r"^typo.csv has unknown column\(s\) guidance; besides video, audio and output, columns are the model's inputs: guidance_scale, "):
        read_rows(write(tmp_path / "typo.csv", "video,audio,output,guidance\na.mp4,b.wav,o.mp4,2\n"))
    rows = read_rows(write(tmp_path / "jobs.csv", (
        "video, audio ,output,guidance_scale,seed,enable_deepcache,speaker_point\n"
        "a.mp4,b.wav,o1.mp4,2,7,false,\"120,80\"\n"
        "a.mp4,b.wav,o2.mp4,,,,\n"
        "a.mp4,b.wav,o3.mp4,lots,,,\n"
        "a.mp4,b.wav,o4.mp4,9,,maybe,\n"
        "a.mp4,,o5.mp4,,,,\n"
    )))
    assert [row.number for row in rows] == [1, 2, 3, 4, 5]
    assert rows[0].params == {"guidance_scale": 2.0, "seed": 7, "enable_deepcache": False, "speaker_point": "120,80"} and rows[0].error is None
    assert rows[1].params == {} and rows[1].error is None  # empty cells take the defaults
    assert rows[2].error == "guidance_scale must be a number, got 'lots'."
    assert rows[3].error == "enable_deepcache must be true or false, got 'maybe'."
    assert rows[4].error == "video, audio and output must not be empty (audio may be, with segments that each have their own)."


def test_reasons_lose_their_wrappers():
    cog = "Prediction failed: Async prediction failed: NoFaceError: No usable face was found in any of the 25 frames checked (1.0 s of video):\n the face must be visible."
    assert one_sentence(cog) == "No usable face was found in any of the 25 frames checked (1.0 s of video): the face must be visible."
    assert one_sentence("Input file not found: x.mp4") == "Input file not found: x.mp4"


def batch(fake, tmp_path, jobs, *extra):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REPLICATE_API_TOKEN": "r8_test"}
    command = [sys.executable, "-m", "latentsync.client", "batch", str(jobs), "--model", "owner/model", "--base-url", fake.url,
               "--store", str(tmp_path / "jobs.sqlite"), *extra]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


def test_a_batch_on_replicate_is_resumable(fake, tmp_path, media):
    video, audio = media["video"], media["audio"]
    jobs = write(tmp_path / "jobs.csv", "video,audio,output,seed,guidance_scale\n" + "".join(
        f"{video},{audio},{tmp_path / name},{seed},{scale}\n" for name, seed, scale in
        (("a.mp4", 1, ""), ("b.mp4", 2, ""), ("c.mp4", 1, ""), ("d.mp4", 3, "9"), ("e.mp4", 4, ""), ("f.mp4", 5, ""))
    ))
    # row 5's job is running, from a process that stopped; row 6's first prediction will fail
    client = LipSyncClient(api_token="r8_test", base_url=fake.url, model="owner/model", store=tmp_path / "jobs.sqlite")
    fake.run_seconds = 3.0
    running = client.submit(video, audio, seed=4)
    fake.run_seconds = 0.3
    fake.fail_once_if.append(lambda inputs: inputs["seed"] == 5)
    results_file = tmp_path / "results.json"
    first = batch(fake, tmp_path, jobs, "--results", str(results_file))
    assert first.returncode == 1, first.stdout + first.stderr
    results = json.loads(results_file.read_text())
    assert [r["status"] for r in results] == ["done", "done", "done", "failed", "done", "failed"]
    assert results[3]["reason"] == "guidance_scale must be between 1 and 3, got 9."
    assert results[5]["reason"] == "injected model failure"
    assert len(fake.creates) == 4  # seeds 1, 2, 5 and the one already running (seed 4): rows 1 and 3 are one job
    assert results[4]["job"] == running.key and "4 done, 2 failed, 0 skipped" in first.stdout
    assert probe(tmp_path / "a.mp4").has_video and (tmp_path / "a.mp4").read_bytes() == (tmp_path / "c.mp4").read_bytes()

    again = batch(fake, tmp_path, jobs)  # finished rows skipped, the failed one tried again
    assert again.returncode == 1 and "1 done, 1 failed, 4 skipped" in again.stdout, again.stdout + again.stderr
    with open(tmp_path / "jobs.results.csv", newline="") as file:
        statuses = [row["status"] for row in csv.DictReader(file)]
    assert statuses == ["skipped", "skipped", "skipped", "failed", "skipped", "done"]
    assert len(fake.creates) == 5


def test_batch_plan_prints_every_rows_estimate_and_the_total_and_runs_nothing(fake, tmp_path, media):
    video, audio, folder = media["video"], media["audio"], media["folder"]
    (tmp_path / "name.json").write_text(json.dumps([{"start": 0.2, "end": 0.9, "audio": str(audio), "inference_steps": 30}]))
    jobs = write(tmp_path / "jobs.csv", "video,audio,output,segments,seed\n"
                 f"{video},{audio},{tmp_path / 'a.mp4'},,1\n"
                 f"{video},,{tmp_path / 'b.mp4'},{tmp_path / 'name.json'},1\n"
                 f"{video},,{tmp_path / 'c.mp4'},,1\n")
    planned = batch(fake, tmp_path, jobs, "--plan")
    assert planned.returncode == 1, planned.stdout + planned.stderr  # row 3 has neither audio nor segments
    client = LipSyncClient(api_token="r8_test", base_url=fake.url, model="owner/model", store=tmp_path / "jobs.sqlite")
    plans = [client.plan(video, audio, seed=1), client.plan(video, segments=tmp_path / "name.json", seed=1)]  # answered from the store
    assert [c["input"]["plan_only"] for c in fake.creates] == [True, True] and len(fake.creates) == 2
    assert plans[1]["work"] == [{"steps": 30, "guidance": 1.5, "windows": 2}]
    total = sum(plan["estimate"]["gpu_seconds"] for plan in plans)
    lines = planned.stdout.splitlines()
    assert lines[-1].startswith(f"total: {sum(p['frames_generated'] for p in plans)} frames to regenerate in {sum(p['windows'] for p in plans)} windows, "
                                f"{total:.2f} GPU s of denoising (measured rates; at 1.5 / 1.6: ")
    assert "no plan: video, audio and output must not be empty" in planned.stdout
    assert not any((tmp_path / name).exists() for name in ("a.mp4", "b.mp4", "c.mp4"))
