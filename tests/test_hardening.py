"""Hostile and broken inputs, through the library, Cog's HTTP server and the web app, and faults:
a process killed mid-job, a full disk, two predictions at once."""

import base64
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
import uuid
from pathlib import Path
from urllib.parse import quote

import httpx
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from pytest import approx

from latentsync.config import REPO_ROOT
from latentsync.files import JOB_DIR_PREFIX
from latentsync.options import LipsyncOptions, options_from_inputs
from latentsync.media.decode import AudioError
from latentsync.media.probe import MediaError, probe
from scripts import make_corpus
from scripts.make_corpus import CASES, HOSTILE, build
from tests.app_server import json_with_nan, private_endpoint
from tests.cog_server import data_uri, ready_again, running_cog_server
from tests.http_fixtures import FileServer
from tests.media import ffmpeg, frames, psnr, small_clip, speech, tiny_pipeline


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return build(tmp_path_factory.mktemp("corpus"))


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def error_sentence(body: dict) -> str:
    """Our sentence in a failed prediction, after Cog's "Prediction failed: ... MediaError: "."""
    return body["error"].rpartition("Error: ")[2]


def options_for(case) -> LipsyncOptions:
    """The case's service inputs as options (where a bad number is refused), else one step."""
    return options_from_inputs(**case.inputs) if case.inputs else LipsyncOptions(num_inference_steps=1)


def post_prediction(client, inputs: dict):
    """A prediction, its body written by Python's json, which writes NaN and Infinity as a client might."""
    return client.post("/predictions", content=json.dumps({"input": inputs}), headers={"Content-Type": "application/json"})


def check_prediction(case, response, source: Path, tmp_path: Path) -> None:
    """A Cog prediction ended as the case promises: refused by Cog's own input check (a bad
    number: not JSON, or past the schema's range), failed with the case's sentence (which names
    the input, never a server path), or succeeded with a correct output of the video `source`."""
    if response.status_code in (400, 422):
        assert case.inputs and next(iter(case.inputs)) in response.text, response.text
        return
    body = response.json()
    if case.expect == "error":
        assert body["status"] == "failed", case.name
        assert re.search(case.error, error_sentence(body)), body["error"]
        assert "/tmp" not in body["error"], body["error"]  # the server's files live under /tmp
    else:
        assert body["status"] == "succeeded", body.get("error")
        out = tmp_path / "out.mp4"
        out.write_bytes(base64.b64decode(body["output"]["video"].split(",", 1)[1]))
        check_output(case, out, body["output"]["report"], source)


def check_output(case, path: Path, report: dict, source: Path) -> None:
    """An output as the case promises: H.264 with audio, its length and size, the report's spans
    (what was regenerated where) and the frames it counts as regenerated."""
    info = probe(path)
    assert info.has_video and info.has_audio and info.video_codec == "h264"
    if case.duration is not None:
        assert abs(info.duration - case.duration) <= 0.05, (case.name, info.duration)
    if case.size is not None:
        assert (info.width, info.height) == case.size, case.name
    if case.spans:
        assert [(s["start"], s["end"], s["action"]) for s in report["spans"]] == [(approx(a), approx(b), action) for a, b, action in case.spans]
        assert report["frames_generated"] == round(sum(b - a for a, b, action in case.spans if action == "generated") * 25)
    if case.lip_synced:
        assert report["frames_generated"] > 0, report["spans"]
    if case.one_of_two_faces:  # side by side: the output's left and right halves against the source's
        before, after = frames(source), frames(path)
        middle = before.shape[2] // 2
        changed = [psnr(before[:, :, half], after[:, :, half]) < 38 for half in (slice(0, middle), slice(middle, None))]
        assert sorted(changed) == [False, True], changed


def slow_where(cases, names: set[str]) -> list:
    """`cases` as parameters, those named in `names` marked slow."""
    return [pytest.param(case, marks=pytest.mark.slow, id=case.name) if case.name in names else pytest.param(case, id=case.name) for case in cases]


SLOW_THROUGH_THE_LIBRARY = {"4k_60fps"}  # 2160x3840 decoding, detection and paste-back: 10 s on 2 cores


