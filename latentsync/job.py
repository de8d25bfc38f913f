"""What a job runs on and what it is: the loaded models (`Models`, shared by every job of a
version), and one job's inputs, options and state (`Job`), passed together instead of one by one
through the job's steps."""

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from .media.probe import MediaInfo
from .options import LipsyncOptions
from .progress import ProgressCallback


@dataclass
class Models:
    """The model parts of one version, and how they are run.

    `denoiser` is `latentsync.denoise.denoise_windows` or a function of the same signature;
    `windows_per_batch` windows share a U-Net call; `model_lock` keeps one batch at a time on the
    device (the versions of a server share it, and the VAE)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object  # diffusers DDIMScheduler: per-batch state, hence the lock
    audio_encoder: object  # audio.AudioEncoder
    face_detector: object  # face.detect.FaceDetector
    mask: torch.Tensor  # the training mask at `resolution`
    resolution: int  # face crop size the U-Net works at: 256 for 1.5, 512 for 1.6
    denoiser: Callable[..., torch.Tensor]
    windows_per_batch: int
    sync_scorer: object | None = None  # sync.SyncNetScorer
    model_lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class Job:
    """One job: its files, options, the caller's progress callback and cancel event, what the probe
    found in the video, the output frame rate and the job's private work folder."""

    video_path: Path
    audio_path: Path | None  # the audio the output carries (with segments: the source's, theirs spliced in; None in a plan without a job audio)
    options: LipsyncOptions
    info: MediaInfo
    fps: float
    work_dir: Path
    progress: ProgressCallback | None = None
    cancel: threading.Event | None = None
