"""A job's analysis, streamed on a thread of its own: one decoder reads each frame of the video
once, the faces on it are found, the plan is extended (`planner.PlanBuilder`), and the faces the
model will regenerate are cropped, so denoising starts on the first windows while the rest of the
video is still being analysed.

A crop is made while its frame is decoded, for every face that may turn out to be the speaker's on
a frame that may be regenerated, and kept until the plan decides: until the speaker is chosen in
the first seconds with faces, until a regenerated run of more than 5 s ends (where it is cut in
two depends on its length), a few frames otherwise. The crops the plan needs and did not keep (a
decision that took longer than `CROPS_KEPT_S`: a speaker point on a late frame, a run of more
than 10 s), and those of the frames the bounce and loop modes show again and of the remap mode,
come from a second decoder.

The denoising worker takes, in output order (`next`): each final span (a regenerated one after
its windows), each window of a regenerated span with its crops, and None at the end. An error of
the analysis is raised there instead. While `windows_ahead` items wait for the worker, the
analysis reads on, up to `CROPS_KEPT_S` ahead of what it handed over.
"""

import math
import queue
import threading
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing

import numpy as np

from .config import FRAMES_PER_WINDOW
from .face.align import FaceAligner
from .face.track import MAX_GAP
from .job import Job, Models
from .media.decode import FrameReader, read_frames
from .planner import Action, Plan, PlanBuilder, Span, frames_covering
from .progress import notify, raise_if_cancelled
from .windows import AlignmentError, Window, hand_over, take

CROPS_KEPT_S = 6.0  # crops are kept this far ahead of the frames handed over (past the first half of a 10 s run)


