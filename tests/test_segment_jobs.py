"""Jobs with segments end to end, through the library and the command line (tiny random models,
real ffmpeg, the demo clips): only the segments' frames are regenerated, the rest is the source's
own encode, the output audio is the source's with each segment's audio in its span, the plan
equals the run, and each bad segment list gets its one sentence."""

import json
import math

import numpy as np
import pytest

from latentsync.cache import ResultCache
from latentsync.config import FRAMES_PER_WINDOW
from latentsync.media.decode import load_audio, read_frames
from latentsync.media.encode import VideoWriter
from latentsync.media.probe import probe, probe_video
from latentsync.models.unet import UNet3DConditionModel
from latentsync.options import LipsyncOptions
from latentsync.report import JobReport
from latentsync.segments import SegmentError
from scripts import inference
from tests.conftest import ASSETS
from tests.media import ffmpeg, frames, psnr, small_clip, speech, tiny_pipeline

STEPS = 2  # the job's; a segment's own steps are within the service's 20-50
SEGMENT = (4.0, 5.5)  # 1.5 s of a 10 s clip: output frames 100-136 (a frame belongs where its centre falls)
FIRST, STOP = 100, 137


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("segment_media")
    return {
        # demo2's first 10 s with its own speech (AAC, 44.1 kHz stereo), and demo1's speech for the segment's line
        "clip": small_clip(folder / "talk.mp4", seconds=10.0, size="360:640", source="demo2_video.mp4"),
        "name": speech(folder / "name.wav", 1.5, start=2.0),
        "folder": folder,
    }


def speech_of_demo2(path, seconds, start):
    ffmpeg("-ss", start, "-i", ASSETS / "demo2_audio.wav", "-t", seconds, path)
    return path


class Recorder:
    """Wraps a pipeline's denoiser: what each call got (windows, frames, steps, guidance)."""

    def __init__(self, pipeline):
        self.calls, self.denoiser = [], pipeline.models.denoiser

    def __call__(self, unet, vae, scheduler, faces, audio, mask, **settings):
        self.calls.append((faces.shape[0], faces.shape[1], settings["num_inference_steps"], settings["guidance_scale"]))
        return self.denoiser(unet, vae, scheduler, faces, audio, mask, **settings)


@pytest.fixture(scope="module")
def one_segment(media):
    pipeline = tiny_pipeline()
    pipeline.models.denoiser = recorder = Recorder(pipeline)
    segments = [{"start": SEGMENT[0], "end": SEGMENT[1], "audio": str(media["name"])}]
    options = LipsyncOptions(num_inference_steps=STEPS)
    preview = pipeline.plan(media["clip"], None, options, segments=segments)
    planned_calls = len(recorder.calls)
    out = media["folder"] / "one_segment.mp4"
    report = pipeline(media["clip"], None, out, options, segments=segments).report.to_dict()
    return {"pipeline": pipeline, "report": report, "preview": preview.to_dict(), "out": out, "calls": recorder.calls, "planned_calls": planned_calls}


def plain_reencode(source, target, cuts):
    """The source's frames through the same encoder at the same settings (crf, and cuts where the job's segments begin and end)."""
    info = probe_video(source)
    with VideoWriter(target, info.width, info.height, 25.0, audio_path=source, crf=18, cuts=cuts) as writer:
        for frame in read_frames(source, 25.0):
            writer.write(frame)
    return target


def test_frames_outside_the_segment_are_the_sources_encode_and_inside_are_regenerated(one_segment, media):
    plain = frames(plain_reencode(media["clip"], media["folder"] / "plain.mp4", {FIRST, STOP}))
    output = frames(one_segment["out"])
    assert len(output) == len(plain) == 250  # the source's length
    for i in [*range(FIRST), *range(STOP, 250)]:
        assert psnr(plain[i], output[i]) >= 50, i  # measured: bit-identical (inf)
    for i in range(FIRST, STOP):  # the fades included
        assert np.abs(plain[i].astype(int) - output[i]).max() > 20 and psnr(plain[i], output[i]) < 45, i


