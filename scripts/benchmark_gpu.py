"""The GPU serving path, measured in one run. A GPU is lent for minutes, so every figure comes
from one command, each section in a process of its own (one version's compiled graphs never meet
another's), each written to the JSON as soon as it exists; a section that fails is recorded with
its error and the others still run.

    python -m scripts.benchmark_gpu [--quick] [--versions 1.5 1.6] [--steps 20] [--json bench/gpu.json]
    python -m scripts.benchmark_gpu --smoke       # every section on the CPU with tiny models (a check, no figures)

Sections:
- gemm: the dense half-precision matrix-multiply rate of this GPU, in this run.
- 1.5, 1.6: the full-size U-Net and the SD VAE (their real architectures, random weights: no
  checkpoint, no network) over whole 16-frame windows (VAE encode, DDIM with guidance, VAE
  decode), DeepCache off and on, in three execution models:
    official       eager float16, one window at a time, contiguous weights, DeepCache through the
                   DeepCache package's helper (as the official enables it);
    ours eager     as the service ships by default: channels-last weights, windows batched
                   (`device.auto_windows_per_batch`), DeepCache inside the U-Net;
    ours compiled  the same through `compiled_unet.CompiledUNet` (torch.compile, its graphs made
                   before the clock starts; the compile time is reported).
  For each: seconds per window, GPU seconds per output second (VAE included), the U-Net's
  TFLOP/s and its share of the gemm rate, peak VRAM.
- job: one whole 1.6 job (InsightFace when its weights are in the weights folder, else MediaPipe;
  the report says which) on a clip of demo1 looped, with the U-Net's, the VAE's and the analysis
  pass's shares of the wall time. It fails unless every planned frame was regenerated.

On a bare CUDA machine that has PyTorch, the gemm and version sections need these small packages
besides it: diffusers (and its importlib_metadata), DeepCache, PyYAML, safetensors, regex,
requests, Pillow, filelock, huggingface_hub. The job needs the rest of requirements.txt and the
ffmpeg and ffprobe binaries; without them it is reported as failed, saying what is missing.
"""

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from contextlib import contextmanager, nullcontext
from pathlib import Path
from types import SimpleNamespace

import torch

from latentsync.config import FRAMES_PER_WINDOW, MODEL_FPS, REPO_ROOT, shared_dir, weights_dir
from latentsync.denoise import DEEPCACHE_INTERVAL, denoise_windows, load_scheduler

OUTPUT_SECONDS_PER_WINDOW = FRAMES_PER_WINDOW / MODEL_FPS  # 0.64 s of video per window
GUIDANCE = 1.5
SD_VAE_CONFIG = dict(  # stabilityai/sd-vae-ft-mse's architecture
    in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32, sample_size=256,
)
SECTION_TIMEOUT_S = {"gemm": 120, "version": 900, "job": 900}
MIN_UNET_SHARE = 0.2  # of a window's time, for the U-Net's rate to be told apart from the VAE's
MIN_GENERATED_SHARE = 0.9  # of the whole job's frames: a job of skipped windows would look fast
TARGETS = "1.6 / 20 steps / DeepCache on: ours <= 0.67x the official's GPU seconds, >= 40% of the gemm rate in the U-Net, peak VRAM <= 18 GB (1.5: <= 8 GB)"


# ---- what the sections run on ---------------------------------------------------------------------