@pytest.mark.parametrize("case", slow_where(CASES, SLOW_THROUGH_THE_LIBRARY))
def test_corpus_through_the_library(case, corpus, pipeline, tmp_path):
    temp = tmp_path / "temp"
    output = tmp_path / "out.mp4"
    started = time.time()
    if case.expect == "error":
        with pytest.raises(ValueError) as raised:  # MediaError, AudioError, NoFaceError: all ValueErrors
            pipeline(corpus / case.video, corpus / case.audio, output, options_for(case), temp_dir=temp)
        message = str(raised.value)
        assert re.search(case.error, message), message
        assert message.count(". ") <= 1 and "\n" not in message  # one sentence
        assert not output.exists()
    else:
        result = pipeline(corpus / case.video, corpus / case.audio, output, options_for(case), temp_dir=temp)
        check_output(case, output, result.report.to_dict(), corpus / case.video)
    assert time.time() - started < 60
    if case.expect == "output":  # the job worked in temp_dir, and left nothing there
        assert temp.is_dir() and list(temp.iterdir()) == []
    else:  # refused before or during the job: nothing left either
        assert not temp.exists() or list(temp.iterdir()) == []
    assert not (corpus / "pwned").exists() and not (corpus / "pwned2").exists()
    if case.expect == "error":
        assert str(corpus) not in message  # names the input, never a path


def test_the_pipelines_length_limit_holds_for_what_is_decoded(corpus, pipeline, tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "max_duration_s", 1.0)
    options = LipsyncOptions(num_inference_steps=1)
    with pytest.raises(AudioError, match=r"^The audio input holds more than 1 s of audio, the limit; split it into parts.$"):
        pipeline(corpus / "face1.mp4", corpus / "repeated.ts", tmp_path / "a.mp4", options, temp_dir=tmp_path / "temp")  # declares 0.37 s
    with pytest.raises(MediaError, match=r"^The video input holds more than 1 s of video, the limit; split it into parts.$"):
        pipeline(corpus / "face5.mp4", corpus / "speech_half.wav", tmp_path / "b.mp4", options, temp_dir=tmp_path / "temp")
    assert not list(tmp_path.glob("*.mp4")) and list((tmp_path / "temp").iterdir()) == []


def test_audio_holding_more_than_the_service_limit_is_cut_off_through_the_cog_server(server, corpus, tmp_path):
    """Ten minutes and a half of audio whose header declares half a second: validation passes,
    decoding stops at the limit with one sentence, in seconds, not after decoding it all."""
    piece = tmp_path / "piece.ts"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=300:sample_rate=8000:duration=0.5", "-c:a", "aac", "-b:a", "16k", "-f", "mpegts", piece)
    long_audio = make_corpus.repeated_ts(tmp_path / "long_audio.ts", piece, 1260)
    assert probe(long_audio).audio_duration < 1.0 and long_audio.stat().st_size < 20e6
    client, _, _ = server
    started = time.time()
    body = client.post("/predictions", json={"input": {"video": data_uri(corpus / "face1.mp4"), "audio": data_uri(long_audio)}}).json()
    assert body["status"] == "failed" and time.time() - started < 60
    assert error_sentence(body) == "The audio input holds more than 10 minutes of audio, the limit; split it into parts."
    assert ready_again(client)


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
        **case.inputs,
    }
    started = time.time()
    response = post_prediction(client, inputs)
    assert time.time() - started < 300
    if video.exists():
        check_prediction(case, response, video, tmp_path)
    else:
        body = response.json()
        assert body["status"] == "failed" and "404" in body["error"]
    assert ready_again(client)
    assert not list((folder / "tmp").glob(f"{JOB_DIR_PREFIX}*"))


@pytest.fixture(scope="module")
def corpus_files(corpus):
    """The corpus on a local HTTP server, so inputs can be URLs that keep their file names."""
    with FileServer(corpus) as served:
        yield served


SLOW_THROUGH_COG = {"ts_declaring_less_than_it_holds", "midstream_resolution_change"}  # outputs of 2 s, or 8K decoding


@pytest.mark.parametrize("case", slow_where(HOSTILE, SLOW_THROUGH_COG))
def test_hostile_cases_through_the_cog_server(case, corpus, corpus_files, server, tmp_path):
    """The hostile cases, as URLs (Cog keeps their names: patterns, dashes, newlines reach us)."""
    client, _, _ = server
    inputs = {"video": f"{corpus_files.url}/{quote(case.video)}", "audio": f"{corpus_files.url}/{quote(case.audio)}", "return_report": True, **case.inputs}
    started = time.time()
    response = post_prediction(client, inputs)
    assert time.time() - started < 60
    check_prediction(case, response, corpus / case.video, tmp_path)
    assert ready_again(client)


