"""The predictor under Cog's real HTTP server, with tiny weights downloaded from a local server."""

import base64
import json

import httpx
import pytest
import yaml

from latentsync.config import REPO_ROOT
from latentsync.media.probe import probe
from tests.cog_server import data_uri, running_cog_server
from tests.media import small_clip, speech


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with running_cog_server(tmp_path_factory.mktemp("cog")) as running:
        yield running


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("media")
    return small_clip(folder / "clip.mp4", seconds=1.0, size="540:960"), speech(folder / "speech.wav", 1.0, start=1.0)


def test_setup_downloaded_the_weights(server):
    client, files, folder = server
    assert (folder / "weights" / "tiny" / "latentsync_unet.pt").exists()
    assert any(r["path"] == "/tiny/latentsync_unet.pt" for r in files.requests)


def test_openapi_shows_every_input_with_its_limits(server):
    client, _, _ = server
    inputs = client.get("/openapi.json").json()["components"]["schemas"]["Input"]
    properties = inputs["properties"]
    assert set(inputs["required"]) == {"video", "audio"}
    assert properties["video"]["format"] == "uri" and properties["audio"]["format"] == "uri"
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


@pytest.mark.parametrize("bad", [{"guidance_scale": 5}, {"version": "2.0"}, {"inference_steps": 10}])
def test_out_of_range_inputs_are_rejected_and_the_server_keeps_serving(server, media, bad):
    client, _, _ = server
    video, audio = media
    response = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav"), **bad)
    assert response.status_code == 422
    assert client.get("/health-check").json()["status"] == "READY"


def test_a_text_file_as_video_fails_with_one_clear_sentence(server, media, tmp_path):
    client, _, _ = server
    _, audio = media
    text = tmp_path / "notes.mp4"
    text.write_text("definitely not a video\n" * 20)
    body = predict(client, video=data_uri(text, "video/mp4"), audio=data_uri(audio, "audio/wav")).json()
    assert body["status"] == "failed"
    assert "is not a readable audio or video file" in body["error"]
    video, _ = media
    again = predict(client, video=data_uri(video, "video/mp4"), audio=data_uri(audio, "audio/wav")).json()
    assert again["status"] == "succeeded"


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
    assert build["gpu"] is True and build["python_version"] == "3.11" and build["cuda"] == "13.0"
    assert {"ffmpeg", "libgl1"} <= set(build["system_packages"])
    assert (REPO_ROOT / build["python_requirements"]).exists()
    pins = [line.split("==")[0] for line in (REPO_ROOT / "requirements.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert "onnxruntime" in pins and "onnxruntime-gpu" not in pins  # the image swaps one for the other, never both
    assert json.dumps(config).count("pget") >= 1
