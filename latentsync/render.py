"""Render a planned job: regenerate the mouths and write the video, in one streaming pass.

Two threads share the work:

- a worker walks the plan's generated spans in order: it has their windows denoised (aligned,
  batched and recovered from running out of GPU memory in `latentsync.windows`), scores each
  span's sync, applies the sync policy, and hands the windows over through a small queue;
- the calling thread decodes the whole video again, pastes each new mouth back, blends it in where
  regenerated and original frames meet, and encodes, frame by frame, in order.

Rendering leaves the plan as it was: it returns what happened to each generated span
(`SpanOutcome`), from which the report is made.
"""

import queue
import threading
from collections import deque
from contextlib import closing
from dataclasses import dataclass, field
from typing import Callable, Protocol

import cv2
import numpy as np
import torch

from .audio import AudioFeatures
from .config import AUDIO_SAMPLE_RATE
from .face.align import FaceAligner
from .media.decode import frames_in_order
from .media.encode import VideoWriter
from .media.probe import MediaInfo
from .options import LipsyncOptions
from .planner import BLEND_FRAMES, Action, Plan, Span, blend_weight, segment_edges, windows_for
from .progress import ProgressCallback, notify, raise_if_cancelled
from .windows import WAIT_S, JobWindows, ModelError, SpanCrops, WindowResult, hand_over

WINDOWS_AHEAD = 4  # how far the worker may run ahead of the writer
LOW_SYNC_GUIDANCE_STEP = 0.5  # a span regenerated for low sync confidence gets this much more guidance
SYNCNET_INPUT_SIZE = 224


@dataclass
class SpanOutcome:
    """What rendering did with one planned generated span."""

    span: Span
    action: Action  # GENERATED, or PASSTHROUGH when the whole span kept its original frames
    details: dict = field(default_factory=dict)  # sync_confidence, low_sync, ..., reason
    failed_windows: list[WindowResult] = field(default_factory=list)  # windows that kept their original frames


@dataclass
class RenderResult:
    outcomes: list[SpanOutcome]  # one per planned generated span, in order
    windows: int  # windows denoised, regenerations included
    unet_window_steps: int
    failed_windows: int  # windows that kept their original frames: out of memory even with every memory saver


