"""The predictor under Cog's real HTTP server, with tiny weights downloaded from a local server."""

import base64
import json
import os
import re
import threading
import time

import httpx
import pytest
import yaml
from packaging.utils import canonicalize_name, parse_sdist_filename, parse_wheel_filename

from latentsync.config import REPO_ROOT
from latentsync.media.probe import probe
from scripts.lock_image import ONNXRUNTIME_GPU
from tests.cog_server import data_uri, ready_again, running_cog_server
from tests.faults import CUDA_ERROR, FAULT_FILE_VARIABLE
from tests.http_fixtures import FileServer
from tests.media import small_clip, speech


MIRROR_SECRETS = ("mirror-pass-0451", "mirror-token-9966")


@pytest.fixture(scope="module")
def mirror(tmp_path_factory):
    """A mirror of the weights server, reached with a user, password and token in
    LATENTSYNC_WEIGHTS_BASE_URL: setup downloads from it."""
    folder = tmp_path_factory.mktemp("cog")
    with FileServer(folder / "files") as served:  # the files running_cog_server lays out there
        yield folder, served, served.url.replace("http://", f"http://weights:{MIRROR_SECRETS[0]}@") + f"/?token={MIRROR_SECRETS[1]}"


@pytest.fixture(scope="module")
def server(mirror):
    """predict.py under Cog's server, with `tests.faults` installed: its U-Net raises a CUDA error
    while the file `folder`/fault exists (see test_a_device_error_fails_the_prediction_...)."""
    folder, _, base_url = mirror
    with running_cog_server(folder, LATENTSYNC_WEIGHTS_BASE_URL=base_url, COG_PREDICT_TYPE_STUB="tests/faulty_predictor.py:Predictor",
                            **{FAULT_FILE_VARIABLE: str(folder / "fault")}) as running:
        yield running


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return small_clip(folder / "clip.mp4", seconds=1.0, size="540:960"), speech(folder / "speech.wav", 1.0, start=1.0)


def test_setup_downloaded_the_weights_from_the_mirror_and_logged_no_credential(server, mirror):
    client, files, folder = server
    _, served, _ = mirror
    assert (folder / "weights" / "tiny" / "latentsync_unet.pt").exists()
    unet = [r for r in served.requests if r["path"] == "/tiny/latentsync_unet.pt"]
    assert unet and not files.requests  # every file from the mirror
    assert all(r["query"] == f"token={MIRROR_SECRETS[1]}" and r["authorization"].startswith("Basic ") for r in unet)
    log = (folder / "server.log").read_text()
    assert "fetched tiny/latentsync_unet.pt" in log
    assert not any(secret in log for secret in MIRROR_SECRETS)


def test_openapi_shows_every_input_with_its_limits(server):
    client, _, _ = server
    inputs = client.get("/openapi.json").json()["components"]["schemas"]["Input"]
    properties = inputs["properties"]
    assert set(inputs["required"]) == {"video"}  # the audio too, unless every segment has its own (the predictor says so)
    assert properties["video"]["format"] == "uri" and properties["audio"]["format"] == "uri"
    assert properties["segment_audio"]["type"] == "array" and properties["segment_audio"]["items"]["format"] == "uri"
    assert properties["segments"]["default"] == "" and properties["plan_only"]["default"] is False
    assert (properties["guidance_scale"]["minimum"], properties["guidance_scale"]["maximum"], properties["guidance_scale"]["default"]) == (1.0, 3.0, 1.5)
    assert (properties["inference_steps"]["minimum"], properties["inference_steps"]["maximum"], properties["inference_steps"]["default"]) == (20, 50, 20)
    assert properties["seed"]["default"] == 1247
    assert properties["version"]["enum"] == ["1.5", "1.6"] and properties["version"]["default"] == "1.6"
    assert properties["enable_deepcache"]["default"] is True
    assert set(properties["length_mode"]["enum"]) == {"bounce", "loop", "cut_off", "silence", "remap"}
    assert all(p.get("description") for p in properties.values())


