"""Production behaviour on real footage shapes: cut-aways, pauses, two faces, length modes,
out-of-memory recovery, failed windows, sync policies and the result cache."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from latentsync.cache import ResultCache
from latentsync.denoise import denoise_windows
from latentsync.media.probe import probe
from latentsync.options import LipsyncOptions
from latentsync.pipeline import LipsyncPipeline
from latentsync.planner import NoFaceError
from latentsync.sync import SyncNetScorer, SyncScore
from tests.media import ffmpeg, frames, psnr, random_syncnet_weights, small_clip, speech, tiny_files, tiny_pipeline

FAST = dict(num_inference_steps=1)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("production")
    return {"face": small_clip(folder / "face.mp4", seconds=2.0, size="540:960"), "folder": folder}


def spans(report, action):
    return [s for s in report["spans"] if s["action"] == action]


def unchanged(source, output, first, last):
    """Frames [first, last) of the output are the source's, up to the codec."""
    return psnr(source[first:last], output[first:last]) > 38


def test_a_faceless_cutaway_passes_through(pipeline, clips):
    folder = clips["folder"]
    cutaway = folder / "cutaway.mp4"
    ffmpeg(
        "-i", clips["face"], "-f", "lavfi", "-i", "color=c=0x406080:s=540x960:r=25:d=2", "-i", clips["face"],
        "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]", "-c:v", "libx264", "-crf", 12, cutaway,
    )
    audio = speech(folder / "speech6.wav", 6.0, start=1.0)
    out = folder / "cutaway_out.mp4"
    report = pipeline(cutaway, audio, out, LipsyncOptions(**FAST, skip_silence=False)).report.to_dict()
    no_face = spans(report, "no_face")
    assert len(no_face) == 1 and abs(no_face[0]["start"] - 2.0) <= 0.08 and abs(no_face[0]["end"] - 4.0) <= 0.08
    source, output = frames(cutaway), frames(out)
    assert unchanged(source, output, 51, 99)
    assert not unchanged(source, output, 0, 48)  # the speaking parts were regenerated
    assert report["spans"][0]["action"] == "generated" and report["spans"][-1]["action"] == "generated"


def test_a_pause_in_the_audio_keeps_the_original_frames(pipeline, clips):
    folder = clips["folder"]
    video = folder / "face6.mp4"
    ffmpeg("-stream_loop", 2, "-i", clips["face"], "-t", 6, "-c:v", "libx264", "-crf", 12, video)
    paused = folder / "paused.wav"
    ffmpeg(
        "-i", speech(folder / "a.wav", 2.0, start=1.0), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=2", "-i", speech(folder / "b.wav", 2.0, start=4.0),
        "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1[a]", "-map", "[a]", paused,
    )
    out = folder / "paused_out.mp4"
    report = pipeline(video, paused, out, LipsyncOptions(**FAST)).report.to_dict()
    silence = [s for s in spans(report, "silence") if s["start"] < 4.0 and s["end"] > 2.0]
    assert len(silence) == 1 and 2.0 <= silence[0]["start"] <= 2.3 and 3.7 <= silence[0]["end"] <= 4.0
    assert 0.25 < report["fraction_skipped"] < 0.5
    first, last = round(silence[0]["start"] * 25) + 3, round(silence[0]["end"] * 25) - 3  # inside the blend ramps
    assert unchanged(frames(video), frames(out), first, last)


@pytest.fixture(scope="module")
def two_faces(clips, assets):
    folder = clips["folder"]
    path = folder / "two_faces.mp4"
    ffmpeg(
        "-t", 1.28, "-i", assets / "demo1_video.mp4", "-t", 1.28, "-i", assets / "demo1_video.mp4",
        "-filter_complex", "[0:v]scale=540:960[big];[1:v]scale=480:854,pad=480:960:0:53[small];[big][small]hstack[v]",
        "-map", "[v]", "-c:v", "libx264", "-crf", 12, path,
    )
    return path


def face_changed(source, output, x0, x1):
    return psnr(source[:, :, x0:x1], output[:, :, x0:x1]) < 38


