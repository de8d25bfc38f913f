"""The web app on 127.0.0.1 with the tiny random models, driven through its `lipsync` endpoint by
the real gradio_client: results, progress, the queue, the result cache, errors and cancelling."""

import re
import subprocess
import time
from pathlib import Path

import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError
from gradio_client.utils import Status

from latentsync.config import PRESETS, SERVICE_INPUTS
from latentsync.media.probe import MediaError, probe
from latentsync.timeline import DPI, FIGURE_SIZE
from latentsync.validation import check_inputs
from tests.app_server import app_process
from tests.cog_server import free_port
from tests.faults import CUDA_ERROR
from tests.http_fixtures import FileServer
from tests.media import ffmpeg, small_clip, speech

AUDIO_S = 1.2  # the audio sets the output's length (bounce mode): 30 frames, two windows


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("app_media")
    return small_clip(folder / "clip.mp4", seconds=1.0), speech(folder / "speech.wav", AUDIO_S, start=1.0), folder


def submit(client: Client, video, audio, **options):
    return client.submit(handle_file(str(video)), handle_file(str(audio)), **options, api_name="/lipsync")


def watch(job) -> list:
    """Every status the client sees until the job ends."""
    statuses = []
    while not job.done():
        statuses.append(job.status())
        time.sleep(0.02)
    return statuses


@pytest.fixture(scope="module")
def first_job(app, media):
    url, _ = app
    video, audio, _ = media
    job = submit(Client(url, verbose=False), video, audio, seed=7)
    statuses = watch(job)
    return job.result(), statuses


def test_the_endpoint_takes_every_cog_input_by_name_with_its_default(app):
    url, _ = app
    api = Client(url, verbose=False).view_api(print_info=False, return_format="dict")
    options = [name for name in SERVICE_INPUTS if name not in ("return_report", "plan_only")]  # the page returns the report; plans have /plan
    for endpoint in ("/lipsync", "/plan"):
        parameters = api["named_endpoints"][endpoint]["parameters"]
        assert [p["parameter_name"] for p in parameters] == ["video", "audio", *options, "segment_audio"]
        assert {p["parameter_name"]: p["parameter_default"] for p in parameters[2:-1]} == {name: SERVICE_INPUTS[name].default for name in options}
        assert [p["parameter_has_default"] for p in parameters] == [False] + [True] * (len(parameters) - 1)  # the audio too: segments may bring theirs
    assert [r["label"] for r in api["named_endpoints"]["/lipsync"]["returns"]] == ["Lip-synced", "Report", "Timeline"]
    assert list(api["named_endpoints"]) == ["/lipsync", "/plan"]  # the page's own events stay private


