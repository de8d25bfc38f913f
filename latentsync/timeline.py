"""The timeline picture of a job: the output's time axis with each span coloured by what was done
there, each segment outlined and numbered, and the sync confidence of the regenerated spans above
it.

Drawn from the report's data alone (a report dict, e.g. read back from `<output>.report.json`),
or from a plan's (`LipsyncPipeline.plan`: what will be done), with matplotlib's Agg canvas and no
pyplot, so servers can draw from any thread.

    save_timeline(json.loads(Path("out.report.json").read_text()), "out.report.png")
"""

from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch, Rectangle

# One colour per report action (colour-blind safe: the Okabe-Ito palette), and how the legend names
# it; every action but "generated" shows the original frames.
ACTION_COLOURS = {
    "generated": "#009E73",
    "silence": "#56B4E9",
    "no_face": "#E69F00",
    "other_speaker": "#CC79A7",
    "passthrough": "#999999",
    "outside_segments": "#E4E4E4",
}
ACTION_LABELS = {
    "generated": "regenerated",
    "silence": "silence",
    "no_face": "no usable face",
    "other_speaker": "other speaker",
    "passthrough": "passed through",
    "outside_segments": "outside segments (source)",
}
UNKNOWN_COLOUR = "#000000"  # an action this version does not know
CONFIDENCE_COLOUR = "#222222"
SEGMENT_COLOUR = "#000000"  # a segment's outline and number
THRESHOLD_COLOUR = "#D55E00"
LABELLED_SPAN_SHARE = 0.04  # spans narrower than this share of the duration get no number
FIGURE_SIZE = (10.0, 3.0)  # inches
DPI = 100


def timeline_figure(report: dict) -> Figure:
    """The picture of `report` (a job report as a dict) as a matplotlib Figure.

    The lower axis is the output's time axis in seconds with one coloured band per span, in
    order; the upper one shows each regenerated span's sync confidence (LSE-C) as a level over
    the span, and the report's min_sync_confidence as a dashed line when one was set.
    """
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    scores, spans = figure.subplots(2, 1, sharex=True, height_ratios=(3, 1))
    duration = float(report.get("duration") or max((s["end"] for s in report["spans"]), default=0.0)) or 1.0
    handles = _draw_spans(spans, report["spans"], duration) + _draw_segments(spans, report.get("segments") or []) + _draw_confidence(scores, report, duration)
    figure.legend(handles=handles, loc="outside lower center", ncols=len(handles), frameon=False, fontsize=8)
    figure.suptitle(_title(report), fontsize=10)
    return figure


def save_timeline(report: dict, path) -> Path:
    """Draw `report`'s timeline into the PNG file `path`; returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    timeline_figure(report).savefig(path, format="png")
    return path


def timeline_image(report: dict) -> np.ndarray:
    """`report`'s picture as an RGB array (H, W, 3), for pages that show it without a file."""
    figure = timeline_figure(report)
    figure.canvas.draw()
    return np.asarray(figure.canvas.buffer_rgba())[:, :, :3].copy()


def _draw_spans(axis, spans: list[dict], duration: float) -> list:
    """One band per span; returns legend handles for the actions present."""
    for span in spans:
        colour = ACTION_COLOURS.get(span["action"], UNKNOWN_COLOUR)
        axis.add_patch(Rectangle((span["start"], 0.0), span["end"] - span["start"], 1.0, facecolor=colour, edgecolor="none", label=span["action"]))
    axis.set_xlim(0.0, duration)
    axis.set_ylim(0.0, 1.0)
    axis.set_yticks([])
    axis.set_xlabel("output time (s)")
    present = list(dict.fromkeys(span["action"] for span in spans))
    return [Patch(facecolor=ACTION_COLOURS.get(a, UNKNOWN_COLOUR), label=ACTION_LABELS.get(a, a)) for a in present]


def _draw_segments(axis, segments: list[dict]) -> list:
    """An outline around each segment's time range, with its number; returns a legend handle."""
    for row in segments:
        axis.add_patch(Rectangle((row["start"], 0.02), row["end"] - row["start"], 0.96, fill=False, edgecolor=SEGMENT_COLOUR, linewidth=2, zorder=3))
        axis.text((row["start"] + row["end"]) / 2, 0.5, str(row["segment"]), ha="center", va="center", fontsize=9, fontweight="bold",
                  color=SEGMENT_COLOUR, zorder=4)
    return [Patch(fill=False, edgecolor=SEGMENT_COLOUR, linewidth=2, label="segment")] if segments else []


def _draw_confidence(axis, report: dict, duration: float) -> list:
    """A level per scored regenerated span and the threshold, if any; returns legend handles."""
    scored = [s for s in report["spans"] if s["action"] == "generated" and s.get("sync_confidence") is not None]
    axis.set_ylabel("sync confidence", fontsize=8)
    axis.grid(axis="y", alpha=0.3)
    if not scored:
        axis.set_yticks([])
        axis.text(0.5, 0.5, "no sync scores in this report (SyncNet weights not loaded, or spans under 0.4 s)",
                  transform=axis.transAxes, ha="center", va="center", fontsize=8, color="#666666")
        return []
    for span in scored:
        axis.hlines(span["sync_confidence"], span["start"], span["end"], colors=CONFIDENCE_COLOUR, linewidth=2.5)
        if span["end"] - span["start"] < LABELLED_SPAN_SHARE * duration:
            continue  # too narrow to carry its number legibly
        axis.annotate(f"{span['sync_confidence']:.1f}", ((span["start"] + span["end"]) / 2, span["sync_confidence"]),
                      textcoords="offset points", xytext=(0, 3), ha="center", fontsize=7)
    handles = [Line2D([], [], color=CONFIDENCE_COLOUR, linewidth=2.5, label="sync confidence")]
    threshold = (report.get("options") or {}).get("min_sync_confidence")
    levels = [s["sync_confidence"] for s in scored] + ([threshold] if threshold else [])
    if threshold:
        handles.append(axis.axhline(threshold, color=THRESHOLD_COLOUR, linestyle="--", linewidth=1, label=f"threshold {threshold:g}"))
    axis.set_ylim(min(0.0, min(levels)), max(levels) * 1.25 + 0.5)
    return handles


def _title(report: dict) -> str:
    frames, generated = report.get("frames") or 0, report.get("frames_generated") or 0
    plan = report.get("kind") == "plan"
    parts = [("Plan, " if plan else "") + (f"LatentSync {report['version']}" if report.get("version") else "LatentSync")]
    if frames:
        parts.append(f"{generated} of {frames} frames {'to regenerate' if plan else 'regenerated'} ({generated / frames:.0%})")
    if plan and (report.get("estimate") or {}).get("gpu_seconds") is not None:
        parts.append(f"~{report['estimate']['gpu_seconds']:.1f} GPU s ({report['estimate']['basis'].split(':')[0]})")
    if report.get("sync_confidence") is not None:
        parts.append(f"sync confidence {report['sync_confidence']:.2f}")
    return "  ·  ".join(parts)
