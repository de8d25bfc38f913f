"""A job's 16-frame windows through the diffusion model: taken from the analysis as it hands them
over, gathered into batches and denoised, recovering from running out of GPU memory and from
nothing else.

Running out of memory is retried with the same arithmetic in less memory (`MEMORY_SAVERS`); a
window that still does not fit keeps its original frames and the report names it. Any other
error of the model (a CUDA error, a checkpoint that does not fit its config) fails the job at once
with `ModelError`: a video that quietly kept its original mouths is not a result.

Windows go through the model in plan order, `windows_per_batch` of the same length and settings
(steps and guidance: a segment may have its own) at a time (consecutive full windows of one span,
or of the next spans too: a batch waits for the windows that belong in it, so it is made of the
same windows whenever they arrive), and each batch draws its random numbers window after window:
so a window's result is the same whatever the batch size. The one noise frame of the whole video
is drawn first, from a CPU generator seeded with the job's seed.
"""

import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .audio import AudioFeatures, frame_chunks
from .config import FRAMES_PER_WINDOW
from .denoise import initial_noise, unet_device_dtype
from .device import to_device
from .job import Job, Models
from .planner import Span
from .progress import raise_if_cancelled

logger = logging.getLogger("latentsync")

# When memory runs out in a window: the same arithmetic with less memory, in this order.
MEMORY_SAVERS = ({}, {"split_guidance_batch": True}, {"split_guidance_batch": True, "vae_frames_per_batch": 1})
# Messages of the allocation failures that mean the same as torch.OutOfMemoryError.
OUT_OF_MEMORY_MESSAGES = ("CUDA out of memory", "CUDA error: out of memory", "CUBLAS_STATUS_ALLOC_FAILED", "CUDNN_STATUS_ALLOC_FAILED")
WAIT_S = 0.2  # how often a thread waiting on another checks whether the job was stopped or cancelled


class ModelError(RuntimeError):
    """The model failed for another reason than memory; the job fails with this one sentence."""


class AlignmentError(RuntimeError):
    """Cropping the speaker's face for the model failed; the job fails with this one sentence."""


def is_out_of_memory(error: BaseException) -> bool:
    """Whether `error` means the device ran out of memory (the one error a window recovers from)."""
    return isinstance(error, torch.OutOfMemoryError) or any(text in str(error) for text in OUT_OF_MEMORY_MESSAGES)


@dataclass
class Window:
    """A window of the regenerated span that starts at output frame `span_start`: its output
    frames, the speaker's face crops on them (n, R, R, 3) uint8, the model's input, and the span's
    denoising steps and guidance (`planner.Span.settings`)."""

    span_start: int
    frames: range
    crops: np.ndarray
    steps: int
    guidance: float

    @property
    def settings(self) -> tuple[int, float]:
        return self.steps, self.guidance


@dataclass
class WindowResult:
    """Regenerated faces (n, 3, R, R) in [-1, 1] for the output frames `frames` of the span that
    starts at `span_start`; None if the window ran out of memory even with every memory saver (the
    frames keep their original picture)."""

    span_start: int
    frames: range
    faces: torch.Tensor | None
    error: str = ""


