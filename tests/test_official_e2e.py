"""A whole job against the official implementation (../shared/reference/e2e, its README): the
official `LipsyncPipeline` ran on a 4.2 s cut of demo1 with the tiny random models and the faces
of `faces.npz` replayed through its detector. The same job here, with the same faces replayed and
the output encoded losslessly as the reference was, must give the same mouths.

A pass-through or an audio that is off by a few frames fails this by far (the official changes
the face by 13.6 grey levels on average; 120 ms of delay measured 23.5 dB)."""

import hashlib

import numpy as np
import pytest

from latentsync.face.detect import FaceDetection, estimate_yaw
from latentsync.options import LipsyncOptions
from tests.conftest import REFERENCE
from tests.media import frames, psnr, tiny_pipeline

E2E = REFERENCE / "e2e"
COMPARED_FRAMES = 96  # six whole windows: the official trims its last window its own way
MIN_PSNR_DB = 40.0
# The reference's settings: 3 steps, guidance 1.5, seed 1247, DeepCache off, no silence skipping;
# crf 0 is the lossless H.264 encode the reference frames went through.
OFFICIAL_SETTINGS = LipsyncOptions(num_inference_steps=3, guidance_scale=1.5, seed=1247, enable_deepcache=False, skip_silence=False, crf=0)


class ReplayedFaces:
    """A face detector that returns the recorded face of each frame of the reference clip,
    recognising the frame by its content (so the order of the calls does not matter)."""

    def __init__(self, clip_frames: np.ndarray, recorded):
        self.faces = {}
        for frame, box, landmarks3 in zip(clip_frames, recorded["boxes"], recorded["landmarks3"]):
            points = np.round(landmarks3).astype(np.float64)  # whole pixels on both sides (the README)
            self.faces[self._key(frame)] = FaceDetection(tuple(float(v) for v in np.round(box)), 1.0, points, estimate_yaw(points))
        assert len(self.faces) == len(clip_frames), "two frames of the reference clip decode identically"

    def detect(self, frame_rgb: np.ndarray) -> list[FaceDetection]:
        return [self.faces[self._key(frame_rgb)]]

    @staticmethod
    def _key(frame: np.ndarray) -> str:
        return hashlib.sha1(np.ascontiguousarray(frame).data).hexdigest()


def run_reference_job(tmp_path, **settings) -> np.ndarray:
    """The reference job through the whole pipeline; the output's frames cropped to the reference box."""
    pipeline = tiny_pipeline(**settings)
    pipeline.face_detector = ReplayedFaces(frames(E2E / "clip.mp4"), np.load(E2E / "faces.npz"))
    output = tmp_path / "e2e.mp4"
    pipeline(E2E / "clip.mp4", E2E / "clip.wav", output, OFFICIAL_SETTINGS)
    x1, y1, x2, y2 = np.load(E2E / "official_faces.npz")["box"]
    return frames(output)[:, y1:y2, x1:x2]


@pytest.fixture(scope="module")
def official() -> np.ndarray:
    return np.load(E2E / "official_faces.npz")["frames"][:COMPARED_FRAMES]


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> np.ndarray:
    return run_reference_job(tmp_path_factory.mktemp("e2e"))


def test_a_whole_job_matches_the_official_pipeline(ours, official):
    assert len(ours) >= COMPARED_FRAMES
    quality = [psnr(a, b) for a, b in zip(ours[:COMPARED_FRAMES], official)]
    worst = int(np.argmin(quality))
    assert min(quality) >= MIN_PSNR_DB, f"frame {worst}: {quality[worst]:.1f} dB against the official (median {np.median(quality):.1f} dB)"


def test_the_job_changed_the_faces_it_is_compared_on(ours, tmp_path):
    """The comparison above means something only if the job regenerated the mouths: the source's
    own frames are far from the official output."""
    x1, y1, x2, y2 = np.load(E2E / "official_faces.npz")["box"]
    source = frames(E2E / "clip.mp4")[:COMPARED_FRAMES, y1:y2, x1:x2]
    assert psnr(source, ours[:COMPARED_FRAMES]) < MIN_PSNR_DB - 10