def predict(client, **inputs) -> httpx.Response:
    return client.post("/predictions", json={"input": inputs})


def test_a_prediction_returns_a_playable_mp4(server, media, tmp_path):
    client, _, _ = server
    video, audio = media
    response = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), seed=7)
    body = response.json()
    assert response.status_code == 200 and body["status"] == "succeeded", body.get("error")
    assert body["output"].startswith("data:video/mp4;base64,")
    out = tmp_path / "out.mp4"
    out.write_bytes(base64.b64decode(body["output"].split(",", 1)[1]))
    info = probe(out)
    assert (info.width, info.height, info.fps) == (540, 960, 25.0) and info.has_audio
    assert "Using seed: 7" in body["logs"]


def test_the_report_option_returns_video_and_report(server, media):
    client, _, _ = server
    video, audio = media
    body = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), return_report=True, version="1.5").json()
    assert body["status"] == "succeeded", body.get("error")
    assert body["output"]["video"].startswith("data:video/mp4") and body["output"]["report"]["version"] == "1.5"
    assert body["output"]["report"]["spans"]


@pytest.mark.parametrize("bad", [{"guidance_scale": 5}, {"version": "2.0"}, {"inference_steps": 10}, {"seed": 1e300}, {"seed": 2**32}, {"seed": -5}])
def test_out_of_range_inputs_are_rejected_and_the_server_keeps_serving(server, media, bad):
    client, _, _ = server
    video, audio = media
    response = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), **bad)
    assert response.status_code == 422
    [problem] = response.json()["detail"]  # one sentence on the one input, before the predictor runs
    assert problem["loc"][-1] == next(iter(bad)) and "\n" not in problem["msg"]
    assert ready_again(client)


def test_options_are_checked_before_the_files_are_read(server, media, tmp_path):
    """A speaker point of NaNs passes Cog's schema (it is a string); the predictor refuses it
    before it reads the files, so a broken video does not get to speak first."""
    client, _, _ = server
    _, audio = media
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video" * 100)
    body = predict(client, video=data_uri(broken, "video/mp4"), audio=data_uri(audio, "audio/wav"), speaker_point="nan,nan").json()
    assert body["status"] == "failed"
    assert body["error"].endswith("speaker_point must be 'x,y' or 'x,y,frame' (pixels, frame number), got 'nan,nan'.")
    assert ready_again(client)


@pytest.mark.parametrize("number", ['"guidance_scale": NaN', '"min_sync_confidence": NaN', '"seed": Infinity', '"seed": -Infinity'])
def test_numbers_that_are_not_numbers_are_refused_before_the_predictor_runs(server, media, number):
    """NaN and Infinity are not JSON, though Python's json writes and reads them."""
    client, _, folder = server
    video, audio = media
    body = f'{{"input": {{"video": "{data_uri(video, "video/mp4")}", "audio": "{data_uri(audio, "audio/wav")}", {number}}}}}'
    predictions = len(re.findall("Starting prediction", (folder / "server.log").read_text()))
    response = client.post("/predictions", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422) and number.split(":")[0].strip('"') in response.text
    assert len(re.findall("Starting prediction", (folder / "server.log").read_text())) == predictions  # no prediction started
    assert ready_again(client)


def test_a_text_file_as_video_fails_with_one_clear_sentence(server, media, tmp_path):
    client, _, _ = server
    _, audio = media
    text = tmp_path / "notes.mp4"
    text.write_text("definitely not a video\n" * 20)
    body = predict(client, video=data_uri(text, "video/mp4"), audio=data_uri(audio, "audio/wav")).json()
    assert body["status"] == "failed"
    assert body["error"].endswith("The video input is not a readable video file (Invalid data found when processing input).")
    assert "/tmp" not in body["error"] and "file.mp4" not in body["error"]  # Cog's temp name stays on the server
    video, _ = media
    assert ready_again(client)  # Cog reports BUSY for a moment after a failed prediction
    again = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav")).json()
    assert again["status"] == "succeeded"


