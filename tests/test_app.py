"""The web app on 127.0.0.1 with the tiny random models, driven through its `lipsync` endpoint by
the real gradio_client: results, progress, the queue, the result cache, errors and cancelling."""

import logging
import os
import re
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import gradio as gr
import httpx
import psutil
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, AuthenticationError
from gradio_client.utils import Status

import latentsync.app.jobs as jobs_module
from latentsync.app.__main__ import parse_args
from latentsync.app.jobs import Jobs
from latentsync.app.page import SERVER_ERROR, LipsyncPage, option_widget, told_in_one_sentence
from latentsync.cache import ResultCache
from latentsync.config import APP_BROWSERS_KEPT, APP_CHECKS_AT_ONCE, APP_MAX_QUEUE, PRESETS, SERVICE_INPUTS
from latentsync.media.probe import MediaError, probe
from latentsync.timeline import DPI, FIGURE_SIZE
from latentsync.validation import check_inputs
from scripts import make_corpus
from tests.app_server import app_process, json_with_nan, private_endpoint, running_app
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
def client(app):
    """One visitor: the client of the first job, whose repeats the result cache answers."""
    url, _ = app
    return Client(url, verbose=False)


@pytest.fixture(scope="module")
def first_job(client, media):
    video, audio, _ = media
    job = submit(client, video, audio, seed=7)
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


def test_a_repeat_is_answered_from_the_result_cache(client, media, first_job):
    video, audio, _ = media
    (first_video, _, _), _ = first_job
    started = time.monotonic()
    again, report, _ = client.predict(handle_file(str(video)), handle_file(str(audio)), seed=7, api_name="/lipsync")
    assert report["cache"] == "hit" and time.monotonic() - started < 60
    assert Path(again).read_bytes() == Path(first_video).read_bytes()


def test_another_visitor_is_not_told_that_someone_ran_the_same_job(app, media, first_job):
    """The result cache answers a visitor's own repeats only: a hit for the same video and audio
    would tell a second visitor that someone else already ran them."""
    url, _ = app
    video, audio, _ = media
    _, report, _ = Client(url, verbose=False).predict(handle_file(str(video)), handle_file(str(audio)), seed=7, api_name="/lipsync")
    assert report["cache"] == "miss" and report["seed"] == 7


NOT_NUMBERS = {
    "nan_guidance": ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number, got nan."),
    "inf_seed": ({"seed": float("inf")}, "seed must be a finite number, got inf."),
    "huge_seed": ({"seed": 1e300}, "seed must be between -1 and 4294967295, got 1e+300."),
    "nan_confidence": ({"min_sync_confidence": float("nan")}, "min_sync_confidence must be a finite number, got nan."),
}


@pytest.mark.parametrize("bad", ["garbage", "no_audio", "out_of_range", "playlist_as_video", *NOT_NUMBERS])
def test_a_bad_request_gets_the_services_message_and_the_app_keeps_serving(client, media, first_job, bad, monkeypatch):
    monkeypatch.setattr(httpx._content, "json_dumps", json_with_nan)
    video, audio, folder = media
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
    elif bad == "playlist_as_video":
        video = make_corpus.hls_playlist(folder / "talk.mp4", make_corpus.clip(folder / "elsewhere.ts", 1.0, extra=("-f", "mpegts")))
        expected = "The video input is an HLS playlist, which can refer to other files and is not accepted; pass a video file (mp4, mov, mkv, webm, avi, ts, or a still image) itself."
    elif bad in NOT_NUMBERS:  # refused before any file is read, as JSON's NaN and Infinity reach the server
        options, expected = {"seed": 7, **NOT_NUMBERS[bad][0]}, NOT_NUMBERS[bad][1]
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


def test_a_cancelled_job_leaves_no_result_and_no_cache_entry(app, media):
    url, folder = app
    video, audio, _ = media
    results = folder / "data" / "results"
    before = finished_results(results)
    # Gradio answers a cancel once the job's handler has returned: give it time to, so that a job
    # that ignores its cancel is caught by what it leaves below rather than by a client time-out.
    job = submit(Client(url, verbose=False, httpx_kwargs={"timeout": 120}), video, audio, seed=13)
    while not any(u.desc == "Finding faces" for u in (job.status().progress_data or [])):
        time.sleep(0.02)
    job.cancel()
    # The same request again: it runs once the cancelled job has let go of the model and of the
    # request's cache entry, and finds nothing cached; only its own result is listed.
    _, report, _ = Client(url, verbose=False).predict(handle_file(str(video)), handle_file(str(audio)), seed=13, api_name="/lipsync")
    assert report["cache"] == "miss" and report["seed"] == 13
    assert len(finished_results(results) - before) == 1
    assert not list(results.glob(".*.partial"))
    assert "JobCancelled" not in (folder / "app.log").read_text()  # ended quietly, not as a crash


