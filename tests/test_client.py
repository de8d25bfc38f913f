"""The Replicate client: the real `replicate` package against a local fake of the API; the job
store as a SQLite file and in a real redis-server on 127.0.0.1."""

import json
import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from latentsync.client import LipSyncClient, LipSyncError, SQLiteStore, run_long
from latentsync.client.longform import cut_points
from latentsync.client.params import PARAMETERS, validate
from latentsync.config import REPO_ROOT
from latentsync.media.probe import probe
from tests.client_fixtures import fake, media, redis_url, store_spec  # noqa: F401 (fixtures)
from tests.fake_replicate import MODEL_VERSION
from tests.media import ffmpeg, speech


def client_for(fake, tmp_path, **kwargs) -> LipSyncClient:
    options = {"model": "owner/model", "store": tmp_path / "jobs.sqlite", "output_dir": tmp_path / "outputs", **kwargs}
    return LipSyncClient(api_token="r8_test", base_url=fake.url, poll_interval=0.05, backoff=0.05, **options)


def creates(fake) -> int:
    return len(fake.creates)


def test_parameters_are_validated_before_any_request(fake, tmp_path, media):
    client = client_for(fake, tmp_path)
    for bad, message in (({"guidance_scale": 5}, "guidance_scale must be between 1 and 3"), ({"version": "2.0"}, "version must be one of 1.5, 1.6"), ({"steps": 20}, "Unknown input")):
        with pytest.raises(ValueError, match=message):
            client.run(media["video"], media["audio"], **bad)
    assert fake.requests == []


def test_parameter_table_matches_the_predictor(tmp_path):
    """The client's table and predict.py's inputs must agree (read through Cog's own inspector)."""
    sys.path.insert(0, str(REPO_ROOT))
    from scripts.cog_schema import openapi_schema

    properties = openapi_schema()["components"]["schemas"]["Input"]["properties"]
    assert set(properties) - {"video", "audio", "segment_audio"} == set(PARAMETERS)  # the files, and the table
    for name, spec in PARAMETERS.items():
        prop = properties[name]
        assert prop["default"] == spec.default, name
        assert prop.get("minimum") == spec.minimum and prop.get("maximum") == spec.maximum, name
        assert tuple(prop["enum"]) == spec.choices if spec.choices else "enum" not in prop, name


def test_run_uploads_inputs_and_downloads_a_real_mp4(fake, tmp_path, media):
    client = client_for(fake, tmp_path, inline_max_bytes=1000)  # force the Files API
    result = client.run(media["video"], media["audio"], seed=3)
    assert result.job.status == "succeeded" and result.prediction["id"] == fake.creates[0]["id"]
    info = probe(result.path)
    assert info.has_video and info.has_audio and abs(info.duration - 1.5) < 0.1
    sent = fake.creates[0]["input"]
    assert sent["video"].startswith(fake.url + "/v1/files/") and sent["seed"] == 3 and sent["guidance_scale"] == 1.5
    assert ("POST", "/v1/models/owner/model/predictions") in fake.requests


def test_a_version_id_creates_through_the_versions_endpoint(fake, tmp_path, media):
    client = client_for(fake, tmp_path, model=MODEL_VERSION)
    client.run(media["video"], media["audio"])
    assert ("POST", "/v1/predictions") in fake.requests and fake.creates[0]["version"] == MODEL_VERSION


def test_a_finished_job_is_answered_from_the_store(fake, tmp_path, media, store_spec):
    client = client_for(fake, tmp_path, store=store_spec)
    first = client.run(media["video"], media["audio"])
    requests = len(fake.requests)
    second = client.run(media["video"], media["audio"])
    assert second.path == first.path and len(fake.requests) == requests  # not a single API call
    again = client_for(fake, tmp_path, store=store_spec).run(media["video"], media["audio"], guidance_scale=1.50)  # same key, new client
    assert again.path == first.path and creates(fake) == 1


def test_changed_inputs_make_new_predictions(fake, tmp_path, media):
    client = client_for(fake, tmp_path)
    client.run(media["video"], media["audio"])
    client.run(media["video"], media["audio"], guidance_scale=2.0)
    changed = tmp_path / "dub_changed.wav"
    data = bytearray(media["audio"].read_bytes())
    data[-100] ^= 1  # one byte of audio
    changed.write_bytes(bytes(data))
    client.run(media["video"], changed)
    assert creates(fake) == 3