def test_the_output_audio_is_the_sources_outside_and_the_segments_inside(one_segment, media):
    info = probe(one_segment["out"])
    rate, channels = info.sample_rate, info.channels
    assert (rate, channels) == (44100, 2) and abs(info.audio_duration - 10.0) < 0.05  # the source's format and length
    out = load_audio(one_segment["out"], rate, channels=channels)
    source = load_audio(media["clip"], rate, channels=channels)
    name = load_audio(media["name"], rate, channels=channels)
    first, stop = round(SEGMENT[0] * rate), round(SEGMENT[1] * rate)
    margin = round(0.03 * rate)  # the 5 ms cross-fade and an AAC frame's spread at the switch

    def relative_error(a, b):
        return float(np.sqrt(np.mean((a - b) ** 2)) / np.sqrt(np.mean(b**2)))

    assert relative_error(out[: first - margin], source[: first - margin]) < 0.05
    assert relative_error(out[stop + margin : len(source)], source[stop + margin :]) < 0.05
    inside = slice(first + margin, stop - margin)
    assert relative_error(out[inside], name[margin : stop - first - margin]) < 0.05
    assert relative_error(out[inside], source[inside]) > 0.5  # not the source's speech
    # sample-accurate: 10 ms either side of each switch already belong to their side
    near = round(0.010 * rate)
    for t in (first, stop):
        before, after = slice(t - 2 * near, t - near), slice(t + near, t + 2 * near)
        outside_side, inside_side = (before, after) if t == first else (after, before)
        assert relative_error(out[outside_side], source[outside_side]) < 0.2, t
        piece = slice(inside_side.start - first, inside_side.stop - first)
        assert relative_error(out[inside_side], name[piece]) < 0.2, t


def test_the_unet_work_is_the_segments_alone(one_segment):
    report, calls = one_segment["report"], one_segment["calls"]
    windows = math.ceil((STOP - FIRST) / FRAMES_PER_WINDOW)  # 37 frames: 3 windows
    assert sum(count for count, *_ in calls) == windows and report["unet_window_steps"] == windows * STEPS
    assert report["frames"] == 250 and report["frames_generated"] == STOP - FIRST
    assert [(s["start"], s["end"], s["action"], s.get("segment")) for s in report["spans"]] == [
        (0.0, 4.0, "outside_segments", None), (4.0, 5.48, "generated", 1), (5.48, 10.0, "outside_segments", None)]
    assert report["spans"][1]["steps"] == STEPS and report["spans"][1]["guidance"] == 1.5
    [row] = report["segments"]
    assert row["windows"] == windows and row["frames_generated"] == STOP - FIRST and row["audio"] == "own" and row["steps"] == STEPS


def test_the_plan_is_the_run_without_the_model(one_segment):
    preview, report = one_segment["preview"], one_segment["report"]
    assert one_segment["planned_calls"] == 0  # the plan ran no window
    assert preview["kind"] == "plan" and preview["spans"] == report["spans"] and preview["segments"][0]["windows"] == report["segments"][0]["windows"]
    assert preview["windows"] == 3 and preview["unet_window_steps"] == report["unet_window_steps"]
    assert preview["work"] == [{"steps": STEPS, "guidance": 1.5, "windows": 3}]
    assert preview["estimate"]["by_version"]["1.6"]["gpu_seconds"] > preview["estimate"]["by_version"]["1.5"]["gpu_seconds"] > 0


