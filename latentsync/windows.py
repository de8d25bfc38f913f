"""A job's 16-frame windows through the diffusion model: gathered into batches and denoised,
recovering from running out of GPU memory and from nothing else.

Running out of memory is retried with the same arithmetic in less memory (`MEMORY_SAVERS`); a
window that still does not fit keeps its original frames and the report names it. Any other
error of the model (a CUDA error, a checkpoint that does not fit its config) fails the job at once
with `ModelError`: a video that quietly kept its original mouths is not a result.

Windows go through the model in plan order, `windows_per_batch` of the same length and settings
(steps and guidance: a segment may have its own) at a time (consecutive full windows of one span,
or of the next spans too), and each batch draws its random numbers window after window: so a
window's result is the same whatever the batch size. The one
noise frame of the whole video is drawn first, from a CPU generator seeded with the job's seed.
"""

import logging
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from .audio import AudioFeatures, frame_chunks
from .config import FRAMES_PER_WINDOW
from .denoise import initial_noise, unet_device_dtype
from .device import to_device
from .face.align import FaceAligner
from .media.ffmpeg import MediaError
from .options import LipsyncOptions
from .planner import Plan, Span, windows_for
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
class WindowResult:
    """Regenerated faces (n, 3, R, R) in [-1, 1] for the output frames `frames`; None if the window
    ran out of memory even with every memory saver (the frames keep their original picture)."""

    frames: range
    faces: torch.Tensor | None
    error: str = ""


class SpanCrops:
    """The model-input face crops (n, R, R, 3) of each generated span, in plan order.

    A thread of their own decodes the spans' source frames (`open_frames()` opens that decoder)
    and aligns them one span ahead of the one being denoised, so the CPU's share of the work
    overlaps with the GPU's. A span's crops are forgotten once released. An error of that thread
    is raised where crops are asked for, then and on every later request; waiting for crops ends
    when `cancel` is set or the crops are closed. `close()` ends the thread and its decoder.
    """

    def __init__(self, plan: Plan, open_frames: Callable[[], Iterator[np.ndarray]], resolution: int, cancel: threading.Event | None = None):
        self.plan, self.open_frames, self.resolution, self.cancel = plan, open_frames, resolution, cancel
        self._closed = threading.Event()
        self._made: dict[int, np.ndarray] = {}  # span start -> crops
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._error: BaseException | None = None
        self._thread: threading.Thread | None = None

    def __getitem__(self, span: Span) -> np.ndarray:
        if self._thread is None:
            self._thread = threading.Thread(target=self._align_spans, daemon=True)
            self._thread.start()
        while span.start not in self._made:
            if self._error is not None:
                raise self._error
            raise_if_cancelled(self.cancel)
            if self._closed.is_set():
                raise AlignmentError("The job stopped while its faces were being aligned.")
            try:
                item = self._queue.get(timeout=WAIT_S)
            except queue.Empty:
                if not self._thread.is_alive() and self._queue.empty():
                    self._error = AlignmentError(f"The face alignment ended before the span at {span.start / self.plan.fps:.2f} s.")
                continue
            if isinstance(item, BaseException):
                self._error = item
            else:
                self._made[item[0]] = item[1]
        return self._made[span.start]

    def release(self, span: Span) -> None:
        self._made.pop(span.start, None)

    def close(self) -> None:
        """Stop the alignment thread; wait a moment for it to close its decoder (a thread stuck in
        a library call is left to end on its own: the job does not wait for it)."""
        self._closed.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * WAIT_S)

    def _align_spans(self) -> None:
        aligner, frames = FaceAligner(self.resolution), self.open_frames()
        span = None
        try:
            for span in self.plan.generated_spans:
                crops = []
                for k in range(span.start, span.end):
                    if self._closed.is_set():
                        return
                    crops.append(aligner.model_input(next(frames), self.plan.affines[self.plan.source_frames[k]]))
                if not hand_over(self._queue, (span.start, np.stack(crops)), self._closed):
                    return
        except MediaError as error:  # the decoder's own sentence
            hand_over(self._queue, error, self._closed)
        except Exception as error:  # raised where the crops are asked for
            where = f" for {seconds(range(span.start, span.end), self.plan.fps)}" if span is not None else ""
            failure = AlignmentError(f"Aligning the speaker's face failed{where}: {type(error).__name__}: {error}")
            failure.__cause__ = error
            hand_over(self._queue, failure, self._closed)
        finally:
            frames.close()


