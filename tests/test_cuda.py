"""The model on a CUDA GPU, where nothing else can check it: the official tiny U-Net's output in
float16 with the shipped channels-last layout, the denoising loop never waiting for the GPU,
a real out-of-memory error recognised as the one a window recovers from, and the inductor-compiled
U-Net against the eager one with no graph made after its warm-up (last: its four graphs took over
160 s to compile on an H200 machine's 16 cores). Skipped without CUDA.

These import the model modules only (not the pipeline, which needs ffmpeg, MediaPipe and Whisper),
so a bare CUDA machine with PyTorch and diffusers runs them (`--noconftest`: the conftest's web
app plugin needs Gradio):

    LATENTSYNC_SHARED_DIR=... python -m pytest --noconftest -m gpu tests/test_cuda.py
"""

import pytest
import torch
from torch._dynamo.utils import counters

from latentsync.compiled_unet import CompiledUNet
from latentsync.config import load_yaml
from latentsync.denoise import denoising_loop, load_scheduler
from latentsync.device import with_fast_layout
from latentsync.models.unet import UNet3DConditionModel
from latentsync.windows import is_out_of_memory
from tests.conftest import REFERENCE

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

FLOAT16_RELATIVE_ERROR = 1e-2  # METHOD: half-precision operands land between 1e-3 and 1e-2 of float64


def tiny_unet(dtype=torch.float16) -> UNet3DConditionModel:
    config = load_yaml(REFERENCE / "unet_tiny.yaml")["model"]
    return with_fast_layout(UNet3DConditionModel.from_checkpoint(config, REFERENCE / "unet_tiny.pt", "cuda", dtype))


def relative_error(out: torch.Tensor, reference: torch.Tensor) -> float:
    out, reference = out.double().cpu(), reference.double().cpu()
    assert torch.isfinite(out).all()
    return ((out - reference).norm() / reference.norm()).item()


def test_the_tiny_unet_in_float16_on_cuda_gives_the_official_output():
    io = torch.load(REFERENCE / "unet_tiny_io.pt", weights_only=True)
    unet = tiny_unet()
    with torch.no_grad():
        out = unet(io["sample"].cuda().half(), io["timestep"].cuda(), encoder_hidden_states=io["encoder_hidden_states"].cuda().half()).sample
    assert relative_error(out, io["out"]) < FLOAT16_RELATIVE_ERROR


def test_the_denoising_loop_never_waits_for_the_gpu():
    """No step of the loop synchronises with the GPU (DeepCache on, guidance, two windows)."""
    unet = tiny_unet()
    sample = torch.randn(2, 13, 16, 8, 8, device="cuda", dtype=torch.float16)
    audio = torch.randn(32, 50, 384, device="cuda", dtype=torch.float16)
    scheduler = load_scheduler()
    with torch.no_grad():
        denoising_loop(unet, scheduler, sample[:, :4], sample[:, 4:], audio, 4, 1.5, enable_deepcache=True)  # warm-up
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            denoising_loop(unet, scheduler, sample[:, :4], sample[:, 4:], audio, 7, 1.5, enable_deepcache=True)
        finally:
            torch.cuda.set_sync_debug_mode("default")


def test_running_out_of_gpu_memory_is_recognised_and_the_gpu_keeps_working():
    total = torch.cuda.get_device_properties(0).total_memory
    with pytest.raises(Exception) as raised:
        torch.empty(2 * total, dtype=torch.uint8, device="cuda")
    assert is_out_of_memory(raised.value)
    assert torch.ones(4, device="cuda").sum().item() == 4


def test_the_compiled_unet_on_cuda_gives_the_eager_output_and_no_graph_after_warm_up():
    unet = tiny_unet()
    compiled = CompiledUNet(unet, windows_per_batch=2, backend="inductor")
    assert compiled.warm_up(latent_size=8) == 4
    made = counters["stats"]["unique_graphs"]
    generator = torch.Generator(device="cuda").manual_seed(0)
    with torch.no_grad():
        # every batch a job makes: 1-4 full windows (padded to 2 or 4), and a short last window (eager)
        for batch, frames in ((1, 16), (2, 16), (3, 16), (4, 16), (2, 5)):
            sample = torch.randn(batch, 13, frames, 8, 8, device="cuda", dtype=torch.float16, generator=generator)
            audio = torch.randn(batch * frames, 50, 384, device="cuda", dtype=torch.float16, generator=generator)
            full = [model(sample, torch.tensor(801, device="cuda"), audio, return_deep_features=True) for model in (unet, compiled)]
            assert relative_error(full[1].sample, full[0].sample) < FLOAT16_RELATIVE_ERROR
            deep = full[0].deep_features
            shallow = [model(sample, torch.tensor(761, device="cuda"), audio, deep_features=deep).sample for model in (unet, compiled)]
            assert relative_error(shallow[1], shallow[0]) < FLOAT16_RELATIVE_ERROR
    assert counters["stats"]["unique_graphs"] == made
