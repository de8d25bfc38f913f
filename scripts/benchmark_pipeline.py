"""Benchmark everything around the model on the CPU: per-stage frame rates on the 1080x1920 demo,
the whole pipeline with the model stubbed out, the official whole-frame restore for comparison,
and the peak memory of whole jobs on 10 s, 60 s and 300 s inputs (tiny random models).

    python -m scripts.benchmark_pipeline --json bench/pipeline.json
    python -m scripts.benchmark_pipeline --memory 10 60 300 --json bench/memory.json
"""

import argparse
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from latentsync.config import shared_dir
from latentsync.device import peak_rss_gb
from latentsync.face.align import FaceAligner
from latentsync.face.detect import create_detector
from latentsync.media.decode import read_frames
from latentsync.media.encode import VideoWriter
from latentsync.options import LipsyncOptions
from latentsync.pipeline import LipsyncPipeline
from scripts.benchmark_unet import report_figures
from tests.media import tiny_files

SHARED_ASSETS = shared_dir() / "assets"


def official_restore(frame: np.ndarray, face: torch.Tensor, affine: np.ndarray) -> np.ndarray:
    """The official restore's arithmetic, restated in torch on the whole frame (float32, CPU):
    inverse warp of face and mask over every pixel, erosion, feathering and blending."""
    height, width = frame.shape[:2]
    inverse = torch.from_numpy(cv2.invertAffineTransform(affine.astype(np.float64))).float()

    def warp(image, fill):  # kornia's warp_affine: bilinear, align_corners=True, constant fill
        _, _, h, w = image.shape
        ys, xs = torch.meshgrid(torch.arange(height, dtype=torch.float32), torch.arange(width, dtype=torch.float32), indexing="ij")
        source = torch.linalg.inv(torch.cat([inverse, torch.tensor([[0.0, 0.0, 1.0]])]))[:2]
        sx = source[0, 0] * xs + source[0, 1] * ys + source[0, 2]
        sy = source[1, 0] * xs + source[1, 1] * ys + source[1, 2]
        grid = torch.stack([2 * sx / (w - 1) - 1, 2 * sy / (h - 1) - 1], dim=-1)[None]
        warped = F.grid_sample(image, grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        coverage = F.grid_sample(torch.ones_like(image[:, :1]), grid, mode="bilinear", padding_mode="zeros", align_corners=True)
        return warped + (1 - coverage) * fill

    new_face = (warp(face[None], 127.0)[0] / 2 + 0.5).clamp(0, 1) * 255
    mask = warp(torch.ones(1, 1, *face.shape[1:]), 0.0)
    mask = -F.max_pool2d(-F.pad(mask, (1, 0, 1, 0), value=1.0), 2, stride=1)  # 2x2 erosion
    edge = int(mask.sum().item() ** 0.5) // 20
    centre = cv2.erode(mask[0, 0].numpy(), np.ones((2 * edge, 2 * edge), np.uint8))
    size = 2 * edge + 1
    sigma = 0.3 * ((size - 1) * 0.5 - 1) + 0.8
    kernel = torch.exp(-((torch.arange(size) - edge) ** 2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    soft = torch.from_numpy(centre)[None, None]
    soft = F.conv2d(F.pad(soft, (edge, edge, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    soft = F.conv2d(F.pad(soft, (0, 0, edge, edge), mode="reflect"), kernel.view(1, 1, -1, 1))[0]
    original = torch.from_numpy(frame).permute(2, 0, 1).float()
    blended = soft * (mask[0] * new_face) + (1 - soft) * original
    return blended.permute(1, 2, 0).to(torch.uint8).numpy()


def rate(count: int, seconds: float) -> float:
    return round(count / seconds, 1)


def stage_rates(video: Path, frames: int = 100, resolution: int = 256) -> dict:
    """Frames per second of each stage alone, on `frames` frames of `video`."""
    tick = time.perf_counter()
    decoded = [f.copy() for f in read_frames(video, 25)]
    results = {"decode": rate(len(decoded), time.perf_counter() - tick)}
    decoded = decoded[:frames]

    detector = create_detector("mediapipe")
    tick = time.perf_counter()
    landmarks = [detector.detect(frame)[0].landmarks3 for frame in decoded]
    results["detect"] = rate(len(decoded), time.perf_counter() - tick)

    aligner = FaceAligner(resolution)
    tick = time.perf_counter()
    affines = [aligner.affine(points) for points in landmarks]
    faces = [aligner.model_input(frame, affine) for frame, affine in zip(decoded, affines)]
    results["align"] = rate(len(decoded), time.perf_counter() - tick)

    generated = [torch.from_numpy(face).permute(2, 0, 1).float() / 127.5 - 1 for face in faces]
    tick = time.perf_counter()
    restored = [aligner.restore(frame, face, affine) for frame, face, affine in zip(decoded, generated, affines)]
    results["restore"] = rate(len(decoded), time.perf_counter() - tick)

    crop_height, crop_width = aligner.crop_size[1], aligner.crop_size[0]
    sample = range(0, len(decoded), max(1, len(decoded) // 10))
    tick = time.perf_counter()
    reference = {}
    for i in sample:
        face = F.interpolate(generated[i][None], size=(crop_height, crop_width), mode="bicubic", antialias=True)[0]
        reference[i] = official_restore(decoded[i], face, affines[i])
    results["restore_official_whole_frame"] = rate(len(reference), time.perf_counter() - tick)
    results["restore_speedup"] = round(results["restore"] / results["restore_official_whole_frame"], 1)
    results["restore_max_grey_difference"] = int(max(np.abs(restored[i].astype(int) - reference[i].astype(int)).max() for i in reference))
    results["restore_pixels_over_1_grey"] = float(np.mean([(np.abs(restored[i].astype(int) - reference[i].astype(int)) > 1).mean() for i in reference]))

    with tempfile.TemporaryDirectory() as folder:
        height, width = decoded[0].shape[:2]
        tick = time.perf_counter()
        with VideoWriter(Path(folder) / "out.mp4", width, height, 25) as writer:
            for frame in restored:
                writer.write(frame)
        results["encode"] = rate(len(restored), time.perf_counter() - tick)
    return results


def stubbed_pipeline(resolution: int = 256) -> LipsyncPipeline:
    """The pipeline with a stand-in for the diffusion model that returns its input faces."""
    files = tiny_files()
    files.resolution = resolution
    return LipsyncPipeline.from_files(files, device="cpu", face_detector="mediapipe", denoiser=lambda unet, vae, scheduler, faces, *a, **k: faces.float() / 127.5 - 1)


def whole_pipeline_rate(video: Path, audio: Path) -> dict:
    with tempfile.TemporaryDirectory() as folder:
        report = stubbed_pipeline()(video, audio, Path(folder) / "out.mp4", LipsyncOptions(skip_silence=False)).report.to_dict()
    timings = report["timings"]
    return {
        "frames": report["frames"],
        "analysis_fps": rate(report["frames"], timings["audio_s"] + timings["face_detection_s"]),
        "render_fps": rate(report["frames"], timings["render_s"]),
        "total_fps": rate(report["frames"], timings["total_s"]),
    }


def job_peak_rss(video: Path, audio: Path) -> float:
    """Run one whole job (tiny models, 1 step) in this process; return its peak RSS in GB."""
    with tempfile.TemporaryDirectory() as folder:
        pipeline = LipsyncPipeline.from_files(tiny_files(), device="cpu", face_detector="mediapipe")
        pipeline(video, audio, Path(folder) / "out.mp4", LipsyncOptions(num_inference_steps=1, skip_silence=False))
    return peak_rss_gb()


def long_input(seconds: float, folder: Path) -> tuple[Path, Path]:
    """`seconds` of video and speech made by concatenating the demo clips with ffmpeg."""
    video, audio = folder / f"video_{seconds:g}.mp4", folder / f"audio_{seconds:g}.wav"
    loops = math.ceil(seconds / 30)
    listing = folder / "clips.txt"
    listing.write_text("".join(f"file '{SHARED_ASSETS / name}'\n" for _ in range(loops) for name in ("demo1_video.mp4", "demo2_video.mp4")))
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-f", "concat", "-safe", "0", "-i", str(listing), "-t", str(seconds), "-c", "copy", str(video)], check=True)
    subprocess.run(["ffmpeg", "-v", "error", "-y", "-i", str(video), "-vn", "-ac", "1", "-ar", "16000", str(audio)], check=True)
    return video, audio


def memory_by_length(lengths: list[float]) -> dict:
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for seconds in lengths:
            video, audio = long_input(seconds, Path(folder))
            tick = time.perf_counter()
            output = subprocess.run(
                [sys.executable, "-m", "scripts.benchmark_pipeline", "--job", str(video), str(audio)],
                capture_output=True, text=True, check=True,
            ).stdout
            results[f"{seconds:g}s"] = {"peak_rss_gb": round(float(output.strip().splitlines()[-1]), 2), "wall_s": round(time.perf_counter() - tick, 1)}
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--video", default=str(SHARED_ASSETS / "demo1_video.mp4"))
    parser.add_argument("--audio", default=str(SHARED_ASSETS / "demo1_audio.wav"))
    parser.add_argument("--memory", type=float, nargs="*", default=None, help="input lengths in seconds for peak-memory runs")
    parser.add_argument("--job", nargs=2, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    if args.job:
        print(job_peak_rss(Path(args.job[0]), Path(args.job[1])))
        return 0
    results = {"threads": torch.get_num_threads()}
    if args.memory:
        results["memory"] = memory_by_length(args.memory)
    else:
        results["stages_fps"] = stage_rates(Path(args.video))
        results["pipeline_model_stubbed"] = whole_pipeline_rate(Path(args.video), Path(args.audio))
    return report_figures(results, args.json)


if __name__ == "__main__":
    sys.exit(main())
