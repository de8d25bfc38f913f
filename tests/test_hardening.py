"""Hostile and broken inputs, through the library and through Cog's HTTP server, and faults:
a process killed mid-job, a full disk, two predictions at once."""

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import pytest

from latentsync.config import REPO_ROOT
from latentsync.files import JOB_DIR_PREFIX
from latentsync.options import LipsyncOptions
from latentsync.media.probe import probe
from scripts.make_corpus import CASES, build
from tests.cog_server import data_uri, running_cog_server
from tests.media import frames, small_clip, speech, tiny_pipeline


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def serving(client, within_s: float = 15.0) -> bool:
    """The server is READY again (it reports BUSY while it finishes the previous prediction)."""
    deadline = time.time() + within_s
    while time.time() < deadline:
        if client.get("/health-check").json()["status"] == "READY":
            return True
        time.sleep(0.2)
    return False


def check_output(case, path: Path, report: dict | None) -> None:
    info = probe(path)
    assert info.has_video and info.has_audio and info.video_codec == "h264"
    if case.duration is not None:
        assert abs(info.duration - case.duration) <= 0.05, (case.name, info.duration)
    if case.size is not None:
        assert (info.width, info.height) == case.size, case.name
    if case.all_passthrough and report is not None:
        assert report["frames_generated"] == 0


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_through_the_library(case, corpus, pipeline, tmp_path):
    temp = tmp_path / "temp"
    output = tmp_path / "out.mp4"
    started = time.time()
    if case.expect == "error":
        with pytest.raises(ValueError) as raised:  # MediaError, AudioError, NoFaceError: all ValueErrors
            pipeline(corpus / case.video, corpus / case.audio, output, LipsyncOptions(num_inference_steps=1), temp_dir=temp)
        message = str(raised.value)
        assert re.search(case.error, message), message
        assert message.count(". ") <= 1 and "\n" not in message  # one sentence
        assert not output.exists()
    else:
        result = pipeline(corpus / case.video, corpus / case.audio, output, LipsyncOptions(num_inference_steps=1), temp_dir=temp)
        check_output(case, output, result.report.to_dict())
    assert time.time() - started < 120
    assert list(temp.iterdir()) == [] if temp.exists() else True  # no job folder left behind
    assert not (corpus / "pwned").exists() and not (corpus / "pwned2").exists()


@pytest.fixture(scope="module")
def hanging_url():
    """A server that accepts connections and never answers."""

    class Hang(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            time.sleep(60)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Hang)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/slow.mp4"
    server.shutdown()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_cog_server(tmp_path_factory.mktemp("cog")) as running:
        yield running


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_corpus_through_the_cog_server(case, corpus, server, tmp_path):
    client, files, folder = server
    video = corpus / case.video
    inputs = {
        "video": data_uri(video) if video.exists() else f"{files.url}/{case.video}",  # a missing file: a URL that 404s
        "audio": data_uri(corpus / case.audio),
        "return_report": True,
    }
    started = time.time()
    body = client.post("/predictions", json={"input": inputs}).json()
    assert time.time() - started < 300
    if case.expect == "error":
        assert body["status"] == "failed", case.name
        assert re.search(case.error + "|404", body["error"]), body["error"]
    else:
        assert body["status"] == "succeeded", body.get("error")
        out = tmp_path / "out.mp4"
        out.write_bytes(__import__("base64").b64decode(body["output"]["video"].split(",", 1)[1]))
        check_output(case, out, body["output"]["report"])
    assert serving(client)
    assert not list((folder / "tmp").glob(f"{JOB_DIR_PREFIX}*"))


def test_urls_that_fail_or_hang_end_in_one_clear_error(server, corpus, hanging_url):
    client, files, _ = server
    audio = data_uri(corpus / "speech1.wav")
    missing = client.post("/predictions", json={"input": {"video": f"{files.url}/missing.mp4", "audio": audio}}).json()
    assert missing["status"] == "failed" and "404" in missing["error"]
    started = time.time()
    hanging = client.post("/predictions", json={"input": {"video": hanging_url, "audio": audio}}).json()
    assert hanging["status"] == "failed" and "timed out" in hanging["error"] and time.time() - started < 60
    assert serving(client)