def finished_results(results: Path) -> set[str]:
    return {path.name for path in results.iterdir() if not path.name.startswith(".")}


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
def test_a_bad_segment_list_gets_its_sentence_and_the_app_keeps_serving(client, media, first_job, segments, clips, message):
    video, audio, _ = media
    with pytest.raises(AppError) as error:
        client.predict(handle_file(str(video)), handle_file(str(audio)), segments=segments, segment_audio=[handle_file(str(audio))] * clips,
                       api_name="/lipsync")
    assert str(error.value) == message
    _, report, _ = client.predict(handle_file(str(video)), handle_file(str(audio)), seed=7, api_name="/lipsync")
    assert report["cache"] == "hit"  # still serving
# ---- facing a network: logins, limits and what the page lets through ------------------------------

LOGIN = ("editor", "s3cret-4417-pass")  # from the environment: never on the command line
SECOND_LOGIN = ("reviewer", "other-9902-pass")  # from a file


@pytest.fixture(scope="module")
def locked_app(tmp_path_factory):
    """An app with logins (one from $LATENTSYNC_APP_AUTH, one from --auth-file), offering 1.6
    only, with room for one waiting job."""
    folder = tmp_path_factory.mktemp("locked_app")
    logins = folder / "logins.txt"
    logins.write_text(f"# who may use it\n{':'.join(SECOND_LOGIN)}\n")
    args = ("--versions", "1.6", "--max-queue", "1", "--auth-file", str(logins))
    with running_app(folder, args=args, env={"LATENTSYNC_APP_AUTH": ":".join(LOGIN)}) as url:
        yield url, folder


def test_a_login_is_required_for_the_page_and_the_api(locked_app, media):
    url, _ = locked_app
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(url, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(url, auth=(LOGIN[0], "wrong"), verbose=False)
    assert httpx.get(f"{url}config").status_code == httpx.post(f"{url}gradio_api/upload", files={"files": ("a.wav", b"x")}).status_code == 401
    for login in (LOGIN, SECOND_LOGIN):
        assert "/lipsync" in Client(url, auth=login, verbose=False).view_api(print_info=False, return_format="dict")["named_endpoints"]
    app_command = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True) if "latentsync.app" in " ".join(p.cmdline())]
    assert app_command and not any(LOGIN[1] in line or SECOND_LOGIN[1] in line for line in app_command)


def test_a_version_the_server_does_not_offer_is_refused(locked_app, media):
    url, folder = locked_app
    video, audio, _ = media
    client = Client(url, auth=LOGIN, verbose=False)
    with pytest.raises(AppError, match=r"^version must be one of 1\.6 on this server, got '1\.5'\.$"):
        client.predict(handle_file(str(video)), handle_file(str(audio)), version="1.5", api_name="/lipsync")
    [version] = [p for p in client.view_api(print_info=False, return_format="dict")["named_endpoints"]["/lipsync"]["parameters"] if p["parameter_name"] == "version"]
    assert version["type"].get("enum") == ["1.6"], version  # the page offers what the server does


def test_a_full_queue_turns_the_next_visitor_away(locked_app, media):
    url, _ = locked_app
    video, audio, _ = media
    running, waiting, turned_away = (Client(url, auth=LOGIN, verbose=False) for _ in range(3))
    first = submit(running, video, audio, seed=21)
    while first.status().code not in (Status.PROCESSING, Status.PROGRESS):
        time.sleep(0.05)
    second = submit(waiting, video, audio, seed=22)
    while second.status().code is not Status.IN_QUEUE:
        time.sleep(0.05)
    third = submit(turned_away, video, audio, seed=23)
    with pytest.raises(Exception, match=r"(?i)queue is full"):
        third.result()
    for job in (first, second):  # no need to finish them
        job.cancel()


def test_an_upload_carries_two_files_at_most(app):
    url, _ = app
    upload = f"{url}gradio_api/upload"
    assert len(httpx.post(upload, files=[("files", (f"{n}.wav", b"RIFF" * 10)) for n in range(2)]).json()) == 2  # the video and the speech
    refused = httpx.post(upload, files=[("files", (f"{n}.wav", b"RIFF" * 10)) for n in range(3)])
    assert (refused.status_code, refused.text) == (413, "An upload may carry at most 2 files (the video and the speech).")


def test_an_upload_declaring_more_than_two_files_can_hold_is_refused_before_it_is_read(app):
    url, _ = app
    port = int(url.rstrip("/").rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary=x\r\n"
                           b"Content-Length: 5000000000\r\n\r\n--x\r\n")
        answer = b"".join(iter(lambda: connection.recv(4096), b"")).decode()  # the server closes the connection
    assert answer.startswith("HTTP/1.1 413") and answer.endswith("An upload may carry at most 2 files of 2 GB."), answer


def test_a_url_input_is_fetched_only_from_the_internet(app, media, tmp_path):
    """A client may pass a URL for a file input: the server fetches it only from a public address
    (nothing on its own machine or network), up to the service's size (see test_uploads.py)."""
    url, _ = app
    _, audio, folder = media
    with FileServer(folder) as served:
        with pytest.raises(AppError, match=r"^The URL input is not on a public address; the web app fetches only from the internet: upload the file instead\.$"):
            Client(url, verbose=False).predict(handle_file(f"{served.url}/clip.mp4"), handle_file(str(audio)), api_name="/lipsync")
        assert not served.requests


