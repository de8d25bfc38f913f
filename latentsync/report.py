"""The job report: what was regenerated and why, span by span (and segment by segment), with sync
confidences, the seed, the model work done and the timings; and the plan preview, the same picture
before the model runs, priced.

The report is built from the plan and what rendering did (`build_report`); `JobReport.to_dict()`
is the JSON written next to the output (`<output>.report.json`) and returned by the service. The
preview (`build_preview`) is built from the plan alone, with the estimate of `latentsync.estimate`.
"""

import json
import logging
import math
from dataclasses import asdict, dataclass, fields

from .config import FRAMES_PER_WINDOW
from .estimate import estimate
from .options import LipsyncOptions
from .planner import Action, Plan, Span, windows_for
from .render import RenderResult, SpanOutcome
from .segments import Segment

logger = logging.getLogger("latentsync")


@dataclass
class ReportSpan:
    """A run of output frames with one action; times in seconds of the output."""

    start: float
    end: float
    action: str  # an `Action` value
    frames: int
    sync_confidence: float | None = None  # SyncNet LSE-C of a generated span, when scored
    low_sync: dict | None = None  # {confidence, threshold, action} when it scored below min_sync_confidence
    sync_confidence_before: float | None = None  # the score before it was regenerated
    regenerated_with_guidance: float | None = None
    reason: str | None = None  # why a span was passed through
    detector: str | None = None  # what found the pause of a silence span, e.g. "silero-vad 6.2.3"
    segment: int | None = None  # a job with segments: the segment (from 1) the span lies in
    steps: int | None = None  # ... and, for its regenerated spans, their denoising steps and guidance
    guidance: float | None = None

    def to_dict(self) -> dict:
        return {name: value for name, value in asdict(self).items() if value is not None or name == "sync_confidence"}


