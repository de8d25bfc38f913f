"""Helpers for end-to-end tests: the pipeline on tiny random-weight models, clips made with the
ffmpeg binary, and frame comparisons."""

import dataclasses
from pathlib import Path

import numpy as np
import torch
import yaml

from latentsync.config import load_yaml
from latentsync.media.decode import read_frames
from latentsync.models.unet import UNet3DConditionModel
from latentsync.media.ffmpeg import run_ffmpeg as ffmpeg  # our own test media: trusted commands
from latentsync.pipeline import LipsyncPipeline
from latentsync.sync import SyncNet
from latentsync.weights import ModelFiles
from tests.conftest import ASSETS, REFERENCE

TINY_RESOLUTION = 64  # the tiny U-Net's sample_size 8 x the VAE's 8


def tiny_files() -> ModelFiles:
    """The reference's tiny random models, laid out as a model version."""
    return ModelFiles(
        version="tiny",
        unet_config=REFERENCE / "unet_tiny.yaml",
        resolution=TINY_RESOLUTION,
        unet_checkpoint=REFERENCE / "unet_tiny.pt",
        whisper=REFERENCE / "whisper_tiny_random.pt",
        vae_dir=REFERENCE / "vae_tiny",
        mask=ASSETS / "mask.png",
        insightface_root=None,
        syncnet=None,
    )


def small_unet_files(folder: Path) -> ModelFiles:
    """The tiny models with a still smaller U-Net (two blocks of one layer, the same kinds of
    blocks, attention and motion modules; random weights), written into `folder`: for what traces
    or compiles the U-Net, where the tiny model's 20 CPU seconds a graph add up."""
    config = load_yaml(REFERENCE / "unet_tiny.yaml")
    config["model"].update(block_out_channels=[32, 32], down_block_types=["CrossAttnDownBlock3D", "DownBlock3D"],
                           up_block_types=["UpBlock3D", "CrossAttnUpBlock3D"], layers_per_block=1, motion_module_resolutions=[1, 2])
    (folder / "unet_small.yaml").write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    torch.save({"state_dict": UNet3DConditionModel.from_config(config["model"]).state_dict()}, folder / "unet_small.pt")
    return dataclasses.replace(tiny_files(), unet_config=folder / "unet_small.yaml", unet_checkpoint=folder / "unet_small.pt")


def tiny_pipeline(device="cpu", **settings) -> LipsyncPipeline:
    """The whole pipeline with the tiny random models and MediaPipe faces, on the CPU unless told;
    `settings` (sync_scorer, cache, denoiser, precision, windows_per_batch...) go to
    `LipsyncPipeline.from_files`."""
    return LipsyncPipeline.from_files(tiny_files(), device=device, face_detector="mediapipe", **settings)


def small_clip(path: Path, seconds: float = 4.0, start: float = 0.0, size: str = "540:960", source: str = "demo1_video.mp4") -> Path:
    """A shorter, smaller cut of a demo clip (demo1 unless told; video and its own audio), fast to process."""
    ffmpeg("-ss", start, "-i", ASSETS / source, "-t", seconds, "-vf", f"scale={size}", "-c:v", "libx264", "-crf", 12, "-c:a", "aac", path)
    return path


def speech(path: Path, seconds: float, start: float = 0.0) -> Path:
    ffmpeg("-ss", start, "-i", ASSETS / "demo1_audio.wav", "-t", seconds, path)
    return path


def frames(path: Path, fps: float = 25.0) -> np.ndarray:
    return np.stack([frame.copy() for frame in read_frames(path, fps)])


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape, (a.shape, b.shape)
    # a clip frame by frame, in integers: a float64 copy of a whole clip is gigabytes and seconds
    pairs = zip(a, b) if a.ndim == 4 else [(a, b)]
    squared = sum(int(np.sum((x.astype(np.int32) - y) ** 2, dtype=np.int64)) for x, y in pairs)
    mse = squared / a.size
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def random_syncnet_weights(path: Path) -> Path:
    """Random SyncNet weights (seed 0) saved as syncnet_v2.model is: without num_batches_tracked."""
    torch.manual_seed(0)
    torch.save({k: v for k, v in SyncNet().state_dict().items() if not k.endswith("num_batches_tracked")}, path)
    return path
