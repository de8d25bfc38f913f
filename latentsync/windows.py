"""A job's 16-frame windows through the diffusion model: gathered into batches, denoised with
out-of-memory recovery, each failure kept to its own window.

Windows go through the model in plan order, `windows_per_batch` of the same length at a time
(consecutive full windows of one span, or of the next spans too), and each batch draws its random
numbers window after window: so a window's result is the same whatever the batch size. The one
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
from .options import LipsyncOptions
from .planner import Plan, Span, windows_for
from .progress import raise_if_cancelled

logger = logging.getLogger("latentsync")

# When memory runs out in a window: the same arithmetic with less memory, in this order.
MEMORY_SAVERS = ({}, {"split_guidance_batch": True}, {"split_guidance_batch": True, "decode_frames_per_batch": 1})


@dataclass
class WindowResult:
    """Regenerated faces (n, 3, R, R) in [-1, 1] for the output frames `frames`; None if generation
    failed (the frames keep their original picture)."""

    frames: range
    faces: torch.Tensor | None
    error: str = ""


class SpanCrops:
    """The model-input face crops (n, R, R, 3) of each generated span, in plan order.

    A thread of their own decodes the spans' source frames (`open_frames()` opens that decoder)
    and aligns them one span ahead of the one being denoised, so the CPU's share of the work
    overlaps with the GPU's. A span's crops are forgotten once released; `close()` ends the thread
    and its decoder.
    """

    def __init__(self, plan: Plan, open_frames: Callable[[], Iterator[np.ndarray]], resolution: int):
        self.plan, self.open_frames, self.resolution = plan, open_frames, resolution
        self._made: dict[int, np.ndarray] = {}  # span start -> crops
        self._queue: queue.Queue = queue.Queue(maxsize=1)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __getitem__(self, span: Span) -> np.ndarray:
        if self._thread is None:
            self._thread = threading.Thread(target=self._align_spans, daemon=True)
            self._thread.start()
        while span.start not in self._made:
            item = self._queue.get()
            if isinstance(item, BaseException):
                raise item
            self._made[item[0]] = item[1]
        return self._made[span.start]

    def release(self, span: Span) -> None:
        self._made.pop(span.start, None)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _align_spans(self) -> None:
        aligner, frames = FaceAligner(self.resolution), self.open_frames()
        try:
            for span in self.plan.generated_spans:
                affines = [self.plan.affines[self.plan.source_frames[k]] for k in range(span.start, span.end)]
                if not hand_over(self._queue, (span.start, np.stack([aligner.model_input(next(frames), affine) for affine in affines])), self._stop):
                    return
        except BaseException as error:  # raised where the crops are asked for
            hand_over(self._queue, error, self._stop)
        finally:
            frames.close()


def hand_over(to: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item` on a bounded queue, waiting while it is full; False once `stop` is set."""
    while not stop.is_set():
        try:
            to.put(item, timeout=0.2)
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
        self.windows_denoised = self.unet_window_steps = 0
        self._order = [(span, window) for span in plan.generated_spans for window in windows_for(span)]
        self._position = {window.start: index for index, (_, window) in enumerate(self._order)}
        self._ready: dict[int, WindowResult] = {}  # denoised ahead, by first frame

    def result(self, span: Span, window: range, across_spans: bool) -> WindowResult:
        """The window at the job's guidance, denoised now with the windows after it (of the same
        length, up to `windows_per_batch`; from later spans too if `across_spans`), or earlier."""
        if window.start not in self._ready:
            batch = self._batch_from(self._order[self._position[window.start] :], across_spans)
            for (_, denoised), result in zip(batch, self.denoise(batch, self.options.guidance_scale)):
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
        """The first pending window and those after it that may share its batch: the same length,
        up to `windows_per_batch`, of the same span unless `across_spans`."""
        first_span, first = pending[0]
        batch = pending[:1]
        for span, window in pending[1:]:
            if len(batch) == self.models.windows_per_batch or len(window) != len(first) or (span is not first_span and not across_spans):
                break
            batch.append((span, window))
        return batch

    def denoise(self, batch: list[tuple[Span, range]], guidance: float) -> list[WindowResult]:
        """Denoise windows of one length in one batch; if that fails (memory, a bad window), one at a
        time from the same generator state, so each failure stays with its own window."""
        raise_if_cancelled(self.cancel)
        if len(batch) > 1:
            state = self.generator.get_state()
            try:
                faces = self._run_model([self._faces(span, window) for span, window in batch], [window for _, window in batch], guidance)
                return [self._count(WindowResult(window, window_faces)) for (_, window), window_faces in zip(batch, faces)]
            except Exception as error:  # torch.OutOfMemoryError among them
                self.generator.set_state(state)
                _free_cached_memory()
                logger.warning("a batch of %d windows failed (%s); denoising them one at a time", len(batch), error)
        return [self._denoise_alone(span, window, guidance) for span, window in batch]

    def _denoise_alone(self, span: Span, window: range, guidance: float) -> WindowResult:
        """One window, retried with less memory when it runs out; a failure is logged and the window
        keeps its original frames."""
        state = self.generator.get_state()
        try:
            for attempt, memory_savers in enumerate(MEMORY_SAVERS, start=1):
                self.generator.set_state(state)
                try:
                    return self._count(WindowResult(window, self._run_model([self._faces(span, window)], [window], guidance, **memory_savers)[0]))
                except torch.OutOfMemoryError:
                    _free_cached_memory()
                    logger.warning("out of memory (attempt %d of %d, %s)", attempt, len(MEMORY_SAVERS), memory_savers or "one batch")
            raise RuntimeError("out of GPU memory even with split guidance passes and frame-by-frame VAE decoding")
        except Exception as error:
            start_s, end_s = window.start / self.plan.fps, window.stop / self.plan.fps
            logger.error("generation failed for %.2f-%.2f s: %s", start_s, end_s, error)
            return WindowResult(window, None, f"{start_s:.2f}-{end_s:.2f} s: {error}")

    def _faces(self, span: Span, window: range) -> torch.Tensor:
        crops = self.crops[span][window.start - span.start : window.stop - span.start]
        return torch.from_numpy(crops).permute(0, 3, 1, 2)

    def _run_model(self, faces: list[torch.Tensor], windows: list[range], guidance: float, **memory_savers) -> torch.Tensor:
        """(n, f, 3, R, R) generated faces, on the CPU in float32, for n windows of f frames."""
        audio = torch.stack([frame_chunks(self.audio_features, window.start, len(window), self.plan.fps) for window in windows])
        models = self.models
        with models.model_lock:
            generated = models.denoiser(
                models.unet, models.vae, models.scheduler, to_device(torch.stack(faces), self.device), to_device(audio, self.device, self.dtype), models.mask,
                num_inference_steps=self.options.num_inference_steps,
                guidance_scale=guidance,
                initial_latents=self.noise[:, :, : len(windows[0])],
                generator=self.generator,
                enable_deepcache=self.options.enable_deepcache,
                **memory_savers,
            )
        return generated.float().cpu()

    def _count(self, result: WindowResult) -> WindowResult:
        self.windows_denoised += 1
        self.unet_window_steps += self.options.num_inference_steps
        return result


def _free_cached_memory() -> None:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