def test_a_device_error_fails_the_prediction_with_its_sentence_and_the_next_one_succeeds(server, media, mirror):
    client, _, _ = server
    fault = mirror[0] / "fault"
    video, audio = media
    inputs = dict(video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"))
    fault.touch()
    try:
        body = predict(client, **inputs).json()
    finally:
        fault.unlink()
    assert body["status"] == "failed" and body.get("output") is None
    assert body["error"].endswith(f"The model failed on the CPU while denoising 0.00-0.64 s: RuntimeError: {CUDA_ERROR}")
    assert ready_again(client)
    again = predict(client, **inputs).json()
    assert again["status"] == "succeeded" and again["metrics"]["failed_windows"] == 0, again.get("error")


# ---- segments and plans --------------------------------------------------------------------


def test_a_segment_with_its_own_audio_regenerates_only_its_frames(server, media, tmp_path):
    client, _, _ = server
    video, audio = media
    name = speech(tmp_path / "name.wav", 0.7, start=4.0)
    body = predict(client, video=data_uri(video, "video/mp4"), segments=json.dumps([{"start": 0.2, "end": 0.84, "audio": 0}]),
                   segment_audio=[data_uri(name, "audio/wav")], return_report=True, seed=7).json()
    assert body["status"] == "succeeded", body.get("error")
    report = body["output"]["report"]
    assert [(s["start"], s["end"], s["action"]) for s in report["spans"]] == [(0.0, 0.2, "outside_segments"), (0.2, 0.84, "generated"), (0.84, 1.0, "outside_segments")]
    assert report["segments"][0]["audio"] == "own" and report["segments"][0]["windows"] == 1 and report["unet_window_steps"] == 20
    out = tmp_path / "out.mp4"
    out.write_bytes(base64.b64decode(body["output"]["video"].split(",", 1)[1]))
    assert abs(probe(out).duration - 1.0) < 0.05  # the video's length, not the audio's


def test_plan_only_returns_the_plan_as_json_without_running_the_model(server, media):
    client, _, _ = server
    video, audio = media
    body = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), plan_only=True).json()
    assert body["status"] == "succeeded", body.get("error")
    assert body["output"].startswith("data:application/json;base64,")
    plan = json.loads(base64.b64decode(body["output"].split(",", 1)[1]))
    assert plan["kind"] == "plan" and plan["frames"] == 25 and plan["windows"] == body["metrics"]["windows_planned"] == 2
    assert plan["estimate"]["version"] == "1.6" and plan["estimate"]["gpu_seconds"] > 0 and plan["estimate"]["basis"].startswith("measured: NVIDIA H200")
    assert not any(line.startswith("render ") for line in body["logs"].splitlines())  # analysed, not rendered


@pytest.mark.parametrize("segments,files,message", [
    ([{"start": 0.1, "end": 0.5}, {"start": 0.4, "end": 0.9}], 0, "segment 2 (0.40-0.90 s) overlaps segment 1 (0.10-0.50 s); segments must not overlap."),
    ([{"start": 0.5, "end": 3.0}], 0, "segment 1 (0.50-3.00 s) ends after the video, which is 1.00 s long."),
    ([{"start": 0.6, "end": 0.2}], 0, "segment 1 is empty or reversed (start 0.6 s, end 0.2 s): end must be after start."),
    ([{"start": 0.1, "end": 0.5, "audio": 1}], 1, "segment 1's audio must be the index of its file in segment_audio (0 to 0), got 1."),
    ([{"start": 0.1, "end": 0.5, "audio": 0, "audio_start": 9}], 1, "segment 1 (0.10-0.50 s) starts its speech at 9.00 s of its audio, which is only 1.00 s long."),
    ("[{\"start\": 0.1, \"end\": Infinity}]", 0, "segments must be a JSON list like"),
])
def test_a_bad_segment_list_fails_with_its_sentence_and_the_server_keeps_serving(server, media, segments, files, message):
    client, _, _ = server
    video, audio = media
    listing = segments if isinstance(segments, str) else json.dumps(segments)
    body = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), segments=listing,
                   segment_audio=[data_uri(audio, "audio/wav")] * files).json()
    assert body["status"] == "failed" and message in body["error"] and "/tmp" not in body["error"]
    assert ready_again(client)


