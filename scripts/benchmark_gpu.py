"""The GPU serving path, measured: for LatentSync 1.5 (256 px) and 1.6 (512 px), DeepCache off and
on, the U-Net's seconds per window-step, GPU seconds per output second, achieved TFLOP/s, its
share of the dense half-precision GEMM rate measured in the same run, and peak VRAM, for

- the official execution model: eager float16, one window at a time, DeepCache through the
  DeepCache package's helper (as the official enables it), and
- ours: windows batched (`device.auto_windows_per_batch`), the U-Net compiled, DeepCache inside
  the U-Net;

then one whole job on a 60 s clip (real ffmpeg) with the U-Net's and the analysis pass's shares.

The U-Net and the VAE have the real architectures with random weights: no checkpoint and no
network are needed, only PyTorch and diffusers (and DeepCache for the official model's helper).
The whole job needs the full requirements and ffmpeg/ffprobe binaries (`--skip-job` leaves it out).

    python -m scripts.benchmark_gpu [--json bench/gpu.json] [--steps 20] [--skip-job]
"""

import argparse
import json
import math
import sys
import time
from contextlib import contextmanager, nullcontext
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

from latentsync.config import FRAMES_PER_WINDOW, MODEL_FPS, shared_dir
from latentsync.denoise import DEEPCACHE_INTERVAL, denoise_windows, denoising_loop, load_scheduler
from latentsync.device import auto_windows_per_batch
from latentsync.weights import load_manifest
from scripts.benchmark_unet import random_unet, report_figures

VERSIONS = load_manifest().versions  # "1.5": 256 px, "1.6": 512 px
OUTPUT_SECONDS_PER_WINDOW = FRAMES_PER_WINDOW / MODEL_FPS  # 0.64 s of video per window
SD_VAE_CONFIG = dict(  # stabilityai/sd-vae-ft-mse's architecture
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def dense_gemm_tflops(device: torch.device, dtype=torch.float16, size=8192, repeats=20) -> float:
    """The device's dense matrix-multiply rate in this run, on a size^3 GEMM."""
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    tick = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - tick) / 1e12