def hand_over(to: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` on a bounded queue, waiting while it is full; False once `stop` is set."""
    while not stop.is_set():
        try:
            to.put(item, timeout=WAIT_S)
            return True
        except queue.Full:
            continue
    return False


class Stopped(Exception):
    """The thread a job's thread waited on was stopped (the job ended on another error or was cancelled)."""


def take(source: queue.Queue, producer: threading.Thread, cancel: threading.Event | None, what: str,
         stop: threading.Event | None = None, while_waiting: Callable[[], None] | None = None):
    """The next item of a queue `producer` fills, waiting while it is empty: an error handed over
    instead of an item is raised; JobCancelled once `cancel` is set, Stopped once `stop` is;
    RuntimeError if the producer ended without handing over its items. `while_waiting` is called
    between the checks."""
    while True:
        raise_if_cancelled(cancel)
        if stop is not None and stop.is_set():
            raise Stopped(f"the {what} was stopped")
        if while_waiting is not None:
            while_waiting()
        try:
            item = source.get(timeout=WAIT_S)
        except queue.Empty:
            if not producer.is_alive() and source.empty():
                raise RuntimeError(f"The {what} ended without handing over its work.") from None
            continue
        if isinstance(item, BaseException):
            raise item
        return item


class JobWindows:
    """The denoising state of one job: the generator, the noise, the counters; the plan's spans and
    windows as the analysis hands them over (`next`), and the windows denoised ahead of the one
    asked for."""

    def __init__(self, models: Models, job: Job, audio_features: AudioFeatures, source: Callable[[], object]):
        """`source()` is the analysis's next item (`analysis.Analysis.next`): a final span, a
        `Window`, or None at the end."""
        self.models, self.job, self.audio_features, self._source = models, job, audio_features, source
        self.device, self.dtype = unet_device_dtype(models.unet)
        self.generator = torch.Generator().manual_seed(job.options.seed)  # on the CPU: the same draws on every device
        self.noise = initial_noise(self.generator, models.resolution // 8, FRAMES_PER_WINDOW, self.device, self.dtype)
        self.windows_denoised = self.unet_window_steps = self.windows_failed = 0
        self._ahead: deque = deque()  # items taken from the source to fill a batch, not given out yet
        self._ready: dict[int, WindowResult] = {}  # denoised ahead, by first frame

    def next(self):
        """The analysis's next item, in plan order."""
        return self._ahead.popleft() if self._ahead else self._source()

    def result(self, window: Window, across_spans: bool) -> WindowResult:
        """The window at its span's guidance, denoised now with the windows after it (of the same
        length and settings, up to `windows_per_batch`; from later spans too if `across_spans`),
        or earlier."""
        if window.frames.start not in self._ready:
            batch = self._batch_from(window, self._items_ahead(), across_spans)
            for denoised, result in zip(batch, self.denoise(batch, window.guidance)):
                self._ready[denoised.frames.start] = result
        return self._ready.pop(window.frames.start)

    def discard(self, window: Window) -> None:
        """Forget a window denoised ahead that will not be used."""
        self._ready.pop(window.frames.start, None)

    def redo(self, windows: list[Window], guidance: float) -> list[WindowResult]:
        """A span's windows once more, at another guidance, in batches of their own."""
        pending, results = list(windows), []
        while pending:
            batch = self._batch_from(pending[0], iter(pending[1:]), across_spans=False)
            results += self.denoise(batch, guidance)
            pending = pending[len(batch) :]
        return results

    def _items_ahead(self) -> Iterator:
        """The items after the current one, taken from the source as they are asked for."""
        position = 0
        while True:
            if position == len(self._ahead):
                self._ahead.append(self._source())
            yield self._ahead[position]
            position += 1

    def _batch_from(self, first: Window, after: Iterator, across_spans: bool) -> list[Window]:
        """`first` and the windows after it that may share its batch: the same length and settings,
        up to `windows_per_batch`, of the same span unless `across_spans` (spans kept as they are,
        in between, are passed over)."""
        batch = [first]
        while len(batch) < self.models.windows_per_batch:
            item = next(after, None)
            if item is None or (isinstance(item, Span) and not across_spans):
                break
            if isinstance(item, Window):
                if len(item.frames) != len(first.frames) or item.settings != first.settings:
                    break
                batch.append(item)
        return batch

    def denoise(self, batch: list[Window], guidance: float) -> list[WindowResult]:
        """Denoise windows of one length in one batch. If memory runs out, one at a time from the
        same generator state (so each window keeps its result and a failure stays with its own
        window); any other error of the model fails the job (`ModelError`)."""
        raise_if_cancelled(self.job.cancel)
        if len(batch) > 1:
            state = self.generator.get_state()
            try:
                generated = self._run_model(batch, guidance)
                return [self._count(window, faces) for window, faces in zip(batch, generated)]
            except Exception as error:
                self._raise_unless_out_of_memory(error, batch)
                logger.warning("out of memory in a batch of %d windows; denoising them one at a time", len(batch))
            self.generator.set_state(state)
            free_cached_memory()  # outside the except block, whose traceback held the failed batch's activations
            return [self._denoise_alone(window, guidance, recovering=True) for window in batch]
        return [self._denoise_alone(window, guidance) for window in batch]

    def _denoise_alone(self, window: Window, guidance: float, recovering: bool = False) -> WindowResult:
        """One window, retried with less memory while it runs out; if it never fits, it keeps its
        original frames and the result says why. Recovering from lack of memory, the U-Net runs
        uncompiled (a compiled one pads the batch to its graphs' size)."""
        state = self.generator.get_state()
        for attempt, memory_savers in enumerate(MEMORY_SAVERS, start=1):
            self.generator.set_state(state)
            try:
                generated = self._run_model([window], guidance, eager=recovering or attempt > 1, **memory_savers)
                return self._count(window, generated[0])
            except Exception as error:
                self._raise_unless_out_of_memory(error, [window])
                logger.warning("out of memory (attempt %d of %d, %s)", attempt, len(MEMORY_SAVERS), memory_savers or "one batch")
            free_cached_memory()
        self.windows_failed += 1
        where = seconds(window.frames, self.job.fps)
        logger.error("out of GPU memory for %s even with every memory saver; those frames keep their original picture", where)
        return WindowResult(window.span_start, window.frames, None, f"{where}: out of GPU memory even with split guidance passes and frame-by-frame VAE decoding")

    def _raise_unless_out_of_memory(self, error: Exception, windows: list[Window]) -> None:
        if not is_out_of_memory(error):
            where = seconds(range(windows[0].frames.start, windows[-1].frames.stop), self.job.fps)
            on = "on the GPU" if self.device.type == "cuda" else f"on the {self.device.type.upper()}"
            raise ModelError(f"The model failed {on} while denoising {where}: {type(error).__name__}: {error}") from error

    def _run_model(self, windows: list[Window], guidance: float, eager: bool = False, **memory_savers) -> torch.Tensor:
        """(n, f, 3, R, R) generated faces, on the CPU in float32, for n windows of f frames;
        `eager`: with the uncompiled U-Net."""
        faces = torch.stack([torch.from_numpy(window.crops).permute(0, 3, 1, 2) for window in windows])
        audio = torch.stack([frame_chunks(self.audio_features, window.frames.start, len(window.frames), self.job.fps) for window in windows])
        models, options = self.models, self.job.options
        unet = getattr(models.unet, "eager", models.unet) if eager else models.unet
        with models.model_lock:
            generated = models.denoiser(
                unet, models.vae, models.scheduler, to_device(faces, self.device), to_device(audio, self.device, self.dtype), models.mask,
                num_inference_steps=windows[0].steps,  # a batch shares its settings (`_batch_from`)
                guidance_scale=guidance,
                initial_latents=self.noise[:, :, : len(windows[0].frames)],
                generator=self.generator,
                enable_deepcache=options.enable_deepcache,
                **memory_savers,
            )
        return generated.float().cpu()

    def _count(self, window: Window, faces: torch.Tensor) -> WindowResult:
        self.windows_denoised += 1
        self.unet_window_steps += window.steps
        return WindowResult(window.span_start, window.frames, faces)


def free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def seconds(frames: range, fps: float) -> str:
    """"4.48-5.12 s": output frames as the seconds they cover."""
    return f"{frames.start / fps:.2f}-{frames.stop / fps:.2f} s"
