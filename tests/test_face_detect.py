"""Face detection backends: MediaPipe on the demo clips, InsightFace on stand-in ONNX models."""

import contextlib
import io
import subprocess

import cv2
import numpy as np
import pytest
from insightface.app import FaceAnalysis

from latentsync.face.align import FaceAligner
from latentsync.face.detect import (
    INSIGHTFACE_DET_SIZE,
    INSIGHTFACE_LEFT_BROW,
    INSIGHTFACE_NOSE,
    INSIGHTFACE_RIGHT_BROW,
    InsightFaceDetector,
    MediaPipeDetector,
    create_detector,
    estimate_yaw,
)
from tests.onnx_standins import write_buffalo_standins


def decode_frames(path, indices, fps=25):
    """RGB frames at the given indices, decoded with the ffmpeg binary."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries", "stream=width,height", "-of", "csv=p=0", str(path)],
        capture_output=True, text=True, check=True,
    )
    width, height = map(int, probe.stdout.strip().split(","))
    raw = subprocess.run(
        ["ffmpeg", "-v", "error", "-i", str(path), "-vf", f"fps={fps}", "-frames:v", str(max(indices) + 1), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True, check=True,
    ).stdout
    frames = np.frombuffer(raw, np.uint8).reshape(-1, height, width, 3)
    return [frames[i] for i in indices]


@pytest.fixture(scope="module")
def mediapipe():
    detector = MediaPipeDetector()
    yield detector
    detector.close()


def test_mediapipe_finds_the_speaker_on_the_demo(mediapipe, assets):
    for frame in decode_frames(assets / "demo1_video.mp4", [0, 11, 120]):
        faces = mediapipe.detect(frame)
        assert len(faces) == 1
        face = faces[0]
        left, right, nose = face.landmarks3
        assert left[0] < nose[0] < right[0]  # brows either side of the nose, as the template expects
        assert nose[1] > max(left[1], right[1])
        assert 80 < np.linalg.norm(right - left) < 160  # the face is about 220 px wide in this clip
        assert abs(face.yaw_degrees) < 30
        x1, y1, x2, y2 = face.box
        assert x1 < left[0] and right[0] < x2 and y1 < left[1] and nose[1] < y2


def test_mediapipe_alignment_puts_the_face_where_the_template_does(mediapipe, assets):
    """The aligned crop from MediaPipe points lands the brows and nose on the template spots."""
    frame = decode_frames(assets / "demo1_video.mp4", [11])[0]
    landmarks = mediapipe.detect(frame)[0].landmarks3
    aligner = FaceAligner(256)
    crop, affine = aligner.warp(frame, landmarks, smooth=False)
    mapped = np.c_[landmarks, np.ones(3)] @ affine.T
    assert np.abs(mapped - aligner.template).max() < 12  # pixels in the 210x280 crop
    # and a second detection on the aligned crop finds the face filling it
    faces = mediapipe.detect(np.ascontiguousarray(crop))
    assert len(faces) == 1 and faces[0].width > 0.6 * crop.shape[1]


def test_no_face_gives_an_empty_list(mediapipe):
    assert mediapipe.detect(np.full((480, 640, 3), 90, np.uint8)) == []


def standin_landmarks():
    rng = np.random.default_rng(3)
    points = rng.uniform(-0.2, 0.2, size=(106, 2))
    points[INSIGHTFACE_LEFT_BROW] = np.array([-0.4, -0.35]) + rng.uniform(-0.05, 0.05, (5, 2))
    points[INSIGHTFACE_RIGHT_BROW] = np.array([0.4, -0.35]) + rng.uniform(-0.05, 0.05, (5, 2))
    points[INSIGHTFACE_NOSE] = np.array([0.0, 0.05]) + rng.uniform(-0.05, 0.05, (4, 2))
    return points


def official_landmarks3(landmark_2d_106):
    """What the official computes from insightface's 106 landmarks: round, average, round again."""
    points = np.round(landmark_2d_106).astype(int)
    return np.round([points[INSIGHTFACE_LEFT_BROW].mean(0), points[INSIGHTFACE_RIGHT_BROW].mean(0), points[INSIGHTFACE_NOSE].mean(0)])


