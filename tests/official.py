"""The official LatentSync arithmetic restated in plain numpy (float64), as test oracles for the
parts that the reference vectors in ../shared/reference pin down only at one frame."""

import numpy as np

# FaceAligner works in float32, as the official does: against this float64 restatement its
# matrices were within 7.5e-7 of each value's size (3e-4 px on a translation of 450 px).
AFFINE_RTOL, AFFINE_ATOL = 2e-6, 1e-5


def assert_affine_close(actual, desired, err_msg="") -> None:
    np.testing.assert_allclose(actual, desired, rtol=AFFINE_RTOL, atol=AFFINE_ATOL, err_msg=err_msg)


def far_apart(a, b) -> bool:
    """Two affines differ by more than 20 times the tolerance somewhere: a test comparing with
    one of them tells the other apart."""
    return bool(np.any(np.abs(np.asarray(a) - b) > 20 * (AFFINE_ATOL + AFFINE_RTOL * np.abs(b))))


def official_affines(landmark_sequence, template: np.ndarray, smooth: bool = True) -> list[np.ndarray]:
    """The official `AlignRestore.transformation_from_points` (from StyleSync) over consecutive
    frames, its smoothing state (`p_bias`) carried from each frame to the next: a similarity
    transform of the three points onto `template`, plus the nose offset between the normalised
    point sets, mixed 0.2 x the previous frame's + 0.8 x this frame's."""
    template = np.asarray(template, dtype=np.float64)
    matrices, previous = [], None
    for points in landmark_sequence:
        points = np.asarray(points, dtype=np.float64)
        centre, template_centre = points.mean(0), template.mean(0)
        spread, template_spread = (points - centre).std(ddof=1), (template - template_centre).std(ddof=1)  # torch.std: unbiased
        normalised, template_normalised = (points - centre) / spread, (template - template_centre) / template_spread
        u, _, vh = np.linalg.svd(normalised.T @ template_normalised)
        v = vh.T  # torch.svd returns V itself
        rotation = v @ u.T
        if np.linalg.det(rotation) < 0:
            v[:, -1] = -v[:, -1]
            rotation = v @ u.T
        scale = template_spread / spread
        matrix = np.c_[scale * rotation, template_centre - scale * rotation @ centre]
        if smooth:
            bias = template_normalised[2] - normalised[2]
            if previous is not None:
                bias = previous * 0.2 + bias * 0.8
            previous = bias
            matrix[:, 2] += bias
        matrices.append(matrix)
    return matrices
