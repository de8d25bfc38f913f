"""The GPU serving path, checked where it can be on a CPU: several windows per U-Net call give
the output of one at a time, reduced precision runs without a dtype mismatch and stays close to
float32, and the compiled U-Net computes what the eager one does. With CUDA, the tests marked
`gpu` run the pipeline in float16 on the GPU against float32 on the CPU."""

import copy
import shutil

import numpy as np
import pytest
import torch

from latentsync.config import load_yaml
from latentsync.denoise import denoise_windows
from latentsync.models.unet import UNet3DConditionModel
from latentsync.options import LipsyncOptions
from tests.media import ffmpeg, frames, small_clip, speech, tiny_pipeline


def recording(outputs: list):
    """`denoise_windows`, keeping every window's generated faces in `outputs`, in order."""

    def denoise(*args, **kwargs):
        generated = denoise_windows(*args, **kwargs)
        outputs.extend(generated)
        return generated

    return denoise


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """A 3 s face clip under 5 s of speech with a pause: several spans, full and short windows."""
    folder = tmp_path_factory.mktemp("throughput")
    video = small_clip(folder / "face.mp4", seconds=3.0)
    audio = folder / "paused.wav"
    ffmpeg(
        "-i", speech(folder / "a.wav", 2.0, start=1.0), "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=1", "-i", speech(folder / "b.wav", 2.0, start=4.0),
        "-filter_complex", "[0:a][1:a][2:a]concat=n=3:v=0:a=1[a]", "-map", "[a]", audio,
    )
    return video, audio, folder


def test_several_windows_per_unet_call_give_the_output_of_one_at_a_time(media):
    video, audio, folder = media
    options = LipsyncOptions(num_inference_steps=3, enable_deepcache=True, seed=21)
    faces, reports = {}, {}
    for batch in (1, 3):
        outputs = []
        pipeline = tiny_pipeline(denoiser=recording(outputs), windows_per_batch=batch)
        reports[batch] = pipeline(video, audio, folder / f"batch{batch}.mp4", options).report
        faces[batch] = outputs
    assert len(reports[1].spans) > 2 and reports[1].spans == reports[3].spans  # several generated spans
    assert len(faces[1]) == len(faces[3]) == reports[1].unet_window_steps // 3 > 3
    assert {len(f) for f in faces[1]} > {16}  # short last windows too
    assert max((a - b).abs().max().item() for a, b in zip(faces[1], faces[3])) <= 1e-5
    assert np.array_equal(frames(folder / "batch1.mp4"), frames(folder / "batch3.mp4"))


def test_bfloat16_on_the_cpu_runs_and_stays_close_to_float32(media):
    video, _, folder = media
    audio = speech(folder / "two.wav", 2.0, start=1.0)  # bfloat16 convolutions are slow on a CPU
    options = LipsyncOptions(num_inference_steps=2, skip_silence=False)
    faces = {}
    for precision in ("float32", "bfloat16"):
        outputs = []
        pipeline = tiny_pipeline(precision=precision, denoiser=recording(outputs))
        assert pipeline.models.unet.dtype == pipeline.models.vae.dtype == getattr(torch, precision)
        pipeline(video, audio, folder / f"{precision}.mp4", options)
        faces[precision] = torch.cat(outputs)
    difference = (faces["float32"] - faces["bfloat16"]).norm() / faces["float32"].norm()
    assert 0 < difference.item() < 0.1
    grey_levels = np.abs(frames(folder / "float32.mp4").astype(float) - frames(folder / "bfloat16.mp4").astype(float))
    assert grey_levels.mean() < 3


