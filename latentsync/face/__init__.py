"""Faces: detection backends, tracking and speaker choice, alignment and paste-back."""

from .align import FaceAligner
from .detect import FaceDetection, FaceDetector, create_detector
from .track import Track, build_tracks, choose_speaker

__all__ = ["FaceAligner", "FaceDetection", "FaceDetector", "Track", "build_tracks", "choose_speaker", "create_detector"]
