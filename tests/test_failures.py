"""Failures on the model's path fail loudly: a device error, a window that never fits, every window
failing, a non-finite decode, an aligner error or hang, a bad checkpoint, a broken device at
setup. Only running out of memory is recovered from. A failed or degraded job leaves nothing a
repeat would reuse."""

import dataclasses
import threading
import time

import pytest
import torch
import yaml

from latentsync.cache import ResultCache
from latentsync.config import load_yaml
from latentsync.denoise import denoise_windows, load_unet
from latentsync.device import require_gpu_unless_allowed
from latentsync.face.align import FaceAligner
from latentsync.options import LipsyncOptions
from latentsync.progress import JobCancelled
from latentsync.windows import AlignmentError, ModelError
from tests.faults import CUDA_ERROR
from tests.media import small_clip, speech, tiny_files, tiny_pipeline

OPTIONS = LipsyncOptions(num_inference_steps=1, skip_silence=False)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    """2 s of face and of speech: four windows (16, 16, 16, 2 frames)."""
    folder = tmp_path_factory.mktemp("failures")
    return small_clip(folder / "face.mp4", seconds=2.0), speech(folder / "speech.wav", 2.0, start=1.0), folder


@pytest.fixture
def unet_raises(pipeline):
    """Make the U-Net raise `error(call number)` (None: run) for a test."""
    hooks = []

    def install(error):
        calls = {"count": 0}

        def hook(module, args):
            calls["count"] += 1
            raised = error(calls["count"], args)
            if raised is not None:
                raise raised

        hooks.append(pipeline.unet.register_forward_pre_hook(hook))
        return calls

    yield install
    for hook in hooks:
        hook.remove()


def test_a_device_error_fails_the_job_with_one_sentence_and_no_output(pipeline, media, unet_raises, tmp_path):
    video, audio, _ = media
    unet_raises(lambda call, args: RuntimeError(CUDA_ERROR))
    output = tmp_path / "out.mp4"
    with pytest.raises(ModelError, match=r"^The model failed on the CPU while denoising 0\.00-0\.64 s: RuntimeError: CUDA error: an illegal memory access") as failed:
        pipeline(video, audio, output, OPTIONS, temp_dir=tmp_path / "work")
    assert "\n" not in str(failed.value)
    assert not output.exists() and not list((tmp_path / "work").iterdir())  # no output, no leftovers


def test_every_window_out_of_memory_fails_the_job(pipeline, media, unet_raises, tmp_path):
    video, audio, _ = media
    calls = unet_raises(lambda call, args: torch.OutOfMemoryError("CUDA out of memory (injected)"))
    with pytest.raises(ModelError, match=r"^Every window of the job ran out of GPU memory \(4\), even with split guidance passes"):
        pipeline(video, audio, tmp_path / "out.mp4", OPTIONS)
    assert calls["count"] == 4 * 3 and not (tmp_path / "out.mp4").exists()  # each window, with each memory saver


def nan_when_decoding_below_float32(vae):
    """Make `vae` decode NaN in reduced precision, as the SD VAE's decoder can in float16."""
    decode, decoded_in = vae.decode, []

    def decoding(latents, *args, **kwargs):
        decoded_in.append(latents.dtype)
        out = decode(latents, *args, **kwargs)
        if latents.dtype != torch.float32:
            out.sample.fill_(float("nan"))
        return out

    vae.decode = decoding
    return decoded_in


def test_a_non_finite_decode_is_decoded_again_in_float32(media, tmp_path):
    video, audio, _ = media
    pipeline = tiny_pipeline(precision="bfloat16")
    decoded_in = nan_when_decoding_below_float32(pipeline.vae)
    report = pipeline(video, audio, tmp_path / "out.mp4", OPTIONS).report
    assert report.frames_generated == 50 and report.failed_windows == 0
    assert decoded_in == [torch.bfloat16, torch.float32] * 4 and pipeline.vae.dtype == torch.bfloat16


def test_a_decode_non_finite_in_float32_too_fails_the_job(media, tmp_path):
    video, audio, _ = media
    pipeline = tiny_pipeline(precision="bfloat16")

    def infinite(module, args, out):
        out.sample.fill_(float("inf"))

    pipeline.unet.register_forward_hook(infinite)
    with pytest.raises(ModelError, match=r"FloatingPointError: the VAE decoded non-finite values even in float32"):
        pipeline(video, audio, tmp_path / "out.mp4", OPTIONS)


