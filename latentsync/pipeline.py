"""The lip-sync pipeline: a talking-head video and an audio track in, the same video out with only
the mouth re-made to speak that audio.

A job makes three streaming passes over the video (frames flow through ffmpeg; the whole video is
never held in memory):

1. Analyse: detect faces on every frame, follow them into tracks and pick the speaker.
2. Plan: map output frames onto source frames and audio (length mode), decide per frame whether to
   regenerate it (speech and a usable speaker face) or pass the original through, and cut the
   regenerated runs into 16-frame windows. Nothing has been denoised yet.
3. Render: a worker thread aligns each window's faces, denoises them and scores the sync, while
   the calling thread decodes the video again, pastes the new mouths back and encodes, in order.
"""

import json
import logging
import math
import os
import queue
import shutil
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .audio import AudioEncoder, AudioFeatures, frame_chunks, silent_spans
from .cache import cache_key, place
from .config import AUDIO_SAMPLE_RATE, FRAMES_PER_WINDOW, MODEL_FPS, load_yaml
from .denoise import denoise_window, initial_noise, load_scheduler, load_training_mask, load_vae, unet_device_dtype
from .face.align import FaceAligner
from .face.detect import create_detector
from .face.track import build_tracks, choose_speaker
from .models.unet import UNet3DConditionModel
from .planner import (
    Action,
    LengthMode,
    Span,
    absorb_short_generated_spans,
    blend_weights,
    frames_covering,
    plan_timeline,
    spans_from_actions,
    split_at,
    windows_for,
)
from .sync import SyncNetScorer
from .media.decode import frames_in_order, load_audio
from .media.encode import VideoWriter
from .media.probe import probe_video
from .options import LipsyncOptions

__all__ = ["LipsyncOptions", "LipsyncPipeline", "LipsyncResult", "NoFaceError", "denoise_window"]

logger = logging.getLogger("latentsync")

MIN_GENERATED_FRAMES = 4  # shorter regenerated runs between original ones flicker more than they help
JOB_DIR_PREFIX = "latentsync-job-"
MAX_SPAN_FRAMES = 250  # longer generated runs are scored (and, if asked, regenerated) in pieces of 10 s


class NoFaceError(ValueError):
    """No frame of the video has a usable face of the speaker."""


@dataclass
class LipsyncResult:
    output_path: Path
    report: dict
    report_path: Path


@dataclass
class _Plan:
    """What analysis and planning decided for one job."""

    fps: float
    source_frames: np.ndarray  # output frame -> source frame
    spans: list[Span]
    weights: np.ndarray  # output frame -> share of the regenerated face (blend ramps at span edges)
    affines: dict  # source frame -> 2x3 alignment of the speaker's face
    audio_features: AudioFeatures
    audio_samples: np.ndarray


@dataclass
class _Window:
    """Regenerated faces for output frames [start, start + len(faces)); None if generation failed."""

    start: int
    faces: torch.Tensor | None
    error: str = ""


@dataclass
class _SpanDone:
    """Closes a planned generated span; `passthrough` replaces the whole span by the original."""

    details: dict = field(default_factory=dict)
    passthrough: bool = False


