"""Render a job as its plan is built: regenerate the mouths and write the video, in one streaming
pass, while the analysis (`latentsync.analysis`) is still deciding the later frames.

Three threads share the work, each handing the next one what it made through a small queue:

- the analysis decodes the video, finds the faces, builds the plan and crops the speaker's face;
- a worker takes the plan's spans and windows in order: it has the windows denoised (batched and
  recovered from running out of GPU memory in `latentsync.windows`), scores each regenerated
  span's sync and applies the sync policy;
- the calling thread decodes the video again, pastes each new mouth back (on a few threads of
  its own), blends it in where regenerated and original frames meet, and encodes, frame by frame,
  in order.

Rendering leaves the plan as it was: it returns what happened to each regenerated span
(`SpanOutcome`), from which the report is made.
"""

import queue
import threading
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch

from .analysis import Analysis
from .audio import AudioFeatures
from .config import AUDIO_SAMPLE_RATE
from .face.align import FaceAligner
from .job import Job, Models
from .media.decode import FrameReader
from .media.encode import VideoWriter
from .planner import BLEND_FRAMES, Action, Span, blend_weight, frames_covering, plan_timeline, segment_edges, windows_for
from .progress import notify
from .sync import INPUT_SIZE as SYNCNET_INPUT_SIZE
from .windows import JobWindows, ModelError, Window, WindowResult, hand_over, take

WINDOWS_AHEAD = 4  # how far the worker may run ahead of the writer
LOW_SYNC_GUIDANCE_STEP = 0.5  # a span regenerated for low sync confidence gets this much more guidance
PASTE_BACK_THREADS = 2  # frames pasted on at once, ahead of the one being written


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