def test_an_aligner_error_fails_the_job_within_seconds(pipeline, media, monkeypatch, tmp_path):
    video, audio, _ = media
    crops = {"count": 0}
    model_input = FaceAligner.model_input

    def breaks_on_the_twentieth_frame(self, frame, matrix):
        crops["count"] += 1
        if crops["count"] == 20:
            raise IndexError("injected by the test")
        return model_input(self, frame, matrix)

    monkeypatch.setattr(FaceAligner, "model_input", breaks_on_the_twentieth_frame)
    started = time.perf_counter()
    with pytest.raises(AlignmentError, match=r"^Aligning the speaker's face failed for 0\.00-2\.00 s: IndexError: injected by the test"):
        pipeline(video, audio, tmp_path / "out.mp4", OPTIONS)
    assert time.perf_counter() - started < 30 and not (tmp_path / "out.mp4").exists()


def test_a_cancel_ends_a_job_stuck_in_the_aligner_within_a_second(pipeline, media, monkeypatch, tmp_path):
    video, audio, _ = media
    stuck = threading.Event()

    def hangs(self, frame, matrix):
        stuck.set()
        time.sleep(20)

    monkeypatch.setattr(FaceAligner, "model_input", hangs)
    cancel, outcome = threading.Event(), {}

    def job():
        try:
            pipeline(video, audio, tmp_path / "out.mp4", OPTIONS, cancel=cancel)
        except BaseException as error:
            outcome["error"], outcome["at"] = error, time.perf_counter()

    worker = threading.Thread(target=job)
    worker.start()
    assert stuck.wait(60)
    cancelled_at = time.perf_counter()
    cancel.set()
    worker.join(10)
    assert isinstance(outcome.get("error"), JobCancelled)
    assert outcome["at"] - cancelled_at < 1.0 and not (tmp_path / "out.mp4").exists()


def test_failed_and_degraded_jobs_leave_nothing_in_the_result_cache(media, tmp_path):
    video, audio, _ = media
    cache = ResultCache(tmp_path / "cache")
    pipeline = tiny_pipeline(cache=cache)
    calls = {"count": 0}

    def second_window_never_fits(*args, **kwargs):
        calls["count"] += 1
        if 2 <= calls["count"] <= 4:
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return denoise_windows(*args, **kwargs)

    def device_error(*args, **kwargs):
        raise RuntimeError(CUDA_ERROR)

    pipeline.denoiser = device_error
    with pytest.raises(ModelError):
        pipeline(video, audio, tmp_path / "failed.mp4", OPTIONS)
    pipeline.denoiser = second_window_never_fits
    degraded = pipeline(video, audio, tmp_path / "degraded.mp4", OPTIONS).report
    assert degraded.failed_windows == 1 and (tmp_path / "degraded.mp4").exists()
    assert not list(cache.entries.iterdir())  # neither the failure nor the degraded result was kept
    pipeline.denoiser = denoise_windows
    repeat = pipeline(video, audio, tmp_path / "repeat.mp4", OPTIONS).report
    assert repeat.cache == "miss" and repeat.failed_windows == 0 and repeat.frames_generated == 50


def test_a_checkpoint_that_does_not_fit_its_config_names_both_files(tmp_path, reference):
    config = load_yaml(reference / "unet_tiny.yaml")
    config["model"]["cross_attention_dim"] = 256
    wrong = tmp_path / "unet_wrong.yaml"
    wrong.write_text(yaml.safe_dump(config))
    files = tiny_files()
    with pytest.raises(ValueError, match=rf"^The U-Net checkpoint {files.unet_checkpoint} does not match the U-Net config {wrong}: .* wrong shapes"):
        load_unet(dataclasses.replace(files, unet_config=wrong))


def test_setup_self_test_runs_a_window_and_fails_with_the_device_in_the_sentence(pipeline, unet_raises):
    calls = unet_raises(lambda call, args: None)
    pipeline.self_test()
    assert calls["count"] == 2  # 2 steps (a full and a DeepCache step), the guidance batch in one pass
    unet_raises(lambda call, args: RuntimeError("CUDA error: no kernel image is available for execution on the device"))
    with pytest.raises(ModelError, match=r"^The model self-test \(one window, version tiny\) failed on cpu \(float32\): RuntimeError: CUDA error: no kernel image"):
        pipeline.self_test()


def test_a_cuda_build_without_a_gpu_fails_unless_the_cpu_is_allowed(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(RuntimeError, match=r"No usable CUDA GPU was found, though this PyTorch is built for CUDA 13\.0 .* LATENTSYNC_ALLOW_CPU=1"):
        require_gpu_unless_allowed("cpu", allow_cpu=False)
    require_gpu_unless_allowed("cpu", allow_cpu=True)
    monkeypatch.setattr(torch.version, "cuda", None)
    require_gpu_unless_allowed("cpu", allow_cpu=False)  # the CPU build: the CPU is what there is
