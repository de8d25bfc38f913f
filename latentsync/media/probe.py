"""Inspect media files with ffprobe: container, streams, size as displayed, frame rate, durations."""

import json
from dataclasses import dataclass
from pathlib import Path

from .ffmpeg import IMAGE2_SINGLE_FILE, VIDEO_FORMATS, MediaError, file_url, guard_args, reason, run, subject


@dataclass
class MediaInfo:
    """What ffprobe reports about a file; width and height are as displayed (rotation applied)."""

    has_video: bool
    has_audio: bool
    demuxer: str = ""  # the container as ffmpeg reads it (one of ACCEPTED_DEMUXERS): pass it on to decoders
    video_stream: int = -1  # index of the video stream used (cover art is skipped)
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


def probe(path, role: str | None = None) -> MediaInfo:
    """Inspect a media file; raises MediaError with a readable reason for unusable files.

    Messages name the file by its `role` ("The video input ...") when given, else by its name;
    never by its path.
    """
    path = Path(path)
    if not path.is_file():
        raise MediaError(f"{subject(role, path)} was not found: pass an existing file." if role else f"File not found: {path.name}.")
    size = path.stat().st_size
    if size == 0:
        raise MediaError(f"{subject(role, path)} is empty (0 bytes).")
    command = ["ffprobe", "-v", "error", *guard_args(), *IMAGE2_SINGLE_FILE, "-print_format", "json", "-show_format", "-show_streams", file_url(path)]
    result = run(command, timeout=30 + size / 50e6, role=role, path=path)
    if result.returncode != 0:
        kind = "video" if role == "video" else "audio or video"
        raise MediaError(f"{subject(role, path)} is not a readable {kind} file ({reason(result.stderr, [path])}).")
    data = json.loads(result.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    container = data.get("format", {})
    format_duration = _float(container.get("duration"))
    info = MediaInfo(
        has_video=video is not None, has_audio=audio is not None, duration=format_duration,
        demuxer=str(container.get("format_name", "")).split(",")[0],
    )
    if video:
        info.video_stream = int(video.get("index", 0))
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


def probe_video(path, role: str | None = "video") -> MediaInfo:
    """`probe`, requiring a video stream with a usable size and frame rate."""
    info = probe(path, role)
    if not info.has_video:
        raise MediaError(f"{subject(role, path)} has no video stream; pass a video file ({VIDEO_FORMATS}).")
    if info.width <= 0 or info.height <= 0 or info.fps <= 0:
        raise MediaError(f"{subject(role, path)} has a video stream ffprobe cannot size or time; re-encode it (e.g. to H.264 mp4).")
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

