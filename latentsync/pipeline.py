"""The lip-sync pipeline: a talking-head video and an audio track in, the same video out with only
the mouth re-made to speak that audio.

    pipeline = LipsyncPipeline.from_files(ensure_weights("1.6"))
    result = pipeline("talk.mp4", "dub.wav", "out.mp4", LipsyncOptions(enable_deepcache=True))
    preview = pipeline.plan("talk.mp4", None, segments=[{"start": 2.0, "end": 3.5, "audio": "name.wav"}])

A job, step by step, each step in a module of its own:

1. Audio: decode it, compute its Whisper features, find its pauses.     media.decode, audio (media.splice: segments)
2. Faces and plan, as the video is decoded: the faces on every frame,   analysis, face.detect, face.track,
   the speaker, what each output frame shows and whether it is           planner (segments)
   regenerated, and the speaker's face cropped for the model.
3. Render, while the analysis goes on: denoise the windows, paste the   render, windows, denoise,
   mouths back, encode.                                                  face.align, media.encode
4. Report: what was regenerated and why.                                 report

`plan` runs steps 1-2 only, without cropping, and prices the plan (`latentsync.estimate`): no
model runs, and the plan is the one the job builds.

Frames stream through ffmpeg pipes, so the whole video is never held in memory, and the model
starts on the first windows a few seconds into the job, whatever the video's length.
"""

import json
import threading
import time
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path

import numpy as np
import torch

from .analysis import Analysis, plan_only
from .audio import AudioEncoder, frame_chunks, silent_spans
from .cache import ResultCache, cache_key, place
from .compiled_unet import CompiledUNet
from .config import AUDIO_SAMPLE_RATE, FRAMES_PER_WINDOW
from .denoise import denoise_windows, load_scheduler, load_training_mask, load_unet, load_vae, unet_device_dtype
from .device import auto_windows_per_batch, default_device, describe_device, model_dtype, to_device, use_cpu_for_frames
from .face.detect import create_detector
from .files import job_folder, sha256_of, write_json_atomically
from .job import Job, Models
from .media.decode import load_audio
from .media.probe import MediaInfo, probe, probe_video
from .media.splice import output_format, segment_audio_role, spliced_audio, write_wav
from .options import LipsyncOptions
from .planner import PlanBuilder, frames_covering, output_fps
from .progress import ProgressCallback
from .render import Renderer
from .report import JobReport, PlanPreview, build_preview, build_report, log_spans
from .segments import Segment, check_segments, parse_segments, segment_ranges, with_paths
from .sync import SyncNetScorer
from .weights import weights_identity
from .windows import ModelError


@dataclass
class LipsyncResult:
    output_path: Path
    report: JobReport
    report_path: Path


@dataclass
class Prepared:
    """Step 1 of a job, what `__call__` renders and `plan` shows: the job, the audio its mouths
    speak and the plan builder its analysis fills."""

    job: Job
    samples: np.ndarray  # 16 kHz mono (with segments: spliced into the source's)
    features: object  # their Whisper features (`audio.AudioFeatures`)
    builder: PlanBuilder


class _NotKept(Exception):
    """A result the cache must not keep (it has failed windows), carried out of the cache's producer."""

    def __init__(self, report: JobReport):
        super().__init__("not kept")
        self.report = report


