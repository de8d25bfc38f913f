"""scripts/eval_sync.py: LSE-C, LSE-D and offset per face track of any video, with random SyncNet
weights (as tests/test_production.py's scored pipeline) and MediaPipe faces."""

import json
import re

import numpy as np
import pytest

from latentsync.face.align import FaceAligner
from latentsync.face.detect import create_detector
from latentsync.face.track import build_tracks
from latentsync.media.decode import load_audio, read_frames
from latentsync.sync import SyncNetScorer
from scripts import eval_sync
from tests.media import ffmpeg, random_syncnet_weights, small_clip, speech


@pytest.fixture(scope="module")
def syncnet_path(tmp_path_factory):
    return random_syncnet_weights(tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("eval_sync")


@pytest.fixture(scope="module")
def two_faces(folder, assets):
    """Two speakers side by side for 2 s, with demo1's audio."""
    path = folder / "two_faces.mp4"
    ffmpeg(
        "-t", 2.0, "-i", assets / "demo1_video.mp4", "-t", 2.0, "-i", assets / "demo1_video.mp4",
        "-filter_complex", "[0:v]scale=540:960[a];[1:v]scale=480:854,pad=480:960:0:53[b];[a][b]hstack[v]",
        "-map", "[v]", "-map", "0:a", "-c:v", "libx264", "-crf", 12, "-c:a", "aac", path,
    )
    return path


def run(capsys, *args):
    code = eval_sync.main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def scores_of_each_track(video, syncnet_path) -> list:
    """SyncNet's scores of each face track of a whole-length clip, composed here from the library's
    parts: the track's faces aligned as the pipeline aligns them, against the clip's own audio."""
    frames = list(read_frames(video, 25.0))
    tracks = build_tracks([create_detector("mediapipe").detect(frame) for frame in frames])
    samples = load_audio(video)[: len(frames) * 640]
    scores = []
    for track in tracks:
        aligner = FaceAligner(256)
        faces = np.stack([aligner.model_input(frames[i], aligner.affine(track.faces[i].landmarks3)) for i in sorted(track.faces)])
        scores.append(SyncNetScorer(syncnet_path).score(faces, samples))
    return scores


def test_each_face_track_gets_its_scores(two_faces, syncnet_path, capsys):
    code, out, err = run(capsys, two_faces, "--syncnet_path", syncnet_path, "--face_detector", "mediapipe", "--json")
    assert code == 0, err
    result = json.loads(out)
    tracks = result["tracks"]
    assert len(tracks) == 2
    for track, expected in zip(tracks, scores_of_each_track(two_faces, syncnet_path)):
        assert (track["start"], track["end"], track["frames"]) == (0.0, 2.0, 50)
        # as rounded to 3 decimals: random weights move the scores by about 1e-3 per frame of audio shift
        assert track["lse_c"] == pytest.approx(expected.confidence, abs=5.01e-4) and track["lse_d"] == pytest.approx(expected.min_distance, abs=5.01e-4)
        assert track["offset"] == expected.offset
    assert result["lse_c"] == pytest.approx(np.mean([t["lse_c"] for t in tracks]), abs=1e-3)  # equal lengths: the plain mean
    assert tracks[0]["lse_d"] != tracks[1]["lse_d"]  # two different faces, two different scores


def test_the_scores_follow_the_audio_they_are_given(folder, syncnet_path, capsys):
    clip = small_clip(folder / "clip.mp4", seconds=2.0)
    other = speech(folder / "other.wav", 2.0, start=5.0)
    own = eval_sync.score_video(clip, clip, SyncNetScorer(syncnet_path), create_detector("mediapipe"))
    code, out, err = run(capsys, clip, "--audio", other, "--syncnet_path", syncnet_path, "--face_detector", "mediapipe")
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == "clip.mp4, scored against other.wav" and lines[1].startswith("track 0     0.00-   2.00 s     50 frames  LSE-C")
    dubbed = [float(v) for v in re.search(r"LSE-C +([\d.]+)  LSE-D +([\d.]+)", lines[1]).groups()]
    assert len(own) == 1 and dubbed != [own[0].lse_c, own[0].lse_d]
    assert lines[2] == f"overall (frame-weighted)  LSE-C {dubbed[0]:.3f}  LSE-D {dubbed[1]:.3f}"


def test_a_clip_under_two_seconds_gets_a_message_not_a_traceback(folder, syncnet_path, capsys):
    clip = small_clip(folder / "short.mp4", seconds=1.5)
    code, out, err = run(capsys, clip, "--syncnet_path", syncnet_path, "--face_detector", "mediapipe")
    assert code == 1 and out == ""
    assert err == "error: short.mp4 is 1.5 s long; sync scores need at least 2 s of video.\n"


def test_a_clip_without_a_face_gets_a_message(folder, syncnet_path, capsys):
    faceless = folder / "faceless.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=0x406080:s=540x960:r=25:d=2.5", "-i", speech(folder / "s.wav", 2.5), "-shortest", "-c:v", "libx264", "-c:a", "aac", faceless)
    code, out, err = run(capsys, faceless, "--syncnet_path", syncnet_path, "--face_detector", "mediapipe")
    assert code == 1
    assert err == "error: No face was followed for 2 s or more in faceless.mp4 (63 frames checked); nothing to score.\n"


def test_a_video_without_audio_and_missing_weights_get_messages(folder, syncnet_path, capsys):
    silent = folder / "silent.mp4"
    ffmpeg("-i", small_clip(folder / "for_silent.mp4", seconds=2.0), "-an", "-c:v", "copy", silent)
    code, _, err = run(capsys, silent, "--syncnet_path", syncnet_path, "--face_detector", "mediapipe")
    assert code == 1 and err.startswith("error: ") and "silent.mp4" in err and "audio" in err and len(err.splitlines()) == 1
    code, _, err = run(capsys, silent, "--syncnet_path", folder / "missing.model", "--face_detector", "mediapipe")
    assert code == 1 and "SyncNet weights file was not found at" in err and "missing.model" in err and len(err.splitlines()) == 1