def test_a_job_returns_the_video_its_report_and_the_timeline(first_job, media):
    (video, report, picture), _ = first_job
    info = probe(Path(video))
    assert (info.width, info.height, info.fps) == (540, 960, 25.0) and info.has_audio
    assert abs(info.duration - AUDIO_S) <= 0.04 and abs(info.audio_duration - AUDIO_S) <= 0.05
    assert report["frames"] == 30 and report["seed"] == 7 and report["version"] == "1.6" and report["cache"] == "miss"
    assert report["spans"][0]["start"] == 0 and report["spans"][-1]["end"] == AUDIO_S
    assert report["options"]["num_inference_steps"] == SERVICE_INPUTS["inference_steps"].default
    assert report["options"]["enable_deepcache"] is SERVICE_INPUTS["enable_deepcache"].default
    assert Path(picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_progress_moves_with_frames_analysed_and_written(first_job):
    _, statuses = first_job
    units = [unit for status in statuses if status.code is Status.PROGRESS for unit in status.progress_data or []]
    analysed = [u.index for u in units if u.desc == "Finding faces"]
    written = [u.index for u in units if (u.desc or "").startswith("Lip-syncing")]
    assert analysed and written, [(u.desc, u.index, u.length) for u in units]
    assert {u.length for u in units if u.desc == "Finding faces"} == {25}  # the video's frames
    assert {u.length for u in units if (u.desc or "").startswith("Lip-syncing")} == {30}  # the output's frames
    assert analysed == sorted(analysed) and written == sorted(written) and len(set(analysed + written)) >= 3
    assert any("windows denoised" in (u.desc or "") for u in units)


def test_a_repeat_is_answered_from_the_result_cache(app, media, first_job):
    url, _ = app
    video, audio, _ = media
    (first_video, _, _), _ = first_job
    started = time.monotonic()
    again, report, _ = Client(url, verbose=False).predict(handle_file(str(video)), handle_file(str(audio)), seed=7, api_name="/lipsync")
    assert report["cache"] == "hit" and time.monotonic() - started < 60
    assert Path(again).read_bytes() == Path(first_video).read_bytes()


@pytest.mark.parametrize("bad", ["garbage", "no_audio", "out_of_range"])
def test_a_bad_request_gets_the_services_message_and_the_app_keeps_serving(app, media, first_job, bad):
    url, _ = app
    video, audio, folder = media
    client = Client(url, verbose=False)
    options = {"seed": 7}
    if bad == "garbage":
        video = folder / "broken.mp4"
        video.write_bytes(b"this is not a video" * 100)
        expected = _service_message(video, audio)
    elif bad == "no_audio":
        audio = folder / "silent.mp4"
        small_clip(folder / "with_audio.mp4", seconds=1.0)
        silent_copy(folder / "with_audio.mp4", audio)
        expected = _service_message(video, audio)
    else:
        options["guidance_scale"] = 5.0
        expected = "guidance_scale must be between 1 and 3, got 5."
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(video)), handle_file(str(audio)), **options, api_name="/lipsync")
    assert _without_paths(str(error.value)) == _without_paths(expected)  # ffprobe's detail names the file where it lies
    _, report, _ = client.predict(handle_file(str(media[0])), handle_file(str(media[1])), seed=7, api_name="/lipsync")
    assert report["cache"] == "hit"  # still serving


def test_a_device_error_fails_the_job_with_its_sentence_and_leaves_nothing(app, media, first_job):
    url, folder = app
    video, audio, _ = media
    client = Client(url, verbose=False)
    (folder / "fault").touch()  # the app's U-Net now raises a CUDA error (tests.faults)
    try:
        with pytest.raises(AppError) as error:
            client.predict(handle_file(str(video)), handle_file(str(audio)), seed=21, api_name="/lipsync")
    finally:
        (folder / "fault").unlink()
    assert str(error.value) == f"The model failed on the CPU while denoising 0.00-0.64 s: RuntimeError: {CUDA_ERROR}"
    assert not list((folder / "data" / "results").glob(".*.partial"))
    _, report, _ = client.predict(handle_file(str(video)), handle_file(str(audio)), seed=21, api_name="/lipsync")
    assert report["cache"] == "miss" and report["frames_generated"] > 0  # the failure was not cached; still serving


def test_two_clients_queue_and_both_get_their_results(app, media):
    url, _ = app
    video, audio, _ = media
    first, second = Client(url, verbose=False), Client(url, verbose=False)
    running = submit(first, video, audio, seed=11)
    while running.status().code not in (Status.PROCESSING, Status.PROGRESS, Status.FINISHED):
        time.sleep(0.02)
    waiting = submit(second, video, audio, seed=12)
    seen = watch(waiting)
    assert any(s.code is Status.IN_QUEUE and s.rank == 0 for s in seen)  # the second waited its turn, first in line
    reports = [running.result()[1], waiting.result()[1]]
    assert [r["seed"] for r in reports] == [11, 12] and all(r["cache"] == "miss" for r in reports)


def test_a_cancelled_job_stops_and_leaves_nothing_behind(app, media):
    url, folder = app
    video, audio, _ = media
    job = submit(Client(url, verbose=False), video, audio, seed=13)
    while not any(u.desc == "Finding faces" for u in (job.status().progress_data or [])):
        time.sleep(0.02)
    job.cancel()
    deadline = time.monotonic() + 60
    while list((folder / "data" / "results").glob(".*.partial")) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not list((folder / "data" / "results").glob(".*.partial"))
    assert "JobCancelled" not in (folder / "app.log").read_text()  # ended quietly, not as a crash