def test_a_browser_id_the_page_did_not_make_is_replaced(app):
    url, _ = app
    client = Client(url, verbose=False)
    restore = private_endpoint(client, "restore")
    for sent in ("../" * 20, "x" * 100_000, None):
        kept = client.predict(sent, fn_index=restore)[0]
        assert re.fullmatch(r"[0-9a-f]{32}", kept), kept
    ours = uuid.uuid4().hex
    assert client.predict(ours, fn_index=restore)[0] == ours


@pytest.fixture
def page(tmp_path):
    jobs = Jobs(models=None, data_dir=tmp_path, versions=("1.6",))
    return LipsyncPage(jobs, "1.6")


def test_results_previews_and_cached_results_go_after_the_hours_kept(tmp_path):
    keep_s, now = 2 * 3600, time.time()
    cache = ResultCache(tmp_path / "cache", max_age_s=keep_s)
    jobs = Jobs(models=SimpleNamespace(cache=cache), data_dir=tmp_path, versions=("1.6",), keep_s=keep_s)
    aged = {jobs.results_dir / "old": 3 * 3600, jobs.results_dir / "new": 3600,
            jobs.previews_dir / "old.m4a": 1.5 * 3600, jobs.previews_dir / "new.m4a": 600}  # a preview is played once: an hour at most
    for path, age in aged.items():
        path.mkdir() if path.suffix == "" else path.write_bytes(b"x")
        os.utime(path, (now - age, now - age))
    for key, age in (("old", 3 * 3600), ("new", 3600)):
        cache.get_or_create(key, lambda folder: (folder / "out.mp4").write_bytes(b"video"))
        os.utime(cache.entries / key / "entry.json", (now - age, now - age))
    jobs.remove_old()
    assert sorted(p.name for p in jobs.results_dir.iterdir()) == ["new"] and sorted(p.name for p in jobs.previews_dir.iterdir()) == ["new.m4a"]
    assert sorted(p.name for p in cache.entries.iterdir()) == ["new"]
    assert LipsyncPage(jobs, "1.6").build().delete_cache == (1800, keep_s)  # Gradio's copies of the uploads too, looked for every 30 min
    assert parse_args(["--keep-hours", "0.5"]).keep_hours == 0.5
    for refused in ("0", "-1", "nan", "inf"):
        with pytest.raises(SystemExit):
            parse_args(["--keep-hours", refused])


def test_every_event_runs_a_bounded_number_at_once(page):
    blocks = page.build()
    blocks.queue(default_concurrency_limit=1, max_size=APP_MAX_QUEUE)
    limits = {fn.name: fn.concurrency_limit for fn in blocks.fns.values()}
    assert limits["check"] == limits["preview"] == APP_CHECKS_AT_ONCE and limits["lipsync"] == 1
    assert None not in limits.values(), limits  # None is Gradio's "no limit"; "default" is the queue's 1


def test_what_a_browser_sends_cannot_grow_the_servers_memory(page, monkeypatch):
    monkeypatch.setattr(jobs_module, "APP_RESULTS_PER_BROWSER", 3)
    for n in range(APP_BROWSERS_KEPT + 500):
        page.jobs.remember(f"{n:032x}", "job")
    assert len(page.jobs._by_browser) == APP_BROWSERS_KEPT
    assert page.jobs._by_browser.get(f"{0:032x}") is None and page.jobs._by_browser.get(f"{APP_BROWSERS_KEPT + 499:032x}") == ["job"]
    for n in range(10):
        page.jobs.remember("f" * 32, f"job{n}")
    assert page.jobs._by_browser.get("f" * 32) == ["job7", "job8", "job9"]
    for n in range(APP_BROWSERS_KEPT + 500):
        page._browsers.put(f"session{n}", "f" * 32)
    assert len(page._browsers) == APP_BROWSERS_KEPT


def test_an_unexpected_failure_reaches_the_visitor_as_one_sentence_and_the_log_in_full(caplog):
    with pytest.raises(gr.Error) as shown, caplog.at_level(logging.ERROR, logger="latentsync"):
        with told_in_one_sentence():
            raise KeyError("/srv/app/secret/internal.key")
    assert shown.value.message == SERVER_ERROR and "secret" not in SERVER_ERROR
    assert "internal.key" in caplog.text  # the details, for the operator
    with pytest.raises(gr.Error) as refused, told_in_one_sentence():
        raise MediaError("The video input is empty (0 bytes).")
    assert refused.value.message == "The video input is empty (0 bytes)."


def test_the_seed_is_a_number_box_with_the_generators_range(page):
    widget = option_widget("seed", SERVICE_INPUTS["seed"])
    assert isinstance(widget, gr.Number) and (widget.minimum, widget.maximum, widget.precision) == (-1, 2**32 - 1, 0)
    assert isinstance(option_widget("crf", SERVICE_INPUTS["crf"]), gr.Slider)
