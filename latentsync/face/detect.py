"""Face detection backends behind one small interface.

Each backend returns, per frame, every face that passes the official filters, largest first, with
its box, score and the three alignment landmarks the model's template uses: the left brow centre,
the right brow centre (left/right as seen in the image) and the nose centre.

- InsightFace (buffalo_l: det_10g + 2d106det), the detector of the official LatentSync 1.6.
- MediaPipe face detection + face mesh, whose models ship inside the mediapipe wheel: no download.
"""

import contextlib
import io
import logging
import math
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from ..files import require_weight_file
from ..logs import native_stderr_captured

logger = logging.getLogger("latentsync")

INSIGHTFACE_FILES = ("det_10g.onnx", "2d106det.onnx")
INSIGHTFACE_DET_SIZE = 512

# The official picks these 106-point landmarks for the three alignment points.
INSIGHTFACE_LEFT_BROW = [43, 48, 49, 51, 50]
INSIGHTFACE_RIGHT_BROW = [101, 102, 103, 104, 105]
INSIGHTFACE_NOSE = [74, 77, 83, 86]
# The same three points on MediaPipe's 468-point mesh: the upper arc of each brow and the lower
# half of the nose bridge (chosen so the points fit the template as the InsightFace ones do).
MEDIAPIPE_LEFT_BROW = [70, 63, 105, 66, 107]  # the subject's right brow, on the image's left
MEDIAPIPE_RIGHT_BROW = [300, 293, 334, 296, 336]
MEDIAPIPE_NOSE = [197, 195, 5, 4]

MIN_FACE_WIDTH, MIN_FACE_HEIGHT = 50, 80
MIN_ASPECT, MAX_ASPECT = 0.2, 1.5
MIN_SCORE = 0.5
NOSE_DEPTH_RATIO = 0.6  # nose offset / half brow distance at 45 degrees of yaw (rough, for a yaw estimate)


@dataclass
class FaceDetection:
    box: tuple  # (x1, y1, x2, y2) in frame pixels
    score: float
    landmarks3: np.ndarray  # (3, 2): left brow centre, right brow centre, nose centre
    yaw_degrees: float  # rough head turn from the landmarks; 0 = frontal

    @property
    def width(self) -> float:
        return self.box[2] - self.box[0]

    @property
    def height(self) -> float:
        return self.box[3] - self.box[1]


class FaceDetector(Protocol):
    def detect(self, frame_rgb: np.ndarray) -> list[FaceDetection]: ...


def estimate_yaw(landmarks3: np.ndarray) -> float:
    """Head turn in degrees from the nose's sideways offset against the brow line (rough).

    Positive when the nose is to the image's right of the brow midpoint.
    """
    left, right, nose = np.asarray(landmarks3, dtype=np.float64)
    across = right - left
    half_width = np.linalg.norm(across) / 2
    if half_width == 0:
        return 90.0
    offset = np.dot(nose - (left + right) / 2, across / (2 * half_width)) / half_width
    return math.degrees(math.atan2(offset, NOSE_DEPTH_RATIO))


def passes_official_filters(box, score: float) -> bool:
    """The official's face filters: at least 50x80 px, width/height in [0.2, 1.5], score >= 0.5."""
    width, height = int(box[2]) - int(box[0]), int(box[3]) - int(box[1])
    if width < MIN_FACE_WIDTH or height < MIN_FACE_HEIGHT:
        return False
    return MIN_ASPECT <= width / height <= MAX_ASPECT and score >= MIN_SCORE


def _largest_first(faces: list[FaceDetection]) -> list[FaceDetection]:
    return sorted(faces, key=lambda face: face.width * face.height, reverse=True)