def window_inputs(unet, resolution: int, windows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random latents (n, 4, f, h, w), conditioning (n, 9, f, h, w) and audio (n*f, 50, 384) where the U-Net is."""
    generator = torch.Generator().manual_seed(0)
    latent = resolution // 8
    sample = torch.randn((windows, 13, FRAMES_PER_WINDOW, latent, latent), generator=generator).to(unet.device, unet.dtype)
    audio = torch.randn(windows * FRAMES_PER_WINDOW, 50, 384, generator=generator).to(unet.device, unet.dtype)
    return sample[:, :4].contiguous(), sample[:, 4:].contiguous(), audio


def flops_per_window_step(unet, resolution: int) -> tuple[float, float]:
    """FLOPs of one guided window-step (a batch of 2) through the whole U-Net, and through
    DeepCache's shallow path, by torch's FLOP counter."""
    latents, conditioning, audio = window_inputs(unet, resolution, 1)
    sample, audio = torch.cat([latents, conditioning], 1).repeat(2, 1, 1, 1, 1), audio.repeat(2, 1, 1)
    t = torch.tensor(500, device=unet.device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as full:
            features = unet(sample, t, encoder_hidden_states=audio, return_deep_features=True).deep_features
        with FlopCounterMode(display=False) as shallow:
            unet(sample, t, encoder_hidden_states=audio, deep_features=features)
    return full.get_total_flops(), shallow.get_total_flops()


@contextmanager
def deepcache_helper(unet, scheduler):
    """The official's DeepCache: the DeepCache package's helper wrapping the U-Net's blocks."""
    from DeepCache import DeepCacheSDHelper

    helper = DeepCacheSDHelper(pipe=SimpleNamespace(unet=unet, scheduler=scheduler))
    helper.set_params(cache_interval=DEEPCACHE_INTERVAL, cache_branch_id=0)
    helper.enable()
    try:
        yield
    finally:
        helper.disable()


@torch.no_grad()
def time_windows(unet, resolution: int, windows: int, steps: int, deepcache: str | None, repeats: int = 2) -> tuple[float, float]:
    """Seconds for `steps` guided DDIM steps over `windows` windows in one batch (the fastest of
    `repeats` after a warm-up), and the peak GPU memory (GB) meanwhile. `deepcache`: None,
    "official" (the helper) or "ours" (in the U-Net)."""
    latents, conditioning, audio = window_inputs(unet, resolution, windows)
    scheduler = load_scheduler()
    times = []
    on_gpu = unet.device.type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(repeats + 1):
        synchronize(unet.device)
        tick = time.perf_counter()
        with deepcache_helper(unet, scheduler) if deepcache == "official" else nullcontext():
            denoising_loop(unet, scheduler, latents, conditioning, audio, steps, 1.5, enable_deepcache=deepcache == "ours")
        synchronize(unet.device)
        times.append(time.perf_counter() - tick)
    return min(times[1:] or times), torch.cuda.max_memory_allocated() / 1e9 if on_gpu else 0.0


def figures(seconds: float, windows: int, steps: int, flops: tuple[float, float], deepcache: bool, dense: float, peak_gb: float) -> dict:
    full_steps = math.ceil(steps / DEEPCACHE_INTERVAL) if deepcache else steps
    total_flops = windows * (full_steps * flops[0] + (steps - full_steps) * flops[1])
    achieved = total_flops / seconds / 1e12
    return {
        "windows_per_call": windows,
        "seconds_per_window_step": round(seconds / (windows * steps), 4),
        "gpu_seconds_per_output_second": round(seconds / windows / OUTPUT_SECONDS_PER_WINDOW, 3),
        "achieved_tflops": round(achieved, 1),
        "utilisation_of_dense_rate": round(achieved / dense, 3),
        "peak_vram_gb": round(peak_gb, 2),
    }


def measure_version(unet, resolution: int, steps: int, dense: float, compile_unet: bool = True) -> dict:
    """Both execution models, DeepCache off and on, for one U-Net (compiled on the way)."""
    flops = flops_per_window_step(unet, resolution)
    rows = {"tflop_per_window_step": round(flops[0] / 1e12, 2), "tflop_per_cached_window_step": round(flops[1] / 1e12, 2)}
    for deepcache in (False, True):
        seconds, peak = time_windows(unet, resolution, 1, steps, "official" if deepcache else None)
        rows[f"official, deepcache {'on' if deepcache else 'off'}"] = figures(seconds, 1, steps, flops, deepcache, dense, peak)
    batch = auto_windows_per_batch(unet, resolution)
    if compile_unet:
        unet.compile(fullgraph=True)
    tick = time.perf_counter()
    time_windows(unet, resolution, batch, 2, "ours", repeats=0)  # compiles the full and the shallow graphs
    rows["compile_s"] = round(time.perf_counter() - tick, 1)
    for deepcache in (False, True):
        seconds, peak = time_windows(unet, resolution, batch, steps, "ours" if deepcache else None)
        rows[f"ours, deepcache {'on' if deepcache else 'off'}"] = figures(seconds, batch, steps, flops, deepcache, dense, peak)
    official, ours = rows["official, deepcache on"], rows["ours, deepcache on"]
    rows["ours_over_official_deepcache_on"] = round(ours["gpu_seconds_per_output_second"] / official["gpu_seconds_per_output_second"], 3)
    return rows


def whole_job(steps: int, seconds_per_window_step: float) -> dict:
    """A 60 s clip (demo1 looped) through the whole pipeline with the full-size 1.6 U-Net and SD VAE
    (random weights), compiled and batched: its wall time against the time in the model (U-Net and
    VAE, measured around each call) and in the U-Net (window-steps x the measured step time)."""
    import tempfile
    from pathlib import Path

    from diffusers import AutoencoderKL

    from latentsync.audio import AudioEncoder
    from latentsync.denoise import load_training_mask
    from latentsync.face.detect import create_detector
    from latentsync.job import Models
    from latentsync.options import LipsyncOptions
    from latentsync.pipeline import LipsyncPipeline
    from tests.media import ffmpeg

    assets, reference = shared_dir() / "assets", shared_dir() / "reference"
    unet = random_unet(VERSIONS["1.6"].unet_config, torch.float16, torch.device("cuda"))
    vae = AutoencoderKL(**SD_VAE_CONFIG).to("cuda", torch.float16).eval().requires_grad_(False)
    model_seconds = []

    def timed_denoiser(*args, **kwargs):
        torch.cuda.synchronize()
        tick = time.perf_counter()
        generated = denoise_windows(*args, **kwargs)
        torch.cuda.synchronize()
        model_seconds.append(time.perf_counter() - tick)
        return generated

    models = Models(
        unet=unet, vae=vae, scheduler=load_scheduler(), audio_encoder=AudioEncoder(reference / "whisper_tiny_random.pt", device="cuda"),
        face_detector=create_detector("auto", device="cuda"), mask=load_training_mask(assets / "mask.png", 512), resolution=512,
        denoiser=timed_denoiser, windows_per_batch=auto_windows_per_batch(unet, 512),
    )
    pipeline = LipsyncPipeline(models, version="1.6 (random weights)", compile_unet=True)
    time_windows(unet, 512, pipeline.models.windows_per_batch, 2, "ours", repeats=0)  # compile before the clock starts
    with tempfile.TemporaryDirectory() as folder:
        video, audio = Path(folder) / "video60.mp4", Path(folder) / "audio60.wav"
        ffmpeg("-stream_loop", 5, "-i", assets / "demo1_video.mp4", "-t", 60, "-c:v", "libx264", "-crf", 18, "-an", video)
        ffmpeg("-stream_loop", 6, "-i", assets / "demo1_audio.wav", "-t", 60, audio)
        tick = time.perf_counter()
        report = pipeline(video, audio, Path(folder) / "out.mp4", LipsyncOptions(num_inference_steps=steps, enable_deepcache=True)).report
        wall = time.perf_counter() - tick
    unet_s = report.unet_window_steps * seconds_per_window_step
    timings = report.timings
    return {
        "wall_s": round(wall, 1), "frames": report.frames, "frames_generated": report.frames_generated,
        "windows_per_batch": pipeline.models.windows_per_batch, "model_s": round(sum(model_seconds), 1), "unet_s": round(unet_s, 1),
        "whole_job_over_model": round(wall / sum(model_seconds), 2) if model_seconds else None,
        "whole_job_over_unet": round(wall / unet_s, 2) if unet_s else None,
        "analysis_share": round((timings["audio_s"] + timings["face_detection_s"]) / wall, 3), "timings": timings,
        "note": "the U-Net was compiled for full batches before the clock started; other shapes compile during the job",
    }


def smoke() -> int:
    """The measurements' code path on the CPU with the tiny reference U-Net, two steps."""
    from latentsync.config import load_yaml
    from latentsync.models.unet import UNet3DConditionModel

    reference = shared_dir() / "reference"
    unet = UNet3DConditionModel.from_checkpoint(load_yaml(reference / "unet_tiny.yaml")["model"], reference / "unet_tiny.pt")
    device = torch.device("cpu")
    rows = measure_version(unet, 64, steps=2, dense=dense_gemm_tflops(device, torch.float32, size=512, repeats=2), compile_unet=False)
    print(json.dumps({"smoke": rows}, indent=2))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--versions", nargs="*", default=list(VERSIONS), choices=list(VERSIONS))
    parser.add_argument("--skip-job", action="store_true", help="leave out the whole job on a 60 s clip")
    parser.add_argument("--json", default=None, help="write the figures here")
    parser.add_argument("--smoke", action="store_true", help="check this script on the CPU with the tiny reference U-Net (no meaningful figures)")
    args = parser.parse_args(argv)
    if args.smoke:
        return smoke()
    if not torch.cuda.is_available():
        print("error: no CUDA GPU; these figures are measured on one", file=sys.stderr)
        return 1
    device = torch.device("cuda")
    dense = dense_gemm_tflops(device)
    results = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "dense_fp16_gemm_tflops": round(dense, 1), "steps": args.steps}
    for version in args.versions:
        unet = random_unet(VERSIONS[version].unet_config, torch.float16, device)
        results[version] = measure_version(unet, VERSIONS[version].resolution, args.steps, dense)
        print(json.dumps({version: results[version]}, indent=2), flush=True)
        del unet
        torch.cuda.empty_cache()
    if not args.skip_job and "1.6" in results:
        results["whole_job_60s_1.6"] = whole_job(args.steps, results["1.6"]["ours, deepcache on"]["seconds_per_window_step"])
    return report_figures(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