class LipsyncPipeline:
    """Components are passed in, so tests and servers choose the models and where they live.

    Args:
        unet, vae, scheduler: the diffusion model (see `latentsync.denoise`).
        audio_encoder: `latentsync.audio.AudioEncoder`.
        face_detector: a `latentsync.face.detect` backend.
        mask: the training mask from `load_training_mask` at `resolution`.
        resolution: face crop size the U-Net works at (256 for 1.5, 512 for 1.6).
        sync_scorer: optional `latentsync.sync.SyncNetScorer` for sync confidence.
        version: model version label for reports.
    """

    def __init__(self, unet, vae, scheduler, audio_encoder, face_detector, mask, resolution, sync_scorer=None, version="", cache=None, model_id=None):
        self.unet = unet
        self.vae = vae
        self.scheduler = scheduler
        self.audio_encoder = audio_encoder
        self.face_detector = face_detector
        self.mask = mask
        self.resolution = resolution
        self.sync_scorer = sync_scorer
        self.version = version
        self.cache = cache  # a latentsync.cache.ResultCache, or None
        self.model_id = model_id or version  # identifies the weights in result-cache keys
        # One window at a time on the model: the scheduler and DeepCache keep per-window state.
        self._model_lock = threading.Lock()

    @classmethod
    def from_files(cls, files, device=None, face_detector="auto", unet=None):
        """Load every component from weight files (a `latentsync.weights.ModelFiles`).

        `unet` may be passed in already loaded (e.g. to switch versions while keeping the rest).
        """
        device, dtype = default_device_and_dtype() if device is None else (torch.device(device), model_dtype(device))
        unet = unet or load_unet(files, device, dtype)
        return cls(
            unet=unet,
            vae=load_vae(files.vae_dir, device=device, dtype=dtype),
            scheduler=load_scheduler(),
            audio_encoder=AudioEncoder(files.whisper, device=device),
            face_detector=create_detector(face_detector, model_root=files.insightface_root, device=str(device)),
            mask=load_training_mask(files.mask, files.resolution),
            resolution=files.resolution,
            sync_scorer=SyncNetScorer(files.syncnet, device=device) if files.syncnet and Path(files.syncnet).exists() else None,
            version=files.version,
        )

    def for_version(self, files, unet) -> "LipsyncPipeline":
        """A pipeline for another model version: its own U-Net, resolution and mask, sharing this
        one's VAE, audio encoder, face detector, sync scorer and cache."""
        return LipsyncPipeline(
            unet=unet,
            vae=self.vae,
            scheduler=load_scheduler(),
            audio_encoder=self.audio_encoder,
            face_detector=self.face_detector,
            mask=load_training_mask(files.mask, files.resolution),
            resolution=files.resolution,
            sync_scorer=self.sync_scorer,
            version=files.version,
            cache=self.cache,
        )

    def __call__(self, video_path, audio_path, output_path, options: LipsyncOptions | None = None, report_path=None, temp_dir=None) -> LipsyncResult:
        """Lip-sync `video_path` to `audio_path` and write the mp4 to `output_path`.

        The JSON report goes to `report_path` (default: `<output without .mp4>.report.json`).
        Intermediate files live in a private folder under `temp_dir`, removed afterwards. With a
        result cache, a repeated request is answered from the cache without running the model.
        """
        options = options or LipsyncOptions()
        output_path = Path(output_path)
        report_path = Path(report_path) if report_path else output_path.with_suffix(".report.json")
        if self.cache is None:
            return self._run(Path(video_path), Path(audio_path), output_path, options, report_path, temp_dir)

        def produce(folder: Path) -> None:
            self._run(Path(video_path), Path(audio_path), folder / "output.mp4", options, folder / "report.json", temp_dir)

        key = cache_key(video_path, audio_path, asdict(options), self.model_id)
        cached = self.cache.get_or_create(key, produce)
        place(cached.dir / "output.mp4", output_path)
        report = {**json.loads((cached.dir / "report.json").read_text()), "cache": "hit" if cached.hit else "miss"}
        _write_json_atomically(report_path, report)
        return LipsyncResult(output_path=output_path, report=report, report_path=report_path)

    def _run(self, video_path: Path, audio_path: Path, output_path: Path, options: LipsyncOptions, report_path: Path, temp_dir) -> LipsyncResult:
        parent = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
        parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned_job_dirs(parent)
        job_dir = Path(tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-", dir=parent))
        started = time.perf_counter()
        timings = {}
        try:
            plan = self._analyse_and_plan(video_path, audio_path, options, timings)
            tick = time.perf_counter()
            counters = self._render(video_path, audio_path, output_path, plan, options, job_dir)
            timings["render_s"] = time.perf_counter() - tick
            timings["total_s"] = time.perf_counter() - started
            report = self._report(plan, options, counters, timings)
            _write_json_atomically(report_path, report)
            return LipsyncResult(output_path=output_path, report=report, report_path=report_path)
        finally:
            shutil.rmtree(job_dir, ignore_errors=True)

    # ---- 1 + 2: analyse and plan -------------------------------------------------------------

    def _analyse_and_plan(self, video_path: Path, audio_path: Path, options: LipsyncOptions, timings: dict) -> _Plan:
        tick = time.perf_counter()
        info = probe_video(video_path)
        fps = _output_fps(info.fps, options.keep_source_fps)
        samples = load_audio(audio_path, AUDIO_SAMPLE_RATE)
        features = self.audio_encoder.features(samples)
        timings["audio_s"] = time.perf_counter() - tick

        tick = time.perf_counter()
        frames = tqdm(frames_in_order(video_path, fps), desc="Finding faces", unit="frame", total=frames_covering(info.duration, fps), leave=False)
        detections = [self.face_detector.detect(frame) for frame in frames]
        timings["face_detection_s"] = time.perf_counter() - tick
        if not detections:
            raise ValueError(f"{video_path.name} has no decodable frames.")

        timeline = plan_timeline(len(detections), frames_covering(len(samples) / AUDIO_SAMPLE_RATE, fps), options.length_mode)
        speaker = choose_speaker(build_tracks(detections), point=options.speaker_point, box=options.speaker_box)
        speaker_face, speaker_track = {}, {}
        for track in speaker:
            for frame, face in track.faces.items():
                speaker_face[frame], speaker_track[frame] = face, track.id
        usable = {s for s, face in speaker_face.items() if abs(face.yaw_degrees) <= options.max_yaw_degrees}
        if not usable:
            raise NoFaceError(
                f"No usable face was found in any of the {len(detections)} frames checked ({len(detections) / fps:.1f} s of "
                "video): the speaker's face must be visible, at least 50x80 pixels and not turned far away."
            )

        silent = np.zeros(len(timeline), dtype=bool)
        if options.skip_silence:
            centres = (np.arange(len(timeline)) + 0.5) / fps
            for start_s, end_s in silent_spans(samples, min_silence_s=options.min_silence_s):
                silent |= (centres >= start_s) & (centres < end_s)

        source = timeline.source_frames
        actions = []
        for i, s in enumerate(source):
            if not timeline.has_audio[i] or silent[i]:
                actions.append(Action.SILENCE)
            elif s not in speaker_face:
                actions.append(Action.OTHER_SPEAKER if detections[s] else Action.NO_FACE)
            elif s not in usable:
                actions.append(Action.NO_FACE)
            else:
                actions.append(Action.GENERATED)

        # No window may straddle a cut: a jump in the source (loop restart) or a change of face track.
        step = math.ceil(len(detections) / len(source)) if LengthMode(options.length_mode) is LengthMode.REMAP else 1
        cuts = {
            i for i in range(1, len(source))
            if abs(int(source[i]) - int(source[i - 1])) > step or speaker_track.get(source[i]) != speaker_track.get(source[i - 1])
        }
        spans = absorb_short_generated_spans(split_at(spans_from_actions(actions), cuts), MIN_GENERATED_FRAMES)
        spans = _limit_span_length(spans, MAX_SPAN_FRAMES)

        aligner = FaceAligner(self.resolution)
        affines = {}
        for track in speaker:
            aligner.reset()  # smoothing runs over consecutive frames of one track, as the official over the video
            for frame in sorted(track.faces):
                affines[frame] = aligner.affine(track.faces[frame].landmarks3)
        return _Plan(fps, source, spans, blend_weights(spans, len(source)), affines, features, samples)

    # ---- 3: render ----------------------------------------------------------------------------

    def _render(self, video_path, audio_path, output_path, plan: _Plan, options: LipsyncOptions, job_dir) -> dict:
        """The calling thread composes and encodes while a worker thread generates.

        The worker hands over `_Window`s and a `_SpanDone` per planned generated span, in order,
        through a small queue, so it runs only a few windows ahead of the writer.
        """
        results = queue.Queue(maxsize=4)
        stop = threading.Event()
        counters = {"windows": 0, "unet_window_steps": 0}
        planned = [span for span in plan.spans if span.action is Action.GENERATED]
        worker = threading.Thread(target=self._generate_spans, args=(video_path, plan, planned, options, results, stop, counters), daemon=True)
        worker.start()
        info = probe_video(video_path)
        aligner = FaceAligner(self.resolution)
        try:
            with VideoWriter(output_path, info.width, info.height, plan.fps, audio_path=audio_path, crf=options.crf, work_dir=job_dir) as writer:
                frames = frames_in_order(video_path, plan.fps, plan.source_frames)
                with tqdm(total=len(plan.source_frames), desc="Lip-syncing", unit="frame") as progress:
                    for span in plan.spans:
                        if span.action is Action.GENERATED:
                            self._compose_span(span, plan, frames, results, aligner, writer)
                        else:
                            for _ in range(len(span)):
                                writer.write(next(frames))
                        progress.update(len(span))
        finally:
            stop.set()
            worker.join()
        return counters

    def _compose_span(self, span: Span, plan: _Plan, frames, results: queue.Queue, aligner: FaceAligner, writer: VideoWriter) -> None:
        position = span.start
        while position < span.end:
            item = _take(results)
            if isinstance(item, _SpanDone):  # passed through as a whole (low sync, or a failure before any output)
                span.details.update(item.details)
                span.action = Action.PASSTHROUGH
                for _ in range(position, span.end):
                    writer.write(next(frames))
                return
            for k in range(item.start, item.start + _window_length(item, span)):
                frame = next(frames)
                if item.faces is not None:
                    restored = aligner.restore(frame, item.faces[k - item.start], plan.affines[plan.source_frames[k]])
                    frame = _blend(frame, restored, plan.weights[k])
                writer.write(frame)
            if item.faces is None:
                span.details.setdefault("failed_windows", []).append(
                    {"start": round(item.start / plan.fps, 3), "end": round((item.start + _window_length(item, span)) / plan.fps, 3), "error": item.error}
                )
            position = item.start + _window_length(item, span)
        span.details.update(_take(results).details)

    def _generate_spans(self, video_path, plan: _Plan, planned: list[Span], options, results: queue.Queue, stop, counters) -> None:
        """Worker thread: regenerate the planned spans in order; the writer reads `results`."""

        def emit(item) -> bool:
            while not stop.is_set():
                try:
                    results.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        try:
            device, dtype = unet_device_dtype(self.unet)
            generator = torch.Generator(device=device).manual_seed(options.seed)
            # One noise frame for the whole video, drawn first, as the official does.
            noise = initial_noise(generator, self.resolution // 8, FRAMES_PER_WINDOW, device, dtype)
            aligner = FaceAligner(self.resolution)
            wanted = [i for span in planned for i in range(span.start, span.end)]
            frames = frames_in_order(video_path, plan.fps, plan.source_frames[wanted])
            for span in planned:
                crops = np.stack([aligner.model_input(next(frames), plan.affines[plan.source_frames[i]]) for i in range(span.start, span.end)])
                if not self._generate_span(span, crops, plan, options, generator, noise, counters, emit):
                    return
        except BaseException as error:  # re-raised in the writer's thread
            emit(error)

    def _generate_span(self, span, crops, plan, options, generator, noise, counters, emit) -> bool:
        """Regenerate one span and send it to the writer. With a sync threshold the span is held
        back until scored, so a low score can still be regenerated or passed through."""
        hold = options.min_sync_confidence is not None and self.sync_scorer is not None
        guidance = options.guidance_scale
        windows, scored_faces = [], []
        for window in windows_for(span):
            item = self._window(window, span, crops, plan, options, guidance, generator, noise, counters)
            if hold and item.faces is None:
                return emit(_SpanDone({"reason": f"generation failed: {item.error}"}, passthrough=True))
            if item.faces is not None and self.sync_scorer is not None:
                scored_faces.append(_faces_for_scoring(item.faces))
            if hold:
                windows.append(item)
            elif not emit(item):
                return False
        details = {"sync_confidence": self._score(span, scored_faces, plan) if len(scored_faces) == len(windows_for(span)) else None}
        if hold and details["sync_confidence"] is not None and details["sync_confidence"] < options.min_sync_confidence:
            details["low_sync"] = {"confidence": details["sync_confidence"], "threshold": options.min_sync_confidence, "action": options.low_sync_action}
            if options.low_sync_action == "passthrough":
                return emit(_SpanDone({**details, "reason": "sync confidence below min_sync_confidence"}, passthrough=True))
            guidance += 0.5
            retry = [self._window(window, span, crops, plan, options, guidance, generator, noise, counters) for window in windows_for(span)]
            if all(item.faces is not None for item in retry):
                windows = retry
                details.update(
                    sync_confidence_before=details["sync_confidence"],
                    sync_confidence=self._score(span, [_faces_for_scoring(item.faces) for item in retry], plan),
                    regenerated_with_guidance=guidance,
                )
        return all(emit(item) for item in windows) and emit(_SpanDone(details))

    def _window(self, window: range, span, crops, plan, options, guidance, generator, noise, counters) -> _Window:
        local = slice(window.start - span.start, window.stop - span.start)
        faces = torch.from_numpy(crops[local]).permute(0, 3, 1, 2)
        audio = frame_chunks(plan.audio_features, window.start, len(window), plan.fps)
        try:
            generated = self._denoise_with_recovery(faces, audio, guidance, options, generator, noise[:, :, : len(window)])
        except Exception as error:  # one failed window passes through; the job goes on
            start_s, end_s = window.start / plan.fps, window.stop / plan.fps
            logger.error("generation failed for %.2f-%.2f s: %s", start_s, end_s, error)
            return _Window(window.start, None, f"{start_s:.2f}-{end_s:.2f} s: {error}")
        counters["windows"] += 1
        counters["unet_window_steps"] += options.num_inference_steps
        return _Window(window.start, generated)

    def _denoise_with_recovery(self, faces, audio, guidance, options, generator, noise) -> torch.Tensor:
        """Denoise a window; when memory runs out, retry with less, reproducing the same result."""
        state = generator.get_state()
        attempts = ({}, {"split_guidance_batch": True}, {"split_guidance_batch": True, "decode_frames_per_batch": 1})
        for attempt, memory_savers in enumerate(attempts, start=1):
            generator.set_state(state)
            try:
                with self._model_lock:
                    return denoise_window(
                        self.unet, self.vae, self.scheduler, faces, audio, self.mask,
                        num_inference_steps=options.num_inference_steps,
                        guidance_scale=guidance,
                        initial_latents=noise,
                        generator=generator,
                        enable_deepcache=options.enable_deepcache,
                        **memory_savers,
                    ).cpu()
            except torch.OutOfMemoryError:
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                logger.warning("out of memory (attempt %d of %d, %s)", attempt, len(attempts), memory_savers or "one batch")
        raise RuntimeError("out of GPU memory even with split guidance passes and frame-by-frame VAE decoding")

    def _score(self, span: Span, scored_faces: list[np.ndarray], plan: _Plan) -> float | None:
        first = round(span.start / plan.fps * AUDIO_SAMPLE_RATE)
        last = round(span.end / plan.fps * AUDIO_SAMPLE_RATE)
        result = self.sync_scorer.score(np.concatenate(scored_faces), plan.audio_samples[first:last], fps=plan.fps)
        return None if result is None else round(result.confidence, 3)

    # ---- report --------------------------------------------------------------------------------

    def _report(self, plan: _Plan, options: LipsyncOptions, counters: dict, timings: dict) -> dict:
        entries = [entry for span in plan.spans for entry in _report_entries(span, plan.fps)]
        for entry in entries:
            logger.info(json.dumps({**entry, "steps": options.num_inference_steps, "guidance": options.guidance_scale}))
        total = len(plan.source_frames)
        generated = sum(e["frames"] for e in entries if e["action"] == Action.GENERATED.value)
        scored = [(e["sync_confidence"], e["frames"]) for e in entries if e.get("sync_confidence") is not None]
        return {
            "spans": entries,
            "seed": options.seed,
            "version": self.version,
            "fps": plan.fps,
            "frames": total,
            "duration": round(total / plan.fps, 3),
            "frames_generated": generated,
            "fraction_skipped": round(1 - generated / total, 4),
            "sync_confidence": round(sum(c * n for c, n in scored) / sum(n for _, n in scored), 3) if scored else None,
            "unet_window_steps": counters["unet_window_steps"],
            "unet_window_steps_every_frame": math.ceil(total / FRAMES_PER_WINDOW) * options.num_inference_steps,
            "options": json.loads(json.dumps(asdict(options))),
            "timings": {k: round(v, 3) for k, v in timings.items()},
        }


def model_dtype(device) -> torch.dtype:
    """float16 on CUDA GPUs of compute capability 8 or newer, float32 elsewhere (as the official)."""
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.float16
    return torch.float32


def default_device_and_dtype() -> tuple[torch.device, torch.dtype]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return device, model_dtype(device)


def load_unet(files, device="cpu", dtype=torch.float32) -> UNet3DConditionModel:
    """The U-Net of `files` (config + checkpoint), loaded without a second copy in memory."""
    return UNet3DConditionModel.from_checkpoint(load_yaml(files.unet_config)["model"], files.unet_checkpoint, device, dtype)


def _report_entries(span: Span, fps: float) -> list[dict]:
    """Report rows for a span; failed windows inside a generated span get rows of their own."""
    details = {k: v for k, v in span.details.items() if k != "failed_windows"}
    pieces, cursor = [], span.start / fps
    for failed in span.details.get("failed_windows", []):
        if failed["start"] > cursor:
            pieces.append((cursor, failed["start"], span.action.value, details))
        pieces.append((failed["start"], failed["end"], Action.PASSTHROUGH.value, {"reason": f"generation failed for {failed['error']}"}))
        cursor = failed["end"]
    if span.end / fps > cursor:
        pieces.append((cursor, span.end / fps, span.action.value, details))
    return [
        {"start": round(start, 3), "end": round(end, 3), "action": action, "frames": round((end - start) * fps), "sync_confidence": None, **extra}
        for start, end, action, extra in pieces
    ]


def _output_fps(source_fps: float, keep_source_fps: bool) -> float:
    if keep_source_fps and 24.0 <= source_fps <= 30.0:
        return source_fps
    return float(MODEL_FPS)


def _limit_span_length(spans: list[Span], limit: int) -> list[Span]:
    result = []
    for span in spans:
        pieces = math.ceil(len(span) / limit) if span.action is Action.GENERATED else 1
        edges = [span.start + round(k * len(span) / pieces) for k in range(pieces + 1)]
        result.extend(Span(a, b, span.action, dict(span.details)) for a, b in zip(edges, edges[1:]))
    return result


def _window_length(item: _Window, span: Span) -> int:
    return len(item.faces) if item.faces is not None else min(FRAMES_PER_WINDOW, span.end - item.start)


def _faces_for_scoring(faces: torch.Tensor) -> np.ndarray:
    """Generated faces (n, 3, R, R) in [-1, 1] -> SyncNet-sized RGB uint8 crops, small to keep."""
    images = ((faces.permute(0, 2, 3, 1) + 1) * 127.5).clamp(0, 255).round().to(torch.uint8).numpy()
    return np.stack([cv2.resize(image, (224, 224), interpolation=cv2.INTER_AREA) for image in images])


def _take(results: queue.Queue):
    item = results.get()
    if isinstance(item, BaseException):
        raise item
    return item


def _blend(original: np.ndarray, restored: np.ndarray, weight: float) -> np.ndarray:
    if weight >= 1.0:
        return restored
    return cv2.addWeighted(restored, float(weight), original, 1.0 - float(weight), 0.0)


def _remove_abandoned_job_dirs(parent: Path) -> None:
    """Job folders of processes that no longer run (killed mid-job) are removed."""
    for folder in parent.glob(f"{JOB_DIR_PREFIX}*"):
        pid = folder.name[len(JOB_DIR_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _write_json_atomically(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(data, indent=2))
    temporary.replace(path)