def test_the_larger_face_speaks_and_a_point_picks_the_other(pipeline, clips, two_faces):
    folder = clips["folder"]
    audio = speech(folder / "speech2.wav", 1.28, start=1.0)  # two windows
    source = frames(two_faces)
    default = folder / "two_default.mp4"
    pipeline(two_faces, audio, default, LipsyncOptions(**FAST, skip_silence=False))
    output = frames(default)
    assert face_changed(source, output, 0, 540) and not face_changed(source, output, 540, 1020)
    picked = folder / "two_picked.mp4"
    report = pipeline(two_faces, audio, picked, LipsyncOptions(**FAST, skip_silence=False, speaker_point=(800.0, 380.0, 10))).report.to_dict()
    output = frames(picked)
    assert face_changed(source, output, 540, 1020) and not face_changed(source, output, 0, 540)
    assert report["options"]["speaker_point"] == [800.0, 380.0, 10]


@pytest.mark.parametrize("mode,long_audio,expected_s", [
    ("bounce", True, 4.0), ("loop", True, 4.0), ("cut_off", True, 2.0), ("silence", True, 2.0), ("remap", True, 4.0),
    ("bounce", False, 0.68), ("loop", False, 0.68), ("cut_off", False, 0.68), ("silence", False, 2.0), ("remap", False, 0.68),
])
def test_length_modes(pipeline, clips, mode, long_audio, expected_s):
    folder = clips["folder"]
    audio = speech(folder / f"audio_{long_audio}.wav", 4.0 if long_audio else 0.68, start=1.0)
    out = folder / f"length_{mode}_{long_audio}.mp4"
    report = pipeline(clips["face"], audio, out, LipsyncOptions(**FAST, length_mode=mode, skip_silence=False)).report.to_dict()
    info = probe(out)
    assert abs(info.duration - expected_s) <= 0.04 + 1e-6
    assert abs(info.audio_duration - expected_s) <= 0.05
    assert report["frames"] == round(expected_s * 25)
    if mode == "silence" and not long_audio:
        assert spans(report, "silence")[-1]["end"] == 2.0  # the tail without audio passes through


@pytest.fixture(scope="module")
def clean_run(pipeline, clips):
    """Two seconds of speech over the face clip, every frame generated, with nothing injected."""
    folder = clips["folder"]
    audio, clean = speech(folder / "two_s.wav", 2.0, start=1.0), folder / "clean.mp4"
    options = LipsyncOptions(**FAST, skip_silence=False)
    pipeline(clips["face"], audio, clean, options)
    return audio, options, clean


def test_out_of_memory_is_recovered_with_the_same_output(pipeline, clips, clean_run):
    folder = clips["folder"]
    audio, options, clean = clean_run

    calls = {"count": 0}

    def out_of_memory_once_per_window(module, args):
        calls["count"] += 1
        if args[0].shape[0] == 2:  # the full guidance batch: pretend it does not fit
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")

    hook = pipeline.unet.register_forward_pre_hook(out_of_memory_once_per_window)
    try:
        injected = folder / "injected.mp4"
        report = pipeline(clips["face"], audio, injected, options).report.to_dict()
    finally:
        hook.remove()
    assert calls["count"] > 0 and report["frames_generated"] > 0
    assert np.array_equal(frames(clean), frames(injected))


def test_a_window_that_never_fits_in_memory_passes_through_and_the_job_goes_on(pipeline, clips, clean_run, monkeypatch):
    folder = clips["folder"]
    audio, options, clean = clean_run
    original, state = pipeline.denoiser, {"calls": 0}

    def second_window_never_fits(*args, **kwargs):
        state["calls"] += 1
        if 2 <= state["calls"] <= 4:  # the second window, with each memory saver
            raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
        return original(*args, **kwargs)

    monkeypatch.setattr(pipeline, "denoiser", second_window_never_fits)
    failed_out = folder / "failed.mp4"
    report = pipeline(clips["face"], audio, failed_out, options).report.to_dict()
    failed = spans(report, "passthrough")
    assert len(failed) == 1 and failed[0]["start"] == 0.64 and failed[0]["end"] == 1.28
    assert "0.64-1.28 s: out of GPU memory even with split guidance passes" in failed[0]["reason"]
    assert spans(report, "generated") and report["failed_windows"] == 1

    # Frames 16-31 kept the original; the regenerated mouth fades out over 13-15 and back in over
    # 32-34, as at a planned boundary: each frame is that share of the way from the source to
    # what the clean run made of it.
    source, clean_frames, output = frames(clips["face"]).astype(float), frames(clean).astype(float), frames(failed_out).astype(float)
    assert unchanged(source.astype(np.uint8), output.astype(np.uint8), 16, 32)
    changed = np.abs(clean_frames[10:40] - source[10:40]).max(axis=0) > 40  # where the clean run regenerated the mouth
    for frame, share in {12: 1.0, 13: 0.75, 14: 0.5, 15: 0.25, 32: 0.25, 33: 0.5, 34: 0.75, 35: 1.0}.items():
        measured = np.sum((output[frame] - source[frame])[changed] * (clean_frames[frame] - source[frame])[changed])
        measured /= np.sum(((clean_frames[frame] - source[frame])[changed]) ** 2)
        assert measured == pytest.approx(share, abs=0.05), frame