class Renderer:
    """One job's render: the analysis it follows, the denoising state, and the queue between the
    worker and the writer."""

    def __init__(self, models: Models, job: Job, analysis: Analysis, audio_features: AudioFeatures, audio_samples: np.ndarray):
        self.models, self.job, self.analysis, self.audio_samples = models, job, analysis, audio_samples
        self.plan = analysis.plan
        self.windows = JobWindows(models, job, audio_features, analysis.next)
        self._results = queue.Queue(maxsize=WINDOWS_AHEAD)
        self._stop = threading.Event()
        self._worker = threading.Thread(target=self._generate, daemon=True, name="denoise")
        self._frames_to_analyse = frames_covering(job.info.duration, job.fps)
        self._analysed_notified = 0
        # the output's length as the probe's video length makes it, until the plan is complete
        self._expected_frames = len(plan_timeline(max(1, self._frames_to_analyse), analysis.builder.audio_frames, analysis.builder.mode))

    def run(self, output_path) -> RenderResult:
        """Write the lip-synced video to `output_path` (it appears only when complete)."""
        job, info = self.job, self.job.info
        self.analysis.start()
        first_regenerated = min((segment.start for segment in self.plan.segments), default=0)
        self.windows.audio_features.encode_ahead(first_regenerated / job.fps)  # beside the analysis, not after it
        self._worker.start()
        try:
            # Segments are encoded apart from the frames around them, which so stay the source's encode.
            writer = VideoWriter(output_path, info.width, info.height, job.fps, audio_path=job.audio_path, crf=job.options.crf, work_dir=job.work_dir,
                                 cuts=segment_edges(self.plan.segments))
            with writer, closing(FrameReader(job.video_path, job.fps, info=info)) as frames:
                outcomes = self._compose(frames, writer)
                if self.windows.windows_failed and not self.windows.windows_denoised:
                    raise ModelError(f"Every window of the job ran out of GPU memory ({self.windows.windows_failed}), even with split "
                                     "guidance passes and frame-by-frame VAE decoding; nothing was lip-synced.")
        finally:
            self._stop.set()
            self.analysis.close()
            self._worker.join()
        return RenderResult(outcomes, self.windows.windows_denoised, self.windows.unet_window_steps, self.windows.windows_failed)

    # ---- the calling thread: compose and encode -------------------------------------------------

    def _compose(self, frames: FrameReader, writer: VideoWriter) -> list[SpanOutcome]:
        """Every output frame in order, with its regenerated face where there is one."""
        plan, progress = self.plan, self.job.progress

        def write(frame: np.ndarray) -> None:
            writer.write(frame)
            notify(progress, "write", writer.frames_written, self._output_frames())

        def push(upto: int, result: WindowResult | None = None) -> None:
            for k in range(position, upto):
                source = plan.source_frames[k]
                if result is None or result.faces is None:
                    blender.push(frames[source])
                else:
                    blender.push(frames[source], result.faces[k - result.frames.start], plan.affines[source], run=result.span_start)

        outcomes, position, settled, received = [], 0, 0, 0
        with Blender(FaceAligner(self.models.resolution), write) as blender:
            while (item := self._take()) is not None:
                if isinstance(item, WindowResult):
                    push(item.frames.stop, item)
                    position, received = item.frames.stop, received + 1
                elif isinstance(item, SpanOutcome):  # a regenerated span ends; what it did not regenerate keeps its picture
                    push(item.span.end)
                    position, settled, received = item.span.end, settled + len(windows_for(item.span)), 0
                    outcomes.append(item)
                else:  # a span kept as it is
                    push(item.end)
                    position = item.end
                planned = sum(len(windows_for(span)) for span in plan.generated_spans)
                notify(progress, "denoise", settled + received, max(planned, settled + received))
            blender.flush()
        return outcomes

    def _take(self):
        """The worker's next item; re-raises the worker's error, and stops when cancelled."""
        return take(self._results, self._worker, self.job.cancel, "denoising worker", while_waiting=self._notify_analysed)

    def _notify_analysed(self) -> None:
        """Tell the caller, from its own thread, how many frames the analysis has looked at."""
        analysed = self.analysis.frames_analysed
        for done in range(self._analysed_notified + 1, analysed + 1):
            notify(self.job.progress, "analyse", done, max(self._frames_to_analyse, analysed))
        self._analysed_notified = analysed

    def _output_frames(self) -> int:
        """The output's frames: as planned once the plan is complete, until then as expected."""
        return len(self.plan.source_frames) if self.analysis.builder.complete else self._expected_frames

    # ---- the worker thread: denoise ---------------------------------------------------------------

    def _generate(self) -> None:
        """Regenerate the planned spans in order, handing the writer the spans kept as they are,
        the windows and the regenerated spans' outcomes."""
        try:
            while (item := self.windows.next()) is not None:
                if not (self._generate_span(item) if isinstance(item, Window) else self._emit(item)):
                    return
            self._emit(None)
        except BaseException as error:  # re-raised in the writer's thread
            self._emit(error)

    def _generate_span(self, window: Window) -> bool:
        """Regenerate the span that `window` begins and send its windows, then its outcome, to the
        writer. The span is known whole when its last window has come.

        With a sync threshold the windows are held back until the span is scored, so that a low
        score can still be regenerated or passed through (and, so that the regenerated windows
        draw their random numbers where they would one window at a time, the span's windows are
        batched among themselves only). False once the writer has stopped.
        """
        scorer, threshold = self.models.sync_scorer, self.job.options.min_sync_confidence
        hold = threshold is not None and scorer is not None
        held, windows, for_scoring, failed = [], [], [], []
        item = window
        while isinstance(item, Window):
            result = self.windows.result(item, across_spans=not hold)
            if result.faces is None:
                if hold:  # the rest of the span is not denoised: it keeps its original frames
                    span = self._skip_span()
                    return self._emit(SpanOutcome(span, Action.PASSTHROUGH, {"reason": f"generation failed: {result.error}"}))
                failed.append(result)
            elif scorer is not None:
                for_scoring.append(faces_for_scoring(result.faces))
            if hold:
                held.append(result)
                windows.append(item)
            elif not self._emit(result):
                return False
            item = self.windows.next()
        span = item
        details = {"sync_confidence": self._score(span, for_scoring) if scorer is not None and not failed else None}
        if hold and details["sync_confidence"] is not None and details["sync_confidence"] < threshold:
            details["low_sync"] = {"confidence": details["sync_confidence"], "threshold": threshold, "action": self.job.options.low_sync_action}
            if self.job.options.low_sync_action == "passthrough":
                return self._emit(SpanOutcome(span, Action.PASSTHROUGH, {**details, "reason": "sync confidence below min_sync_confidence"}))
            held = self._regenerate(span, windows, held, details)
        return all(self._emit(result) for result in held) and self._emit(SpanOutcome(span, Action.GENERATED, details, failed))

    def _skip_span(self) -> Span:
        """Pass over the rest of the current span's windows; returns the span."""
        while isinstance(item := self.windows.next(), Window):
            self.windows.discard(item)
        return item

    def _regenerate(self, span: Span, windows: list[Window], held: list[WindowResult], details: dict) -> list[WindowResult]:
        """A span scored below the threshold, once more with more guidance; kept if every window works."""
        guidance = span.settings(self.job.options)[1] + LOW_SYNC_GUIDANCE_STEP
        retry = self.windows.redo(windows, guidance)
        if any(result.faces is None for result in retry):
            return held
        details.update(
            sync_confidence_before=details["sync_confidence"],
            sync_confidence=self._score(span, [faces_for_scoring(result.faces) for result in retry]),
            regenerated_with_guidance=guidance,
        )
        return retry

    def _score(self, span: Span, scored_faces: list[np.ndarray]) -> float | None:
        first = round(span.start / self.job.fps * AUDIO_SAMPLE_RATE)
        last = round(span.end / self.job.fps * AUDIO_SAMPLE_RATE)
        score = self.models.sync_scorer.score(np.concatenate(scored_faces), self.audio_samples[first:last], fps=self.job.fps)
        return None if score is None else round(score.confidence, 3)

    def _emit(self, item) -> bool:
        """Hand an item to the writer; False once it has stopped."""
        return hand_over(self._results, item, self._stop)


