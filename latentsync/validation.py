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
    info = check_video(video)
    job = check_audio(audio).audio_duration if audio is not None else None
    if segments:
        own = [check_audio(Path(s.audio), segment_audio_role(i)).audio_duration if s.own_audio else None for i, s in enumerate(segments)]
        check_segments(segments, info.duration, own, job)
    return info


def check_video(video: Path) -> MediaInfo:
    """The video input's checks (`check_inputs`); returns its info."""
    _check_size(video, "video")
    info = probe_video(video, "video")
    if max(info.width, info.height) > MAX_FRAME_SIDE:
        raise MediaError(f"The video input is {info.width}x{info.height}; the largest supported is 4K ({MAX_FRAME_SIDE} px a side): scale it down.")
    _check_length(info.duration, "video")
    return info


def check_audio(audio: Path, role: str = "audio") -> MediaInfo:
    """The audio input's checks (`check_inputs`; a segment's own audio is checked the same, as
    `role`): an audio stream with samples, within the length limit. Returns its info; what
    passes may be handed to our ffmpeg runner."""
    _check_size(audio, role)
    sound = probe(audio, role)
    if not sound.has_audio:
        raise MediaError(f"The {role} input has no audio stream; pass an audio file, or a video with an audio track.")
    _check_length(sound.audio_duration, role)
    if sound.audio_duration <= 0:
        raise MediaError(f"The {role} input has no audio samples (zero length).")
    return sound


def _check_size(path: Path, role: str) -> None:
    if path.is_file() and path.stat().st_size > MAX_INPUT_BYTES:
        raise MediaError(f"The {role} input is {path.stat().st_size / 1024**3:.1f} GB; the limit is {MAX_INPUT_BYTES / 1024**3:.0f} GB per file.")


def _check_length(seconds: float, role: str) -> None:
    if seconds > MAX_DURATION_S:
        raise MediaError(f"The {role} input is {seconds:.0f} s long; the limit is {format_length(MAX_DURATION_S)} ({MAX_DURATION_S:.0f} s): split it into parts.")
