"""Streaming the analysis into the render (issue 19: the plan built as the video is decoded, crops a
window ahead, paste-back on threads, one decode less) changed no output: the code as it was before
(commit BEFORE_STREAMING, taken from git) and the code as it is now produce the same decoded
frames and the same report from the same seed, on both demo clips with default options, a
cut-away, two faces, a speaker point and the length modes.

The two rules that streaming changed (the automatic speaker is chosen from the first seconds with
faces; runs over 20 s lose 10 s pieces from their start before the rest is cut into equal pieces)
decide the same on these clips (demo2's speech has a 16 s run, cut in two halves as before);
tests/test_planner.py has cases where they do not."""

import itertools
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from latentsync.config import REPO_ROOT
from latentsync.media.decode import read_frames
from latentsync.options import LipsyncOptions
from tests.conftest import SHARED
from tests.media import TINY_RESOLUTION, ffmpeg, small_clip, speech, tiny_pipeline

BEFORE_STREAMING = "843867a"  # main before issue 19

OLD_PIPELINE = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from latentsync.pipeline import LipsyncOptions, LipsyncPipeline
    from latentsync.weights import ModelFiles
    shared, video, audio, out, options = Path(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5], json.loads(sys.argv[6])
    files = ModelFiles(
        version="tiny", unet_config=shared / "reference/unet_tiny.yaml", resolution=int(sys.argv[7]),
        unet_checkpoint=shared / "reference/unet_tiny.pt", whisper=shared / "reference/whisper_tiny_random.pt",
        vae_dir=shared / "reference/vae_tiny", mask=shared / "assets/mask.png", insightface_root=None, syncnet=None,
    )
    LipsyncPipeline.from_files(files, device="cpu", face_detector="mediapipe")(video, audio, out, LipsyncOptions(**options))
    """
)

DEMO_CASES = {
    # each demo clip with its own speech and the default options (20 steps, pauses skipped, bounce)
    "demo1": ("demo1_video.mp4", "demo1_audio.wav", {}),
    "demo2": ("demo2_video.mp4", "demo2_audio.wav", {}),
    # demo1's 10 s video under demo2's 19.8 s of speech: bounce (the second pass from a second decoder), DeepCache
    "bounce": ("demo1_video.mp4", "demo2_audio.wav", dict(num_inference_steps=2, enable_deepcache=True, seed=5)),
    # demo2's 20 s video under demo1's 9.6 s: the video is cut to the audio; no silence skipping
    "cut": ("demo2_video.mp4", "demo1_audio.wav", dict(num_inference_steps=3, skip_silence=False)),
    # demo1 under demo2's speech, looped and stretched
    "loop": ("demo1_video.mp4", "demo2_audio.wav", dict(num_inference_steps=2, length_mode="loop")),
    "remap": ("demo1_video.mp4", "demo2_audio.wav", dict(num_inference_steps=2, length_mode="remap")),
}


@pytest.fixture(scope="module")
def old_code(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("before_streaming")
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", BEFORE_STREAMING, "latentsync", "configs"], capture_output=True)
    if archive.returncode != 0:
        pytest.skip(f"commit {BEFORE_STREAMING} is not in this clone's history (a shallow clone?): {archive.stderr.decode().strip()}")
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


def same_output_before_and_after(old_code, pipeline, video: Path, audio: Path, options: dict, folder: Path) -> dict:
    """Run the old and the new pipeline; assert equal frames and reports; return the report."""
    before, after = folder / "before.mp4", folder / "after.mp4"
    old_run = subprocess.run(
        [sys.executable, "-c", OLD_PIPELINE, str(old_code), str(SHARED), str(video), str(audio), str(before), json.dumps(options), str(TINY_RESOLUTION)],
        capture_output=True, text=True,
    )
    assert old_run.returncode == 0, f"the code before streaming failed:\n{old_run.stderr[-3000:]}"
    report = json.loads(json.dumps(pipeline(video, audio, after, LipsyncOptions(**options)).report.to_dict()))  # as the old code wrote it
    old_report = json.loads(before.with_suffix(".report.json").read_text())
    assert {k: v for k, v in report.items() if k != "timings"} == {k: v for k, v in old_report.items() if k != "timings"}
    compared = 0
    for old_frame, new_frame in itertools.zip_longest(read_frames(before, 25), read_frames(after, 25)):  # frame by frame: a whole demo is gigabytes
        assert old_frame is not None and new_frame is not None and np.array_equal(old_frame, new_frame), f"frame {compared} differs"
        compared += 1
    assert compared == report["frames"]
    return report


@pytest.mark.slow  # minutes of both codes on the demo clips; run with -m slow whenever the pipeline is restructured
def test_same_output_as_before_streaming_on_a_short_cut(old_code, pipeline, assets, tmp_path):
    media = tmp_path / "assets"
    media.mkdir()
    video = small_clip(media / "face.mp4", seconds=3.0)
    audio = media / "paused.wav"  # longer than the video (bounce), with a pause
    ffmpeg(
        "-i", speech(media / "a.wav", 2.0, start=1.0), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=1", "-i", speech(media / "b.wav", 2.0, start=4.0),
        "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1[a]", "-map", "[a]", audio,
    )
    report = same_output_before_and_after(old_code, pipeline, video, audio, dict(num_inference_steps=2, seed=11), tmp_path)
    assert report["frames_generated"] > 0 and {"generated", "silence"} <= {span["action"] for span in report["spans"]}


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(DEMO_CASES))
def test_same_output_as_before_streaming_on_the_demos(case, old_code, pipeline, assets, tmp_path):
    video, audio, options = DEMO_CASES[case]
    report = same_output_before_and_after(old_code, pipeline, assets / video, assets / audio, options, tmp_path)
    assert report["frames_generated"] > 0


@pytest.fixture(scope="module")
def footage(tmp_path_factory, assets):
    """A cut-away (face, 2 s of a plain colour, face) under 6 s of speech, and two faces side by side."""
    folder = tmp_path_factory.mktemp("footage")
    face = small_clip(folder / "face.mp4", seconds=2.0)
    cutaway = folder / "cutaway.mp4"
    ffmpeg(
        "-i", face, "-f", "lavfi", "-i", "color=c=0x406080:s=540x960:r=25:d=2", "-i", face,
        "-filter_complex", "[0:v][1:v][2:v]concat=n=3:v=1:a=0[v]", "-map", "[v]", "-c:v", "libx264", "-crf", 12, cutaway,
    )
    two_faces = folder / "two_faces.mp4"
    ffmpeg(
        "-t", 1.28, "-i", assets / "demo1_video.mp4", "-t", 1.28, "-i", assets / "demo1_video.mp4",
        "-filter_complex", "[0:v]scale=540:960[big];[1:v]scale=480:854,pad=480:960:0:53[small];[big][small]hstack[v]",
        "-map", "[v]", "-c:v", "libx264", "-crf", 12, two_faces,
    )
    return {"cutaway": (cutaway, speech(folder / "speech6.wav", 6.0, start=1.0)), "two_faces": (two_faces, speech(folder / "speech2.wav", 1.28, start=1.0))}


@pytest.mark.slow
@pytest.mark.parametrize("case,options", [
    ("cutaway", dict(num_inference_steps=2, skip_silence=False)),
    ("two_faces", dict(num_inference_steps=2, skip_silence=False)),
    ("two_faces", dict(num_inference_steps=2, skip_silence=False, speaker_point=(800.0, 380.0, 10))),
])
def test_same_output_as_before_streaming_on_cutaways_and_speakers(case, options, old_code, pipeline, footage, tmp_path):
    video, audio = footage[case]
    report = same_output_before_and_after(old_code, pipeline, video, audio, options, tmp_path)
    assert report["frames_generated"] > 0