class Analysis:
    """One job's analysis thread (`start`, then `next` until None, then `close`)."""

    def __init__(self, job: Job, models: Models, builder: PlanBuilder, windows_ahead: int, max_seconds: float | None = None):
        self.job, self.builder, self.max_seconds = job, builder, max_seconds
        self.detector, self.aligner = models.face_detector, FaceAligner(models.resolution)
        self.frames_analysed = 0
        self.seconds: float | None = None  # how long the analysis of the whole video took
        self._queue: queue.Queue = queue.Queue(maxsize=windows_ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="analysis")
        self._kept: dict[tuple[int, int], Future] = {}  # (track id, source frame) -> its crop, made on `_cropping`
        self._cropping = ThreadPoolExecutor(1, thread_name_prefix="crop")  # beside the next frame's detection
        self._kept_frames = math.ceil(CROPS_KEPT_S * job.fps)
        self._spans_handed = 0  # final spans handed over
        self._window: tuple[int, int] | None = None  # (span start, next window start) of the regenerated span being handed over
        self._handed = 0  # output frames handed over
        self._waiting = None  # the next item to hand over, made but not taken yet
        self._reader: FrameReader | None = None  # the second decoder, opened when needed

    @property
    def plan(self):
        return self.builder.plan

    def start(self) -> None:
        self._thread.start()

    def next(self):
        """The next span, window or None (the end), in output order; raises the analysis's error."""
        return take(self._queue, self._thread, self.job.cancel, "face analysis", stop=self._stop)

    def close(self) -> None:
        """Stop the thread; wait a moment for it to close its decoders (a thread stuck in a
        library call is left to end on its own: the job does not wait for it)."""
        self._stop.set()
        self._thread.join(timeout=0.4)

    # ---- the thread -------------------------------------------------------------------------------------

    def _run(self) -> None:
        started = time.perf_counter()
        try:
            recent: deque[np.ndarray] = deque(maxlen=MAX_GAP + 1)  # the last frames: a resumed track's missed ones are cropped late
            frames = read_frames(self.job.video_path, self.job.fps, info=self.job.info, max_seconds=self.max_seconds)
            with closing(frames):
                for frame in frames:
                    if self._stop.is_set():
                        return
                    recent.append(frame)
                    for track_id, source, affine in self.builder.add(self.detector.detect(frame)):
                        if source < self._handed + self._kept_frames:
                            frame_then = recent[source - self.builder.frames + len(recent)]
                            self._kept[track_id, source] = self._cropping.submit(self._crop, frame_then, affine, source)
                    self.frames_analysed += 1
                    # Read on while the worker is busy, as far as crops are kept: then wait for it.
                    if not self._hand_over_planned(wait=self.builder.frames - self._handed >= self._kept_frames):
                        return
            self.builder.finish()
            self.seconds = time.perf_counter() - started
            if self._hand_over_planned(wait=True):
                hand_over(self._queue, None, self._stop)
        except BaseException as error:  # raised where the worker takes the next item
            hand_over(self._queue, error, self._stop)
        finally:
            self._cropping.shutdown(wait=False, cancel_futures=True)
            if self._reader is not None:
                self._reader.close()

    def _hand_over_planned(self, wait: bool) -> bool:
        """Hand over what the plan has decided since last time, as much as the queue takes without
        waiting, or all of it when `wait`; False once the job stopped."""
        self._kept = {key: crop for key, crop in self._kept.items() if key[1] >= self._handed and self.builder.is_live(key[0])}
        while True:
            if self._waiting is None:
                self._waiting = self._next_planned()
                if self._waiting is None:
                    return True
            if wait:
                if not hand_over(self._queue, self._waiting, self._stop):
                    return False
            else:
                try:
                    self._queue.put_nowait(self._waiting)
                except queue.Full:
                    return not self._stop.is_set()
            self._waiting = None

    def _next_planned(self):
        """The next span or window the plan has decided, in output order; None if there is none yet."""
        spans = self.plan.spans
        if self._spans_handed < len(spans):
            span = spans[self._spans_handed]
            if span.action is Action.GENERATED and (window := self._next_window(span, whole=True)) is not None:
                return window
            self._spans_handed += 1
            self._handed = span.end
            return span
        open_span = self.builder.spans.open_span
        return None if open_span is None else self._next_window(open_span, whole=False)

    def _next_window(self, span: Span, whole: bool) -> Window | None:
        """The next window of `span`: up to its end if it is `whole`, else a full window among the
        frames known to belong to it; None if there is none."""
        if self._window is None or self._window[0] != span.start:
            self._window = (span.start, span.start)
        start = self._window[1]
        if start >= span.end or (not whole and start + FRAMES_PER_WINDOW > span.end):
            return None
        frames = range(start, min(start + FRAMES_PER_WINDOW, span.end))
        self._window, self._handed = (span.start, frames.stop), frames.stop
        return Window(span.start, frames, np.stack([self._crop_of(k) for k in frames]), *span.settings(self.job.options))

    def _crop_of(self, frame: int) -> np.ndarray:
        """The speaker's crop on output `frame`: kept since its frame was decoded, or decoded again."""
        source = self.plan.source_frames[frame]
        track, _ = self.builder.speaker.speaker_at(source)
        kept = self._kept.pop((track.id, source), None)
        if kept is not None:
            return kept.result()
        if self._reader is None:
            self._reader = FrameReader(self.job.video_path, self.job.fps, info=self.job.info)
        return self._crop(self._reader[source], self.plan.affines[source], source)

    def _crop(self, frame: np.ndarray, affine: np.ndarray, source: int) -> np.ndarray:
        try:
            return self.aligner.model_input(frame, affine)
        except Exception as error:
            raise AlignmentError(f"Aligning the faces for the model failed at {source / self.job.fps:.2f} s of the video: "
                                 f"{type(error).__name__}: {error}") from error


def plan_only(job: Job, detector, builder: PlanBuilder, max_seconds: float | None = None) -> Plan:
    """The plan a job's analysis builds, without cropping for the model (`LipsyncPipeline.plan`):
    each frame read once, its faces found (`detector`) and the plan extended, in the calling
    thread, telling `job.progress` how far it is."""
    total = frames_covering(job.info.duration, job.fps)
    with closing(read_frames(job.video_path, job.fps, info=job.info, max_seconds=max_seconds)) as frames:
        for frame in frames:
            raise_if_cancelled(job.cancel)
            builder.add(detector.detect(frame))
            notify(job.progress, "analyse", builder.frames, max(total, builder.frames))
    return builder.finish()
