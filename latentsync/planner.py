"""Plan a job as its video is analysed: which source frame each output frame shows, which frames
the model regenerates and why the others pass through, the 16-frame windows it runs on, and where
the speaker's face is aligned.

Every rule needs at most a few frames after the one it decides, so the plan is final frame by
frame while the rest of the video is still being decoded, and denoising starts on the first
windows (`PlanBuilder`). Everything here is pure arithmetic on plain data (face detections,
pauses, options): no files, no models, so every rule can be tested on its own. `plan_job` plans a
whole video at once.
"""

import math
from dataclasses import dataclass, field, replace
from enum import Enum

import numpy as np

from .config import FRAMES_PER_WINDOW, MODEL_FPS, LengthMode
from .face.align import FaceAligner
from .face.detect import FaceDetection
from .face.track import SPEAKER_CHOICE_S, SpeakerChooser
from .options import LipsyncOptions
from .segments import SegmentError, SegmentRange
from .segments import name as segment_name

MIN_GENERATED_FRAMES = 4  # shorter regenerated runs between original ones flicker more than they help
MAX_SPAN_FRAMES = 250  # longer generated runs are scored (and, if asked, regenerated) in pieces of 10 s at 25 fps
BLEND_FRAMES = 3  # regenerated and original frames meet in a fade over this many frames


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


def segment_at(frame: int, segments: list[SegmentRange]) -> SegmentRange | None:
    """The segment output `frame` belongs to, if any."""
    return next((segment for segment in segments if segment.start <= frame < segment.end), None)


def action_in_segments(action: Action, frame: int, segments: list[SegmentRange]) -> Action:
    """A job with segments: output `frame` outside every segment keeps the source
    (OUTSIDE_SEGMENTS); inside one, past the end of its audio it is silent (SILENCE); else it
    keeps its `action`."""
    segment = segment_at(frame, segments)
    if segment is None:
        return Action.OUTSIDE_SEGMENTS
    return action if frame < segment.speech_end else Action.SILENCE


def segment_edges(segments: list[SegmentRange]) -> set[int]:
    """Where segments begin and end: no window, and (`split_at_segments`) no span, crosses them."""
    return {edge for segment in segments for edge in (segment.start, segment.end)}


def split_at_segments(span: Span, segments: list[SegmentRange]) -> list[Span]:
    """`span` split at the segments' edges, each piece inside a segment given its number
    (`details["segment"]`, from 1) and settings."""
    edges = [span.start, *sorted(edge for edge in segment_edges(segments) if span.start < edge < span.end), span.end]
    pieces = []
    for a, b in zip(edges, edges[1:]):
        piece = Span(a, b, span.action, dict(span.details), span.steps, span.guidance)
        inside = segment_at(a, segments)
        if inside is not None:
            piece.details["segment"] = inside.index + 1
            piece.steps, piece.guidance = inside.steps, inside.guidance
        pieces.append(piece)
    return pieces


# ---- spans, as the output frames are decided ---------------------------------------------------------