LIBRARY_NOISE = ("HTTP Request", "GetPrototype", "XNNPACK", "Feedback manager", "accelerate", "InitializeLog", "%|")


def test_prediction_logs_are_a_few_progress_lines_without_library_noise(server, media):
    client, _, folder = server
    video, audio = media
    body = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), seed=3).json()
    assert body["status"] == "succeeded", body.get("error")
    lines = body["logs"].splitlines()
    progress = [line for line in lines if line.startswith(("analyse ", "render "))]
    assert progress[0].startswith("analyse    4% (1/25 frames), 0:00 elapsed")
    assert progress[-1].startswith("render   100% (25/25 frames written, 2/2 windows denoised), ")
    assert len(progress) <= 42 and len(lines) <= len(progress) + 4, lines  # the seed and one line per span besides
    everything = (folder / "server.log").read_text() + body["logs"]  # setup (the weights download) and predictions
    for noise in LIBRARY_NOISE:
        assert noise not in everything, noise


def test_cog_yaml_is_well_formed():
    config = yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())
    build = config["build"]
    assert config["predict"] == "predict.py:Predictor"
    assert config["concurrency"]["max"] == 2  # the next job's analysis beside this one's U-Net (README, Benchmarks)
    assert build["gpu"] is True and build["python_version"] == "3.11" and build["cuda"] == "13.0"
    assert {"ffmpeg", "libgl1"} <= set(build["system_packages"])
    assert (REPO_ROOT / build["python_requirements"]).exists()
    pins = [line.split("==")[0] for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins  # the image swaps one for the other, never both


def test_cog_yaml_downloads_nothing_unverified_and_hides_no_failure():
    """A build step that fetches a file must check it against a pinned sha256 (and so fail the
    build when the download fails or differs); no step may swallow a failure with `||`."""
    steps = yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())["build"]["run"]
    for step in steps:
        command = step if isinstance(step, str) else step["command"]
        assert "||" not in command, command
        for fetched in re.findall(r"(?:curl|wget)\b.*?(?:-o|-O|--output)\s+(\S+)", command):
            assert re.search(rf"[0-9a-f]{{64}}\s+{re.escape(fetched)}'?\s*\|\s*sha256sum -c", command), f"{fetched} is not checked against a pinned sha256: {command}"


LOCKED = re.compile(r"^([A-Za-z0-9._-]+) @ https://files\.pythonhosted\.org/\S+/([^/\s]+) --hash=sha256:[0-9a-f]{64}$")


