"""The job report: what was regenerated and why, span by span, with sync confidences, the seed,
the model work done and the timings.

It is built from the plan and what rendering did (`build_report`); `JobReport.to_dict()` is the
JSON written next to the output (`<output>.report.json`) and returned by the service.
"""

import json
import logging
import math
from dataclasses import asdict, dataclass, fields

from .config import FRAMES_PER_WINDOW
from .options import LipsyncOptions
from .planner import Action, Plan, Span
from .render import RenderResult, SpanOutcome

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

    def to_dict(self) -> dict:
        data = {field.name: getattr(self, field.name) for field in fields(self)}
        data["spans"] = [span.to_dict() for span in self.spans]
        if self.cache is None:
            del data["cache"]
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "JobReport":
        return cls(**{**data, "spans": [ReportSpan(**span) for span in data["spans"]]})


def build_report(plan: Plan, rendered: RenderResult, options: LipsyncOptions, version: str, timings: dict) -> JobReport:
    """The report of a job from its plan, what rendering did, and the seconds each stage took."""
    outcomes = {outcome.span.start: outcome for outcome in rendered.outcomes}
    spans = [entry for span in plan.spans for entry in span_entries(span, outcomes.get(span.start), plan.fps)]
    total = len(plan.source_frames)
    generated = sum(span.frames for span in spans if span.action == Action.GENERATED.value)
    scored = [(span.sync_confidence, span.frames) for span in spans if span.sync_confidence is not None]
    return JobReport(
        spans=spans,
        seed=options.seed,
        version=version,
        fps=plan.fps,
        frames=total,
        duration=round(total / plan.fps, 3),
        frames_generated=generated,
        fraction_skipped=round(1 - generated / total, 4),
        sync_confidence=round(sum(c * n for c, n in scored) / sum(n for _, n in scored), 3) if scored else None,
        unet_window_steps=rendered.unet_window_steps,
        unet_window_steps_every_frame=math.ceil(total / FRAMES_PER_WINDOW) * options.num_inference_steps,
        options=json.loads(json.dumps(asdict(options))),  # tuples as lists, as the JSON has them
        timings={stage: round(seconds, 3) for stage, seconds in timings.items()},
        failed_windows=rendered.failed_windows,
    )


def span_entries(span: Span, outcome: SpanOutcome | None, fps: float) -> list[ReportSpan]:
    """Report rows for a planned span; windows that failed inside a generated span get rows of
    their own (passed through, with the error)."""
    action = (outcome.action if outcome else span.action).value
    details = outcome.details if outcome else span.details
    pieces, cursor = [], span.start
    for window in outcome.failed_windows if outcome else []:
        if window.frames.start > cursor:
            pieces.append((cursor, window.frames.start, action, details))
        pieces.append((window.frames.start, window.frames.stop, Action.PASSTHROUGH.value, {"reason": f"generation failed for {window.error}"}))
        cursor = window.frames.stop
    if span.end > cursor:
        pieces.append((cursor, span.end, action, details))
    return [ReportSpan(round(start / fps, 3), round(end / fps, 3), action, end - start, **extra) for start, end, action, extra in pieces]


def log_spans(report: JobReport) -> None:
    """One JSON log line per span (no file names, no content), for the service's logs."""
    steps, guidance = report.options["num_inference_steps"], report.options["guidance_scale"]
    for span in report.spans:
        logger.info(json.dumps({**span.to_dict(), "steps": steps, "guidance": guidance}))