def test_two_predictions_at_once_stay_apart(tmp_path_factory):
    folder = tmp_path_factory.mktemp("concurrent")
    media = folder / "media"
    media.mkdir()
    video = small_clip(media / "face.mp4", seconds=1.0, size="540:960")
    short, long = speech(media / "short.wav", 0.6), speech(media / "long.wav", 1.4)
    with running_cog_server(folder, COG_MAX_CONCURRENCY="2") as (client, _, _):
        results = {}

        def predict(name, audio, seed):
            results[name] = client.post("/predictions", json={"input": {"video": data_uri(video), "audio": data_uri(audio), "seed": seed, "return_report": True}}).json()

        threads = [threading.Thread(target=predict, args=("short", short, 1)), threading.Thread(target=predict, args=("long", long, 2))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    for name, seconds, seed in (("short", 0.6, 1), ("long", 1.4, 2)):
        body = results[name]
        assert body["status"] == "succeeded", body.get("error")
        report = body["output"]["report"]
        assert report["seed"] == seed and abs(report["duration"] - seconds) <= 0.04  # each got its own inputs


KILLED_JOB = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from latentsync.cache import ResultCache
    from latentsync.options import LipsyncOptions
    from tests.media import tiny_pipeline
    video, audio, cache_root, temp = sys.argv[1:5]
    pipeline = tiny_pipeline(cache=ResultCache(cache_root))
    print("started", flush=True)
    pipeline(video, audio, Path(temp) / "out.mp4", LipsyncOptions(num_inference_steps=3), temp_dir=temp)
    """
)


def test_a_job_killed_midway_leaves_nothing_that_breaks_the_next(tmp_path):
    video = small_clip(tmp_path / "face.mp4", seconds=3.0, size="540:960")
    audio = speech(tmp_path / "speech.wav", 3.0)
    cache_root, temp = tmp_path / "cache", tmp_path / "temp"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    victim = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(video), str(audio), str(cache_root), str(temp)], stdout=subprocess.PIPE, text=True, env=env)
    assert victim.stdout.readline().strip() == "started"
    deadline = time.time() + 120
    while not list(temp.glob(f"{JOB_DIR_PREFIX}*/*.mp4")) and time.time() < deadline:  # killed while encoding
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert list(temp.glob(f"{JOB_DIR_PREFIX}*"))  # it did leave its folder behind

    from latentsync.cache import ResultCache

    pipeline = tiny_pipeline(cache=ResultCache(cache_root))
    started = time.time()
    result = pipeline(video, audio, tmp_path / "again.mp4", LipsyncOptions(num_inference_steps=3), temp_dir=temp)
    assert result.report.cache == "miss" and time.time() - started < 120  # no stale lock, no bogus hit
    assert probe(tmp_path / "again.mp4").has_video
    assert list(temp.iterdir()) == []  # the dead job's folder was cleared
    assert not list((cache_root / "work").iterdir())


def tmpfs(path: Path, size: str):
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({result.stderr.strip()})")
    return path


def test_a_full_disk_gives_a_clear_error_and_no_partial_output(pipeline, tmp_path):
    video = small_clip(tmp_path / "face.mp4", seconds=2.0, size="540:960")
    audio = speech(tmp_path / "speech.wav", 2.0)
    small = tmpfs(tmp_path / "small", "200k")
    try:
        with pytest.raises(Exception) as raised:
            pipeline(video, audio, small / "out.mp4", LipsyncOptions(num_inference_steps=1), temp_dir=small / "temp")
        assert re.search(r"No space left on device|failed|disk", str(raised.value), re.IGNORECASE), str(raised.value)
        leftovers = [p for p in small.rglob("*") if p.is_file()]
        assert leftovers == [], leftovers
    finally:
        subprocess.run(["umount", str(small)], check=False)