class InsightFaceDetector:
    """InsightFace buffalo_l detection (det size 512) with 106-point landmarks.

    `model_root` holds `models/buffalo_l/det_10g.onnx` and `2d106det.onnx` (InsightFace's layout).
    """

    def __init__(self, model_root, device="cpu"):
        import onnxruntime
        from insightface.app import FaceAnalysis

        for path in insightface_model_paths(model_root):
            require_weight_file(path, "The InsightFace model file")
        wants_cuda = str(device).startswith("cuda")
        use_cuda = wants_cuda and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
        if use_cuda and hasattr(onnxruntime, "preload_dlls"):
            onnxruntime.preload_dlls()  # CUDA and cuDNN from the nvidia-* wheels PyTorch brought, before any session looks for them
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if use_cuda else ["CPUExecutionProvider"]
        with native_stderr_captured() as onnxruntime_said, contextlib.redirect_stdout(io.StringIO()):  # insightface prints every model it loads
            self.app = FaceAnalysis(name="buffalo_l", root=str(model_root), allowed_modules=["detection", "landmark_2d_106"], providers=providers)
            self.app.prepare(ctx_id=0 if use_cuda else -1, det_size=(INSIGHTFACE_DET_SIZE, INSIGHTFACE_DET_SIZE))
        # What the sessions really use: onnxruntime lists CUDA even when its libraries then fail to load.
        self.providers = sorted({provider for model in self.app.models.values() for provider in model.session.get_providers()})
        if wants_cuda and any("CUDAExecutionProvider" not in model.session.get_providers() for model in self.app.models.values()):
            reasons = [line.strip() for line in onnxruntime_said.text.splitlines() if "cuda" in line.lower() or "error" in line.lower()]
            logger.warning(
                "InsightFace runs on the CPU although the models run on %s: onnxruntime %s (providers %s) could not use CUDA%s",
                device, onnxruntime.__version__, onnxruntime.get_available_providers(),
                f": {' '.join(reasons)[:500]}" if reasons else " (this onnxruntime has no CUDA provider; install onnxruntime-gpu)",
            )

    def detect(self, frame_rgb: np.ndarray) -> list[FaceDetection]:
        faces = []
        for face in self.app.get(cv2.cvtColor(frame_rgb, cv2.COLOR_RGB2BGR)):  # insightface takes BGR
            box = tuple(float(v) for v in face.bbox)
            score = float(face.det_score)
            if not passes_official_filters(face.bbox.astype(np.int_), score):
                continue
            points = np.round(face.landmark_2d_106).astype(np.int_)
            landmarks3 = np.round(
                [points[INSIGHTFACE_LEFT_BROW].mean(0), points[INSIGHTFACE_RIGHT_BROW].mean(0), points[INSIGHTFACE_NOSE].mean(0)]
            )
            faces.append(FaceDetection(box, score, landmarks3, estimate_yaw(landmarks3)))
        return _largest_first(faces)


class MediaPipeDetector:
    """MediaPipe: the full-range face detector finds faces (small ones too), then the 468-point face
    mesh runs on each face's crop. Every frame is processed on its own."""

    def __init__(self, max_faces: int = 4):
        import mediapipe as mp

        self.max_faces = max_faces
        self._lock = threading.Lock()  # MediaPipe graphs are not safe to share between threads
        self.finder = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=MIN_SCORE)
        self.mesh = mp.solutions.face_mesh.FaceMesh(static_image_mode=True, max_num_faces=1, refine_landmarks=False)

    def detect(self, frame_rgb: np.ndarray) -> list[FaceDetection]:
        with self._lock:
            return self._detect(np.ascontiguousarray(frame_rgb))

    def _detect(self, frame_rgb: np.ndarray) -> list[FaceDetection]:
        height, width = frame_rgb.shape[:2]
        found = self.finder.process(frame_rgb).detections or []
        faces = []
        for detection in sorted(found, key=lambda d: -d.score[0])[: self.max_faces]:
            box = detection.location_data.relative_bounding_box
            x, y, w, h = box.xmin * width, box.ymin * height, box.width * width, box.height * height
            # a square crop around the face with room for the forehead and chin the mesh needs
            side = 1.8 * max(w, h)
            x0, y0 = int(max(0, x + w / 2 - side / 2)), int(max(0, y + h / 2 - side / 2))
            x1, y1 = int(min(width, x + w / 2 + side / 2)), int(min(height, y + h / 2 + side / 2))
            if x1 - x0 < 16 or y1 - y0 < 16:
                continue
            crop = np.ascontiguousarray(frame_rgb[y0:y1, x0:x1])
            mesh = self.mesh.process(crop).multi_face_landmarks
            if not mesh:
                continue
            points = np.array([(p.x * (x1 - x0) + x0, p.y * (y1 - y0) + y0) for p in mesh[0].landmark])
            face_box = (*points.min(0), *points.max(0))
            score = float(detection.score[0])
            if not passes_official_filters(face_box, score):
                continue
            landmarks3 = np.array([points[MEDIAPIPE_LEFT_BROW].mean(0), points[MEDIAPIPE_RIGHT_BROW].mean(0), points[MEDIAPIPE_NOSE].mean(0)])
            faces.append(FaceDetection(tuple(float(v) for v in face_box), score, landmarks3, estimate_yaw(landmarks3)))
        return _largest_first(faces)

    def close(self) -> None:
        self.finder.close()
        self.mesh.close()


def insightface_model_paths(model_root) -> list[Path]:
    return [Path(model_root) / "models" / "buffalo_l" / name for name in INSIGHTFACE_FILES]


def create_detector(kind: str = "auto", model_root=None, device="cpu") -> FaceDetector:
    """A detector backend: "insightface", "mediapipe", or "auto" (InsightFace when its two model
    files are under `model_root`, else MediaPipe)."""
    if kind == "auto":
        available = model_root is not None and all(p.exists() for p in insightface_model_paths(model_root))
        kind = "insightface" if available else "mediapipe"
    if kind == "insightface":
        if model_root is None:
            raise ValueError("The insightface detector needs model_root (the folder holding models/buffalo_l).")
        return InsightFaceDetector(model_root, device)
    if kind == "mediapipe":
        return MediaPipeDetector()
    raise ValueError(f"Unknown face detector {kind!r}; choose auto, insightface or mediapipe.")