def test_no_face_anywhere_fails_with_a_clear_message(pipeline, clips):
    folder = clips["folder"]
    scenery = folder / "scenery.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=540x960:r=25:d=1", "-c:v", "libx264", scenery)
    with pytest.raises(NoFaceError, match=r"No usable face was found in any of the 25 frames checked \(1.0 s of video\)"):
        pipeline(scenery, speech(folder / "s1.wav", 1.0), folder / "none.mp4", LipsyncOptions(**FAST))
    assert not (folder / "none.mp4").exists()


class ChosenScores:
    """The real SyncNet scorer (random weights) run on what the pipeline hands it, but reporting the
    chosen confidences, one per call in order (the last one again if asked more often); it records
    how many faces each call scored."""

    def __init__(self, scorer: SyncNetScorer, *confidences: float):
        self.scorer, self.confidences, self.faces_scored = scorer, confidences, []

    def score(self, faces, samples, fps=25.0) -> SyncScore:
        measured = self.scorer.score(faces, samples, fps)
        self.faces_scored.append(len(faces))
        return replace(measured, confidence=self.confidences[min(len(self.faces_scored), len(self.confidences)) - 1])


class RecordingDenoiser:
    """denoise_windows, recording the guidance scale each call actually received."""

    def __init__(self):
        self.guidance = []

    def __call__(self, *args, guidance_scale, **kwargs):
        self.guidance.append(guidance_scale)
        return denoise_windows(*args, guidance_scale=guidance_scale, **kwargs)


