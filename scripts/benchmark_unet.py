"""Time the full-size LatentSync U-Net: one denoising step of one 16-frame window with
classifier-free guidance (a batch of 2), random weights. Optionally DeepCache's shallow step and
a whole window of steps with and without DeepCache.

    python -m scripts.benchmark_unet --resolution 256 --json unet.json
    python -m scripts.benchmark_unet --resolution 256 --window-steps 20   # DeepCache saving

`scripts/benchmark_gpu.py` measures the GPU serving path.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from latentsync.config import FRAMES_PER_WINDOW, load_yaml
from latentsync.denoise import DEEPCACHE_INTERVAL, denoising_loop, load_scheduler
from latentsync.device import peak_rss_gb
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


def report_figures(results: dict, json_path=None) -> int:
    """Print the figures, and write them to `json_path` when given; 0 for the exit status."""
    print(json.dumps(results, indent=2))
    if json_path:
        Path(json_path).parent.mkdir(parents=True, exist_ok=True)
        Path(json_path).write_text(json.dumps(results, indent=2))
    return 0


class StepTimer:
    """Times guided U-Net steps on one window of random inputs."""

    def __init__(self, unet, resolution: int):
        self.unet = unet
        dtype, self.device = unet.dtype, unet.device
        generator = torch.Generator().manual_seed(1)
        latent = resolution // 8
        self.sample = torch.randn(2, 13, FRAMES_PER_WINDOW, latent, latent, generator=generator).to(self.device, dtype)
        self.audio = torch.randn(2 * FRAMES_PER_WINDOW, 50, 384, generator=generator).to(self.device, dtype)

    @torch.no_grad()
    def step(self, t: int = 500, **deepcache) -> tuple[float, torch.Tensor | None]:
        """Seconds for one step (`deepcache`: the U-Net's deep_features/return_deep_features), and the deep features."""
        tick = time.perf_counter()
        output = self.unet(self.sample, torch.tensor(t, device=self.device), encoder_hidden_states=self.audio, **deepcache)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - tick, output.deep_features

    def deepcache_step(self, steps: int = 20) -> dict:
        """A step between DeepCache refreshes runs only the shallowest path; the saving over `steps`."""
        full, features = self.step(500, return_deep_features=True)
        shallow, _ = self.step(480, deep_features=features)
        refreshes = -(-steps // DEEPCACHE_INTERVAL)  # steps 0, 3, ..., 18
        saving = 1 - (refreshes * full + (steps - refreshes) * shallow) / (steps * full)
        return {"seconds_per_cached_step": round(shallow, 2), f"deepcache_saving_{steps}_steps": round(saving, 3)}

    @torch.no_grad()
    def window(self, steps: int) -> dict:
        """A real DDIM loop over the window (guidance 1.5), with and without DeepCache, so that
        DeepCache's error accumulates as it would."""
        results, outputs = {}, {}
        latents, conditioning, audio = self.sample[:1, :4], self.sample[:1, 4:], self.audio[:FRAMES_PER_WINDOW]
        for cached in (False, True):
            tick = time.perf_counter()
            outputs[cached] = denoising_loop(self.unet, load_scheduler(), latents, conditioning, audio, steps, 1.5, enable_deepcache=cached).float()
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            results[f"window_s_{'deepcache' if cached else 'plain'}"] = round(time.perf_counter() - tick, 1)
        results["deepcache_saving"] = round(1 - results["window_s_deepcache"] / results["window_s_plain"], 3)
        results["deepcache_relative_difference"] = round(((outputs[False] - outputs[True]).norm() / outputs[False].norm()).item(), 4)
        return results


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
    config = args.config or load_manifest().versions["1.5" if args.resolution <= 256 else "1.6"].unet_config

    started = time.perf_counter()
    unet = random_unet(config, getattr(torch, args.dtype), torch.device(args.device))
    if args.checkpoint:
        unet.load_state_dict(torch.load(args.checkpoint, map_location=args.device, weights_only=True)["state_dict"], strict=True)
    results = {"config": str(config), "resolution": args.resolution, "dtype": args.dtype, "device": args.device, "threads": torch.get_num_threads()}
    results["build_s"] = round(time.perf_counter() - started, 1)
    timer = StepTimer(unet, args.resolution)
    timer.step()  # warm-up
    times = [timer.step()[0] for _ in range(args.repeats)]
    results.update(seconds_per_step=round(min(times), 2), seconds_per_step_all=[round(t, 2) for t in times])
    if args.deepcache_step:
        results.update(timer.deepcache_step())
    if args.window_steps:
        results.update(timer.window(args.window_steps))
    results["peak_rss_gb"] = round(peak_rss_gb(), 2)
    if args.device.startswith("cuda"):
        results["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 2)
    return report_figures(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
