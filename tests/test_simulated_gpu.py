"""The simulated-GPU benchmark (scripts/benchmark_simulated_gpu.py): its stand-in denoiser draws
what the real one draws, and a measurement runs end to end and adds up."""

import json
import os
import subprocess
import sys

import pytest
import torch

from latentsync.config import REPO_ROOT
from latentsync.denoise import denoise_windows, initial_noise
from scripts.benchmark_simulated_gpu import SimulatedGPU
from tests.media import TINY_RESOLUTION, small_clip, speech, tiny_pipeline


@pytest.mark.parametrize("windows,frames,shared_noise", [(1, 16, True), (2, 16, True), (1, 5, False)])
def test_the_stand_in_draws_the_random_numbers_the_denoiser_draws(windows, frames, shared_noise):
    models = tiny_pipeline().models
    faces = torch.randint(0, 256, (windows, frames, 3, TINY_RESOLUTION, TINY_RESOLUTION), dtype=torch.uint8)
    audio = torch.randn(windows, frames, 50, 384)
    states = []
    for denoiser in (denoise_windows, SimulatedGPU(rate=0.0)):
        generator = torch.Generator().manual_seed(3)
        noise = initial_noise(generator, TINY_RESOLUTION // 8, frames) if shared_noise else None
        out = denoiser(models.unet, models.vae, models.scheduler, faces, audio, models.mask, num_inference_steps=2,
                       initial_latents=noise, generator=generator)
        assert out.shape == faces.shape
        states.append(generator.get_state())
    assert torch.equal(states[0], states[1])


def test_the_stand_in_holds_the_gpu_for_its_rate():
    gpu = SimulatedGPU(rate=0.5, fps=25.0)
    faces = torch.zeros(2, 16, 3, 16, 16, dtype=torch.uint8)
    out = gpu(None, None, None, faces, None, None, initial_latents=torch.zeros(1), generator=torch.Generator(), sample_posterior=False)
    (start, end), = gpu.calls
    assert end - start == pytest.approx(0.5 * 2 * 16 / 25, abs=0.05)  # two windows of 0.64 s of video
    assert torch.equal(out, torch.full_like(out, -1.0))  # the input faces, in [-1, 1]


def test_a_measurement_runs_a_whole_job_and_its_figures_add_up(tmp_path):
    video, audio = small_clip(tmp_path / "face.mp4", seconds=1.5), speech(tmp_path / "speech.wav", 1.5, start=1.0)
    result = subprocess.run(
        [sys.executable, "-m", "scripts.benchmark_simulated_gpu", "--one", "0.5", "--resolution", str(TINY_RESOLUTION),
         "--video", str(video), "--audio", str(audio)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    row = json.loads(result.stdout.strip().splitlines()[-1])
    assert row["windows"] == 3 and row["output_s"] == 1.52  # 38 frames: 16 + 16 + 6
    assert row["gpu_busy_s"] == pytest.approx(0.5 * 1.52, abs=0.1) and row["wall_s"] > row["gpu_busy_s"]
    assert 0 < row["first_unet_call_s"] < row["wall_s"] and row["job_over_gpu"] > 1
    assert 0 < row["encoder_alone_after_last_s"] < row["wall_s"]  # the encoder's own tail: the same frames, nothing else running
    cpu = row["cpu_s_per_output_s"]
    assert all(seconds >= 0 for seconds in cpu.values()) and cpu["decode"] > 0 and cpu["encode"] > 0 and cpu["detection"] > 0
    assert cpu["paste_back"] > 0 and cpu["alignment"] > 0
    assert row["cpu_s_per_output_s_total"] == pytest.approx(sum(cpu.values()), abs=0.01)
    assert 0 <= row["other_cpu_s"] < os.cpu_count() * row["wall_s"]  # the rest of the machine, at most all of it
