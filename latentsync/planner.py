"""Plan the output timeline before any denoising: which source frame each output frame shows, which
frames the model regenerates, and the 16-frame windows it runs on.

Everything here is plain arithmetic on frame indices, so it is cheap and testable without models.
"""

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .config import FRAMES_PER_WINDOW


class LengthMode(str, Enum):
    """What to do when the audio and the video differ in length."""

    BOUNCE = "bounce"  # play the video forward, then backward, ... to the audio length (official)
    LOOP = "loop"  # restart the video from the beginning to the audio length
    CUT_OFF = "cut_off"  # stop at the shorter of the two
    SILENCE = "silence"  # keep the video length; missing audio is silence and its frames pass through
    REMAP = "remap"  # time-stretch the video's frame sequence onto the audio length


class Action(str, Enum):
    """Why an output frame is (or is not) regenerated; the report uses these names."""

    GENERATED = "generated"
    SILENCE = "silence"
    NO_FACE = "no_face"
    OTHER_SPEAKER = "other_speaker"
    PASSTHROUGH = "passthrough"  # e.g. a span too short to regenerate cleanly, or a failed window


@dataclass
class Timeline:
    """Output frame i shows source frame `source_frames[i]`; `has_audio[i]` is False past the audio's end."""

    source_frames: np.ndarray
    has_audio: np.ndarray

    def __len__(self) -> int:
        return len(self.source_frames)


def frames_covering(duration_s: float, fps: float) -> int:
    """Number of frames at `fps` needed to cover `duration_s` seconds (the last one may be partial)."""
    return max(0, math.ceil(round(duration_s * fps, 6)))


def plan_timeline(num_video_frames: int, num_audio_frames: int, mode: LengthMode | str) -> Timeline:
    """Map output frames onto source frames for the given length mode.

    `num_audio_frames` is how many output frames the audio covers (`frames_covering`).
    """
    mode = LengthMode(mode)
    if num_video_frames <= 0:
        raise ValueError("The video has no frames.")
    if num_audio_frames <= 0:
        raise ValueError("The audio is empty (zero length).")

    if mode is LengthMode.CUT_OFF:
        count = min(num_video_frames, num_audio_frames)
    elif mode is LengthMode.SILENCE:
        count = num_video_frames
    else:
        count = num_audio_frames
    out = np.arange(count)

    if mode is LengthMode.BOUNCE:
        # Forward then backward, each pass the whole video: 0..n-1, n-1..0, 0..n-1, ... (official ping-pong).
        position = out % (2 * num_video_frames)
        source = np.where(position < num_video_frames, position, 2 * num_video_frames - 1 - position)
    elif mode is LengthMode.LOOP:
        source = out % num_video_frames
    elif mode is LengthMode.REMAP:
        source = np.minimum(out * num_video_frames // count, num_video_frames - 1)
    else:
        source = out
    return Timeline(source_frames=source.astype(np.int64), has_audio=out < num_audio_frames)


@dataclass
class Span:
    """A run of output frames [start, end) sharing one action."""

    start: int
    end: int
    action: Action
    details: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.end - self.start


def spans_from_actions(actions: list[Action]) -> list[Span]:
    """Group per-frame actions into maximal runs."""
    spans: list[Span] = []
    for index, action in enumerate(actions):
        if spans and spans[-1].action is action and spans[-1].end == index:
            spans[-1].end = index + 1
        else:
            spans.append(Span(index, index + 1, action))
    return spans


def absorb_short_generated_spans(spans: list[Span], min_frames: int) -> list[Span]:
    """Turn generated runs shorter than `min_frames` into pass-through (a few regenerated frames
    between untouched ones flicker more than they help), then merge neighbours again."""
    actions: list[Action] = []
    for span in spans:
        action = span.action
        if action is Action.GENERATED and len(span) < min_frames and len(spans) > 1:
            action = Action.PASSTHROUGH
        actions.extend([action] * len(span))
    return spans_from_actions(actions)


def split_at(spans: list[Span], boundaries: set[int]) -> list[Span]:
    """Split generated spans at the given output frame indices (e.g. face-track changes), so no
    window straddles them."""
    result = []
    for span in spans:
        cuts = sorted(b for b in boundaries if span.start < b < span.end) if span.action is Action.GENERATED else []
        edges = [span.start, *cuts, span.end]
        result.extend(Span(a, b, span.action, dict(span.details)) for a, b in zip(edges, edges[1:]))
    return result


def windows_for(span: Span, window: int = FRAMES_PER_WINDOW) -> list[range]:
    """Consecutive windows of `window` frames over a generated span, the last one shorter (official)."""
    return [range(s, min(s + window, span.end)) for s in range(span.start, span.end, window)]


def blend_weights(spans: list[Span], total_frames: int, ramp: int = 3) -> np.ndarray:
    """Per output frame, how much of the regenerated face to show (0..1).

    Inside generated spans the weight is 1, except where a span borders a pass-through span: there
    it ramps over `ramp` frames, so the mouth eases between the original and the generated one
    instead of popping.
    """
    weights = np.zeros(total_frames, dtype=np.float32)
    for index, span in enumerate(spans):
        if span.action is not Action.GENERATED:
            continue
        frame_weights = np.ones(len(span), dtype=np.float32)
        steps = np.arange(1, ramp + 1, dtype=np.float32) / (ramp + 1)
        n = min(ramp, len(span) // 2)
        if index > 0 and spans[index - 1].action is not Action.GENERATED:
            frame_weights[:n] = np.minimum(frame_weights[:n], steps[:n])
        if index + 1 < len(spans) and spans[index + 1].action is not Action.GENERATED:
            frame_weights[len(span) - n :] = np.minimum(frame_weights[len(span) - n :], steps[:n][::-1])
        weights[span.start : span.end] = frame_weights
    return weights
