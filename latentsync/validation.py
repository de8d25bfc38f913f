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
    for role, path in (("video", video), ("audio", audio)):
        if path.is_file() and path.stat().st_size > MAX_INPUT_BYTES:
            raise MediaError(f"The {role} input is {path.stat().st_size / 1024**3:.1f} GB; the limit is {MAX_INPUT_BYTES / 1024**3:.0f} GB per file.")
    info = probe_video(video, "video")
    if max(info.width, info.height) > MAX_FRAME_SIDE:
        raise MediaError(f"The video input is {info.width}x{info.height}; the largest supported is 4K ({MAX_FRAME_SIDE} px a side): scale it down.")
    sound = probe(audio, "audio")
    if not sound.has_audio:
        raise MediaError("The audio input has no audio stream; pass an audio file, or a video with an audio track.")
    for role, seconds in (("video", info.duration), ("audio", sound.audio_duration)):
        if seconds > MAX_DURATION_S:
            raise MediaError(f"The {role} input is {seconds:.0f} s long; the limit is {format_length(MAX_DURATION_S)} ({MAX_DURATION_S:.0f} s): split it into parts.")
    if sound.audio_duration <= 0:
        raise MediaError("The audio input has no audio samples (zero length).")
    return info
