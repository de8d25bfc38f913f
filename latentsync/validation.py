"""Checks a request's media before any work starts, so a bad input fails in one clear sentence.

These are the limits the headers declare. A file can declare less than it holds, so the
decoders enforce the same limits on what they decode (`LipsyncPipeline(max_duration_s=...)`).
"""

from pathlib import Path

from .config import MAX_DURATION_S, MAX_FRAME_SIDE, MAX_INPUT_BYTES
from .media.ffmpeg import format_length
from .media.probe import MediaError, MediaInfo, probe, probe_video


def check_inputs(video: Path, audio: Path) -> MediaInfo:
    """Probe both inputs and enforce the service limits; returns the video's info.

    Messages name the input ("The video input ..."), never the file's path or name.
    """
    info = check_video(video)
    check_audio(audio)
    return info


def check_video(video: Path) -> MediaInfo:
    """The video input's checks (`check_inputs`); returns its info."""
    _check_size(video, "video")
    info = probe_video(video, "video")
    if max(info.width, info.height) > MAX_FRAME_SIDE:
        raise MediaError(f"The video input is {info.width}x{info.height}; the largest supported is 4K ({MAX_FRAME_SIDE} px a side): scale it down.")
    _check_length(info.duration, "video")
    return info


def check_audio(audio: Path) -> MediaInfo:
    """The audio input's checks (`check_inputs`): an audio stream with samples, within the
    length limit. Returns its info; what passes may be handed to our ffmpeg runner."""
    _check_size(audio, "audio")
    sound = probe(audio, "audio")
    if not sound.has_audio:
        raise MediaError("The audio input has no audio stream; pass an audio file, or a video with an audio track.")
    _check_length(sound.audio_duration, "audio")
    if sound.audio_duration <= 0:
        raise MediaError("The audio input has no audio samples (zero length).")
    return sound


def _check_size(path: Path, role: str) -> None:
    if path.is_file() and path.stat().st_size > MAX_INPUT_BYTES:
        raise MediaError(f"The {role} input is {path.stat().st_size / 1024**3:.1f} GB; the limit is {MAX_INPUT_BYTES / 1024**3:.0f} GB per file.")


def _check_length(seconds: float, role: str) -> None:
    if seconds > MAX_DURATION_S:
        raise MediaError(f"The {role} input is {seconds:.0f} s long; the limit is {format_length(MAX_DURATION_S)} ({MAX_DURATION_S:.0f} s): split it into parts.")