class Models(Protocol):
    """What rendering needs of the pipeline: the models, how many windows share a U-Net call, and
    the lock that keeps one batch at a time on them (`LipsyncPipeline` is one)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    mask: torch.Tensor
    resolution: int
    denoiser: Callable[..., torch.Tensor]  # denoise.denoise_windows or the same signature
    sync_scorer: object | None  # sync.SyncNetScorer
    windows_per_batch: int
    model_lock: threading.Lock


class Renderer:
    """One job's render: its plan, options and audio, the seeded random generator and the noise,
    the counters, and the queue between the worker and the writer."""

    def __init__(self, models: Models, plan: Plan, options: LipsyncOptions, audio_features: AudioFeatures,
                 audio_samples: np.ndarray, progress: ProgressCallback | None = None, cancel: threading.Event | None = None):
        self.models, self.plan, self.options = models, plan, options
        self.audio_features, self.audio_samples = audio_features, audio_samples
        self.progress, self.cancel = progress, cancel
        self.windows: JobWindows | None = None  # the worker's denoising state, made by run()
        self._windows_planned = sum(len(windows_for(span)) for span in plan.generated_spans)
        self._windows_settled = 0  # windows of the spans the writer has finished
        self._results = queue.Queue(maxsize=WINDOWS_AHEAD)
        self._stop = threading.Event()
        self._worker: threading.Thread | None = None

    def run(self, video_path, audio_path, output_path, info: MediaInfo, work_dir) -> RenderResult:
        """Write the lip-synced video to `output_path` (it appears only when complete)."""
        spans_frames = [k for span in self.plan.generated_spans for k in range(span.start, span.end)]
        crops = SpanCrops(self.plan, lambda: frames_in_order(video_path, self.plan.fps, self.plan.source_frames[spans_frames], info=info),
                          self.models.resolution, self.cancel)
        self.windows = JobWindows(self.models, self.plan, self.options, self.audio_features, crops, self.cancel)
        self._worker = threading.Thread(target=self._generate, daemon=True)
        self._worker.start()
        try:
            # Segments are encoded apart from the frames around them, which so stay the source's encode.
            writer = VideoWriter(output_path, info.width, info.height, self.plan.fps, audio_path=audio_path, crf=self.options.crf, work_dir=work_dir,
                                 cuts=segment_edges(self.plan.segments))
            with writer, closing(frames_in_order(video_path, self.plan.fps, self.plan.source_frames, info=info)) as frames:
                outcomes = self._compose(frames, writer)
                if self.windows.windows_failed and not self.windows.windows_denoised:
                    raise ModelError(f"Every window of the job ran out of GPU memory ({self.windows.windows_failed}), even with split "
                                     "guidance passes and frame-by-frame VAE decoding; nothing was lip-synced.")
        finally:
            self._stop.set()
            crops.close()
            self._worker.join()
        return RenderResult(outcomes, self.windows.windows_denoised, self.windows.unet_window_steps, self.windows.windows_failed)

    # ---- the calling thread: compose and encode -------------------------------------------------

    def _compose(self, frames, writer: VideoWriter) -> list[SpanOutcome]:
        """Every output frame in order, with its regenerated face where there is one."""
        total_frames = len(self.plan.source_frames)

        def write(frame: np.ndarray) -> None:
            writer.write(frame)
            notify(self.progress, "write", writer.frames_written, total_frames)

        blender = Blender(FaceAligner(self.models.resolution).restore, write)
        outcomes = []
        for index, span in enumerate(self.plan.spans):
            if span.action is Action.GENERATED:
                outcomes.append(self._compose_span(index, span, frames, blender))
            else:
                for _ in range(len(span)):
                    blender.push(next(frames))
        blender.flush()
        return outcomes

    def _compose_span(self, index: int, span: Span, frames, blender: "Blender") -> SpanOutcome:
        """Push one generated span's frames as its windows arrive; returns its outcome."""
        position, received = span.start, 0
        while not isinstance(item := self._take(), SpanOutcome):
            for k in item.frames:
                face = None if item.faces is None else item.faces[k - item.frames.start]
                blender.push(next(frames), face, self.plan.affines[self.plan.source_frames[k]], run=index)
            position, received = item.frames.stop, received + 1
            notify(self.progress, "denoise", self._windows_settled + received, self._windows_planned)
        for _ in range(position, span.end):  # the span was passed through as a whole
            blender.push(next(frames))
        self._windows_settled += len(windows_for(span))
        notify(self.progress, "denoise", self._windows_settled, self._windows_planned)
        return item

    def _take(self):
        """The worker's next item; re-raises the worker's error, and stops when cancelled."""
        while True:
            raise_if_cancelled(self.cancel)
            try:
                item = self._results.get(timeout=WAIT_S)
            except queue.Empty:
                if not self._worker.is_alive() and self._results.empty():
                    raise RuntimeError("The denoising worker ended without handing over its windows.")
                continue
            if isinstance(item, BaseException):
                raise item
            return item

    # ---- the worker thread: denoise ---------------------------------------------------------------

    def _generate(self) -> None:
        """Regenerate the planned spans in order; the writer reads the results from the queue."""
        try:
            for span in self.plan.generated_spans:
                carried_on = self._generate_span(span)
                self.windows.crops.release(span)
                if not carried_on:
                    return
        except BaseException as error:  # re-raised in the writer's thread
            self._emit(error)
        finally:
            self.windows.crops.close()

    def _generate_span(self, span: Span) -> bool:
        """Regenerate one span and send its windows, then its outcome, to the writer.

        With a sync threshold the windows are held back until the span is scored, so that a low
        score can still be regenerated or passed through (and, so that the regenerated windows
        draw their random numbers where they would one window at a time, the span's windows are
        batched among themselves only). False once the writer has stopped.
        """
        scorer, threshold = self.models.sync_scorer, self.options.min_sync_confidence
        hold = threshold is not None and scorer is not None
        held, for_scoring, failed = [], [], []
        for window in windows_for(span):
            result = self.windows.result(span, window, across_spans=not hold)
            if result.faces is None:
                if hold:
                    return self._emit(SpanOutcome(span, Action.PASSTHROUGH, {"reason": f"generation failed: {result.error}"}))
                failed.append(result)
            elif scorer is not None:
                for_scoring.append(faces_for_scoring(result.faces))
            if hold:
                held.append(result)
            elif not self._emit(result):
                return False
        details = {"sync_confidence": self._score(span, for_scoring) if scorer is not None and not failed else None}
        if hold and details["sync_confidence"] is not None and details["sync_confidence"] < threshold:
            details["low_sync"] = {"confidence": details["sync_confidence"], "threshold": threshold, "action": self.options.low_sync_action}
            if self.options.low_sync_action == "passthrough":
                return self._emit(SpanOutcome(span, Action.PASSTHROUGH, {**details, "reason": "sync confidence below min_sync_confidence"}))
            held = self._regenerate(span, held, details)
        return all(self._emit(result) for result in held) and self._emit(SpanOutcome(span, Action.GENERATED, details, failed))

    def _regenerate(self, span: Span, held: list[WindowResult], details: dict) -> list[WindowResult]:
        """A span scored below the threshold, once more with more guidance; kept if every window works."""
        guidance = span.settings(self.options)[1] + LOW_SYNC_GUIDANCE_STEP
        retry = self.windows.redo(span, guidance)
        if any(result.faces is None for result in retry):
            return held
        details.update(
            sync_confidence_before=details["sync_confidence"],
            sync_confidence=self._score(span, [faces_for_scoring(result.faces) for result in retry]),
            regenerated_with_guidance=guidance,
        )
        return retry

    def _score(self, span: Span, scored_faces: list[np.ndarray]) -> float | None:
        first = round(span.start / self.plan.fps * AUDIO_SAMPLE_RATE)
        last = round(span.end / self.plan.fps * AUDIO_SAMPLE_RATE)
        score = self.models.sync_scorer.score(np.concatenate(scored_faces), self.audio_samples[first:last], fps=self.plan.fps)
        return None if score is None else round(score.confidence, 3)

    def _emit(self, item) -> bool:
        """Hand an item to the writer; False once it has stopped."""
        return hand_over(self._results, item, self._stop)


