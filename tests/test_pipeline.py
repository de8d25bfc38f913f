"""End to end: video + audio in, lip-synced mp4 out (tiny random models, real ffmpeg, demo clips)."""

import json
import shutil

import cv2
import numpy as np
import pytest

from latentsync.face.align import FaceAligner
from latentsync.face.detect import create_detector
from latentsync.options import LipsyncOptions
from latentsync.media.decode import read_frames
from latentsync.media.probe import probe
from scripts import inference
from tests.media import frames, psnr, small_clip, tiny_pipeline

FAST = LipsyncOptions(num_inference_steps=2)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return small_clip(tmp_path_factory.mktemp("clip") / "clip.mp4")


@pytest.fixture(scope="module")
def demo_output(tmp_path_factory, assets, reference):
    """The official command line (plus the tiny models' paths) on the full 1080x1920 demo."""
    out = tmp_path_factory.mktemp("cli") / "demo out.mp4"
    code = inference.main([
        "--unet_config_path", str(reference / "unet_tiny.yaml"),
        "--inference_ckpt_path", str(reference / "unet_tiny.pt"),
        "--whisper_path", str(reference / "whisper_tiny_random.pt"),
        "--vae_path", str(reference / "vae_tiny"),
        "--mask_path", str(assets / "mask.png"),
        "--resolution", "64",
        "--face_detector", "mediapipe",
        "--video_path", str(assets / "demo1_video.mp4"),
        "--audio_path", str(assets / "demo1_audio.wav"),
        "--video_out_path", str(out),
        "--inference_steps", "2",
    ])
    assert code == 0
    return out


def test_demo_output_plays_at_25_fps_with_the_audio(demo_output, assets):
    info = probe(demo_output)
    audio = probe(assets / "demo1_audio.wav")
    assert info.video_codec == "h264" and info.pix_fmt == "yuv420p"
    assert (info.width, info.height, info.fps) == (1080, 1920, 25.0)
    assert info.has_audio and info.audio_codec == "aac"
    assert abs(info.duration - audio.audio_duration) <= 1 / 25
    report = json.loads(demo_output.with_suffix(".report.json").read_text())
    assert report["frames"] == 240 and report["spans"][0]["start"] == 0 and report["spans"][-1]["end"] == 9.6
    assert all(a["end"] == b["start"] for a, b in zip(report["spans"], report["spans"][1:]))  # no gaps


def face_boxes(video_frames, indices):
    """Where the aligned face crop lands in each frame (the only area restore may touch)."""
    detector, aligner = create_detector("mediapipe"), FaceAligner(64)
    boxes = {}
    for i in indices:
        affine = aligner.affine(detector.detect(video_frames[i])[0].landmarks3, smooth=False)
        inverse = cv2.invertAffineTransform(affine.astype(np.float64))
        w, h = aligner.crop_size
        corners = np.array([[0, 0, 1], [w, 0, 1], [0, h, 1], [w, h, 1]], float) @ inverse.T
        (x0, y0), (x1, y1) = corners.min(0), corners.max(0)
        margin = 0.15 * (x1 - x0)
        boxes[i] = (int(x0 - margin), int(y0 - margin), int(x1 + margin), int(y1 + margin), corners)
    return boxes


def test_only_the_mouth_changes(demo_output, assets):
    indices = [30, 120, 200]
    source, output = (
        {i: next(read_frames(path, 25.0, start=i, count=1)) for i in indices} for path in (assets / "demo1_video.mp4", demo_output)
    )
    for i, (x0, y0, x1, y1, corners) in face_boxes(source, indices).items():
        outside = np.ones(source[i].shape[:2], bool)
        outside[max(y0, 0) : y1, max(x0, 0) : x1] = False
        assert psnr(source[i][outside], output[i][outside]) > 40  # only the codec's loss
        # the mask regenerates the lower half of the aligned crop: the mouth
        mouth = (corners[2] * 0.3 + corners[3] * 0.3 + corners[0] * 0.2 + corners[1] * 0.2).astype(int)
        patch = (slice(mouth[1] - 10, mouth[1] + 10), slice(mouth[0] - 10, mouth[0] + 10))
        assert np.abs(source[i][patch].astype(int) - output[i][patch].astype(int)).mean() > 4


def test_identity_generator_keeps_the_picture(pipeline, clip, tmp_path, monkeypatch):
    """With a 'model' that returns its input face, alignment, paste-back and encoding must not
    degrade the picture."""
    def identity(unet, vae, scheduler, faces, *args, **kwargs):
        return faces.float() / 127.5 - 1

    monkeypatch.setattr(pipeline.models, "denoiser", identity)
    out = tmp_path / "identity.mp4"
    report = pipeline(clip, clip, out, FAST).report.to_dict()
    assert report["frames_generated"] > 0.8 * report["frames"]
    source, output = frames(clip), frames(out)
    assert len(source) == 100 and len(output) in (100, 101)  # AAC padding can make the audio a frame longer
    assert psnr(source, output[:100]) >= 35


@pytest.mark.slow  # the corpus's hostile names run through the library and Cog's server by default
def test_hostile_file_names_process_normally(pipeline, clip, tmp_path):
    weird = tmp_path / "a; rm -rf $(echo x) 'quoted\" name ü.mp4"
    shutil.copy(clip, weird)
    out = tmp_path / "out; $(touch hacked) 'x'.mp4"
    result = pipeline(weird, weird, out, FAST)
    assert result.output_path.exists() and probe(out).has_video
    assert not (tmp_path / "hacked").exists() and not list(tmp_path.glob("x*"))


def test_temporary_files_are_removed(pipeline, clip, tmp_path):
    temp = tmp_path / "temp"
    pipeline(clip, clip, tmp_path / "out.mp4", FAST, temp_dir=temp)
    assert temp.exists() and list(temp.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.mp4", "out.report.json", "temp"]


def test_seeded_runs_are_reproducible(pipeline, tmp_path):
    clip = small_clip(tmp_path / "two.mp4", seconds=2.0)
    first = pipeline(clip, clip, tmp_path / "a.mp4", FAST)
    second = pipeline(clip, clip, tmp_path / "b.mp4", FAST)
    assert (tmp_path / "a.mp4").read_bytes() == (tmp_path / "b.mp4").read_bytes()
    assert first.report.spans == second.report.spans
    third = pipeline(clip, clip, tmp_path / "c.mp4", LipsyncOptions(num_inference_steps=2, seed=7))
    assert third.report.seed == 7 and third.report.spans == first.report.spans
    # another seed draws other noise: every regenerated frame's mouth changes, nothing else does
    seed_a, seed_b = (frames(tmp_path / name).astype(np.int16) for name in ("a.mp4", "c.mp4"))
    generated = np.zeros(len(seed_a), bool)
    for span in first.report.spans:
        generated[round(span.start * 25) : round(span.end * 25)] = span.action == "generated"
    difference = np.abs(seed_a - seed_b).reshape(len(seed_a), -1)
    assert generated.sum() > 40 and (difference[generated].max(axis=1) > 20).all()
    assert (difference[~generated].max(axis=1, initial=0) <= 2).all()  # the codec's noise at most