def test_two_segments_with_their_own_audio_and_steps_and_the_result_cache(media, tmp_path, monkeypatch):
    clip = small_clip(tmp_path / "short.mp4", seconds=3.0, size="360:640", source="demo2_video.mp4")
    first, second = speech(tmp_path / "a.wav", 0.8, start=4.0), speech(tmp_path / "b.wav", 1.5, start=6.0)
    cache = ResultCache(tmp_path / "cache")
    pipeline = tiny_pipeline(cache=cache, windows_per_batch=4)
    pipeline.models.denoiser = recorder = Recorder(pipeline)
    # 1.00-1.64 s is one full window at 30 steps; 1.64-2.92 s two full windows at the job's steps: the three would share
    # a batch (same length, consecutive) if their settings did not keep them apart
    segments = [{"start": 1.0, "end": 1.64, "audio": str(first), "inference_steps": 30}, {"start": 1.64, "end": 2.92, "audio": str(second)}]
    options = LipsyncOptions(num_inference_steps=STEPS, skip_silence=False)
    report = pipeline(clip, None, tmp_path / "two.mp4", options, segments=segments).report.to_dict()
    rows = report["segments"]
    assert [(r["segment"], r["steps"], r["frames_generated"], r["windows"], r["audio"]) for r in rows] == [(1, 30, 16, 1, "own"), (2, STEPS, 32, 2, "own")]
    assert {s["steps"] for s in report["spans"] if s.get("segment") == 1} == {30}
    assert {s["steps"] for s in report["spans"] if s.get("segment") == 2} == {STEPS}
    assert recorder.calls == [(1, 16, 30, 1.5), (2, 16, STEPS, 1.5)]  # a batch never mixes settings
    assert report["unet_window_steps"] == 30 + 2 * STEPS and report["cache"] == "miss"

    recorder.calls.clear()
    again = pipeline(clip, None, tmp_path / "again.mp4", options, segments=segments).report.to_dict()
    assert again["cache"] == "hit" and recorder.calls == [] and len(list(cache.entries.iterdir())) == 1
    moved = tmp_path / "moved.wav"
    moved.write_bytes(first.read_bytes())  # the same content under another name: the same job
    assert pipeline(clip, None, tmp_path / "moved.mp4", options, segments=[{**segments[0], "audio": str(moved)}, segments[1]]).report.to_dict()["cache"] == "hit"

    # One sample of one segment's audio changed: a new job (the run itself is the one above; a stand-in makes it quick).
    ran = []

    def stand_in(video, audio, output, **settings):
        ran.append(settings["segments"][1].audio)
        output.write_bytes(b"a stand-in video")
        return JobReport.from_dict({key: value for key, value in report.items() if key != "cache"})

    monkeypatch.setattr(pipeline, "_run", stand_in)
    changed = tmp_path / "b2.wav"
    changed.write_bytes(second.read_bytes()[:-2] + b"\x01\x00")
    renamed = [segments[0], {**segments[1], "audio": str(changed)}]
    assert pipeline(clip, None, tmp_path / "changed.mp4", options, segments=renamed).report.to_dict()["cache"] == "miss"
    assert ran == [str(changed)] and len(list(cache.entries.iterdir())) == 2


@pytest.mark.parametrize("segments,message", [
    ([{"start": 1, "end": 3}, {"start": 2, "end": 4}], "segment 2 (2.00-4.00 s) overlaps segment 1 (1.00-3.00 s); segments must not overlap."),
    ([{"start": 9.0, "end": 12.0}], "segment 1 (9.00-12.00 s) ends after the video, which is 10.00 s long."),
    ([{"start": 3, "end": 2}], "segment 1 is empty or reversed (start 3 s, end 2 s): end must be after start."),
    ([{"start": 1, "end": 2, "audio_start": 5.0, "audio": "NAME"}], "segment 1 (1.00-2.00 s) starts its speech at 5.00 s of its audio, which is only 1.50 s long."),
    ([{"start": 1, "end": 2}], "segment 1 (1.00-2.00 s) has no audio of its own and the job has none: give it an audio, or give the job one."),
    ([{"start": 1, "end": 2, "audio": "NAME", "guidance_scale": 0.5}], "segment 1's guidance_scale must be between 1 and 3, got 0.5."),
])
def test_a_bad_segment_list_fails_with_its_sentence_before_any_work(one_segment, media, segments, message):
    pipeline, out = one_segment["pipeline"], media["folder"] / "bad.mp4"
    segments = [{**s, "audio": str(media["name"])} if s.get("audio") == "NAME" else s for s in segments]
    calls = len(one_segment["calls"])
    with pytest.raises(SegmentError) as error:
        pipeline(media["clip"], None, out, LipsyncOptions(num_inference_steps=STEPS), segments=segments)
    assert str(error.value) == message
    assert not out.exists() and len(one_segment["calls"]) == calls


