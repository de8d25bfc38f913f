"""Checks a request's media before any work starts, so a bad input fails in one clear sentence.

These are the limits the headers declare. A file can declare less than it holds, so the
decoders enforce the same limits on what they decode (`LipsyncPipeline(max_duration_s=...)`).
"""

from pathlib import Path

from .config import MAX_DURATION_S, MAX_FRAME_SIDE, MAX_INPUT_BYTES
from .media.ffmpeg import format_length
from .media.probe import MediaError, MediaInfo, probe, probe_video
from .media.splice import segment_audio_role
from .segments import Segment, check_segments


def check_inputs(video: Path, audio: Path | None, segments: list[Segment] = ()) -> MediaInfo:
    """Probe the inputs and enforce the service limits; returns the video's info.

    `audio` may be None when every segment has an audio of its own; each segment's own audio
    (a path) is checked like the audio input, and the segments against the media
    (`segments.check_segments`). Messages name the input ("The video input ...", "The segment 2
    audio input ..."), never the file's path or name.
    """
    if audio is None and not segments:
        raise MediaError("The audio input is missing: pass the speech to lip-sync to (or segments that each have an audio of their own).")
    sounds = [("audio", audio)] if audio is not None else []
    sounds += [(segment_audio_role(index), Path(segment.audio)) for index, segment in enumerate(segments) if segment.own_audio]
    for role, path in (("video", video), *sounds):
        if path.is_file() and path.stat().st_size > MAX_INPUT_BYTES:
            raise MediaError(f"The {role} input is {path.stat().st_size / 1024**3:.1f} GB; the limit is {MAX_INPUT_BYTES / 1024**3:.0f} GB per file.")
    info = probe_video(video, "video")
    if max(info.width, info.height) > MAX_FRAME_SIDE:
        raise MediaError(f"The video input is {info.width}x{info.height}; the largest supported is 4K ({MAX_FRAME_SIDE} px a side): scale it down.")
    if info.duration > MAX_DURATION_S:
        raise MediaError(f"The video input is {info.duration:.0f} s long; the limit is {format_length(MAX_DURATION_S)} ({MAX_DURATION_S:.0f} s): split it into parts.")
    lengths = {}
    for role, path in sounds:
        lengths[role] = _audio_length(role, path)
    if segments:
        own = [lengths[segment_audio_role(index)] if segment.own_audio else None for index, segment in enumerate(segments)]
        check_segments(segments, info.duration, own, lengths.get("audio"))
    return info


def _audio_length(role: str, path: Path) -> float:
    sound = probe(path, role)
    if not sound.has_audio:
        raise MediaError(f"The {role} input has no audio stream; pass an audio file, or a video with an audio track.")
    if sound.audio_duration > MAX_DURATION_S:
        raise MediaError(f"The {role} input is {sound.audio_duration:.0f} s long; the limit is {format_length(MAX_DURATION_S)} ({MAX_DURATION_S:.0f} s): split it into parts.")
    if sound.audio_duration <= 0:
        raise MediaError(f"The {role} input has no audio samples (zero length).")
    return sound.audio_duration