def test_without_its_weights_the_app_says_so_and_exits(tmp_path):
    with FileServer(tmp_path / "nothing") as weights:  # every weight file is a 404
        process = app_process(tmp_path, weights.url, free_port(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        _, stderr = process.communicate(timeout=300)
    assert process.returncode == 1
    assert stderr.splitlines()[-1].startswith(f"error: tiny/latentsync_unet.pt from {weights.url}/tiny/latentsync_unet.pt: HTTP 404")


def test_the_presets_are_within_the_inputs_ranges():
    for preset in PRESETS.values():
        for name, value in preset.inputs.items():
            spec = SERVICE_INPUTS[name]
            assert isinstance(value, spec.kind)
            assert spec.minimum is None or spec.minimum <= value <= spec.maximum


def test_the_apps_log_has_no_library_noise(app, first_job):
    _, folder = app
    log = (folder / "app.log").read_text()
    assert "setup: weights ready" in log and "fetched tiny/latentsync_unet.pt" in log
    for noise in ("HTTP Request", "GetPrototype", "XNNPACK", "Feedback manager", "accelerate", "InitializeLog"):
        assert noise not in log, noise


def _service_message(video: Path, audio: Path) -> str:
    with pytest.raises(MediaError) as error:
        check_inputs(video, audio)
    return str(error.value)


def _without_paths(message: str) -> str:
    return re.sub(r"file:\S*/", "file:", message)


def silent_copy(source: Path, target: Path) -> None:
    ffmpeg("-i", source, "-an", "-c:v", "copy", target)



# ---- segments and plans --------------------------------------------------------------------


def test_a_segment_job_and_its_plan_through_the_endpoints(app, media):
    url, _ = app
    video, audio, folder = media
    client = Client(url, verbose=False)
    clip = speech(folder / "line.wav", 0.8, start=5.0)
    segments = '[{"start": 0.2, "end": 0.84, "audio": 0, "inference_steps": 25}]'
    plan, picture, line = client.predict(handle_file(str(video)), segments=segments, segment_audio=[handle_file(str(clip))], api_name="/plan")
    assert plan["kind"] == "plan" and plan["windows"] == 1 and plan["work"] == [{"steps": 25, "guidance": 1.5, "windows": 1}]
    assert "Plan: 16 of 25 frames to regenerate" in line and "GPU s of denoising" in line and Path(picture).stat().st_size > 10_000
    lipsynced, report, timeline = client.predict(handle_file(str(video)), segments=segments, segment_audio=[handle_file(str(clip))], api_name="/lipsync")
    assert report["spans"] == plan["spans"] and report["segments"][0]["steps"] == 25 and report["unet_window_steps"] == 25
    assert abs(probe(Path(lipsynced)).duration - 1.0) <= 0.04  # the video's length


@pytest.mark.parametrize("segments,clips,message", [
    ('[{"start": 0.1, "end": 0.5}, {"start": 0.3, "end": 0.9}]', 0, "segment 2 (0.30-0.90 s) overlaps segment 1 (0.10-0.50 s); segments must not overlap."),
    ('[{"start": 0.5, "end": 4}]', 0, "segment 1 (0.50-4.00 s) ends after the video, which is 1.00 s long."),
    ('[{"start": 0.5, "end": 0.5}]', 0, "segment 1 is empty or reversed (start 0.5 s, end 0.5 s): end must be after start."),
    ('[{"start": 0.1, "end": 0.5, "audio": 0, "audio_start": 7}]', 1, "segment 1 (0.10-0.50 s) starts its speech at 7.00 s of its audio, which is only 1.20 s long."),
    ('[{"start": 0.1, "end": 0.5, "audio": 3}]', 1, "segment 1's audio must be the index of its file in segment_audio (0 to 0), got 3."),
])
def test_a_bad_segment_list_gets_its_sentence_and_the_app_keeps_serving(app, media, first_job, segments, clips, message):
    url, _ = app
    video, audio, _ = media
    client = Client(url, verbose=False)
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(video)), handle_file(str(audio)), segments=segments, segment_audio=[handle_file(str(audio))] * clips,
                       api_name="/lipsync")
    assert str(error.value) == message
    _, report, _ = client.predict(handle_file(str(video)), handle_file(str(audio)), seed=7, api_name="/lipsync")
    assert report["cache"] == "hit"  # still serving