def hand_over(to: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` on a bounded queue, waiting while it is full; False once `stop` is set."""
    while not stop.is_set():
        try:
            to.put(item, timeout=WAIT_S)
            return True
        except queue.Full:
            continue
    return False


class JobWindows:
    """The denoising state of one job: the generator, the noise, the counters, and the windows
    denoised ahead of the span that asked for them."""

    def __init__(self, models, plan: Plan, options: LipsyncOptions, audio_features: AudioFeatures, crops: SpanCrops,
                 cancel: threading.Event | None = None):
        """`models` as `render.Models`; `crops` gives each span's face crops."""
        self.models, self.plan, self.options, self.audio_features, self.crops = models, plan, options, audio_features, crops
        self.cancel = cancel
        self.device, self.dtype = unet_device_dtype(models.unet)
        self.generator = torch.Generator().manual_seed(options.seed)  # on the CPU: the same draws on every device
        self.noise = initial_noise(self.generator, models.resolution // 8, FRAMES_PER_WINDOW, self.device, self.dtype)
        self.windows_denoised = self.unet_window_steps = self.windows_failed = 0
        self._order = [(span, window) for span in plan.generated_spans for window in windows_for(span)]
        self._position = {window.start: index for index, (_, window) in enumerate(self._order)}
        self._ready: dict[int, WindowResult] = {}  # denoised ahead, by first frame

    def result(self, span: Span, window: range, across_spans: bool) -> WindowResult:
        """The window at its span's guidance, denoised now with the windows after it (of the same
        length and settings, up to `windows_per_batch`; from later spans too if `across_spans`),
        or earlier."""
        if window.start not in self._ready:
            batch = self._batch_from(self._order[self._position[window.start] :], across_spans)
            for (_, denoised), result in zip(batch, self.denoise(batch, span.settings(self.options)[1])):
                self._ready[denoised.start] = result
        return self._ready.pop(window.start)

    def redo(self, span: Span, guidance: float) -> list[WindowResult]:
        """All of a span's windows once more, at another guidance, in batches of their own."""
        pending, results = [(span, window) for window in windows_for(span)], []
        while pending:
            batch = self._batch_from(pending, across_spans=False)
            results += self.denoise(batch, guidance)
            pending = pending[len(batch) :]
        return results

    def _batch_from(self, pending: list[tuple[Span, range]], across_spans: bool) -> list[tuple[Span, range]]:
        """The first pending window and those after it that may share its batch: the same length and
        settings, up to `windows_per_batch`, of the same span unless `across_spans`."""
        first_span, first = pending[0]
        batch = pending[:1]
        for span, window in pending[1:]:
            if len(batch) == self.models.windows_per_batch or len(window) != len(first) or (span is not first_span and not across_spans):
                break
            if span.settings(self.options) != first_span.settings(self.options):
                break
            batch.append((span, window))
        return batch

    def denoise(self, batch: list[tuple[Span, range]], guidance: float) -> list[WindowResult]:
        """Denoise windows of one length in one batch. If memory runs out, one at a time from the
        same generator state (so each window keeps its result and a failure stays with its own
        window); any other error of the model fails the job (`ModelError`)."""
        raise_if_cancelled(self.cancel)
        steps = batch[0][0].settings(self.options)[0]  # a batch shares its settings (`_batch_from`)
        if len(batch) > 1:
            state = self.generator.get_state()
            faces = [self._faces(span, window) for span, window in batch]
            try:
                generated = self._run_model(faces, [window for _, window in batch], guidance, steps)
                return [self._count(WindowResult(window, window_faces), steps) for (_, window), window_faces in zip(batch, generated)]
            except Exception as error:
                self._raise_unless_out_of_memory(error, [window for _, window in batch])
                logger.warning("out of memory in a batch of %d windows; denoising them one at a time", len(batch))
            self.generator.set_state(state)
            free_cached_memory()  # outside the except block, whose traceback held the failed batch's activations
            return [self._denoise_alone(span, window, guidance, recovering=True) for span, window in batch]
        return [self._denoise_alone(span, window, guidance) for span, window in batch]

    def _denoise_alone(self, span: Span, window: range, guidance: float, recovering: bool = False) -> WindowResult:
        """One window, retried with less memory while it runs out; if it never fits, it keeps its
        original frames and the result says why. Recovering from lack of memory, the U-Net runs
        uncompiled (a compiled one pads the batch to its graphs' size)."""
        state, faces, steps = self.generator.get_state(), self._faces(span, window), span.settings(self.options)[0]
        for attempt, memory_savers in enumerate(MEMORY_SAVERS, start=1):
            self.generator.set_state(state)
            try:
                generated = self._run_model([faces], [window], guidance, steps, eager=recovering or attempt > 1, **memory_savers)
                return self._count(WindowResult(window, generated[0]), steps)
            except Exception as error:
                self._raise_unless_out_of_memory(error, [window])
                logger.warning("out of memory (attempt %d of %d, %s)", attempt, len(MEMORY_SAVERS), memory_savers or "one batch")
            free_cached_memory()
        self.windows_failed += 1
        where = seconds(window, self.plan.fps)
        logger.error("out of GPU memory for %s even with every memory saver; those frames keep their original picture", where)
        return WindowResult(window, None, f"{where}: out of GPU memory even with split guidance passes and frame-by-frame VAE decoding")

    def _raise_unless_out_of_memory(self, error: Exception, windows: list[range]) -> None:
        if not is_out_of_memory(error):
            where = seconds(range(windows[0].start, windows[-1].stop), self.plan.fps)
            on = "on the GPU" if self.device.type == "cuda" else f"on the {self.device.type.upper()}"
            raise ModelError(f"The model failed {on} while denoising {where}: {type(error).__name__}: {error}") from error
    def _faces(self, span: Span, window: range) -> torch.Tensor:
        crops = self.crops[span][window.start - span.start : window.stop - span.start]
        return torch.from_numpy(crops).permute(0, 3, 1, 2)

    def _run_model(self, faces: list[torch.Tensor], windows: list[range], guidance: float, steps: int, eager: bool = False, **memory_savers) -> torch.Tensor:
        """(n, f, 3, R, R) generated faces, on the CPU in float32, for n windows of f frames;
        `eager`: with the uncompiled U-Net."""
        audio = torch.stack([frame_chunks(self.audio_features, window.start, len(window), self.plan.fps) for window in windows])
        models = self.models
        unet = getattr(models.unet, "eager", models.unet) if eager else models.unet
        with models.model_lock:
            generated = models.denoiser(
                unet, models.vae, models.scheduler, to_device(torch.stack(faces), self.device), to_device(audio, self.device, self.dtype), models.mask,
                num_inference_steps=steps,
                guidance_scale=guidance,
                initial_latents=self.noise[:, :, : len(windows[0])],
                generator=self.generator,
                enable_deepcache=self.options.enable_deepcache,
                **memory_savers,
            )
        return generated.float().cpu()

    def _count(self, result: WindowResult, steps: int) -> WindowResult:
        self.windows_denoised += 1
        self.unet_window_steps += steps
        return result


def free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def seconds(frames: range, fps: float) -> str:
    """"4.48-5.12 s": output frames as the seconds they cover."""
    return f"{frames.start / fps:.2f}-{frames.stop / fps:.2f} s"