def test_a_running_job_is_returned_as_is(fake, tmp_path, media, store_spec):
    fake.run_seconds = 1.0
    client = client_for(fake, tmp_path, store=store_spec)
    first = client.submit(media["video"], media["audio"])
    second = client.submit(media["video"], media["audio"])
    assert second.prediction_id == first.prediction_id and creates(fake) == 1
    assert client.wait(second, timeout=30).status == "succeeded"


SUBMITTER = textwrap.dedent(
    """
    import sys
    from latentsync.client import LipSyncClient
    url, store, video, audio = sys.argv[1:5]
    client = LipSyncClient(api_token="r8_test", base_url=url, store=store, model="owner/model", poll_interval=0.05)
    print(client.submit(video, audio).prediction_id)
    """
)


def test_concurrent_identical_submits_create_one_prediction(fake, tmp_path, media, store_spec):
    fake.run_seconds = 2.0
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    processes = [
        subprocess.Popen([sys.executable, "-c", SUBMITTER, fake.url, store_spec, str(media["video"]), str(media["audio"])], stdout=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    with ThreadPoolExecutor(max_workers=6) as pool:
        jobs = list(pool.map(lambda _: client_for(fake, tmp_path, store=store_spec).submit(media["video"], media["audio"]), range(6)))
    ids = {job.prediction_id for job in jobs} | {p.communicate(timeout=60)[0].strip() for p in processes}
    assert len(ids) == 1 and creates(fake) == 1


def test_a_slow_create_keeps_its_claim_so_one_prediction_is_paid_for(fake, tmp_path, media, store_spec):
    """Before: a create slower than the claim's TTL let a second submit take over and create again."""
    fake.faults.add("create", ("delay", 2.5))  # the first create takes 2.5 s; the claim's TTL is 1 s
    first_client, second_client = (client_for(fake, tmp_path, store=store_spec, claim_ttl_s=1.0) for _ in range(2))
    with ThreadPoolExecutor(max_workers=1) as pool:
        first = pool.submit(first_client.submit, media["video"], media["audio"])
        time.sleep(1.5)
        second = second_client.submit(media["video"], media["audio"])  # the owner's heartbeats keep it waiting
        assert second.prediction_id == first.result().prediction_id
    assert creates(fake) == 1


def test_a_take_over_finds_the_prediction_its_dead_owner_created(fake, tmp_path, media, store_spec):
    client = client_for(fake, tmp_path, store=store_spec, claim_ttl_s=0.5)
    inputs = {"video": client.backend.input_ref(media["video"]), "audio": client.backend.input_ref(media["audio"]), **validate({})}
    key = client.job_key(media["video"], media["audio"], {})
    client.store.claim(key, "owner-that-died", inputs)  # it claimed, created, and died before recording
    orphan = client.backend.api.models.predictions.create(model="owner/model", input=inputs)
    time.sleep(0.6)
    result = client.run(media["video"], media["audio"])
    assert result.job.prediction_id == orphan.id and creates(fake) == 1
    assert ("GET", "/v1/predictions") in fake.requests  # it looked before creating


def test_an_owner_that_stalled_past_its_claim_does_not_overwrite_the_new_one(fake, tmp_path, media):
    """Before: the first owner recorded its prediction over the one that took over."""
    fake.faults.add("create", ("delay", 2.0))
    stalled = client_for(fake, tmp_path, claim_ttl_s=600.0)  # refreshes its claim every 150 s: as good as stalled
    prompt = client_for(fake, tmp_path, store=SQLiteStore(tmp_path / "jobs.sqlite", claim_ttl_s=0.5))
    with ThreadPoolExecutor(max_workers=1) as pool:
        late = pool.submit(stalled.submit, media["video"], media["audio"])
        time.sleep(1.0)
        taken = prompt.submit(media["video"], media["audio"])  # takes over, finds nothing yet, creates
        assert late.result().prediction_id == taken.prediction_id  # the stalled owner's record was refused
    assert creates(fake) == 2 and prompt.store.get(taken.key).prediction_id == taken.prediction_id
    duplicate = next(p for p in fake.creates if p["id"] != taken.prediction_id)
    assert duplicate["status"] == "canceled"  # and it canceled its own duplicate


def test_an_unreachable_redis_is_reported_at_once():
    with pytest.raises(ConnectionError, match="Redis job store at redis://127.0.0.1:1/0 is not usable"):
        LipSyncClient(api_token="r8_test", store="redis://127.0.0.1:1/0")


def test_failed_jobs_are_retried_on_the_next_submit(fake, tmp_path, media, store_spec):
    client = client_for(fake, tmp_path, store=store_spec)
    fake.fail_next = 1
    with pytest.raises(LipSyncError, match="failed: injected model failure"):
        client.run(media["video"], media["audio"])
    assert client.run(media["video"], media["audio"]).job.status == "succeeded"
    assert creates(fake) == 2


def test_rate_limits_errors_and_dropped_connections_are_retried(fake, tmp_path, media):
    client = client_for(fake, tmp_path)
    fake.faults.add("create", ("status", 429, 1), ("drop_before",))
    fake.faults.add("get", ("status", 500, None), ("drop_before",))
    started = time.time()
    fake.run_seconds = 0.5
    job = client.submit(media["video"], media["audio"])
    assert time.time() - started >= 1.0  # Retry-After: 1 was honoured
    assert client.wait(job, timeout=30).status == "succeeded"
    assert creates(fake) == 1


def test_a_create_that_went_through_without_an_answer_is_not_repeated(fake, tmp_path, media):
    client = client_for(fake, tmp_path)
    fake.faults.add("create", ("drop_after",))  # the prediction exists, the client never hears of it
    result = client.run(media["video"], media["audio"])
    assert result.job.status == "succeeded" and creates(fake) == 1
    assert ("GET", "/v1/predictions") in fake.requests  # it looked before trying again


def test_cancel(fake, tmp_path, media):
    fake.run_seconds = 5.0
    client = client_for(fake, tmp_path)
    job = client.submit(media["video"], media["audio"])
    assert client.cancel(job).status == "canceled"
    assert client.submit(media["video"], media["audio"]).prediction_id != job.prediction_id  # canceled: tried again


def test_cut_points_prefer_pauses_near_the_limit():
    pauses = [(17.0, 17.6), (36.1, 36.7), (50.0, 51.0)]
    points = cut_points(55.0, pauses, 20.0)  # 3 segments of 18.3 s, each cut may move 0.83 s
    assert points == [18.32, 36.4]  # no pause near 18.33; the pause at 36.4 is close to 36.67
    edges = [0.0, *points, 55.0]
    assert all(b - a <= 20.0 for a, b in zip(edges, edges[1:]))
    assert cut_points(15.0, pauses, 20.0) == []
    assert cut_points(60.0, pauses, 20.0) == [20.0, 40.0]  # no slack: even cuts


def test_long_inputs_fan_out_and_stitch(fake, tmp_path, media):
    folder = media["folder"]
    long_video, long_audio = folder / "long.mp4", folder / "long.wav"
    ffmpeg("-stream_loop", 29, "-i", media["video"], "-t", 30, "-c:v", "libx264", "-crf", 28, "-an", long_video)
    ffmpeg("-stream_loop", 3, "-i", speech(folder / "eight.wav", 8.0, start=0.5), "-t", 30, long_audio)
    client = client_for(fake, tmp_path)
    fake.fail_next = 1  # one segment fails once and is retried alone
    out = run_long(client, long_video, long_audio, tmp_path / "long_out.mp4", max_segment_s=10.0, concurrency=3)
    assert creates(fake) == 4  # 3 segments + 1 retry
    info = probe(out)
    assert abs(info.duration - 30.0) < 0.1 and abs(info.audio_duration - 30.0) < 0.1
    decoded = lambda path: np.frombuffer(subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-f", "s16le", "-ac", "1", "-ar", "8000", "-"], capture_output=True, check=True).stdout, np.int16).astype(float)
    original, stitched = decoded(long_audio), decoded(out)
    n = min(len(original), len(stitched))
    assert np.corrcoef(original[:n], stitched[:n])[0, 1] > 0.95  # the original audio, uncut
    assert creates(fake) == 4 and run_long(client, long_video, long_audio, tmp_path / "again.mp4", max_segment_s=10.0) and creates(fake) == 4


def test_cli_run_and_status(fake, tmp_path, media):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "REPLICATE_API_TOKEN": "r8_test"}
    common = [sys.executable, "-m", "latentsync.client", "--model", "owner/model", "--base-url", fake.url, "--store", str(tmp_path / "jobs.sqlite")]
    out = tmp_path / "cli.mp4"
    run = subprocess.run([*common, "run", "--video", str(media["video"]), "--audio", str(media["audio"]), "--param", "seed=9", "--out", str(out)], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert probe(out).has_video and fake.creates[0]["input"]["seed"] == 9
    status = subprocess.run([*common, "status", fake.creates[0]["id"]], capture_output=True, text=True, env=env)
    assert json.loads(status.stdout)["status"] == "succeeded"
    bad = subprocess.run([*common, "run", "--video", str(media["video"]), "--audio", str(media["audio"]), "--param", "guidance_scale=9"], capture_output=True, text=True, env=env)
    assert bad.returncode == 1 and "guidance_scale must be between 1 and 3" in bad.stderr
    assert validate({})["version"] == "1.6"


# ---- segments and plans ------------------------------------------------------------------------


def test_segments_upload_their_audio_and_are_part_of_the_job_key(fake, tmp_path, media):
    import hashlib

    from latentsync.files import sha256_of
    from latentsync.segments import SegmentError

    client = client_for(fake, tmp_path, inline_max_bytes=1000)  # the Files API, as for big inputs
    video, first, second = media["video"], media["audio"], speech(tmp_path / "line.wav", 0.6, start=3.0)
    # jobs without segments keep the key they always had
    old_key = hashlib.sha256(json.dumps({"video": sha256_of(video), "audio": sha256_of(first), "params": validate({}), "model": "owner/model"},
                                        sort_keys=True).encode()).hexdigest()
    assert client.job_key(video, first, {}) == old_key
    segments = [{"start": 0.1, "end": 0.5, "audio": str(first)}, {"start": 0.5, "end": 0.9, "audio": str(second), "inference_steps": 30},
                {"start": 0.9, "end": 1.0, "audio": str(first)}]
    result = client.run(video, segments=segments, seed=3)
    sent = fake.creates[0]["input"]
    assert "audio" not in sent and len(sent["segment_audio"]) == 2 and all(ref.startswith(fake.url + "/v1/files/") for ref in sent["segment_audio"])
    assert json.loads(sent["segments"]) == [{"start": 0.1, "end": 0.5, "audio": 0}, {"start": 0.5, "end": 0.9, "audio": 1, "inference_steps": 30},
                                            {"start": 0.9, "end": 1.0, "audio": 0}]
    assert abs(probe(result.path).duration - 1.0) < 0.1  # the video's length

    requests = len(fake.requests)
    copy = tmp_path / "copy of line.wav"
    copy.write_bytes(second.read_bytes())  # the same content under another name, the same numbers spelled otherwise
    same = [segments[0], {"start": 0.5, "end": 0.9, "audio": str(copy), "inference_steps": 30.0}, segments[2]]
    assert client.run(video, segments=same, seed=3).path == result.path and len(fake.requests) == requests  # one job: no request
    (tmp_path / "job.json").write_text(json.dumps(same))
    assert client.job_key(video, None, {"seed": 3}, tmp_path / "job.json") == result.job.key  # a segments file says the same

    changed = tmp_path / "changed.wav"
    data = bytearray(second.read_bytes())
    data[-100] ^= 1  # one byte of one segment's audio
    changed.write_bytes(bytes(data))
    client.run(video, segments=[segments[0], {**segments[1], "audio": str(changed)}, segments[2]], seed=3)
    assert len(fake.creates) == 2

    before = len(fake.requests)
    for bad, message in (([{"start": 0.5, "end": 0.2, "audio": str(first)}], "segment 1 is empty or reversed"),
                         ([{"start": 0.1, "end": 0.5, "audio": str(tmp_path / "missing.wav")}], "Input file not found"),
                         ([{"start": 0.1, "end": 0.5}], r"segment 1 \(0.10-0.50 s\) has no audio of its own and the job has none")):
        with pytest.raises((SegmentError, FileNotFoundError, ValueError), match=message):
            client.run(video, segments=bad)
    assert len(fake.requests) == before  # refused before any request


def test_a_plan_is_asked_of_the_model_once_and_run_refuses_plan_only(fake, tmp_path, media):
    client = client_for(fake, tmp_path)
    plan = client.plan(media["video"], media["audio"], inference_steps=25)
    assert fake.creates[0]["input"]["plan_only"] is True and fake.creates[0]["input"]["inference_steps"] == 25
    assert plan["kind"] == "plan" and plan["estimate"]["gpu_seconds"] > 0 and plan["work"][0]["steps"] == 25
    assert client.plan(media["video"], media["audio"], inference_steps=25) == plan and len(fake.creates) == 1
    with pytest.raises(ValueError, match=r"plan_only asks for the plan instead of the video: call plan\(\)"):
        client.run(media["video"], media["audio"], plan_only=True)
    assert "plan_only" not in client.run(media["video"], media["audio"], inference_steps=25).job.input  # the video job: a key of its own
