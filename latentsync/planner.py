"""Plan a job before any denoising: which source frame each output frame shows, which frames the
model regenerates and why the others pass through, the 16-frame windows it runs on, and where the
speaker's face is aligned.

Everything here is pure arithmetic on plain data (face detections, pauses, options): no files,
no models, so every rule can be tested on its own. `plan_job` puts the rules together.
"""

import math
from dataclasses import dataclass, field
from enum import Enum

import numpy as np

from .config import FRAMES_PER_WINDOW, MODEL_FPS
from .face.align import FaceAligner
from .face.detect import FaceDetection
from .face.track import Track
from .options import LipsyncOptions
from .segments import SegmentRange

MIN_GENERATED_FRAMES = 4  # shorter regenerated runs between original ones flicker more than they help
MAX_SPAN_FRAMES = 250  # longer generated runs are scored (and, if asked, regenerated) in pieces of 10 s at 25 fps
BLEND_FRAMES = 3  # regenerated and original frames meet in a fade over this many frames


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
    OUTSIDE_SEGMENTS = "outside_segments"  # a job with segments: the source, picture and audio


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
    """A run of output frames [start, end) sharing one action; inside a segment, its number in
    `details` and its denoising settings here (None: the job's)."""

    start: int
    end: int
    action: Action
    details: dict = field(default_factory=dict)
    steps: int | None = None
    guidance: float | None = None

    def __len__(self) -> int:
        return self.end - self.start

    def settings(self, options: LipsyncOptions) -> tuple[int, float]:
        """The denoising steps and guidance of this span: its segment's, else the job's."""
        return self.steps or options.num_inference_steps, self.guidance or options.guidance_scale


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
    between untouched ones flicker more than they help), merging them with pass-through
    neighbours. Generated spans stay as they are, split where they were split."""
    result: list[Span] = []
    for span in spans:
        action = span.action
        if action is Action.GENERATED and len(span) < min_frames and len(spans) > 1:
            action = Action.PASSTHROUGH
        if result and result[-1].action is action and action is not Action.GENERATED:
            result[-1].end = span.end
        else:
            result.append(Span(span.start, span.end, action, dict(span.details)))
    return result


def split_at(spans: list[Span], boundaries: set[int]) -> list[Span]:
    """Split generated spans at the given output frame indices (e.g. face-track changes), so no
    window straddles them."""
    result = []
    for span in spans:
        cuts = sorted(b for b in boundaries if span.start < b < span.end) if span.action is Action.GENERATED else []
        edges = [span.start, *cuts, span.end]
        result.extend(Span(a, b, span.action, dict(span.details)) for a, b in zip(edges, edges[1:]))
    return result


def limit_span_length(spans: list[Span], limit: int = MAX_SPAN_FRAMES) -> list[Span]:
    """Cut generated spans longer than `limit` frames into the fewest equal pieces within it."""
    result = []
    for span in spans:
        pieces = math.ceil(len(span) / limit) if span.action is Action.GENERATED else 1
        edges = [span.start + round(k * len(span) / pieces) for k in range(pieces + 1)]
        result.extend(Span(a, b, span.action, dict(span.details)) for a, b in zip(edges, edges[1:]))
    return result


def windows_for(span: Span, window: int = FRAMES_PER_WINDOW) -> list[range]:
    """Consecutive windows of `window` frames over a generated span, the last one shorter (official)."""
    return [range(s, min(s + window, span.end)) for s in range(span.start, span.end, window)]


def blend_weight(position: int, length: int, after_original: bool, before_original: bool, ramp: int = BLEND_FRAMES) -> float:
    """How much of the regenerated face to show (0..1) at `position` of a run of `length`
    regenerated frames.

    Where the run meets original frames (`after_original` at its start, `before_original` at its
    end) the weight ramps over `ramp` frames (1/4, 2/4, 3/4 for 3), so the mouth eases between the
    original and the generated one instead of popping; at the video's ends and where two
    regenerated runs meet (a cut) it does not. Runs shorter than 2 x `ramp` ramp over half their length.
    """
    n = min(ramp, length // 2)
    weight = 1.0
    if after_original and position < n:
        weight = min(weight, (position + 1) / (ramp + 1))
    if before_original and length - 1 - position < n:
        weight = min(weight, (length - position) / (ramp + 1))
    return weight


# ---- segments: regenerate only inside them -------------------------------------------------------


def restrict_to_segments(actions: list[Action], segments: list[SegmentRange]) -> list[Action]:
    """Frames outside every segment keep the source (OUTSIDE_SEGMENTS); inside one, frames past
    the end of its audio are silent (SILENCE); the others keep their action."""
    restricted = [Action.OUTSIDE_SEGMENTS] * len(actions)
    for segment in segments:
        for i in range(segment.start, min(segment.end, len(actions))):
            restricted[i] = actions[i] if i < segment.speech_end else Action.SILENCE
    return restricted


def segment_edges(segments: list[SegmentRange]) -> set[int]:
    """Where segments begin and end: no window, and (`assign_segments`) no span, crosses them."""
    return {edge for segment in segments for edge in (segment.start, segment.end)}


def assign_segments(spans: list[Span], segments: list[SegmentRange]) -> list[Span]:
    """Split every span at the segments' edges, and give each span inside a segment its number
    (`details["segment"]`, from 1) and settings."""
    edges = segment_edges(segments)
    result = []
    for span in spans:
        cuts = [span.start, *sorted(e for e in edges if span.start < e < span.end), span.end]
        for a, b in zip(cuts, cuts[1:]):
            piece = Span(a, b, span.action, dict(span.details), span.steps, span.guidance)
            inside = next((s for s in segments if s.start <= a < s.end), None)
            if inside is not None:
                piece.details["segment"] = inside.index + 1
                piece.steps, piece.guidance = inside.steps, inside.guidance
            result.append(piece)
    return result


# ---- the whole plan ------------------------------------------------------------------------------


class NoFaceError(ValueError):
    """No frame of the video has a usable face of the speaker."""


@dataclass
class Plan:
    """What a job will do, decided before any denoising."""

    fps: float  # output frame rate
    source_frames: np.ndarray  # output frame -> source frame
    spans: list[Span]  # cover the output frames in order
    affines: dict[int, np.ndarray]  # source frame -> 2x3 alignment of the speaker's face
    segments: list[SegmentRange] = field(default_factory=list)  # a job with segments: only these may be regenerated

    @property
    def generated_spans(self) -> list[Span]:
        return [span for span in self.spans if span.action is Action.GENERATED]


def output_fps(source_fps: float, keep_source_fps: bool) -> float:
    """The model's 25 fps, or a 24-30 fps source's own rate when asked to keep it."""
    if keep_source_fps and 24.0 <= source_fps <= 30.0:
        return source_fps
    return float(MODEL_FPS)


def plan_job(
    detections: list[list[FaceDetection]],
    speaker: list[Track],
    audio_duration_s: float,
    pauses: list[tuple[float, float]],
    fps: float,
    options: LipsyncOptions,
    resolution: int,
    segments: list[SegmentRange] | None = None,
) -> Plan:
    """Plan a job from what analysis found.

    Args:
        detections: the faces on each source frame, decoded at `fps`.
        speaker: the speaker's face tracks (`face.track.choose_speaker`).
        audio_duration_s: length of the audio.
        pauses: (start, end) seconds where the audio pauses (`audio.silent_spans`); used when
            `options.skip_silence`. Their `detector`, if they have one, labels the silence spans.
        fps: the output frame rate (`output_fps`).
        options: the job's options (length mode, yaw limit, silence).
        resolution: the model's face size, for the alignment template.
        segments: with segments, only their frames may be regenerated (`restrict_to_segments`),
            the output keeps the video's frames one for one (the length mode does not apply), and
            every span lies inside one segment or outside all of them.
    """
    if not detections:
        raise ValueError("The video input has no decodable frames.")
    if segments:  # the video's own length and frames; the audio was made to cover it
        timeline = plan_timeline(len(detections), len(detections), LengthMode.SILENCE)
    else:
        timeline = plan_timeline(len(detections), frames_covering(audio_duration_s, fps), options.length_mode)
    face_at = {frame: face for track in speaker for frame, face in track.faces.items()}
    track_at = {frame: track.id for track in speaker for frame in track.faces}
    usable = {frame for frame, face in face_at.items() if abs(face.yaw_degrees) <= options.max_yaw_degrees}
    if not usable:
        raise NoFaceError(
            f"No usable face was found in any of the {len(detections)} frames checked ({len(detections) / fps:.1f} s of "
            "video): the speaker's face must be visible, at least 50x80 pixels and not turned far away."
        )
    silent = silent_frames(len(timeline), pauses if options.skip_silence else [], fps)
    actions = frame_actions(timeline, silent, detections, face_at, usable)
    if segments:
        actions = restrict_to_segments(actions, segments)
    # In remap mode consecutive output frames may step over source frames without a cut.
    step = math.ceil(len(detections) / len(timeline)) if LengthMode(options.length_mode) is LengthMode.REMAP and not segments else 1
    spans = label_pauses(spans_from_actions(actions), silent, getattr(pauses, "detector", None))
    spans = split_at(spans, cut_points(timeline.source_frames, track_at, step) | segment_edges(segments or []))
    spans = limit_span_length(absorb_short_generated_spans(spans, MIN_GENERATED_FRAMES))
    if segments:
        spans = assign_segments(spans, segments)
    return Plan(fps, timeline.source_frames, spans, speaker_affines(speaker, resolution), segments or [])


def silent_frames(count: int, pauses: list[tuple[float, float]], fps: float) -> np.ndarray:
    """Whether each of `count` output frames has its centre inside a pause."""
    centres = (np.arange(count) + 0.5) / fps
    silent = np.zeros(count, dtype=bool)
    for start_s, end_s in pauses:
        silent |= (centres >= start_s) & (centres < end_s)
    return silent


def label_pauses(spans: list[Span], silent: np.ndarray, detector: str | None) -> list[Span]:
    """Name the detector in the details of each silence span that holds a detected pause (not
    only frames past the audio's end)."""
    for span in spans:
        if detector and span.action is Action.SILENCE and silent[span.start : span.end].any():
            span.details["detector"] = detector
    return spans


def frame_actions(timeline: Timeline, silent: np.ndarray, detections: list[list], face_at: dict, usable: set) -> list[Action]:
    """Per output frame: regenerate it (speech and a usable speaker face), or why not."""
    actions = []
    for i, source in enumerate(timeline.source_frames):
        if not timeline.has_audio[i] or silent[i]:
            actions.append(Action.SILENCE)
        elif source not in face_at:
            actions.append(Action.OTHER_SPEAKER if detections[source] else Action.NO_FACE)
        elif source not in usable:
            actions.append(Action.NO_FACE)
        else:
            actions.append(Action.GENERATED)
    return actions


def cut_points(source_frames: np.ndarray, track_at: dict, step: int = 1) -> set[int]:
    """Output frames where a window must not continue: the source jumps by more than `step`
    frames (a loop restart) or the speaker's face track changes (a scene cut)."""
    return {
        i for i in range(1, len(source_frames))
        if abs(int(source_frames[i]) - int(source_frames[i - 1])) > step or track_at.get(source_frames[i]) != track_at.get(source_frames[i - 1])
    }


def speaker_affines(speaker: list[Track], resolution: int) -> dict[int, np.ndarray]:
    """Source frame -> the alignment of the speaker's face there. Smoothing runs over the
    consecutive frames of one track (the official smooths over the whole video, across cuts)."""
    aligner = FaceAligner(resolution)
    affines = {}
    for track in speaker:
        aligner.reset()
        for frame in sorted(track.faces):
            affines[frame] = aligner.affine(track.faces[frame].landmarks3)
    return affines