def test_the_image_lock_pins_every_requirement_to_one_hashed_file():
    """requirements/cog.lock (scripts/lock_image.py) holds every package of requirements.txt at its
    pinned version (onnxruntime as onnxruntime-gpu) and all they need, each a file with its
    sha256, under --require-hashes; the source-only packages are built by a step of cog.yaml from
    hashed archives with the locked build tools (no isolated build fetching its own)."""
    build = yaml.safe_load((REPO_ROOT / "cog.yaml").read_text())["build"]
    assert build["python_requirements"] == "requirements/cog.lock"
    lines = [line for line in (REPO_ROOT / build["python_requirements"]).read_text().splitlines() if line and not line.startswith("#")]
    assert lines[0] == "--require-hashes"
    wheels = [LOCKED.match(line) for line in lines[1:]]
    assert all(wheels) and not any("==" in line for line in lines), "a `name==version --hash` line loses its hashes in Cog's rewrite"
    [sources_step] = [step for step in build["run"] if "--no-build-isolation" in step]
    assert sources_step.endswith("pip install --require-hashes --no-deps --no-build-isolation -r /tmp/sources.txt")
    sources = [LOCKED.match(line) for line in re.findall(r"'([^']+ @ [^']+)'", sources_step)]
    assert sources and all(sources) and all(match.group(2).endswith(".tar.gz") for match in sources)
    locked = {}
    for match in wheels + sources:
        name, version = (parse_wheel_filename(match.group(2)) if match.group(2).endswith(".whl") else parse_sdist_filename(match.group(2)))[:2]
        locked[canonicalize_name(name)] = str(version)
    pins = dict(line.split("#")[0].strip().split("==") for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if "==" in line.split("#")[0])
    del pins["onnxruntime"]  # the image has the GPU build instead, at its own version
    pins.update([ONNXRUNTIME_GPU.split("==")])
    assert build["sdk_version"] == pins.pop("cog")  # Cog installs its SDK itself
    assert {canonicalize_name(name.split("[")[0]): version for name, version in pins.items()}.items() <= locked.items()  # moto[s3]: moto
    assert {"setuptools", "cython", "numpy"} <= locked.keys() and "onnxruntime" not in locked  # the build tools; never both onnxruntimes


# ---- output folders (latentsync.serving.OutputFolders) -------------------------------------------------


def aged(folder, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(folder, (past, past))


def test_a_running_predictions_folder_is_never_removed_however_old(tmp_path):
    from latentsync.serving import OutputFolders

    outputs = OutputFolders(tmp_path, max_age_s=3600)
    with outputs.new() as running:
        (running / "work").mkdir()
        aged(running, 7200)  # a job that has been running for two hours
        with outputs.new() as other:  # another prediction starts and cleans up
            outputs.remove_old()
        assert running.is_dir() and (running / "work").is_dir()
    assert other.is_dir() and running.is_dir()  # finished: kept for Cog's upload
    aged(running, 3601)
    outputs.remove_old()
    assert not running.exists() and other.exists()


def test_a_failed_prediction_leaves_no_folder(tmp_path):
    from latentsync.serving import OutputFolders

    outputs = OutputFolders(tmp_path, max_age_s=3600)
    with pytest.raises(RuntimeError):
        with outputs.new() as folder:
            (folder / "output.mp4").write_bytes(b"half")
            raise RuntimeError("the model failed")
    assert list(tmp_path.iterdir()) == []


def test_cleaners_racing_each_other_never_fail(tmp_path):
    from latentsync.serving import OutputFolders

    outputs = OutputFolders(tmp_path, max_age_s=3600)
    errors = []
    for _ in range(3):
        for index in range(150):
            folder = tmp_path / f"old{index}"
            (folder / "work").mkdir(parents=True)
            aged(folder, 7200)

        def clean():
            try:
                outputs.remove_old()
            except Exception as error:  # FileNotFoundError before the fix
                errors.append(error)

        threads = [threading.Thread(target=clean) for _ in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert errors == [] and list(tmp_path.iterdir()) == []


# Last in this module: it leaves the module's server unhealthy for good.
def test_a_device_left_broken_makes_the_server_unhealthy_and_later_predictions_fail_at_once(server, media, mirror):
    client, _, _ = server
    fault = mirror[0] / "fault"
    video, audio = media
    inputs = dict(video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"))
    fault.write_text("sticky")  # a CUDA error that leaves the context unusable
    failed = predict(client, **inputs).json()
    fault.unlink()
    assert failed["status"] == "failed" and CUDA_ERROR in failed["error"]
    assert client.get("/health-check").json()["status"] == "UNHEALTHY"
    started = time.monotonic()
    refused = predict(client, **inputs).json()
    assert refused["status"] == "failed" and refused["error"].endswith("stopped working after a model error; this server must be restarted.")
    assert time.monotonic() - started < 10
