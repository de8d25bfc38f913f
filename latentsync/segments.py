"""Segments: re-make only some time ranges of a video, each speaking its own audio.

A segment is a time range of the video, in seconds, with the audio its frames speak: a file of
its own (from `audio_start` in it, default 0), or the job's audio at that time (from
`audio_start`, default the segment's start); optionally its own `guidance_scale` and
`inference_steps` (draft at 20 steps, then the adopted cuts at 40). Only frames inside segments
may be regenerated, by the usual rules inside them; outside them the output is the source: its
frames and its own audio. The output keeps the source's length.

An audio shorter than its segment is padded with silence: the output is silent there, and the
frames there keep the source's picture (the planner treats them as a pause).

Everything here is plain data and arithmetic, tested on its own:

1. `parse_segments`: a JSON list (text, or already parsed) -> `Segment`s; every broken rule is one
   sentence naming the segment (overlaps, empty or reversed ranges, bad numbers, ranges of the
   service's input table for the per-segment settings).
2. `check_segments`: the rules that need the media's lengths: inside the video, `audio_start`
   inside its audio, some audio for every segment.
3. `segment_ranges`: segments as output frame ranges for the planner (`SegmentRange`).
4. `compose_audio`: the output's audio: the source's, each segment's span replaced by its audio,
   sample-accurate at the boundaries with a short cross-fade inside them.
"""

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from .config import MAX_SEGMENTS, SEGMENT_CROSSFADE_S, SERVICE_INPUTS
from .options import check_input

SEGMENT_KEYS = ("start", "end", "audio", "audio_start", "guidance_scale", "inference_steps")
EXAMPLE = '[{"start": 2.0, "end": 3.5, "audio": "name.wav"}]'


@dataclass(frozen=True)
class SegmentRange:
    """A segment in output frames (`segment_ranges`), as the planner takes it: it may regenerate
    [start, end); its audio ends at frame `speech_end` (the frames after it are silent); its
    settings (None: the job's)."""

    index: int
    start: int
    end: int
    speech_end: int
    steps: int | None = None
    guidance: float | None = None


class SegmentError(ValueError):
    """A segment list that cannot be used; the message is one sentence naming the segment."""


@dataclass(frozen=True)
class Segment:
    """One time range of the video (seconds) and what it speaks."""

    start: float
    end: float
    audio: str | int | None = None  # its own audio: a file path or URL, or (Cog) an index into segment_audio; None: the job's audio
    audio_start: float | None = None  # where in that audio it starts (seconds); default 0, or `start` in the job's audio
    guidance_scale: float | None = None  # None: the job's
    inference_steps: int | None = None  # None: the job's

    @property
    def duration(self) -> float:
        return self.end - self.start

    @property
    def own_audio(self) -> bool:
        return self.audio is not None

    @property
    def audio_offset(self) -> float:
        """Seconds into its audio (its own file's, or the job's) where the segment's speech starts."""
        if self.audio_start is not None:
            return self.audio_start
        return 0.0 if self.own_audio else self.start

    def to_dict(self) -> dict:
        """The segment as JSON, without the keys it leaves unset."""
        return {key: getattr(self, key) for key in SEGMENT_KEYS if getattr(self, key) is not None}


def name(index: int, segment: Segment | None = None) -> str:
    """How messages and reports name a segment: "segment 2 (3.00-4.50 s)", numbered from 1."""
    return f"segment {index + 1}" + (f" ({segment.start:.2f}-{segment.end:.2f} s)" if segment else "")


# ---- 1. the list --------------------------------------------------------------------------------