class Blender:
    """Writes output frames in order, each regenerated face pasted back and blended in by
    `planner.blend_weight`.

    A frame's weight depends on its run of regenerated frames (the run's length, and whether
    original frames border it), which is known 2 x `ramp` frames later: frames are held back that
    long, and pasted on meanwhile on `threads` threads (`FaceAligner.paste`). A run ends where a
    frame keeps its original picture, whether the plan said so or rendering decided it (a failed
    window, a span passed through for low sync), and where the next planned span begins. Use as a
    context manager: leaving it ends the threads.
    """

    def __init__(self, aligner: FaceAligner, write, ramp: int = BLEND_FRAMES, threads: int = PASTE_BACK_THREADS):
        self.aligner, self.write, self.ramp = aligner, write, ramp
        self._held: deque[_HeldFrame] = deque()
        self._last: _HeldFrame | None = None
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="paste-back")

    def __enter__(self) -> "Blender":
        return self

    def __exit__(self, *exc) -> None:
        self._threads.shutdown(cancel_futures=True)

    def push(self, frame: np.ndarray, face: torch.Tensor | None = None, affine: np.ndarray | None = None, run=None) -> None:
        """The next output frame: with its regenerated `face` and `affine`, and the id of the planned
        span it belongs to (`run`), or alone when it keeps its original picture."""
        last = self._last
        if face is None:
            held = _HeldFrame(frame)
        elif last is not None and last.pasted is not None and last.run == run:
            held = _HeldFrame(frame, self._paste(frame, face, affine), run, last.position + 1, last.after_original)
        else:
            held = _HeldFrame(frame, self._paste(frame, face, affine), run, 0, after_original=last is not None and last.pasted is None)
        self._held.append(held)
        self._last = held
        if len(self._held) > 2 * self.ramp:
            self._write_oldest()

    def flush(self) -> None:
        """Write the frames still held (the video has ended)."""
        while self._held:
            self._write_oldest()

    def _paste(self, frame: np.ndarray, face: torch.Tensor, affine: np.ndarray) -> Future:
        return self._threads.submit(self.aligner.paste, frame, face, affine)

    def _write_oldest(self) -> None:
        held = self._held.popleft()
        if held.pasted is None:
            self.write(held.frame)
            return
        ahead, after = 0, None  # frames of the same run held after it; the first frame after the run
        for other in self._held:
            if other.pasted is None or other.run != held.run:
                after = other
                break
            ahead += 1
        weight = blend_weight(held.position, held.position + 1 + ahead, held.after_original, after is not None and after.pasted is None, self.ramp)
        restored = held.frame.copy()
        pasted = held.pasted.result()
        if pasted is not None:
            rows, cols, pixels = pasted
            restored[rows, cols] = pixels
        self.write(restored if weight >= 1.0 else cv2.addWeighted(restored, weight, held.frame, 1.0 - weight, 0.0))


@dataclass
class _HeldFrame:
    frame: np.ndarray
    pasted: Future | None = None  # the regenerated face's pixels (`FaceAligner.paste`), when it has one
    run: object = None
    position: int = 0  # in its run of regenerated frames
    after_original: bool = False  # the run begins right after a frame that kept its original picture


def faces_for_scoring(faces: torch.Tensor) -> np.ndarray:
    """Generated faces (n, 3, R, R) in [-1, 1] -> SyncNet-sized RGB uint8 crops, small to keep."""
    images = ((faces.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    return np.stack([cv2.resize(image, (SYNCNET_INPUT_SIZE, SYNCNET_INPUT_SIZE), interpolation=cv2.INTER_AREA) for image in images])
