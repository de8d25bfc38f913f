"""Inspect media files with ffprobe: streams, size as displayed, frame rate, durations."""

import json
import subprocess
from dataclasses import dataclass
from pathlib import Path

from .ffmpeg import MediaError, file_url, last_line


@dataclass
class MediaInfo:
    """What ffprobe reports about a file; width and height are as displayed (rotation applied)."""

    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    duration: float = 0.0
    start_time: float = 0.0
    rotation: int = 0
    video_codec: str = ""
    pix_fmt: str = ""
    audio_codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    audio_duration: float = 0.0



def probe(path) -> MediaInfo:
    """Inspect a media file; raises MediaError with a readable reason for unusable files."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"File not found: {path.name}.")
    if path.stat().st_size == 0:
        raise MediaError(f"{path.name} is empty (0 bytes).")
    command = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", file_url(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MediaError(f"{path.name} is not a readable audio or video file ({last_line(result.stderr)}).")
    data = json.loads(result.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    format_duration = _float(data.get("format", {}).get("duration"))
    info = MediaInfo(has_video=video is not None, has_audio=audio is not None, duration=format_duration)
    if video:
        rotation = _rotation(video)
        width, height = int(video.get("width", 0)), int(video.get("height", 0))
        if rotation % 180:
            width, height = height, width
        info.width, info.height, info.rotation = width, height, rotation
        info.fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
        info.duration = _float(video.get("duration")) or format_duration
        info.start_time = _float(video.get("start_time"))
        info.video_codec, info.pix_fmt = video.get("codec_name", ""), video.get("pix_fmt", "")
    if audio:
        info.audio_codec = audio.get("codec_name", "")
        info.sample_rate = int(audio.get("sample_rate", 0) or 0)
        info.channels = int(audio.get("channels", 0) or 0)
        info.audio_duration = _float(audio.get("duration")) or format_duration
    return info


def probe_video(path) -> MediaInfo:
    """`probe`, requiring a video stream with a usable size and frame rate."""
    info = probe(path)
    name = Path(path).name
    if not info.has_video:
        raise MediaError(f"{name} has no video stream; pass a video file (mp4, mov, mkv, webm, avi).")
    if info.width <= 0 or info.height <= 0 or info.fps <= 0:
        raise MediaError(f"{name} has a video stream ffprobe cannot size or time; re-encode it (e.g. to H.264 mp4).")
    return info


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _rate(text) -> float:
    if not text or text in ("0/0", "N/A"):
        return 0.0
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator or 1) if float(denominator or 1) else 0.0


def _rotation(stream: dict) -> int:
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            return int(round(float(side_data["rotation"]))) % 360
    return int(float(stream.get("tags", {}).get("rotate", 0))) % 360