@dataclass
class JobReport:
    spans: list[ReportSpan]  # cover the output in order
    seed: int
    version: str
    fps: float
    frames: int
    duration: float
    frames_generated: int
    fraction_skipped: float
    sync_confidence: float | None  # frame-weighted mean over the scored spans
    unet_window_steps: int  # U-Net window-steps run
    unet_window_steps_every_frame: int  # ... had every frame been regenerated once
    options: dict
    timings: dict  # seconds per stage
    failed_windows: int = 0  # windows that kept their original frames (out of GPU memory even with every memory saver)
    cache: str | None = None  # "hit" or "miss" when a result cache answered
    segments: list[dict] | None = None  # a job with segments: what happened in each (`segment_rows`)

    def to_dict(self) -> dict:
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data["spans"] = [span.to_dict() for span in self.spans]
        for optional in ("cache", "segments"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "JobReport":
        return cls(**{**data, "spans": [ReportSpan(**span) for span in data["spans"]]})


def build_report(plan: Plan, rendered: RenderResult, options: LipsyncOptions, version: str, timings: dict,
                 segments: list[Segment] | None = None) -> JobReport:
    """The report of a job from its plan, what rendering did, and the seconds each stage took."""
    outcomes = {outcome.span.start: outcome for outcome in rendered.outcomes}
    spans = [entry for span in plan.spans for entry in span_entries(span, outcomes.get(span.start), plan.fps, options)]
    total = len(plan.source_frames)
    generated = sum(span.frames for span in spans if span.action == Action.GENERATED.value)
    scored = [(span.sync_confidence, span.frames) for span in spans if span.sync_confidence is not None]
    windows = {}  # segment -> windows that made its regenerated frames
    for span in plan.generated_spans:
        outcome = outcomes.get(span.start)
        if "segment" in span.details and outcome is not None and outcome.action is Action.GENERATED:
            windows[span.details["segment"]] = windows.get(span.details["segment"], 0) + len(windows_for(span)) - len(outcome.failed_windows)
    return JobReport(
        spans=spans,
        seed=options.seed,
        version=version,
        **_frame_totals(plan, generated),
        sync_confidence=round(sum(c * n for c, n in scored) / sum(n for _, n in scored), 3) if scored else None,
        unet_window_steps=rendered.unet_window_steps,
        unet_window_steps_every_frame=math.ceil(total / FRAMES_PER_WINDOW) * options.num_inference_steps,
        options=json.loads(json.dumps(asdict(options))),  # tuples as lists, as the JSON has them
        timings={stage: round(seconds, 3) for stage, seconds in timings.items()},
        failed_windows=rendered.failed_windows,
        segments=segment_rows(segments, plan, spans, windows, options) if segments else None,
    )


def _frame_totals(plan: Plan, generated: int) -> dict:
    """The output's frame rate, frames and duration, and how many of its frames are regenerated."""
    total = len(plan.source_frames)
    return {"fps": plan.fps, "frames": total, "duration": round(total / plan.fps, 3), "frames_generated": generated,
            "fraction_skipped": round(1 - generated / total, 4)}


def span_entries(span: Span, outcome: SpanOutcome | None, fps: float, options: LipsyncOptions | None = None) -> list[ReportSpan]:
    """Report rows for a planned span; windows that failed inside a generated span get rows of
    their own (passed through, with the error). Rows inside a segment name it, and regenerated
    ones their steps and guidance."""
    action = (outcome.action if outcome else span.action).value
    details = {**span.details, **outcome.details} if outcome else span.details
    if "segment" in span.details and action == Action.GENERATED.value and options is not None:
        details = {**details, **dict(zip(("steps", "guidance"), span.settings(options)))}
    pieces, cursor = [], span.start
    for window in outcome.failed_windows if outcome else []:
        if window.frames.start > cursor:
            pieces.append((cursor, window.frames.start, action, details))
        failed = {"reason": f"generation failed for {window.error}"} | ({"segment": span.details["segment"]} if "segment" in span.details else {})
        pieces.append((window.frames.start, window.frames.stop, Action.PASSTHROUGH.value, failed))
        cursor = window.frames.stop
    if span.end > cursor:
        pieces.append((cursor, span.end, action, details))
    return [ReportSpan(round(start / fps, 3), round(end / fps, 3), action, end - start, **extra) for start, end, action, extra in pieces]


def segment_rows(segments: list[Segment], plan: Plan, spans: list[ReportSpan], windows: dict[int, int], options: LipsyncOptions) -> list[dict]:
    """Per segment: its range and audio, its settings, its frames by action and the windows that
    regenerated them; `speech_ends` when its audio ends before it does (the rest is silent)."""
    rows = []
    for index, segment in enumerate(segments):
        number = index + 1
        frames_by_action = {}
        for span in spans:
            if span.segment == number:
                frames_by_action[span.action] = frames_by_action.get(span.action, 0) + span.frames
        row = {
            "segment": number, "start": segment.start, "end": segment.end, "audio": "own" if segment.own_audio else "job",
            "audio_start": segment.audio_offset, "steps": segment.inference_steps or options.num_inference_steps,
            "guidance": segment.guidance_scale or options.guidance_scale, "frames": sum(frames_by_action.values()),
            "frames_generated": frames_by_action.get(Action.GENERATED.value, 0), "windows": windows.get(number, 0),
            "frames_by_action": frames_by_action,
        }
        bounds = next((r for r in plan.segments if r.index == index), None)
        if bounds is not None and bounds.speech_end < bounds.end:
            row["speech_ends"] = round(bounds.speech_end / plan.fps, 3)
        rows.append(row)
    return rows


@dataclass
class PlanPreview:
    """What a job will do, before the model runs (`LipsyncPipeline.plan`): the spans its report
    will have, the windows to denoise per setting and their estimated GPU seconds."""

    spans: list[ReportSpan]
    version: str
    fps: float
    frames: int
    duration: float
    frames_generated: int  # frames to regenerate
    fraction_skipped: float
    windows: int  # 16-frame windows to denoise
    unet_window_steps: int
    work: list[dict]  # windows per setting: [{"steps", "guidance", "windows"}]
    estimate: dict  # `latentsync.estimate.estimate`
    options: dict
    segments: list[dict] | None = None

    def to_dict(self) -> dict:
        data = {"kind": "plan", **{field.name: getattr(self, field.name) for field in fields(self)}}
        data["spans"] = [span.to_dict() for span in self.spans]
        if self.segments is None:
            del data["segments"]
        return data


def build_preview(plan: Plan, options: LipsyncOptions, version: str, segments: list[Segment] | None = None) -> PlanPreview:
    """The preview of a plan: its spans as the report will list them, and its work, priced."""
    spans = [entry for span in plan.spans for entry in span_entries(span, None, plan.fps, options)]
    work, windows = {}, {}
    for span in plan.generated_spans:
        count = len(windows_for(span))
        work[span.settings(options)] = work.get(span.settings(options), 0) + count
        if "segment" in span.details:
            windows[span.details["segment"]] = windows.get(span.details["segment"], 0) + count
    rows = [{"steps": steps, "guidance": guidance, "windows": count} for (steps, guidance), count in sorted(work.items())]
    return PlanPreview(
        spans=spans,
        version=version,
        **_frame_totals(plan, sum(len(span) for span in plan.generated_spans)),
        windows=sum(windows_count for windows_count in work.values()),
        unet_window_steps=sum(row["windows"] * row["steps"] for row in rows),
        work=rows,
        estimate=estimate(rows, options.enable_deepcache, version),
        options=json.loads(json.dumps(asdict(options))),
        segments=segment_rows(segments, plan, spans, windows, options) if segments else None,
    )


def log_spans(report: JobReport) -> None:
    """One JSON log line per span (no file names, no content), for the service's logs."""
    steps, guidance = report.options["num_inference_steps"], report.options["guidance_scale"]
    for span in report.spans:
        logger.info(json.dumps({**span.to_dict(), "steps": span.steps or steps, "guidance": span.guidance or guidance}))