class SpanBuilder:
    """Groups output frames into spans as their actions arrive (`push`, then `finish`), each span
    final as soon as no later frame can change it:

    1. runs of one action; regenerated runs also end where a window must not continue (a cut, a
       segment's edge);
    2. a regenerated run shorter than `MIN_GENERATED_FRAMES` passes through (unless it is the whole
       video), merged with pass-through neighbours;
    3. a regenerated run longer than `MAX_SPAN_FRAMES` is cut into the fewest equal pieces within
       that length; a run longer than twice that first loses pieces of `MAX_SPAN_FRAMES` from its
       start while more than twice that remains (so a cut is never decided more than
       2 x `MAX_SPAN_FRAMES` frames ahead).

    4. with segments, every span is split at their edges, and a span inside one carries its number
       and settings (`split_at_segments`).

    `spans` holds the final spans in order; `open_span` the frames known to belong to the
    regenerated span being built (its first piece: up to half its length while it may be halved),
    so its windows can be denoised before it ends.
    """

    def __init__(self, detector: str | None = None, segments: list[SegmentRange] = ()):
        self.detector = detector  # names what found the pauses of silence spans
        self.segments = list(segments)
        self._edges = segment_edges(self.segments)
        self.spans: list[Span] = []
        self.frames = 0
        self._run: Span | None = None  # the run being built
        self._run_silent = False  # whether a frame of the run is inside a pause
        self._pending: Span | None = None  # a closed span that a short regenerated run after it may still join

    def push(self, action: Action, cut: bool = False, silent: bool = False) -> None:
        """The next output frame's action; `cut`: a window must not continue from the frame before;
        `silent`: the frame is inside a pause."""
        run, frame = self._run, self.frames
        self.frames += 1
        cut = cut or frame in self._edges
        if run is not None and action is run.action and not (cut and action is Action.GENERATED):
            run.end = frame + 1
        else:
            if run is not None:
                self._close(run)
            run = self._run = Span(frame, frame + 1, action)
            self._run_silent = False
            if not (action is Action.GENERATED and self._pending is not None and self._pending.action is Action.PASSTHROUGH):
                self._flush()  # only a short regenerated run can join what came before
        self._run_silent |= silent
        if action is Action.GENERATED:
            if len(run) == MIN_GENERATED_FRAMES:
                self._flush()  # this run is regenerated for good
            if len(run) > 2 * MAX_SPAN_FRAMES:  # more than two pieces remain: the first is a whole one
                self._add(Span(run.start, run.start + MAX_SPAN_FRAMES, Action.GENERATED))
                run.start += MAX_SPAN_FRAMES

    def finish(self) -> list[Span]:
        """The last frame was pushed; returns every span."""
        if self._run is not None:
            self._close(self._run, last=True)
            self._run = None
        self._flush()
        return self.spans

    @property
    def open_span(self) -> Span | None:
        """The regenerated span being built, up to the last frame known to belong to it; None if
        there is none, or its run is still short enough to pass through."""
        run = self._run
        if run is None or run.action is not Action.GENERATED or len(run) < MIN_GENERATED_FRAMES:
            return None
        # Its first piece ends where the run does, or halfway along a run of up to 2 x MAX_SPAN_FRAMES frames.
        known = min(len(run), _first_piece(MAX_SPAN_FRAMES + 1)) if len(run) <= MAX_SPAN_FRAMES else _first_piece(len(run))
        return split_at_segments(Span(run.start, run.start + known, Action.GENERATED), self.segments)[0]  # a run never crosses an edge

    def _close(self, run: Span, last: bool = False) -> None:
        action = run.action
        if action is Action.GENERATED:
            whole_video = last and not self.spans and self._pending is None
            if len(run) >= MIN_GENERATED_FRAMES or whole_video:
                self._flush()
                pieces = math.ceil(len(run) / MAX_SPAN_FRAMES)
                edges = [run.start + round(k * len(run) / pieces) for k in range(pieces + 1)]
                for a, b in zip(edges, edges[1:]):
                    self._add(Span(a, b, Action.GENERATED))
                return
            action = Action.PASSTHROUGH
        details = {"detector": self.detector} if action is Action.SILENCE and self.detector and self._run_silent else {}
        if self._pending is not None and self._pending.action is action:
            self._pending.end = run.end
        else:
            self._flush()
            self._pending = Span(run.start, run.end, action, details)

    def _flush(self) -> None:
        if self._pending is not None:
            self._add(self._pending)
            self._pending = None

    def _add(self, span: Span) -> None:
        self.spans += split_at_segments(span, self.segments) if self.segments else [span]


def _first_piece(length: int) -> int:
    """The length of the first piece of a regenerated run of `length` frames, up to 2 x MAX_SPAN_FRAMES."""
    return round(length / math.ceil(length / MAX_SPAN_FRAMES))


# ---- the whole plan --------------------------------------------------------------------------------


class NoFaceError(ValueError):
    """No frame of the video has a usable face of the speaker."""


@dataclass
class Plan:
    """What a job does; built as the video is analysed (`PlanBuilder`), final where it has been built."""

    fps: float  # output frame rate
    source_frames: list[int]  # output frame -> source frame
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


