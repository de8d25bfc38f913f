"""Align a face to the model's template, and paste a generated face back into the frame.

The arithmetic follows the official LatentSync alignment (itself from StyleSync): a similarity
transform maps three landmarks (the two brow centres and the nose centre) onto a fixed template,
with a little temporal smoothing; restoring warps the generated face back and blends it in with a
mask that is eroded and feathered in proportion to the face size.

All pixel work happens on the face's bounding region of the frame, not the whole frame: the
result is the same, and a 1080x1920 frame restores many times faster.
"""

import math

import cv2
import numpy as np
import torch
import torch.nn.functional as F

FILL = 127.0  # grey for crop pixels that fall outside the frame


class FaceAligner:
    """Warps faces onto the template at `resolution` (256 or 512) and restores generated ones."""

    def __init__(self, resolution: int = 256):
        self.resolution = resolution
        scale = resolution / 256 * 2.8
        self.template = np.array([[17.0, 20.0], [58.0, 20.0], [37.5, 40.0]]) * scale
        self.crop_size = (int(75 * scale), int(100 * scale))  # (width, height)
        self._previous_offset = None

    def reset(self) -> None:
        """Forget the smoothing history (call at a new shot or a new face track)."""
        self._previous_offset = None

    def affine(self, landmarks3, smooth: bool = True) -> np.ndarray:
        """The 2x3 matrix taking frame pixels to crop pixels for these three landmarks.

        A least-squares similarity transform (rotation, uniform scale, translation) onto the
        template. With `smooth`, the official smoothing applies: the nose offset between the
        normalised point sets is added to the translation, mixed 0.2 previous + 0.8 current.
        """
        points = torch.tensor(np.asarray(landmarks3, dtype=np.float64), dtype=torch.float32)
        template = torch.tensor(self.template, dtype=torch.float32)
        centre, template_centre = points.mean(0), template.mean(0)
        spread, template_spread = (points - centre).std(), (template - template_centre).std()
        normalised = (points - centre) / spread
        template_normalised = (template - template_centre) / template_spread
        u, _, v = torch.svd(normalised.T @ template_normalised)
        rotation = v @ u.T
        if torch.det(rotation) < 0:  # a reflection: flip the last axis to get a proper rotation
            v[:, -1] = -v[:, -1]
            rotation = v @ u.T
        scale = template_spread / spread
        translation = template_centre[:, None] - scale * rotation @ centre[:, None]
        matrix = torch.cat([scale * rotation, translation], dim=1)
        if smooth:
            offset = template_normalised[2] - normalised[2]
            if self._previous_offset is not None:
                offset = self._previous_offset * 0.2 + offset * 0.8
            self._previous_offset = offset
            matrix[:, 2] += offset
        return matrix.numpy()

    def warp(self, frame: np.ndarray, landmarks3, smooth: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """Crop the face: (crop uint8 at the crop size, before any resize; the 2x3 affine)."""
        matrix = self.affine(landmarks3, smooth)
        return self.crop(frame, matrix), matrix

    def crop(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """The aligned crop (crop height x width x 3, uint8) for a given affine."""
        inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))
        x0, y0, x1, y1 = _bounds(inverse, self.crop_size, frame.shape, margin=2)
        region = frame[y0:y1, x0:x1].astype(np.float32)
        crop = cv2.warpAffine(
            region, _from_sub_image(matrix, x0, y0), self.crop_size,
            flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=(FILL,) * 3,
        )
        return crop.astype(np.uint8)  # truncation, as the official

    def model_input(self, frame: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """The crop resized to the model resolution with Lanczos, uint8 (resolution, resolution, 3)."""
        return cv2.resize(self.crop(frame, matrix), (self.resolution, self.resolution), interpolation=cv2.INTER_LANCZOS4)

    def restore(self, frame: np.ndarray, face, matrix: np.ndarray) -> np.ndarray:
        """Paste a generated face (3, H, W) in [-1, 1] back into a copy of `frame` (see `paste`)."""
        out = frame.copy()
        pasted = self.paste(frame, face, matrix)
        if pasted is not None:
            rows, cols, pixels = pasted
            out[rows, cols] = pixels
        return out

    def paste(self, frame: np.ndarray, face, matrix: np.ndarray) -> tuple[slice, slice, np.ndarray] | None:
        """What pasting a generated face (3, H, W) in [-1, 1] back changes in `frame`: the rows and
        columns of the region it lands in and their new pixels (None if it lands nowhere). `frame`
        is only read, so frames can be pasted on in threads (OpenCV and torch release the GIL).

        The face may be at the crop size or at the model resolution (then it is resized to the
        crop size with antialiased bicubic, as the official).
        """
        width, height = self.crop_size
        face = torch.as_tensor(face, dtype=torch.float32)
        if tuple(face.shape[1:]) != (height, width):
            face = F.interpolate(face[None], size=(height, width), mode="bicubic", antialias=True)[0]
        # To 0..255 on the small crop, before warping; the fill then lands on 255 like the official's
        # grey 127 does after its clamp (and the mask hides it anyway).
        face = np.ascontiguousarray((face.permute(1, 2, 0) / 2 + 0.5).clamp(0, 1).mul(255).numpy())
        inverse = cv2.invertAffineTransform(np.asarray(matrix, dtype=np.float64))

        # Work on the region the face lands in, with room for the feathered edge around it.
        landed_area = abs(np.linalg.det(inverse[:, :2])) * width * height
        x0, y0, x1, y1 = _bounds(inverse, self.crop_size, frame.shape, margin=2 * (int(math.sqrt(landed_area)) // 20) + 4)
        to_region = inverse.copy()
        to_region[:, 2] -= (x0, y0)
        warp = dict(dsize=(x1 - x0, y1 - y0), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

        mask = cv2.warpAffine(np.ones((height, width), np.float32), to_region, borderValue=0, **warp)
        mask = cv2.erode(mask, np.ones((2, 2), np.uint8), anchor=(1, 1))  # min over the pixel and its top/left neighbours
        edge = int(float(mask.sum(dtype=np.float64)) ** 0.5) // 20
        soft = mask
        if edge > 0:
            centre = cv2.erode(mask, np.ones((2 * edge, 2 * edge), np.uint8))
            blur = 2 * edge + 1
            sigma = 0.3 * ((blur - 1) * 0.5 - 1) + 0.8
            soft = cv2.GaussianBlur(centre, (blur, blur), sigma, borderType=cv2.BORDER_REFLECT_101)

        # Blend only where the feathered mask is non-zero: soft * (mask * face) + (1 - soft) * original.
        ys, xs = np.nonzero(soft.any(axis=1))[0], np.nonzero(soft.any(axis=0))[0]
        if len(ys) == 0:
            return None
        rows, cols = slice(ys[0], ys[-1] + 1), slice(xs[0], xs[-1] + 1)
        new_face = cv2.warpAffine(face, to_region, borderValue=(255.0,) * 3, **warp)[rows, cols]
        soft, mask = soft[rows, cols], mask[rows, cols]
        target = frame[y0:y1, x0:x1][rows, cols]
        pasted = cv2.multiply(cv2.multiply(new_face, cv2.merge([mask] * 3)), cv2.merge([soft] * 3))
        kept = cv2.multiply(target.astype(np.float32), cv2.merge([1.0 - soft] * 3))
        # float -> uint8 by truncation, as the official
        return slice(y0 + rows.start, y0 + rows.stop), slice(x0 + cols.start, x0 + cols.stop), cv2.add(pasted, kept).astype(np.uint8)


def _bounds(matrix: np.ndarray, size: tuple[int, int], frame_shape, margin: int) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1) covering a (width, height) rectangle mapped by `matrix`, grown
    by `margin` and clipped to the frame."""
    width, height = size
    corners = np.array([[0, 0, 1], [width - 1, 0, 1], [0, height - 1, 1], [width - 1, height - 1, 1]], dtype=np.float64)
    mapped = corners @ np.asarray(matrix, dtype=np.float64).T
    x0, y0 = np.floor(mapped.min(0)).astype(int) - margin
    x1, y1 = np.ceil(mapped.max(0)).astype(int) + margin + 1
    frame_height, frame_width = frame_shape[:2]
    return max(x0, 0), max(y0, 0), min(x1, frame_width), min(y1, frame_height)


def _from_sub_image(matrix: np.ndarray, x0: int, y0: int) -> np.ndarray:
    """`matrix` (frame -> crop) rewritten for a sub-image of the frame whose corner is (x0, y0)."""
    shifted = np.array(matrix, dtype=np.float64)
    shifted[:, 2] += shifted[:, :2] @ np.array([x0, y0], dtype=np.float64)
    return shifted