def parse_segments(value) -> list[Segment]:
    """Segments from JSON text, a list of objects (dicts) or of `Segment`s, checked against every
    rule that needs no media. "" and None mean no segments (an empty list); an empty JSON list is
    refused, as a job that regenerates nothing."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value, parse_constant=_refuse_constant)
        except ValueError as error:
            raise SegmentError(f"segments must be a JSON list like {EXAMPLE}; it is not valid JSON ({error}).") from None
    if not isinstance(value, (list, tuple)):
        raise SegmentError(f"segments must be a list like {EXAMPLE}, got {_shown(value)}.")
    if not value:
        raise SegmentError("segments is an empty list: leave it out (or empty) to lip-sync the whole video.")
    if len(value) > MAX_SEGMENTS:
        raise SegmentError(f"segments holds {len(value)} segments; the limit is {MAX_SEGMENTS}.")
    segments = [item if isinstance(item, Segment) else _segment(index, item) for index, item in enumerate(value)]
    for index, segment in enumerate(segments):
        _check_segment(index, segment)
    _check_overlaps(segments)
    return segments


def _refuse_constant(constant: str):
    raise ValueError(f"{constant} is not a number JSON allows")


def _segment(index: int, item) -> Segment:
    if not isinstance(item, dict):
        raise SegmentError(f"{name(index)} must be an object with start and end (seconds of the video), got {_shown(item)}.")
    unknown = [str(key) for key in item if key not in SEGMENT_KEYS]
    if unknown:
        raise SegmentError(f"{name(index)} has unknown key(s) {', '.join(unknown)}; known: {', '.join(SEGMENT_KEYS)}.")
    if "start" not in item or "end" not in item:
        raise SegmentError(f"{name(index)} needs start and end (seconds of the video).")
    return Segment(**item)


def _check_segment(index: int, segment: Segment) -> None:
    for key in ("start", "end"):
        _seconds(index, key, getattr(segment, key))
    if segment.start < 0:
        raise SegmentError(f"{name(index)} starts before the video (start {segment.start:g} s); times are seconds from the video's start.")
    if segment.end <= segment.start:
        raise SegmentError(f"{name(index)} is empty or reversed (start {segment.start:g} s, end {segment.end:g} s): end must be after start.")
    if segment.audio_start is not None:
        _seconds(index, "audio_start", segment.audio_start)
        if segment.audio_start < 0:
            raise SegmentError(f"{name(index)}'s audio_start must be 0 or more seconds, got {segment.audio_start:g}.")
    audio = segment.audio
    if not (audio is None or (isinstance(audio, str) and audio.strip()) or (isinstance(audio, int) and not isinstance(audio, bool) and audio >= 0)):
        raise SegmentError(f"{name(index)}'s audio must name a file (or, on the hosted model, be its index in segment_audio), got {_shown(audio)}.")
    for key, spec in (("guidance_scale", SERVICE_INPUTS["guidance_scale"]), ("inference_steps", SERVICE_INPUTS["inference_steps"])):
        if getattr(segment, key) is not None:
            try:
                check_input(f"{name(index)}'s {key}", getattr(segment, key), spec)
            except ValueError as error:
                raise SegmentError(str(error)) from None


def _seconds(index: int, key: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise SegmentError(f"{name(index)}'s {key} must be a finite number of seconds, got {_shown(value)}.")


def _check_overlaps(segments: list[Segment]) -> None:
    order = sorted(range(len(segments)), key=lambda i: segments[i].start)
    for before, after in zip(order, order[1:]):
        if segments[after].start < segments[before].end:
            first, second = sorted((before, after))
            raise SegmentError(f"{name(second, segments[second])} overlaps {name(first, segments[first])}; segments must not overlap.")


def _shown(value) -> str:
    text = json.dumps(value) if isinstance(value, (dict, list, str, int, float, bool, type(None))) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def with_audio_files(segments: list[Segment], files: list) -> list[Segment]:
    """Segments whose audio is an index into `files` (the hosted model's segment_audio) with that
    file in its place; an audio given any other way is refused there."""
    resolved = []
    for index, segment in enumerate(segments):
        if segment.audio is not None:
            if not isinstance(segment.audio, int) or segment.audio >= len(files):
                have = f"0 to {len(files) - 1}" if files else "none: segment_audio is empty"
                raise SegmentError(f"{name(index)}'s audio must be the index of its file in segment_audio ({have}), got {_shown(segment.audio)}.")
            segment = replace(segment, audio=str(files[segment.audio]))
        resolved.append(segment)
    return resolved


def with_paths(segments: list[Segment], folder=None) -> list[Segment]:
    """Segments whose audio is a file path, relative ones resolved against `folder` (a segments
    file's own folder; default: the working directory). An index is refused: that form is the
    hosted model's."""
    resolved = []
    for index, segment in enumerate(segments):
        if segment.audio is not None:
            if not isinstance(segment.audio, str):
                raise SegmentError(f"{name(index)}'s audio must be the path of an audio file, got {_shown(segment.audio)}.")
            path = Path(segment.audio).expanduser()
            segment = replace(segment, audio=str(path if path.is_absolute() or folder is None else Path(folder) / path))
        resolved.append(segment)
    return resolved


def read_segments_file(path) -> list[Segment]:
    """The segments of a JSON file (the CLI's --segments); relative audio paths are relative to the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as error:
        raise SegmentError(f"The segments file {path.name} cannot be read ({error.strerror}).") from None
    return with_paths(parse_segments(text), path.parent)


# ---- 2. against the media -----------------------------------------------------------------------


def check_segments(segments: list[Segment], video_duration: float, audio_durations: list[float | None], job_audio_duration: float | None) -> None:
    """The rules that need the media: every segment inside the video, its `audio_start` inside
    its audio, and some audio for it. `audio_durations[i]` is the length of segment i's own audio
    (None without one); `job_audio_duration` None means the job has no audio."""
    for index, segment in enumerate(segments):
        if segment.start >= video_duration:
            raise SegmentError(f"{name(index, segment)} is outside the video, which is {video_duration:.2f} s long.")
        if segment.end > video_duration + 1e-3:
            raise SegmentError(f"{name(index, segment)} ends after the video, which is {video_duration:.2f} s long.")
        length = audio_durations[index] if segment.own_audio else job_audio_duration
        if length is None:
            raise SegmentError(f"{name(index, segment)} has no audio of its own and the job has none: give it an audio, or give the job one.")
        if segment.audio_offset >= length:
            whose = "its audio" if segment.own_audio else "the job's audio"
            raise SegmentError(f"{name(index, segment)} starts its speech at {segment.audio_offset:.2f} s of {whose}, which is only {length:.2f} s long.")


# ---- 3. output frames ---------------------------------------------------------------------------


def segment_ranges(segments: list[Segment], speech_seconds: list[float], fps: float, num_frames: int) -> list[SegmentRange]:
    """The segments in output frames, for `planner.PlanBuilder`.

    A frame belongs to the segment its centre falls in. `speech_seconds[i]` is how much of segment
    i has audio (its audio may end early): frames from there to the segment's end are silent.
    A segment too short to hold a frame's centre is refused.
    """
    ranges = []
    for index, (segment, speech) in enumerate(zip(segments, speech_seconds)):
        first, stop = (min(num_frames, _first_frame_at(seconds, fps)) for seconds in (segment.start, segment.end))
        if stop <= first:
            raise SegmentError(f"{name(index, segment)} holds no frame at {fps:g} fps: make it at least {1 / fps:.2f} s long.")
        speech_stop = min(stop, max(first, _first_frame_at(segment.start + speech, fps)))
        ranges.append(SegmentRange(index, first, stop, speech_stop, segment.inference_steps, segment.guidance_scale))
    return ranges


def _first_frame_at(seconds: float, fps: float) -> int:
    """The first frame whose centre is at or after `seconds`."""
    return max(0, math.ceil(round(seconds * fps - 0.5, 6)))


# ---- 4. the output's audio ----------------------------------------------------------------------


def compose_audio(source: np.ndarray, pieces: list[tuple[float, float, np.ndarray]], sample_rate: int,
                  crossfade_s: float = SEGMENT_CROSSFADE_S) -> np.ndarray:
    """The source's audio with each segment's span replaced by its audio.

    `source` is (n,) or (n, channels) samples; the result has its length and shape. `pieces` are
    (start, end, samples) per segment: seconds of the video, and the audio it speaks from its
    start (`audio_piece`), padded with silence when shorter than the span. The replacement begins
    and ends at the samples nearest the boundaries; inside the span the audio cross-fades from the
    source over `crossfade_s` (a raised cosine: the two weights sum to one) and back before its end,
    so no click is heard and nothing outside the span changes.
    """
    out = np.array(source, dtype=np.float32, copy=True)
    fade_length = max(1, round(crossfade_s * sample_rate))
    for start_s, end_s, samples in pieces:
        first, stop = round(start_s * sample_rate), min(len(out), round(end_s * sample_rate))
        if stop <= first:
            continue
        span = np.zeros((stop - first, *out.shape[1:]), np.float32)
        usable = np.asarray(samples, np.float32)[: stop - first]
        span[: len(usable)] = usable
        weights = np.ones(stop - first, np.float32)
        n = min(fade_length, (stop - first) // 2)
        if n:
            ramp = (0.5 - 0.5 * np.cos(np.pi * (np.arange(n) + 0.5) / n)).astype(np.float32)
            weights[:n], weights[-n:] = ramp, ramp[::-1]
        weights = weights.reshape(-1, *([1] * (out.ndim - 1)))
        out[first:stop] = weights * span + (1 - weights) * out[first:stop]
    return out


def audio_piece(samples: np.ndarray, segment: Segment, sample_rate: int) -> tuple[np.ndarray, float]:
    """The part of `samples` (a segment's audio, or the job's) the segment speaks, and how many
    seconds of the segment it covers (less than its duration when the audio ends early)."""
    first = round(segment.audio_offset * sample_rate)
    piece = samples[first : first + round(segment.duration * sample_rate)]
    return piece, min(segment.duration, len(piece) / sample_rate)