class LipsyncPipeline:
    """The models are passed in (`latentsync.job.Models`), so tests and servers choose them and
    where they live.

    Args:
        models: the model parts, the denoiser (`latentsync.denoise.denoise_windows` or the same
            signature), the windows per U-Net call and the lock that keeps one batch at a time on
            the device (versions share one).
        version: the model version, for reports and result-cache keys.
        cache: optional `latentsync.cache.ResultCache` answering repeated requests from disk.
        compile_unet: `torch.compile` the U-Net for full windows in batches of `windows_per_batch`
            (`latentsync.compiled_unet`; `self_test` makes its graphs); `compile_backend` is
            torch.compile's backend.
        max_duration_s: the most seconds of audio or video a job decodes, whatever the files'
            headers declare (a service's limit); None takes any length.
        model_identity: what else determines the output besides `version`, for result-cache keys
            (`from_files` gives the weights' sha256, precision, device type and face detector).
    """

    def __init__(self, models: Models, version: str = "", cache: ResultCache | None = None, compile_unet: bool = False,
                 compile_backend: str = "inductor", max_duration_s: float | None = None, model_identity: dict | None = None):
        self.version, self.cache, self.max_duration_s = version, cache, max_duration_s
        self.compile_unet, self.compile_backend = compile_unet, compile_backend
        self.model_identity = {**(model_identity or {}), "version": version}
        self.models = replace(models, unet=CompiledUNet(models.unet, models.windows_per_batch, compile_backend)) if compile_unet else models

    @classmethod
    def from_files(cls, files, device=None, face_detector="auto", unet=None, sync_scorer=None, precision=None, denoiser=denoise_windows,
                   windows_per_batch: int | None = None, **settings) -> "LipsyncPipeline":
        """Load every component from weight files (a `latentsync.weights.ModelFiles`).

        `device` defaults to CUDA when there is one; `precision` ("float32", "float16",
        "bfloat16") to float16 on recent GPUs and float32 elsewhere. `unet` may be passed in already
        loaded (to switch versions keeping the rest); the SyncNet scorer is loaded from
        `files.syncnet` when that file exists and none is given. `windows_per_batch`: windows per
        U-Net call (the same output as one at a time); None: 1 on the CPU, on CUDA what fits
        (`latentsync.device.auto_windows_per_batch`). `settings` (cache, compile_unet,
        max_duration_s) go to the constructor.
        """
        device = torch.device(device) if device is not None else default_device()
        dtype = model_dtype(device, precision)
        use_cpu_for_frames(device)
        if sync_scorer is None and files.syncnet and Path(files.syncnet).exists():
            sync_scorer = SyncNetScorer(files.syncnet, device=device)
        unet = unet or load_unet(files, device, dtype)
        detector = create_detector(face_detector, model_root=files.insightface_root, device=str(device))  # "auto" may fall back
        identity = {"precision": str(dtype), "device": device.type, "face_detector": type(detector).__name__}
        if settings.get("cache") is not None:  # hashing hand-laid weights is worth it only for a cache
            identity["weights"] = weights_identity(files)
        models = Models(
            unet=unet, vae=load_vae(files.vae_dir, device=device, dtype=dtype), scheduler=load_scheduler(),
            audio_encoder=AudioEncoder(files.whisper, device=device), face_detector=detector,
            mask=load_training_mask(files.mask, files.resolution), resolution=files.resolution, denoiser=denoiser,
            windows_per_batch=windows_per_batch or auto_windows_per_batch(unet, files.resolution), sync_scorer=sync_scorer,
        )
        return cls(models, version=files.version, model_identity=identity, **settings)

    def for_version(self, files, unet) -> "LipsyncPipeline":
        """A pipeline for another model version: its own U-Net, resolution, mask, scheduler and
        batch size, sharing this one's VAE, audio encoder, face detector, sync scorer, lock, cache
        and settings."""
        models = replace(
            self.models, unet=unet, scheduler=load_scheduler(), mask=load_training_mask(files.mask, files.resolution),
            resolution=files.resolution, windows_per_batch=auto_windows_per_batch(unet, files.resolution),
        )
        identity = {**self.model_identity, "weights": weights_identity(files)} if self.cache is not None else self.model_identity
        return LipsyncPipeline(models, version=files.version, cache=self.cache, compile_unet=self.compile_unet,
                               compile_backend=self.compile_backend, max_duration_s=self.max_duration_s, model_identity=identity)

    def self_test(self) -> None:
        """Prove the device and the models before any job: make the compiled U-Net's graphs (when
        compiling), then run one window of random faces, 2 steps with DeepCache on (a full and a
        shallow step), and check what comes out. Raises `ModelError` naming the device."""
        models = self.models
        device, dtype = unet_device_dtype(models.unet)
        rng = torch.Generator().manual_seed(0)
        faces = torch.randint(0, 256, (1, FRAMES_PER_WINDOW, 3, models.resolution, models.resolution), generator=rng, dtype=torch.uint8)
        audio = frame_chunks(models.audio_encoder.features(np.zeros(AUDIO_SAMPLE_RATE, np.float32)), 0, FRAMES_PER_WINDOW)[None]
        try:
            with models.model_lock:
                if isinstance(models.unet, CompiledUNet):
                    models.unet.warm_up(models.resolution // 8)
                out = models.denoiser(models.unet, models.vae, models.scheduler, to_device(faces, device), to_device(audio, device, dtype), models.mask,
                                      num_inference_steps=2, enable_deepcache=True, generator=rng)
            if tuple(out.shape) != tuple(faces.shape):
                raise ValueError(f"it returned faces of shape {tuple(out.shape)} for {tuple(faces.shape)}")
            if not torch.isfinite(out).all():
                raise FloatingPointError("it returned non-finite faces")
        except Exception as error:
            raise ModelError(f"The model self-test (one window, version {self.version}) failed on {describe_device(device, dtype)}: "
                             f"{type(error).__name__}: {error}") from error

    def __call__(self, video_path, audio_path, output_path, options: LipsyncOptions | None = None, report_path=None, temp_dir=None,
                 progress: ProgressCallback | None = None, cancel: threading.Event | None = None, cache_scope: str = "",
                 segments=None) -> LipsyncResult:
        """Lip-sync `video_path` to `audio_path` and write the mp4 to `output_path`.

        The JSON report goes to `report_path` (default: `<output without .mp4>.report.json`).
        Intermediate files live in a private folder under `temp_dir`, removed afterwards. With a
        result cache, a repeated request is answered from the cache without running the model.
        `progress` hears how far the job is; setting `cancel` stops it (see `latentsync.progress`).
        A cache hit is served only within the same `cache_scope` (a server's visitor, say), so one
        caller cannot learn from it what another ran. `segments` (see `latentsync.segments`:
        `Segment`s, dicts or JSON text, audio as file paths) re-make only those time ranges;
        `audio_path` may then be None when every segment has an audio of its own.
        """
        video_path, output_path = Path(video_path), Path(output_path)
        audio_path, segments = self._job_audio(audio_path, segments)
        options = options or LipsyncOptions()
        report_path = Path(report_path) if report_path else output_path.with_suffix(".report.json")
        run = partial(self._run, video_path, audio_path, options=options, segments=segments, temp_dir=temp_dir, progress=progress, cancel=cancel)
        report = run(output_path) if self.cache is None else self._run_cached(run, video_path, audio_path, options, output_path, cache_scope, segments)
        write_json_atomically(report_path, report.to_dict())
        return LipsyncResult(output_path, report, report_path)

    def plan(self, video_path, audio_path=None, options: LipsyncOptions | None = None, segments=None,
             progress: ProgressCallback | None = None, cancel: threading.Event | None = None) -> PlanPreview:
        """What `__call__` would do with the same arguments, without running the model: the
        analysis (probe, audio, faces) and the plan, per span what happens and why, the windows
        to denoise and their estimated GPU seconds (`latentsync.estimate`). Its spans are the
        ones the job's report will have, unless rendering changes its mind (a window out of
        memory, a span passed through for low sync)."""
        audio_path, segments = self._job_audio(audio_path, segments)
        options = options or LipsyncOptions()
        with job_folder() as work_dir:
            prepared = self._prepare(Path(video_path), audio_path, options, segments, work_dir, progress, cancel)
            plan = plan_only(prepared.job, self.models.face_detector, prepared.builder, max_seconds=self.max_duration_s)
        return build_preview(plan, options, self.version, segments)

    @staticmethod
    def _job_audio(audio_path, segments) -> tuple[Path | None, list[Segment]]:
        segments = with_paths(parse_segments(segments)) if segments else []  # an empty list from code: none
        if audio_path is None and not segments:
            raise ValueError("An audio input is needed (or segments that each have an audio of their own).")
        return (Path(audio_path) if audio_path is not None else None), segments

    def _run_cached(self, run, video_path, audio_path, options, output_path, scope: str, segments: list[Segment]) -> JobReport:
        """`run` the job into the result cache (unless it holds the result already), then copy it
        out. A result with failed windows is handed over once and not kept: a repeat runs again."""

        def produce(folder: Path) -> None:
            report = run(folder / "output.mp4")
            if report.failed_windows:
                place(folder / "output.mp4", output_path)
                raise _NotKept(report)
            write_json_atomically(folder / "report.json", report.to_dict())

        try:
            params = asdict(options) | ({"segments": [_segment_key(segment) for segment in segments]} if segments else {})
            cached = self.cache.get_or_create(cache_key(video_path, audio_path, params, self.model_identity, scope), produce)
        except _NotKept as degraded:
            return degraded.report
        place(cached.dir / "output.mp4", output_path)
        report = JobReport.from_dict(json.loads((cached.dir / "report.json").read_text()))
        report.cache = "hit" if cached.hit else "miss"
        return report

    def _run(self, video_path, audio_path, output_path, options, segments, temp_dir, progress, cancel) -> JobReport:
        """The job, step by step."""
        started = time.perf_counter()
        models, timings = self.models, {}
        with job_folder(temp_dir) as work_dir:
            # 1. Audio: 16 kHz samples (with segments: spliced into the source's), their Whisper features, pauses.
            prepared = self._prepare(video_path, audio_path, options, segments, work_dir, progress, cancel)
            job = prepared.job
            if segments:  # the output's audio: the source's, each segment's audio in its span, at the source's rate
                rate, channels = output_format(video_path, job.info, audio_path, segments)
                spliced, _ = spliced_audio(video_path, job.info, audio_path, segments, rate, channels, self.max_duration_s)
                job = replace(job, audio_path=write_wav(work_dir / "audio.wav", spliced, rate))
            timings["audio_s"] = time.perf_counter() - started

            # 2. Faces and plan, on a thread of their own as the video is decoded: the plan is final
            #    frame by frame, a few frames (the first seconds with faces) behind the analysis.
            analysis = Analysis(job, models, prepared.builder, windows_ahead=models.windows_per_batch + 1, max_seconds=self.max_duration_s)

            # 3. Render: denoise, paste back and encode in one pass, the windows as the analysis hands them over.
            tick = time.perf_counter()
            rendered = Renderer(models, job, analysis, prepared.features, prepared.samples).run(output_path)
            timings["face_detection_s"] = analysis.seconds  # overlapping the render
            timings["render_s"] = time.perf_counter() - tick
        timings["total_s"] = time.perf_counter() - started

        # 4. Report.
        report = build_report(analysis.plan, rendered, options, self.version, timings, segments)
        log_spans(report)
        return report

    def _prepare(self, video_path: Path, audio_path: Path | None, options: LipsyncOptions, segments: list[Segment], work_dir: Path,
                 progress, cancel) -> Prepared:
        """Step 1: the probe, the segments checked against the media, the audio the mouths speak,
        its features and pauses, and the plan builder (with segments: only theirs to regenerate)."""
        info = probe_video(video_path)
        fps = output_fps(info.fps, options.keep_source_fps)
        ranges = None
        if segments:  # the source's own audio, each segment's audio in its span
            self._check_segments(segments, info, audio_path)
            samples, speech_seconds = spliced_audio(video_path, info, audio_path, segments, AUDIO_SAMPLE_RATE, max_seconds=self.max_duration_s)
            ranges = segment_ranges(segments, speech_seconds, fps, frames_covering(info.duration, fps))
        else:
            samples = load_audio(audio_path, AUDIO_SAMPLE_RATE, max_seconds=self.max_duration_s)
        features = self.models.audio_encoder.features(samples)
        pauses = silent_spans(samples, min_silence_s=options.min_silence_s) if options.skip_silence else []
        job = Job(video_path, audio_path, options, info, fps, work_dir, progress, cancel)
        builder = PlanBuilder(len(samples) / AUDIO_SAMPLE_RATE, pauses, fps, options, self.models.resolution, segments=ranges)
        return Prepared(job, samples, features, builder)

    def _check_segments(self, segments: list[Segment], info: MediaInfo, audio_path) -> None:
        """The segments against the media: inside the video, their audio long enough to start."""
        own = [probe(s.audio, segment_audio_role(i)).audio_duration if s.own_audio else None for i, s in enumerate(segments)]
        job = probe(audio_path, "audio").audio_duration if audio_path is not None and any(not s.own_audio for s in segments) else None
        check_segments(segments, info.duration, own, job)


def _segment_key(segment: Segment) -> dict:
    """A segment as the result cache keys it: its own audio by content, not by file name."""
    return segment.to_dict() | ({"audio": sha256_of(segment.audio)} if segment.own_audio else {})