@pytest.mark.parametrize("case", [case for case in HOSTILE if case.expect == "error"], ids=lambda case: case.name)
def test_hostile_cases_through_the_web_app(case, corpus, app, monkeypatch):
    """The refused hostile cases as a visitor's job, and each speech file also through the speech
    preview, which a client may call though the page keeps it private: the service's sentence,
    never what a playlist names, within 60 s, no ffmpeg left behind, and the app still serving."""
    url, _ = app
    monkeypatch.setattr(httpx._content, "json_dumps", json_with_nan)
    client = Client(url, verbose=False)
    preview = private_endpoint(client, "preview")
    started = time.time()
    with pytest.raises(AppError) as job:
        client.predict(handle_file(str(corpus / case.video)), handle_file(str(corpus / case.audio)), **case.inputs, api_name="/lipsync")
    assert re.search(case.error, str(job.value)) and str(corpus) not in str(job.value), str(job.value)
    if case.audio.endswith((".m3u8", ".mp3")):
        with pytest.raises(AppError) as previewed:
            client.predict(handle_file(str(corpus / case.audio)), fn_index=preview)
        assert str(previewed.value) == str(job.value)
    assert time.time() - started < 60
    deadline = time.time() + 60
    while media_processes() and time.time() < deadline:
        time.sleep(0.5)
    assert media_processes() == []
    assert client.predict(handle_file(str(corpus / "speech1.wav")), fn_index=preview)["value"].endswith(".m4a")  # still serving


def test_urls_that_fail_or_hang_end_in_one_clear_error(server, corpus, hanging_url):
    client, files, _ = server
    audio = data_uri(corpus / "speech1.wav")
    missing = client.post("/predictions", json={"input": {"video": f"{files.url}/missing.mp4", "audio": audio}}).json()
    assert missing["status"] == "failed" and "404" in missing["error"]
    assert ready_again(client)  # Cog frees the slot of a failed input download a moment after answering
    started = time.time()
    hanging = client.post("/predictions", json={"input": {"video": hanging_url, "audio": audio}}).json()
    assert hanging["status"] == "failed" and "timed out" in hanging["error"] and time.time() - started < 60
    assert ready_again(client)


def media_processes() -> list[psutil.Process]:
    """ffmpeg and ffprobe processes below this test process (the Cog server's and its worker's)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.name() in ("ffmpeg", "ffprobe") and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except psutil.NoSuchProcess:
            pass
    return found


def writing(server_folder: Path) -> bool:
    """A prediction's encoder has written frames (its video-only intermediate in the job folder
    has grown): the job is denoising and writing, and every decoder it needs is open."""
    partials = (server_folder / "tmp").glob("latentsync-outputs-*/*/work/*/*.video.mp4")
    return any(path.stat().st_size > 0 for path in partials if path.exists())


def test_a_cancelled_prediction_stops_its_ffmpeg_processes_and_the_server_serves_the_next(server, tmp_path):
    client, _, folder = server
    video, audio = small_clip(tmp_path / "long.mp4", seconds=10.0, size="540:960"), speech(tmp_path / "long.wav", 10.0)
    prediction = uuid.uuid4().hex
    # One span (no pauses kept): once writing, the job opens no input again until its end, so it
    # cannot stop by failing to reopen the inputs (Cog deletes them when it cancels).
    inputs = {"video": data_uri(video), "audio": data_uri(audio), "inference_steps": 20, "skip_silence": False}
    response = client.put(f"/predictions/{prediction}", json={"input": inputs}, headers={"Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    deadline = time.time() + 180
    while not writing(folder) and time.time() < deadline:
        time.sleep(0.2)
    assert writing(folder) and media_processes(), (folder / "server.log").read_text()[-3000:]
    assert client.post(f"/predictions/{prediction}/cancel").status_code == 200
    cancelled = time.time()
    while (media_processes() or not ready_again(client, within_s=1)) and time.time() < cancelled + 60:
        time.sleep(0.2)
    stopped_s = time.time() - cancelled
    assert media_processes() == [] and stopped_s < 20, f"{len(media_processes())} ffmpeg/ffprobe left {stopped_s:.0f} s after the cancel"
    short = small_clip(tmp_path / "short.mp4", seconds=1.0, size="540:960")
    again = client.post("/predictions", json={"input": {"video": data_uri(short), "audio": data_uri(speech(tmp_path / "short.wav", 1.0))}}).json()
    assert again["status"] == "succeeded", again.get("error")


@pytest.mark.slow  # its own Cog server with two slots; the app and the queue tests run concurrent jobs by default
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


@pytest.mark.slow  # a whole job in a subprocess killed while encoding, then one more
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
        # the encoder is what runs out of room, and the sentence names it and why
        with pytest.raises(MediaError, match=r"^Encoding out\.mp4 failed: .*No space left on device"):
            pipeline(video, audio, small / "out.mp4", LipsyncOptions(num_inference_steps=1), temp_dir=small / "temp")
        leftovers = [p for p in small.rglob("*") if p.is_file()]
        assert leftovers == [], leftovers
    finally:
        subprocess.run(["umount", str(small)], check=False)