@pytest.fixture(scope="module")
def syncnet(tmp_path_factory):
    return SyncNetScorer(random_syncnet_weights(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"), batch_size=16)


SYNC_AUDIO_S = 1.28  # 32 frames: one span of two windows
SYNC_THRESHOLD = 5.0


def run_with_scores(pipeline, syncnet, clips, name, confidences, action="regenerate"):
    """A job with min_sync_confidence 5 whose span scores `confidences` in turn; returns the
    report, the output frames, the guidance the denoiser received and the faces scored per call."""
    scorer, denoiser = ChosenScores(syncnet, *confidences), RecordingDenoiser()
    scored = LipsyncPipeline(pipeline.unet, pipeline.vae, pipeline.scheduler, pipeline.audio_encoder, pipeline.face_detector, pipeline.mask,
                             pipeline.resolution, sync_scorer=scorer, denoiser=denoiser)
    folder = clips["folder"]
    options = LipsyncOptions(**FAST, guidance_scale=1.5, skip_silence=False, min_sync_confidence=SYNC_THRESHOLD, low_sync_action=action)
    out = folder / f"sync_{name}.mp4"
    report = scored(clips["face"], speech(folder / "sync.wav", SYNC_AUDIO_S, start=1.0), out, options).report.to_dict()
    return report, frames(out), denoiser.guidance, scorer.faces_scored


@pytest.fixture(scope="module")
def kept(pipeline, syncnet, clips):
    return run_with_scores(pipeline, syncnet, clips, "kept", [SYNC_THRESHOLD + 2.0])


def test_a_span_scoring_above_the_threshold_is_kept(kept):
    report, _, guidance, faces_scored = kept
    [span] = report["spans"]
    assert span["action"] == "generated" and span["sync_confidence"] == SYNC_THRESHOLD + 2.0
    assert "low_sync" not in span and "regenerated_with_guidance" not in span
    assert guidance == [1.5, 1.5] and faces_scored == [32]  # two windows once, one span scored once
    assert report["frames_generated"] == 32 and report["unet_window_steps"] == 2


def test_a_span_scoring_below_is_regenerated_with_more_guidance(pipeline, syncnet, clips, kept):
    report, output, guidance, faces_scored = run_with_scores(pipeline, syncnet, clips, "regenerated", [SYNC_THRESHOLD - 2.0, SYNC_THRESHOLD + 1.0])
    [span] = report["spans"]
    assert span["action"] == "generated" and span["low_sync"] == {"confidence": 3.0, "threshold": 5.0, "action": "regenerate"}
    assert span["sync_confidence_before"] == 3.0 and span["sync_confidence"] == 6.0 and span["regenerated_with_guidance"] == 2.0
    assert guidance == [1.5, 1.5, 2.0, 2.0]  # what the denoiser received: the retry at guidance + 0.5
    assert faces_scored == [32, 32] and report["unet_window_steps"] == 4
    # the retry's faces are the ones written (44.5 dB from the kept run's frames, which are the
    # first pass's: keeping the first pass would write them exactly)
    _, kept_output, _, _ = kept
    assert psnr(kept_output, output) < 50


def test_a_span_scoring_below_is_passed_through_when_asked(pipeline, syncnet, clips):
    report, output, guidance, _ = run_with_scores(pipeline, syncnet, clips, "passed", [SYNC_THRESHOLD - 2.0], action="passthrough")
    [span] = report["spans"]
    assert span["action"] == "passthrough" and span["low_sync"]["action"] == "passthrough"
    assert report["frames_generated"] == 0 and guidance == [1.5, 1.5]
    assert unchanged(frames(clips["face"])[: len(output)], output, 0, len(output))


def test_repeat_request_is_served_from_the_cache(clips, tmp_path, monkeypatch):
    pipeline = tiny_pipeline(cache=ResultCache(tmp_path / "cache"))
    audio = speech(clips["folder"] / "cache.wav", 1.0, start=1.0)
    first = pipeline(clips["face"], audio, tmp_path / "first.mp4", LipsyncOptions(**FAST)).report.to_dict()
    monkeypatch.setattr(pipeline, "denoiser", lambda *a, **k: pytest.fail("the model ran on a cache hit"))
    second = pipeline(clips["face"], audio, tmp_path / "second.mp4", LipsyncOptions(**FAST)).report.to_dict()
    assert (first["cache"], second["cache"]) == ("miss", "hit")
    assert (tmp_path / "first.mp4").read_bytes() == (tmp_path / "second.mp4").read_bytes()


def test_other_weights_or_another_precision_miss_the_cache(clips, tmp_path):
    """The key holds what was loaded, not just the version label: a U-Net file changed under the
    same label, or another precision, produces again instead of serving the old result."""
    cache = ResultCache(tmp_path / "cache")
    audio = speech(clips["folder"] / "identity.wav", 0.6, start=1.0)

    def served(pipeline, name: str) -> str:
        return pipeline(clips["face"], audio, tmp_path / name, LipsyncOptions(**FAST)).report.cache

    assert [served(tiny_pipeline(cache=cache), name) for name in ("a.mp4", "b.mp4")] == ["miss", "hit"]
    checkpoint = torch.load(tiny_files().unet_checkpoint, map_location="cpu", weights_only=False)
    first = next(iter(checkpoint["state_dict"]))
    checkpoint["state_dict"][first] = checkpoint["state_dict"][first] + 0.01
    torch.save(checkpoint, tmp_path / "unet_changed.pt")
    changed = LipsyncPipeline.from_files(replace(tiny_files(), unet_checkpoint=tmp_path / "unet_changed.pt"), device="cpu",
                                         face_detector="mediapipe", cache=cache)
    assert changed.version == "tiny" and served(changed, "c.mp4") == "miss"
    assert served(tiny_pipeline(cache=cache, precision="bfloat16"), "d.mp4") == "miss"
    assert served(tiny_pipeline(cache=cache), "e.mp4") == "hit"  # the first load's entry is still there