class PlanBuilder:
    """A job's plan, built from the faces of each source frame as the video is decoded (`add`, then
    `finish` at its end). What it has decided is final: `plan.spans`, `spans.open_span`,
    `plan.source_frames` and `plan.affines` only grow.

    Output frame i shows source frame i until the video or the audio ends, so the first output
    frames are planned as their source frames are settled (`face.track.SpeakerChooser`); what
    follows (the bounce and loop modes' later passes) is planned once the video's length is known.
    In remap mode every output frame depends on that length: nothing is planned before the end.

    For each output frame: regenerate it when it has speech and a usable face of the speaker, else
    keep the original and say why (silence, no face, another speaker, outside the segments); then
    the spans (`SpanBuilder`), which never let a window continue across a cut (the speaker's face
    track changes, or the source jumps) or a segment's edge. The speaker's face is aligned along
    each of its tracks (the official smooths over the whole video, across cuts).

    Args:
        audio_duration_s: length of the audio.
        pauses: (start, end) seconds where the audio pauses (`audio.silent_spans`); used when
            `options.skip_silence`. Their `detector`, if they have one, labels the silence spans.
        fps: the output frame rate (`output_fps`), the rate the source frames are decoded at.
        options: the job's options (length mode, speaker, yaw limit, silence).
        resolution: the model's face size, for the alignment template.
        segments: with segments (`segments.segment_ranges`), only their frames may be regenerated
            (`action_in_segments`), the output keeps the video's frames one for one (the length
            mode does not apply: the audio was made to cover the video), and every span lies
            inside one segment or outside all of them.
    """

    def __init__(self, audio_duration_s: float, pauses: list[tuple[float, float]], fps: float, options: LipsyncOptions, resolution: int,
                 segments: list[SegmentRange] | None = None):
        self.fps, self.options, self.resolution = fps, options, resolution
        self.segments = list(segments or [])
        self.mode = LengthMode.SILENCE if self.segments else LengthMode(options.length_mode)
        self.audio_frames = frames_covering(audio_duration_s, fps)
        self.silent = silent_frames(self.audio_frames, pauses if options.skip_silence else [], fps)
        self.speaker = SpeakerChooser(round(SPEAKER_CHOICE_S * fps), options.speaker_point, options.speaker_box)
        self.spans = SpanBuilder(getattr(pauses, "detector", None), self.segments)
        self.plan = Plan(fps, [], self.spans.spans, {}, self.segments)
        self.complete = False
        self._detected: list[bool] = []  # per source frame: whether any face was found
        self._aligners: dict[int, FaceAligner] = {}  # per track not rejected: its alignment, smoothed along it
        self._affines: dict[int, dict[int, np.ndarray]] = {}  # per track not rejected: frame -> affine
        self._settled = 0  # source frames whose speaker face (and its affine) is final
        self._usable = False  # whether a settled frame has a usable face of the speaker
        self._previous: tuple[int, int | None] | None = None  # the last planned output frame's source frame and track

    @property
    def frames(self) -> int:
        """Source frames added so far."""
        return len(self._detected)

    def add(self, faces: list[FaceDetection]) -> list[tuple[int, int, np.ndarray]]:
        """The faces on the next source frame. Returns (track id, frame, affine) for each face whose
        crop the model may need: faces of tracks that may be the speaker's, on frames that may be
        regenerated (with speech, outside pauses, inside a segment if there are any, not turned
        away) in the first pass."""
        self._detected.append(bool(faces))
        requests = []
        for track, frame in self.speaker.add(faces):
            face = track.faces[frame]
            if track.id not in self._aligners:
                self._aligners[track.id], self._affines[track.id] = FaceAligner(self.resolution), {}
            affine = self._affines[track.id][frame] = self._aligners[track.id].affine(face.landmarks3)
            if self.mode is not LengthMode.REMAP and self._speaks(frame) and self._usable_face(face):
                requests.append((track.id, frame, affine))
        self._advance()
        return requests

    def finish(self) -> Plan:
        """The video has ended: plan the rest. Raises NoFaceError when the speaker has no usable
        face anywhere, ValueError for a video without frames or a speaker frame without a face,
        SegmentError for a segment past the last frame decoded (a video shorter than its header)."""
        if not self._detected:
            raise ValueError("The video input has no decodable frames.")
        self.speaker.finish()
        self._advance()
        if not self._usable:
            raise NoFaceError(
                f"No usable face was found in any of the {self.frames} frames checked ({self.frames / self.fps:.1f} s of "
                "video): the speaker's face must be visible, at least 50x80 pixels and not turned far away."
            )
        self.plan.segments = self._segments_within_video()
        timeline = plan_timeline(self.frames, self.frames if self.segments else self.audio_frames, self.mode)
        # In remap mode consecutive output frames may step over source frames without a cut.
        step = math.ceil(self.frames / len(timeline)) if self.mode is LengthMode.REMAP else 1
        for frame in range(len(self.plan.source_frames), len(timeline)):
            self._plan_frame(frame, int(timeline.source_frames[frame]), bool(timeline.has_audio[frame]), step)
        self.spans.finish()
        self.complete = True
        return self.plan

    def is_live(self, track_id: int) -> bool:
        """Whether the track may still be (or is) the speaker's."""
        return track_id in self._aligners

    def _advance(self) -> None:
        """Take in the newly settled source frames, and plan the output frames they decide."""
        for track_id in self.speaker.rejected:
            del self._aligners[track_id], self._affines[track_id]
        self.speaker.rejected.clear()
        settled = self.speaker.settled
        for frame in range(self._settled, settled):
            speaker = self.speaker.speaker_at(frame)
            if speaker is not None:
                track, face = speaker
                self.plan.affines[frame] = self._affines[track.id].pop(frame)
                self._usable |= self._usable_face(face)
        self._settled = settled
        # Output frame i shows source frame i while both the video and the audio last (remap: only at the end).
        last = settled if self.mode is LengthMode.SILENCE else min(settled, self.audio_frames)
        if self.mode is LengthMode.REMAP or self.complete:
            return
        for frame in range(len(self.plan.source_frames), last):
            self._plan_frame(frame, frame, self._has_audio(frame), step=1)

    def _plan_frame(self, frame: int, source: int, has_audio: bool, step: int) -> None:
        """Decide output `frame`, which shows `source`."""
        speaker = self.speaker.speaker_at(source)
        silent = has_audio and self._in_pause(frame)
        if not has_audio or silent:
            action = Action.SILENCE
        elif speaker is None:
            action = Action.OTHER_SPEAKER if self._detected[source] else Action.NO_FACE
        elif not self._usable_face(speaker[1]):
            action = Action.NO_FACE
        else:
            action = Action.GENERATED
        if self.segments:
            action = action_in_segments(action, frame, self.segments)
        track = speaker[0].id if speaker is not None else None
        previous, self._previous = self._previous, (source, track)
        cut = previous is not None and (abs(source - previous[0]) > step or track != previous[1])
        self.plan.source_frames.append(source)
        self.spans.push(action, cut, silent)

    def _has_audio(self, frame: int) -> bool:
        """Whether output `frame` has audio (with segments every frame has: the source's own, at least)."""
        return bool(self.segments) or frame < self.audio_frames

    def _in_pause(self, frame: int) -> bool:
        return frame < len(self.silent) and bool(self.silent[frame])

    def _speaks(self, frame: int) -> bool:
        """Whether output `frame`, shown in the first pass over the video, has speech (inside a
        segment's, if there are segments)."""
        if not self._has_audio(frame) or self._in_pause(frame):
            return False
        return not self.segments or action_in_segments(Action.GENERATED, frame, self.segments) is Action.GENERATED

    def _segments_within_video(self) -> list[SegmentRange]:
        """The segments cut to the frames the video really has (its header may have promised more)."""
        within = []
        for segment in self.segments:
            if segment.start >= self.frames:
                raise SegmentError(f"{segment_name(segment.index)} starts after the video's last frame ({self.frames / self.fps:.2f} s): "
                                   "the video is shorter than its header says.")
            within.append(replace(segment, end=min(segment.end, self.frames), speech_end=min(segment.speech_end, self.frames)))
        return within

    def _usable_face(self, face: FaceDetection) -> bool:
        return abs(face.yaw_degrees) <= self.options.max_yaw_degrees


def plan_job(detections: list[list[FaceDetection]], audio_duration_s: float, pauses: list[tuple[float, float]], fps: float,
             options: LipsyncOptions, resolution: int, segments: list[SegmentRange] | None = None) -> Plan:
    """The plan of a job from the faces on every source frame (see `PlanBuilder`)."""
    builder = PlanBuilder(audio_duration_s, pauses, fps, options, resolution, segments)
    for faces in detections:
        builder.add(faces)
    return builder.finish()


def silent_frames(count: int, pauses: list[tuple[float, float]], fps: float) -> np.ndarray:
    """Whether each of `count` output frames has its centre inside a pause."""
    centres = (np.arange(count) + 0.5) / fps
    silent = np.zeros(count, dtype=bool)
    for start_s, end_s in pauses:
        silent |= (centres >= start_s) & (centres < end_s)
    return silent