def test_channels_last_weights_compute_what_contiguous_ones_do(reference):
    """The layout `device.with_fast_layout` gives the models on CUDA, checked on the CPU against the
    same arithmetic in float64. Latents of 32 (256 px faces, the 1.5 size): at the tiny model's own
    8 the deepest blocks are 1x1, where a group norm of 2 values magnifies any rounding 100-fold."""
    from latentsync.denoise import load_vae

    config = load_yaml(reference / "unet_tiny.yaml")["model"]
    unet = UNet3DConditionModel.from_checkpoint(config, reference / "unet_tiny.pt")
    vae = load_vae(reference / "vae_tiny")
    torch.manual_seed(0)
    sample, audio, latents = torch.randn(2, 13, 16, 32, 32), torch.randn(32, 50, 384), torch.randn(16, 4, 32, 32)
    with torch.no_grad():
        exact = (copy.deepcopy(unet).double()(sample.double(), torch.tensor(801), encoder_hidden_states=audio.double()).sample,
                 copy.deepcopy(vae).double().decode(latents.double()).sample)
        unet.to(memory_format=torch.channels_last), vae.to(memory_format=torch.channels_last)
        assert unet.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
        fast = unet(sample, torch.tensor(801), encoder_hidden_states=audio).sample, vae.decode(latents).sample
    # float32 rounding, as in the contiguous layout (measured: U-Net 3.3e-6, contiguous 1.0e-6;
    # VAE 2.4e-5, contiguous 8.4e-6)
    for out, reference_out, bound in zip(fast, exact, (1e-5, 5e-5)):
        assert ((out.double() - reference_out).norm() / reference_out.norm()).item() < bound


@pytest.mark.slow  # compiling even the tiny U-Net takes minutes on two CPU cores
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None, reason="torch.compile's CPU backend needs a C++ compiler (c++ or g++), which this machine lacks")
def test_the_compiled_unet_computes_what_the_eager_one_does(reference):
    config = load_yaml(reference / "unet_tiny.yaml")["model"]
    eager = UNet3DConditionModel.from_checkpoint(config, reference / "unet_tiny.pt")
    compiled = UNet3DConditionModel.from_checkpoint(config, reference / "unet_tiny.pt")
    compiled.compile(fullgraph=True)  # fullgraph: any graph break in the forward is an error
    torch.manual_seed(0)
    sample, audio = torch.randn(2, 13, 16, 8, 8), torch.randn(32, 50, 384)
    with torch.no_grad():
        full = [model(sample, torch.tensor(801), encoder_hidden_states=audio, return_deep_features=True) for model in (eager, compiled)]
        shallow = [model(sample, torch.tensor(761), encoder_hidden_states=audio, deep_features=out.deep_features).sample for model, out in zip((eager, compiled), full)]
    assert (full[0].sample - full[1].sample).abs().max().item() < 1e-4
    assert (full[0].deep_features - full[1].deep_features).abs().max().item() < 1e-4
    assert (shallow[0] - shallow[1]).abs().max().item() < 1e-4


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_float16_on_cuda_stays_close_to_float32_on_the_cpu(media):
    video, audio, folder = media
    options = LipsyncOptions(num_inference_steps=2, skip_silence=False, enable_deepcache=True)
    faces = {}
    for device in ("cpu", "cuda"):
        outputs = []
        pipeline = tiny_pipeline(device=device, denoiser=recording(outputs), windows_per_batch=2)
        pipeline(video, audio, folder / f"{device}.mp4", options)
        faces[device] = torch.cat(outputs)
    assert pipeline.models.unet.dtype == torch.float16
    difference = (faces["cpu"] - faces["cuda"]).norm() / faces["cpu"].norm()
    assert difference.item() < 0.05


def test_windows_per_call_keep_the_measured_peak_within_the_official_footprint_and_free_memory():
    from latentsync.device import windows_that_fit

    weights = int(2.5e9)  # the U-Net in float16
    assert windows_that_fit(512, free=int(77e9), weights=weights) == 1  # two windows peaked at 24.7 GB on an H200: over 1.6's 18 GB
    assert windows_that_fit(256, free=int(77e9), weights=weights) == 2  # 8.25 GB: within 1.5's 8 GiB
    assert windows_that_fit(256, free=int(5e9), weights=weights) == 1  # a smaller card: what is free bounds it
    assert windows_that_fit(512, free=int(1e9), weights=weights) == 1  # never none