class Blender:
    """Writes output frames in order, each regenerated face pasted back and blended in by
    `planner.blend_weight`.

    A frame's weight depends on its run of regenerated frames (the run's length, and whether
    original frames border it), which is known 2 x `ramp` frames later: frames are held back that
    long. A run ends where a frame keeps its original picture, whether the plan said so or
    rendering decided it (a failed window, a span passed through for low sync), and where the next
    planned span begins.
    """

    def __init__(self, restore, write, ramp: int = BLEND_FRAMES):
        self.restore, self.write, self.ramp = restore, write, ramp
        self._held: deque[_HeldFrame] = deque()
        self._last: _HeldFrame | None = None

    def push(self, frame: np.ndarray, face: torch.Tensor | None = None, affine: np.ndarray | None = None, run=None) -> None:
        """The next output frame: with its regenerated `face` and `affine`, and the id of the planned
        span it belongs to (`run`), or alone when it keeps its original picture."""
        last = self._last
        if face is None:
            held = _HeldFrame(frame)
        elif last is not None and last.face is not None and last.run == run:
            held = _HeldFrame(frame, face, affine, run, last.position + 1, last.after_original)
        else:
            held = _HeldFrame(frame, face, affine, run, 0, after_original=last is not None and last.face is None)
        self._held.append(held)
        self._last = held
        if len(self._held) > 2 * self.ramp:
            self._write_oldest()

    def flush(self) -> None:
        """Write the frames still held (the video has ended)."""
        while self._held:
            self._write_oldest()

    def _write_oldest(self) -> None:
        held = self._held.popleft()
        if held.face is None:
            self.write(held.frame)
            return
        ahead, after = 0, None  # frames of the same run held after it; the first frame after the run
        for other in self._held:
            if other.face is None or other.run != held.run:
                after = other
                break
            ahead += 1
        weight = blend_weight(held.position, held.position + 1 + ahead, held.after_original, after is not None and after.face is None, self.ramp)
        restored = self.restore(held.frame, held.face, held.affine)
        self.write(restored if weight >= 1.0 else cv2.addWeighted(restored, weight, held.frame, 1.0 - weight, 0.0))


@dataclass
class _HeldFrame:
    frame: np.ndarray
    face: torch.Tensor | None = None
    affine: np.ndarray | None = None
    run: object = None
    position: int = 0  # in its run of regenerated frames
    after_original: bool = False  # the run begins right after a frame that kept its original picture


def faces_for_scoring(faces: torch.Tensor) -> np.ndarray:
    """Generated faces (n, 3, R, R) in [-1, 1] -> SyncNet-sized RGB uint8 crops, small to keep."""
    images = ((faces.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    return np.stack([cv2.resize(image, (SYNCNET_INPUT_SIZE, SYNCNET_INPUT_SIZE), interpolation=cv2.INTER_AREA) for image in images])
