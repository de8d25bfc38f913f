"""Face alignment and paste-back against the official arithmetic (reference/align_restore.npz)."""

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from latentsync.face.align import FaceAligner
from tests.official import assert_affine_close, far_apart, official_affines
from tests.parity import at_least, within


@pytest.fixture(scope="module")
def ref(reference):
    return dict(np.load(reference / "align_restore.npz"))


def within_one_grey_level(a, b, share=0.999):
    return share_within_one_grey_level(a, b) >= share


def share_within_one_grey_level(a, b) -> float:
    return float((np.abs(a.astype(int) - b.astype(int)) <= 1).mean())


def test_affine_and_crop_match_the_official(ref):
    aligner = FaceAligner(int(ref["resolution"]))
    crop, affine = aligner.warp(ref["frame"], ref["landmarks3"])
    within("alignment matrix", np.abs(affine - ref["affine"]).max(), 1e-4, "max abs, pixels")
    assert crop.shape == ref["face"].shape == (aligner.crop_size[1], aligner.crop_size[0], 3)
    at_least("aligned crop within 1 grey level", share_within_one_grey_level(crop, ref["face"]), 0.999, "share of pixels")


def test_restore_matches_the_official(ref):
    aligner = FaceAligner(int(ref["resolution"]))
    restored = aligner.restore(ref["frame"], ref["newface"], ref["affine"])
    at_least("restored frame within 1 grey level", share_within_one_grey_level(restored, ref["restored"]), 0.999, "share of pixels")
    # a face given at the model resolution is resized to the crop size first (bicubic, antialiased)
    resolution = int(ref["resolution"])
    at_resolution = F.interpolate(torch.from_numpy(ref["newface"])[None], size=(resolution, resolution), mode="bicubic", antialias=True)[0]
    resized_like_the_official = F.interpolate(at_resolution[None], size=ref["face"].shape[:2], mode="bicubic", antialias=True)[0]
    assert np.array_equal(
        aligner.restore(ref["frame"], at_resolution, ref["affine"]),
        aligner.restore(ref["frame"], resized_like_the_official, ref["affine"]),
    )


def test_restore_leaves_everything_outside_the_face_untouched(ref):
    aligner = FaceAligner(int(ref["resolution"]))
    restored = aligner.restore(ref["frame"], ref["newface"], ref["affine"])
    inverse = cv2.invertAffineTransform(ref["affine"].astype(np.float64))
    w, h = aligner.crop_size
    corners = np.array([[-1, -1, 1], [w, -1, 1], [-1, h, 1], [w, h, 1]]) @ inverse.T  # bilinear reach
    x0, y0 = np.floor(corners.min(0)).astype(int)
    x1, y1 = np.ceil(corners.max(0)).astype(int)
    outside = np.ones(restored.shape[:2], bool)
    outside[max(y0, 0) : y1 + 1, max(x0, 0) : x1 + 1] = False
    assert np.array_equal(restored[outside], ref["frame"][outside])
    assert (restored[~outside] != ref["frame"][~outside]).mean() > 0.5  # the face region did change


def whole_frame_restore(frame, face, affine):
    """The official restore restated on the whole frame (float32), for comparison."""
    h, w = frame.shape[:2]
    inverse = cv2.invertAffineTransform(affine.astype(np.float64))
    face = np.ascontiguousarray(np.transpose(face, (1, 2, 0)))
    warped = cv2.warpAffine(face, inverse, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(127.0,) * 3)
    warped = np.clip(warped / 2 + 0.5, 0, 1) * 255
    mask = cv2.warpAffine(np.ones(face.shape[:2], np.float32), inverse, (w, h), flags=cv2.INTER_LINEAR)
    mask = cv2.erode(mask, np.ones((2, 2), np.uint8), anchor=(1, 1))
    edge = int(mask.sum() ** 0.5) // 20
    centre = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
    k = 2 * edge + 1
    soft = cv2.GaussianBlur(centre, (k, k), 0.3 * ((k - 1) * 0.5 - 1) + 0.8, borderType=cv2.BORDER_REFLECT_101)[..., None]
    return (soft * warped * mask[..., None] + (1 - soft) * frame).astype(np.uint8)


@pytest.mark.parametrize("shift", [(0, 0), (-560, -640), (430, 1100)])
def test_region_restore_equals_whole_frame_arithmetic(ref, shift):
    """Including faces that run off the frame's edges (the shifts move the face partly outside)."""
    affine = ref["affine"].astype(np.float64).copy()
    affine[:, 2] -= affine[:, :2] @ np.array(shift, dtype=np.float64)
    ours = FaceAligner(int(ref["resolution"])).restore(ref["frame"], ref["newface"], affine)
    expected = whole_frame_restore(ref["frame"], ref["newface"], affine)
    assert within_one_grey_level(ours, expected, share=0.9999)


def test_identity_round_trip_keeps_the_picture(ref):
    """Warping a face out and pasting it straight back barely changes the frame."""
    aligner = FaceAligner(256)
    crop, affine = aligner.warp(ref["frame"], np.array([[596.0, 669.0], [704.0, 696.0], [631.0, 736.0]]))
    face = torch.from_numpy(crop).permute(2, 0, 1).float() / 127.5 - 1
    restored = aligner.restore(ref["frame"], face, affine)
    mse = np.mean((restored.astype(float) - ref["frame"].astype(float)) ** 2)
    assert 10 * np.log10(255**2 / mse) > 40


def test_smoothing_mixes_a_fifth_of_the_previous_offset_and_reset_forgets_it(ref):
    """Frame after frame, as the official's transformation_from_points with its p_bias carried over."""
    landmarks = ref["landmarks3"].astype(np.float64)
    sequence = [landmarks, landmarks + [[0.0, 0.0], [0.0, 0.0], [20.0, 12.0]], landmarks + [[8.0, -6.0], [-3.0, 10.0], [-15.0, 6.0]], landmarks]
    aligner = FaceAligner(256)
    expected = official_affines(sequence, aligner.template)
    for points, official in zip(sequence, expected):
        assert_affine_close(aligner.affine(points), official)
    # the history shows (by 0.011-0.033 px here): each later frame differs from its points aligned afresh
    for points, official in zip(sequence[1:], expected[1:]):
        assert far_apart(official_affines([points], aligner.template)[0], official)
    aligner.reset()
    assert_affine_close(aligner.affine(sequence[1]), official_affines(sequence[1:2], aligner.template)[0])
    assert_affine_close(aligner.affine(sequence[2], smooth=False), official_affines(sequence[2:3], aligner.template, smooth=False)[0])


def test_model_input_is_the_lanczos_resized_crop(ref):
    aligner = FaceAligner(512)
    assert aligner.crop_size == (210 * 2, 280 * 2)
    crop, affine = aligner.warp(ref["frame"], ref["landmarks3"])
    face = aligner.model_input(ref["frame"], affine)
    assert face.shape == (512, 512, 3) and face.dtype == np.uint8
    assert np.array_equal(face, cv2.resize(crop, (512, 512), interpolation=cv2.INTER_LANCZOS4))