@contextmanager
def reporting(name: str, results: dict, path: Path | None):
    """Run a section; its figures, or its error, go into `results` and are written out at once."""
    tick = time.perf_counter()
    try:
        yield
    except Exception as error:
        results[name] = {"error": f"{type(error).__name__}: {error}"}
        print(f"section {name} failed: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
    finally:
        results.setdefault(name, {})["section_s"] = round(time.perf_counter() - tick, 1)
        if path:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(results, indent=2))


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def models(version: str, smoke: bool):
    """(unet, vae, resolution, device, dtype) of a version: the full-size architectures with
    random weights on the GPU, or with --smoke the small test models on the CPU."""
    from diffusers import AutoencoderKL

    from latentsync.weights import load_manifest

    if smoke:
        if version != "tiny":
            raise ValueError(f"--smoke measures the version 'tiny' only, not {version!r}")
        from latentsync.denoise import load_unet, load_vae
        from tests.media import small_unet_files

        files = small_unet_files(Path(tempfile.mkdtemp()))
        return load_unet(files), load_vae(files.vae_dir), files.resolution, torch.device("cpu"), torch.float32
    from scripts.benchmark_unet import random_unet

    device, dtype = torch.device("cuda"), torch.float16
    spec = load_manifest().versions[version]
    unet = random_unet(spec.unet_config, dtype, device)
    torch.manual_seed(0)
    vae = AutoencoderKL(**SD_VAE_CONFIG).to(device, dtype).eval().requires_grad_(False)
    return unet, vae, spec.resolution, device, dtype


def window_inputs(windows: int, resolution: int, device, dtype):
    """Random face crops (n, 16, 3, R, R) uint8 and audio features (n, 16, 50, 384), where the models are."""
    generator = torch.Generator().manual_seed(0)
    faces = torch.randint(0, 256, (windows, FRAMES_PER_WINDOW, 3, resolution, resolution), generator=generator, dtype=torch.uint8)
    audio = torch.randn(windows, FRAMES_PER_WINDOW, 50, 384, generator=generator)
    return faces.to(device), audio.to(device, dtype)


