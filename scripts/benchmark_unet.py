"""Time the full-size LatentSync U-Net: one denoising step of one 16-frame window with
classifier-free guidance (a batch of 2), random weights. Optionally a whole window of steps with
and without DeepCache.

    python -m scripts.benchmark_unet --resolution 256 --json unet.json
    python -m scripts.benchmark_unet --resolution 256 --window-steps 20   # DeepCache saving
"""

import argparse
import json
from contextlib import nullcontext
import resource
import sys
import time

import torch

from latentsync.config import FRAMES_PER_WINDOW, load_yaml
from latentsync.denoise import deepcache, load_scheduler
from latentsync.models.unet import UNet3DConditionModel
from latentsync.weights import load_manifest


def random_unet(config_path, dtype, device) -> UNet3DConditionModel:
    """The U-Net of a config with small random weights (no checkpoint needed)."""
    with torch.device("meta"):
        unet = UNet3DConditionModel.from_config(load_yaml(config_path)["model"])
    unet = unet.to_empty(device=device)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for tensor in list(unet.parameters()) + list(unet.buffers()):
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.02)
    return unet.to(dtype).eval().requires_grad_(False)


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2


@torch.no_grad()
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--resolution", type=int, default=256, help="face size in pixels (latents are 1/8)")
    parser.add_argument("--config", default=None, help="U-Net config (default: 1.5's for 256 px, 1.6's for 512 px)")
    parser.add_argument("--checkpoint", default=None, help="load these weights ({'state_dict': ...}) instead of random ones")
    parser.add_argument("--dtype", choices=["float32", "float16", "bfloat16"], default="float32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--window-steps", type=int, default=0, help="also time a whole window of N steps, with and without DeepCache")
    parser.add_argument("--deepcache-step", action="store_true", help="also time one cached (shallow) step and derive the 20-step saving")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype, device = getattr(torch, args.dtype), torch.device(args.device)
    config = args.config or load_manifest().versions["1.5" if args.resolution <= 256 else "1.6"].unet_config
    latent = args.resolution // 8

    started = time.perf_counter()
    unet = random_unet(config, dtype, device)
    if args.checkpoint:
        unet.load_state_dict(torch.load(args.checkpoint, map_location=device, weights_only=True)["state_dict"], strict=True)
    results = {
        "config": str(config),
        "resolution": args.resolution,
        "dtype": args.dtype,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "build_s": round(time.perf_counter() - started, 1),
    }
    generator = torch.Generator().manual_seed(1)
    sample = torch.randn(2, 13, FRAMES_PER_WINDOW, latent, latent, generator=generator).to(device, dtype)
    audio = torch.randn(2 * FRAMES_PER_WINDOW, 50, 384, generator=generator).to(device, dtype)

    def step(t=500):
        out = unet(sample, torch.tensor(t), encoder_hidden_states=audio).sample
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    step()  # warm-up
    times = []
    for _ in range(args.repeats):
        tick = time.perf_counter()
        step()
        times.append(time.perf_counter() - tick)
    results["seconds_per_step"] = round(min(times), 2)
    results["seconds_per_step_all"] = [round(t, 2) for t in times]

    if args.deepcache_step:
        # A step between DeepCache refreshes runs only the shallowest branch of the U-Net.
        scheduler = load_scheduler()
        scheduler.set_timesteps(20)
        with deepcache(unet, scheduler):
            step(int(scheduler.timesteps[0]))  # a full step fills the cache
            tick = time.perf_counter()
            step(int(scheduler.timesteps[1]))
            shallow = time.perf_counter() - tick
        full = results["seconds_per_step"]
        results["seconds_per_cached_step"] = round(shallow, 2)
        refreshes = -(-20 // 3)  # interval 3: steps 0, 3, ..., 18
        results["deepcache_saving_20_steps"] = round(1 - (refreshes * full + (20 - refreshes) * shallow) / (20 * full), 3)
    if args.window_steps:
        # A real DDIM loop over the window (guidance 1.5), so DeepCache's error accumulates as it would.
        outputs = {}
        for cached in (False, True):
            scheduler = load_scheduler()
            scheduler.set_timesteps(args.window_steps)
            latents, conditions = sample[:1, :4], sample[:1, 4:]
            tick = time.perf_counter()
            with deepcache(unet, scheduler) if cached else nullcontext():
                for t in scheduler.timesteps:
                    unconditional, conditional = unet(torch.cat([latents, conditions], 1).repeat(2, 1, 1, 1, 1), t, encoder_hidden_states=audio).sample.chunk(2)
                    latents = scheduler.step(unconditional + 1.5 * (conditional - unconditional), t, latents).prev_sample
            if device.type == "cuda":
                torch.cuda.synchronize()
            results[f"window_s_{'deepcache' if cached else 'plain'}"] = round(time.perf_counter() - tick, 1)
            outputs[cached] = latents.float()
        results["deepcache_saving"] = round(1 - results["window_s_deepcache"] / results["window_s_plain"], 3)
        plain, cached = outputs[False], outputs[True]
        results["deepcache_relative_difference"] = round(((plain - cached).norm() / plain.norm()).item(), 4)
    results["peak_rss_gb"] = round(peak_rss_gb(), 2)
    if device.type == "cuda":
        results["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    print(json.dumps(results, indent=2))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