def expected_landmarks3(box, normalised):
    """The official's three points from landmarks the stand-in puts at `normalised` in the crop of `box`."""
    x1, y1, x2, y2 = box
    scale = 192 / (max(x2 - x1, y2 - y1) * 1.5)
    centre = np.array([(x1 + x2) / 2, (y1 + y2) / 2])
    return official_landmarks3(centre + ((normalised + 1) * 96 - 96) / scale)


def test_insightface_path_runs_with_standin_models(tmp_path):
    big, medium = (100.0, 120.0, 300.0, 380.0), (340.0, 60.0, 460.0, 220.0)
    faces = [
        (big, 0.9),
        (medium, 0.8),
        ((20.0, 400.0, 60.0, 460.0), 0.95),  # too small: 40 x 60
        ((300.0, 300.0, 500.0, 420.0), 0.95),  # too wide: aspect 1.67
        ((10.0, 10.0, 90.0, 110.0), 0.45),  # below the score threshold
    ]
    normalised = standin_landmarks()
    root = write_buffalo_standins(tmp_path, faces, normalised)
    detector = create_detector("auto", model_root=root)
    assert isinstance(detector, InsightFaceDetector)
    detections = detector.detect(np.zeros((512, 512, 3), np.uint8))
    assert [tuple(round(v) for v in d.box) for d in detections] == [big, medium]  # filtered, largest first
    assert detections[0].score == pytest.approx(0.9, abs=1e-6)
    for detection, box in zip(detections, (big, medium)):
        np.testing.assert_allclose(detection.landmarks3, expected_landmarks3(box, normalised), atol=1.0)


def test_insightface_is_given_the_frames_in_the_order_its_own_code_expects(tmp_path, assets):
    """On real frames, our detector (given RGB) finds exactly what insightface's own FaceAnalysis
    finds when given the frame as cv2 reads it (BGR, the order its models expect), with stand-in
    models whose faces and landmarks follow the frame's colour balance."""
    demo_face = (80.0, 130.0, 210.0, 300.0)  # about where the speaker is, in the 512x512 detector input
    root = write_buffalo_standins(tmp_path, [(demo_face, 0.9)], standin_landmarks())
    ours = InsightFaceDetector(root)
    with contextlib.redirect_stdout(io.StringIO()):  # insightface prints every model it loads
        theirs = FaceAnalysis(name="buffalo_l", root=str(root), allowed_modules=["detection", "landmark_2d_106"], providers=["CPUExecutionProvider"])
        theirs.prepare(ctx_id=-1, det_size=(INSIGHTFACE_DET_SIZE, INSIGHTFACE_DET_SIZE))
    frames = decode_frames(assets / "demo1_video.mp4", [0, 40]) + decode_frames(assets / "demo2_video.mp4", [0, 40])
    for frame in frames:
        [expected] = theirs.get(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        [found] = ours.detect(frame)
        assert found.box == tuple(float(v) for v in expected.bbox)
        assert found.score == pytest.approx(float(expected.det_score))
        np.testing.assert_array_equal(found.landmarks3, official_landmarks3(expected.landmark_2d_106))
        # the stand-ins tell the orders apart on this frame (by 30 px or more on these clips):
        # given RGB, insightface's own code finds another face
        [swapped] = theirs.get(frame)
        assert np.abs(swapped.bbox - expected.bbox).max() > 4
        assert np.abs(official_landmarks3(swapped.landmark_2d_106) - found.landmarks3).max() > 4


def test_create_detector_choices(tmp_path):
    assert isinstance(create_detector("auto", model_root=tmp_path), MediaPipeDetector)
    assert isinstance(create_detector("auto"), MediaPipeDetector)
    with pytest.raises(FileNotFoundError, match=r"det_10g.onnx.*download_weights"):
        create_detector("insightface", model_root=tmp_path)
    with pytest.raises(ValueError, match="Unknown face detector"):
        create_detector("opencv")


def test_yaw_estimate():
    frontal = np.array([[100.0, 100.0], [200.0, 100.0], [150.0, 150.0]])
    assert estimate_yaw(frontal) == pytest.approx(0.0)
    turned = frontal + np.array([[0, 0], [0, 0], [30.0, 0]])
    assert estimate_yaw(turned) == pytest.approx(45.0, abs=0.1)  # offset 0.6 of half the brow distance
    assert estimate_yaw(frontal - np.array([[0, 0], [0, 0], [45.0, 0]])) < -50