def flops_per_window(unet, vae, resolution: int, device, dtype) -> dict:
    """FLOPs of one guided window-step through the whole U-Net and through DeepCache's shallow
    path, and of the VAE's share of a window (encoding the masked and the full faces, decoding)."""
    from torch.utils.flop_counter import FlopCounterMode

    latent = resolution // 8
    sample = torch.randn(2, 13, FRAMES_PER_WINDOW, latent, latent, device=device, dtype=dtype)
    audio = torch.randn(2 * FRAMES_PER_WINDOW, 50, 384, device=device, dtype=dtype)
    t = torch.tensor(500, device=device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as full:
            features = unet(sample, t, encoder_hidden_states=audio, return_deep_features=True).deep_features
        with FlopCounterMode(display=False) as shallow:
            unet(sample, t, encoder_hidden_states=audio, deep_features=features)
        with FlopCounterMode(display=False) as vae_flops:
            vae.encode(torch.randn(2 * FRAMES_PER_WINDOW, 3, resolution, resolution, device=device, dtype=dtype))
            vae.decode(torch.randn(FRAMES_PER_WINDOW, 4, latent, latent, device=device, dtype=dtype))
    return {"unet_step": full.get_total_flops(), "unet_cached_step": shallow.get_total_flops(), "vae": vae_flops.get_total_flops()}


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
def time_windows(unet, vae, mask, windows: int, resolution: int, steps: int, deepcache: str | None, repeats: int) -> tuple[float, float]:
    """Median seconds of `windows` whole windows in one call (after a warm-up), and the peak GPU
    memory (GB) meanwhile. `deepcache`: None, "official" (the helper) or "ours" (in the U-Net)."""
    device = mask.device
    faces, audio = window_inputs(windows, resolution, device, next(vae.parameters()).dtype)
    scheduler = load_scheduler()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        tick = time.perf_counter()
        with deepcache_helper(unet, scheduler) if deepcache == "official" else nullcontext():
            denoise_windows(unet, vae, scheduler, faces, audio, mask, num_inference_steps=steps, guidance_scale=GUIDANCE,
                            generator=torch.Generator().manual_seed(0), enable_deepcache=deepcache == "ours")
        synchronize(device)
        times.append(time.perf_counter() - tick)
    timed = sorted(times[1:])
    peak = torch.cuda.max_memory_allocated() / 1e9 if device.type == "cuda" else 0.0
    return timed[len(timed) // 2], peak


@torch.no_grad()
def vae_seconds_per_window(vae, resolution: int, device, dtype, repeats: int) -> float:
    """Seconds the VAE takes for one window: encoding the masked and the full faces, decoding."""
    pixels = torch.randn(2 * FRAMES_PER_WINDOW, 3, resolution, resolution, device=device, dtype=dtype)
    latents = torch.randn(FRAMES_PER_WINDOW, 4, resolution // 8, resolution // 8, device=device, dtype=dtype)
    times = []
    for _ in range(repeats + 1):
        synchronize(device)
        tick = time.perf_counter()
        vae.encode(pixels)
        vae.decode(latents)
        synchronize(device)
        times.append(time.perf_counter() - tick)
    return sorted(times[1:])[len(times[1:]) // 2]


def figures(seconds: float, windows: int, steps: int, flops: dict, deepcache: bool, vae_s: float, dense: float, peak_gb: float) -> dict:
    full_steps = math.ceil(steps / DEEPCACHE_INTERVAL) if deepcache else steps
    unet_flops = windows * (full_steps * flops["unet_step"] + (steps - full_steps) * flops["unet_cached_step"])
    unet_s = seconds - windows * vae_s
    # The U-Net's rate is the window's time less the VAE's, measured apart: meaningless where the VAE is nearly all of it.
    achieved = unet_flops / unet_s / 1e12 if unet_s > MIN_UNET_SHARE * seconds else None
    return {
        "windows_per_call": windows,
        "seconds_per_window": round(seconds / windows, 4),
        "gpu_seconds_per_output_second": round(seconds / windows / OUTPUT_SECONDS_PER_WINDOW, 3),
        "unet_tflops": round(achieved, 2) if achieved is not None else None,
        "unet_share_of_dense_rate": round(achieved / dense, 3) if achieved is not None and dense else None,
        "vae_share_of_window": round(windows * vae_s / seconds, 3),
        "peak_vram_gb": round(peak_gb, 2),
    }


# ---- the sections ---------------------------------------------------------------------------------


def gemm_section(smoke: bool) -> dict:
    """The device's dense matrix-multiply rate in this run (a size^3 GEMM, median of the repeats)."""
    device = torch.device("cpu" if smoke else "cuda")
    dtype, size, repeats = (torch.float32, 256, 3) if smoke else (torch.float16, 8192, 20)
    a, b = torch.randn(size, size, device=device, dtype=dtype), torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    synchronize(device)
    times = []
    for _ in range(repeats):
        tick = time.perf_counter()
        a @ b
        synchronize(device)
        times.append(time.perf_counter() - tick)
    median = sorted(times)[len(times) // 2]
    name = "cpu" if smoke else torch.cuda.get_device_name()
    return {"device": name, "dtype": str(dtype).removeprefix("torch."), "size": size, "tflops": round(2 * size**3 / median / 1e12, 4)}


def version_section(version: str, steps: int, quick: bool, smoke: bool, dense: float, progress=lambda rows: None) -> dict:
    """The three execution models, DeepCache off and on, for one version; `progress(rows)` after
    each row, so that a section cut short by its time limit keeps what it measured."""
    from latentsync.compiled_unet import CompiledUNet
    from latentsync.denoise import load_training_mask
    from latentsync.device import auto_windows_per_batch, with_fast_layout

    unet, vae, resolution, device, dtype = models(version, smoke)
    mask = load_training_mask(shared_dir() / "assets" / "mask.png", resolution).to(device)
    repeats = 1 if smoke else 2 if quick else 3
    flops = flops_per_window(unet, vae, resolution, device, dtype)
    rows = {"resolution": resolution, "steps": steps, "tflop_per_window_step": round(flops["unet_step"] / 1e12, 3),
            "tflop_per_cached_window_step": round(flops["unet_cached_step"] / 1e12, 3), "vae_tflop_per_window": round(flops["vae"] / 1e12, 3)}

    # The official: contiguous weights, one window at a time.
    unet.to(memory_format=torch.contiguous_format), vae.to(memory_format=torch.contiguous_format)
    vae_s = vae_seconds_per_window(vae, resolution, device, dtype, repeats)
    for deepcache in (False, True):
        seconds, peak = time_windows(unet, vae, mask, 1, resolution, steps, "official" if deepcache else None, repeats)
        rows[f"official, deepcache {'on' if deepcache else 'off'}"] = figures(seconds, 1, steps, flops, deepcache, vae_s, dense, peak)
        progress(rows)

    # Ours, as shipped, then compiled.
    with_fast_layout(unet), with_fast_layout(vae)
    vae_s = vae_seconds_per_window(vae, resolution, device, dtype, repeats)
    per_batch = 2 if smoke else auto_windows_per_batch(unet, resolution)
    for deepcache in (False, True):
        seconds, peak = time_windows(unet, vae, mask, per_batch, resolution, steps, "ours" if deepcache else None, repeats)
        rows[f"ours eager, deepcache {'on' if deepcache else 'off'}"] = figures(seconds, per_batch, steps, flops, deepcache, vae_s, dense, peak)
        progress(rows)
    compiled = CompiledUNet(unet, per_batch, backend="eager" if smoke else "inductor")
    tick = time.perf_counter()
    graphs = compiled.warm_up(resolution // 8)
    rows["compile_s"], rows["compiled_graphs"] = round(time.perf_counter() - tick, 1), graphs
    progress(rows)
    for deepcache in (False, True):
        seconds, peak = time_windows(compiled, vae, mask, per_batch, resolution, steps, "ours" if deepcache else None, repeats)
        rows[f"ours compiled, deepcache {'on' if deepcache else 'off'}"] = figures(seconds, per_batch, steps, flops, deepcache, vae_s, dense, peak)
        progress(rows)

    official = rows["official, deepcache on"]["gpu_seconds_per_output_second"]
    best = min(rows[f"ours {kind}, deepcache on"]["gpu_seconds_per_output_second"] for kind in ("eager", "compiled"))
    rows["best_ours_over_official_deepcache_on"] = round(best / official, 3)
    return rows


def job_section(steps: int, quick: bool, smoke: bool) -> dict:
    """A whole job with the 1.6 architecture: wall time against the time in the U-Net and the VAE
    (each call timed with the GPU synchronised) and the analysis pass; fails unless every planned
    frame was regenerated."""
    for tool in ("ffmpeg", "ffprobe"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"the whole job needs the {tool} binary on PATH (and the rest of requirements.txt); none here")
    from latentsync.audio import AudioEncoder
    from latentsync.denoise import load_training_mask
    from latentsync.device import auto_windows_per_batch, use_cpu_for_frames
    from latentsync.face.detect import create_detector, insightface_model_paths
    from latentsync.job import Models
    from latentsync.options import LipsyncOptions
    from latentsync.pipeline import LipsyncPipeline
    from tests.media import ffmpeg

    assets, reference = shared_dir() / "assets", shared_dir() / "reference"
    unet, vae, resolution, device, dtype = models("tiny" if smoke else "1.6", smoke)
    insightface_root = weights_dir() / "insightface"
    detector = "insightface" if not smoke and all(p.exists() for p in insightface_model_paths(insightface_root)) else "mediapipe"
    spent = {"model_s": 0.0, "vae_s": 0.0}

    def timed(function, key):
        def call(*args, **kwargs):
            synchronize(device)
            tick = time.perf_counter()
            out = function(*args, **kwargs)
            synchronize(device)
            spent[key] += time.perf_counter() - tick
            return out
        return call

    vae.encode, vae.decode = timed(vae.encode, "vae_s"), timed(vae.decode, "vae_s")
    use_cpu_for_frames(device)  # as LipsyncPipeline.from_files does
    parts = Models(
        unet=unet, vae=vae, scheduler=load_scheduler(), audio_encoder=AudioEncoder(reference / "whisper_tiny_random.pt", device=str(device)),
        face_detector=create_detector(detector, model_root=insightface_root, device=str(device)),
        mask=load_training_mask(assets / "mask.png", resolution), resolution=resolution, denoiser=timed(denoise_windows, "model_s"),
        windows_per_batch=auto_windows_per_batch(unet, resolution),
    )
    pipeline = LipsyncPipeline(parts, version="1.6 architecture, random weights")
    pipeline.self_test()  # as setup does: CUDA's first-call set-up stays out of the job's time
    spent.update(model_s=0.0, vae_s=0.0)
    seconds = 2 if smoke else 20 if quick else 60
    with tempfile.TemporaryDirectory() as folder:
        video, audio = Path(folder) / "video.mp4", Path(folder) / "audio.wav"
        ffmpeg("-stream_loop", seconds // 10 + 1, "-i", assets / "demo1_video.mp4", "-t", seconds, *(["-vf", "scale=540:960"] if smoke else []),
               "-c:v", "libx264", "-crf", 18, "-an", video)
        ffmpeg("-stream_loop", seconds // 9 + 1, "-i", assets / "demo1_audio.wav", "-t", seconds, audio)
        tick = time.perf_counter()
        report = pipeline(video, audio, Path(folder) / "out.mp4", LipsyncOptions(num_inference_steps=steps, enable_deepcache=True, skip_silence=False)).report
        wall = time.perf_counter() - tick
    # The clip shows one face throughout and silence is not skipped: every frame is to be regenerated.
    if report.failed_windows or report.frames_generated < MIN_GENERATED_SHARE * report.frames:
        raise RuntimeError(f"the job did not regenerate what it planned: {report.frames_generated} of {report.frames} frames, "
                           f"{report.failed_windows} failed windows")
    timings = report.timings
    return {
        "clip_s": seconds, "detector": detector, "wall_s": round(wall, 1), "frames": report.frames, "frames_generated": report.frames_generated,
        "windows_per_batch": pipeline.models.windows_per_batch, "model_s": round(spent["model_s"], 1), "vae_s": round(spent["vae_s"], 1),
        "unet_s": round(spent["model_s"] - spent["vae_s"], 1), "whole_job_over_model": round(wall / spent["model_s"], 2),
        "analysis_share": round((timings["audio_s"] + timings["face_detection_s"]) / wall, 3), "timings": timings,
    }


# ---- running the sections ---------------------------------------------------------------------------


def run_section(name: str, args, dense: float) -> dict:
    """One section in a process of its own; its figures, with an "error" where it failed or ran
    out of time (the rows it measured before are kept)."""
    with tempfile.TemporaryDirectory() as folder:
        # With --json the section's rows go beside it as they come: a run killed from outside keeps them too.
        out = Path(args.json).with_name(f"section-{name}.json") if args.json else Path(folder) / "section.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text("{}")
        command = [sys.executable, "-m", "scripts.benchmark_gpu", "--section", name, "--out", str(out), "--steps", str(args.steps), "--dense", str(dense)]
        command += ["--quick"] * args.quick + ["--smoke"] * args.smoke
        limit = args.section_timeout or SECTION_TIMEOUT_S["version" if name not in ("gemm", "job") else name]
        try:
            done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            return {**json.loads(out.read_text() or "{}"), "error": f"the section ran past its {limit} s"}
        figures = json.loads(out.read_text() or "{}")
    if done.returncode != 0 and "error" not in figures:
        stderr = done.stderr.strip()
        figures["error"] = stderr.splitlines()[-1] if stderr else f"exit status {done.returncode}"
    return figures


def section_main(args) -> int:
    """Inside a section's own process."""

    def write(figures: dict) -> None:
        Path(args.out).write_text(json.dumps(figures, indent=2))

    try:
        if args.section == "gemm":
            figures = gemm_section(args.smoke)
        elif args.section == "job":
            figures = job_section(args.steps, args.quick, args.smoke)
        else:
            figures = version_section(args.section, args.steps, args.quick, args.smoke, args.dense, progress=write)
    except Exception as error:
        traceback.print_exc()
        figures = {**json.loads(Path(args.out).read_text() or "{}"), "error": f"{type(error).__name__}: {error}"}
    write(figures)
    return 1 if "error" in figures else 0


def table_rows(results: dict) -> list[str]:
    """The figures as rows of a two-column markdown table (measurement | figure), a failed section
    with what it measured and its error; scripts/benchmark.py puts them in bench/benchmark.md."""
    lines = [f"| dense fp16 GEMM, {results.get('device')} (this run) | {results.get('gemm', {}).get('tflops')} TFLOP/s |"]
    for version in results.get("versions", []):
        rows = results.get(version, {})
        for name, row in rows.items():
            if isinstance(row, dict):
                share = f" ({100 * row['unet_share_of_dense_rate']:.0f}% of dense)" if row.get("unet_share_of_dense_rate") is not None else ""
                lines.append(
                    f"| {version}, {name}, {results['steps']} steps, {row['windows_per_call']} window(s) per call | {row['seconds_per_window']} s per window, "
                    f"{row['gpu_seconds_per_output_second']} GPU s per output s (VAE {100 * row['vae_share_of_window']:.0f}%), "
                    f"U-Net {row['unet_tflops']} TFLOP/s{share}, peak VRAM {row['peak_vram_gb']} GB |"
                )
        if "error" in rows:
            lines.append(f"| {version}: {'cut short' if any(isinstance(row, dict) for row in rows.values()) else 'not measured'} | {rows['error']} |")
        else:
            lines.append(f"| {version}, best of ours / official (DeepCache on) | {rows['best_ours_over_official_deepcache_on']}x the GPU seconds "
                         f"(compiling took {rows['compile_s']} s) |")
    job = results.get("job", {})
    if "error" in job:
        lines.append(f"| 1.6 whole job: not measured | {job['error']} |")
    elif job:
        lines.append(f"| 1.6 whole job, {job['clip_s']} s clip ({job['detector']}) | {job['wall_s']} s: {job['whole_job_over_model']}x its model time "
                     f"(U-Net {job['unet_s']} s, VAE {job['vae_s']} s); analysis (decode + detection) {100 * job['analysis_share']:.0f}% |")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--versions", nargs="*", default=None, help="default: 1.5 and 1.6 (with --smoke: tiny)")
    parser.add_argument("--quick", action="store_true", help="fewer repeats and a 20 s job: the whole run in a few minutes")
    parser.add_argument("--smoke", action="store_true", help="every section on the CPU with the tiny models, 2 steps (checks the script; no figures)")
    parser.add_argument("--skip-job", action="store_true", help="leave out the whole job")
    parser.add_argument("--json", default=None, help="write the figures here as they come (each section's rows beside it)")
    parser.add_argument("--section-timeout", type=int, default=None, help="seconds each section may run (default: 120 for gemm, 900 for the others)")
    parser.add_argument("--section", help=argparse.SUPPRESS)  # inside a section's process
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--dense", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.section:
        return section_main(args)
    if args.versions is None:
        args.versions = ["tiny"] if args.smoke else ["1.5", "1.6"]
    if args.smoke:
        args.steps = 2
    elif not torch.cuda.is_available():
        print("error: no CUDA GPU; these figures are measured on one (--smoke checks the script on the CPU)", file=sys.stderr)
        return 1
    path = Path(args.json) if args.json else None
    results = {"torch": torch.__version__, "steps": args.steps, "versions": args.versions, "quick": args.quick, "smoke": args.smoke}
    with reporting("gemm", results, path):
        results["gemm"] = run_section("gemm", args, 0.0)
        results["device"] = results["gemm"].get("device")
    dense = results["gemm"].get("tflops", 0.0)
    for version in args.versions:
        with reporting(version, results, path):
            results[version] = run_section(version, args, dense)
    if not args.skip_job:
        with reporting("job", results, path):
            results["job"] = run_section("job", args, dense)
    print(json.dumps(results, indent=2))
    print("\n".join(["| measurement | figure |", "| --- | --- |", *table_rows(results)]) + f"\n\nTargets: {TARGETS}")  # last: a device's answer shows the end
    failed = [name for name in ("gemm", *args.versions, "job") if "error" in results.get(name, {})]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