# ---- the command line ---------------------------------------------------------------------------


def cli(reference, assets, *args) -> int:
    return inference.main([
        "--unet_config_path", str(reference / "unet_tiny.yaml"), "--inference_ckpt_path", str(reference / "unet_tiny.pt"),
        "--whisper_path", str(reference / "whisper_tiny_random.pt"), "--vae_path", str(reference / "vae_tiny"),
        "--mask_path", str(assets / "mask.png"), "--resolution", "64", "--face_detector", "mediapipe", "--inference_steps", str(STEPS), *args,
    ])


@pytest.fixture
def unet_calls(monkeypatch):
    calls = []
    forward = UNet3DConditionModel.forward
    monkeypatch.setattr(UNet3DConditionModel, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    return calls


def test_dry_run_on_20_s_runs_no_unet_and_plans_what_the_run_does(tmp_path, reference, assets, unet_calls, capsys):
    clip = small_clip(tmp_path / "lecture.mp4", seconds=20.0, size="360:640", source="demo2_video.mp4")
    fix = speech_of_demo2(tmp_path / "fix.wav", 1.2, start=12.0)
    (tmp_path / "fix.json").write_text(json.dumps([{"start": 14.0, "end": 15.2, "audio": "fix.wav"}, {"start": 3.0, "end": 4.0}]))
    common = ["--video_path", str(clip), "--audio_path", str(clip), "--segments", str(tmp_path / "fix.json"), "--video_out_path", str(tmp_path / "fixed.mp4")]
    assert cli(reference, assets, *common, "--dry-run", "--report_plot") == 0
    printed = capsys.readouterr().out
    assert unet_calls == [] and not (tmp_path / "fixed.mp4").exists()
    plan = json.loads((tmp_path / "fixed.plan.json").read_text())
    assert "Plan: " in printed and "GPU time for denoising (measured, NVIDIA H200): 1.5: " in printed and "segment 1: 14.00-15.20 s" in printed
    assert plan["frames"] == 500 and plan["windows"] > 0 and (tmp_path / "fixed.plan.png").stat().st_size > 10_000

    assert cli(reference, assets, *common) == 0
    report = json.loads((tmp_path / "fixed.report.json").read_text())
    assert report["spans"] == plan["spans"] and len(unet_calls) > 0
    assert report["unet_window_steps"] == plan["unet_window_steps"]


def test_the_cli_says_what_is_wrong_with_a_segment_list(tmp_path, reference, assets, media, capsys):
    (tmp_path / "bad.json").write_text(json.dumps([{"start": 1, "end": 3, "audio": str(media["name"])}, {"start": 2, "end": 4}]))
    code = cli(reference, assets, "--video_path", str(media["clip"]), "--segments", str(tmp_path / "bad.json"), "--video_out_path", str(tmp_path / "x.mp4"))
    assert code == 1 and capsys.readouterr().err.strip() == "error: segment 2 (2.00-4.00 s) overlaps segment 1 (1.00-3.00 s); segments must not overlap."
    (tmp_path / "late.json").write_text(json.dumps([{"start": 11, "end": 12, "audio": str(media["name"])}]))
    code = cli(reference, assets, "--video_path", str(media["clip"]), "--segments", str(tmp_path / "late.json"), "--video_out_path", str(tmp_path / "x.mp4"))
    assert code == 1 and capsys.readouterr().err.strip() == "error: segment 1 (11.00-12.00 s) is outside the video, which is 10.00 s long."
    with pytest.raises(SystemExit):
        cli(reference, assets, "--video_path", str(media["clip"]), "--video_out_path", str(tmp_path / "x.mp4"))
    assert "--audio_path is required (with --segments, only by segments without an audio of their own)" in capsys.readouterr().err
