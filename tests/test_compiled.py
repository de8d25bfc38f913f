"""The compiled U-Net through whole jobs, as a server meets them: several windows per batch, short
last windows, guidance on and off, DeepCache on and off, a memory-recovery pass and a second
model version. Compiled with dynamo's `eager` backend: the same graphs torch.compile makes for
the GPU, traced in seconds, with no C++ build (the inductor build is the slow test in
test_precision_and_batching.py).

Every graph is made in `self_test`, at setup; jobs afterwards make none, and give the frames the
uncompiled U-Net gives. Before this, the ninth distinct call raised FailOnRecompileLimitHit.

The U-Net here is a smaller one than the reference's tiny model (two blocks of one layer, with
the same kinds of blocks, attention and motion modules): tracing a graph of the tiny model takes
20 CPU seconds, and this test makes about twenty graphs."""

import dataclasses

import numpy as np
import pytest
import torch
from torch._dynamo.utils import counters

from latentsync.compiled_unet import GRAPHS_PER_VERSION
from latentsync.denoise import denoise_windows, load_unet
from latentsync.options import LipsyncOptions
from latentsync.pipeline import LipsyncPipeline
from tests.media import frames, small_clip, small_unet_files, speech

# Each job's options, and the windows per batch it runs with (1-4); 35 frames make windows of
# 16, 16 and 3, so every job also has a short last window (which runs uncompiled).
JOBS = [
    (1, LipsyncOptions(num_inference_steps=2, guidance_scale=1.0, enable_deepcache=False, skip_silence=False)),
    (2, LipsyncOptions(num_inference_steps=4, guidance_scale=1.5, enable_deepcache=True, skip_silence=False)),
    (3, LipsyncOptions(num_inference_steps=2, guidance_scale=1.5, enable_deepcache=False, skip_silence=False)),
    (4, LipsyncOptions(num_inference_steps=4, guidance_scale=1.0, enable_deepcache=True, skip_silence=False)),
]
OTHER_RESOLUTION = 128  # a second "version": the same tiny U-Net at another latent size


def graphs_made() -> int:
    return counters["stats"]["unique_graphs"]


def out_of_memory_for_the_whole_guidance_batch(*args, **kwargs):
    """`denoise_windows`, pretending a guidance batch of both branches does not fit: the window
    is retried as two passes (split guidance), as on a GPU short of memory."""
    if kwargs.get("guidance_scale", 1.0) > 1.0 and not kwargs.get("split_guidance_batch"):
        raise torch.OutOfMemoryError("CUDA out of memory (injected by the test)")
    return denoise_windows(*args, **kwargs)


@pytest.fixture(scope="module")
def small_unet(tmp_path_factory):
    return small_unet_files(tmp_path_factory.mktemp("small_unet"))


def small_pipeline(files, **settings) -> LipsyncPipeline:
    return LipsyncPipeline.from_files(files, device="cpu", face_detector="mediapipe", **settings)


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    folder = tmp_path_factory.mktemp("compiled")
    return small_clip(folder / "face.mp4", seconds=1.4), speech(folder / "speech.wav", 1.4, start=1.0), folder


@pytest.fixture(scope="module")
def eager_frames(media, small_unet):
    """What the uncompiled pipeline makes of each job."""
    video, audio, folder = media
    pipeline, made = small_pipeline(small_unet), {}
    for index, (_, options) in enumerate(JOBS):
        pipeline(video, audio, folder / f"eager{index}.mp4", options)
        made[index] = frames(folder / f"eager{index}.mp4")
    return made


def assert_same_frames(output, expected):
    # Padded batches run other matrix sizes: the last bits of a float may differ, no more.
    assert np.abs(frames(output).astype(np.int16) - expected).max() <= 1


def test_compiled_jobs_make_no_graph_after_setup_and_the_frames_of_eager_ones(media, eager_frames, small_unet):
    video, audio, folder = media
    torch._dynamo.reset()
    first = None
    for index, (per_batch, options) in enumerate(JOBS):
        pipeline = small_pipeline(small_unet, windows_per_batch=per_batch, compile_unet=True, compile_backend="eager")
        pipeline.self_test()  # setup: makes this pipeline's graphs
        before = graphs_made()
        output = folder / f"compiled{index}.mp4"
        report = pipeline(video, audio, output, options).report
        assert graphs_made() == before, f"a job with {per_batch} windows per batch made a graph after setup"
        assert report.frames_generated == 35 and report.failed_windows == 0
        assert_same_frames(output, eager_frames[index])
        first = first or pipeline

    # Memory recovery: the guidance batch "does not fit", so each window runs as two passes.
    first.models.denoiser = out_of_memory_for_the_whole_guidance_batch
    before = graphs_made()
    output = folder / "recovered.mp4"
    report = first(video, audio, output, dataclasses.replace(JOBS[1][1], guidance_scale=1.5)).report
    assert graphs_made() == before and report.frames_generated == 35 and report.failed_windows == 0
    first.models.denoiser = denoise_windows

    # A second version, loaded later as ModelVersions.get does: its own graphs at setup, then none.
    files = dataclasses.replace(small_unet, resolution=OTHER_RESOLUTION)
    other = first.for_version(files, load_unet(files))
    before = graphs_made()
    other.self_test()
    assert graphs_made() - before <= GRAPHS_PER_VERSION
    before = graphs_made()
    other(video, audio, folder / "other.mp4", JOBS[1][1])
    first(video, audio, folder / "first_again.mp4", JOBS[1][1])
    assert graphs_made() == before
    assert_same_frames(folder / "first_again.mp4", eager_frames[1])
