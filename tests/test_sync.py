"""SyncNet sync confidence: the LSE-C arithmetic, the offset search and the weights format."""

import numpy as np
import pytest
import torch

from latentsync.audio import load_audio
from latentsync.sync import (
    SyncNet,
    SyncNetScorer,
    confidence_from_distances,
    load_syncnet,
    mfcc,
    offset_distances,
)


def test_confidence_is_median_minus_minimum_and_offset_counts_from_the_centre():
    distances = np.full(31, 10.0)
    distances[15 + 3] = 6.0  # minimum 3 places after the centre
    distances[:5] = 12.0
    confidence, offset, minimum = confidence_from_distances(distances)
    assert (confidence, offset, minimum) == (4.0, -3, 6.0)  # syncnet_python: offset = vshift - argmin
    confidence, offset, _ = confidence_from_distances(np.arange(31.0)[::-1])
    assert offset == -15 and confidence == 15.0


def test_offset_search_finds_a_known_shift():
    torch.manual_seed(0)
    audio = torch.randn(60, 16)
    for shift in (-4, 0, 7):
        lip = torch.roll(audio, shifts=-shift, dims=0)  # lip frame i matches audio frame i + shift
        table = offset_distances(lip, audio)
        assert table.shape == (60, 31)
        inner = slice(10, 50)  # away from the ends, where rolling wraps around
        assert torch.all(table[inner].argmin(1) == 15 + shift)
        confidence, offset, minimum = confidence_from_distances(table[inner].mean(0))
        assert offset == -shift and minimum < 1e-3 and confidence > 1.0


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Random SyncNet weights saved as syncnet_v2.model is: a state dict without num_batches_tracked."""
    torch.manual_seed(1)
    model = SyncNet()
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("syncnet") / "syncnet_v2.model"
    torch.save(state, path)
    return path


def test_weights_load_strictly_and_layout_matches_syncnet_v2(weights, tmp_path):
    model = load_syncnet(weights)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    # the layout of syncnet_python's S (syncnet_v2.model)
    assert shapes["netcnnaud.0.weight"] == (64, 1, 3, 3)
    assert shapes["netcnnaud.18.weight"] == (512, 256, 5, 4) and shapes["netcnnaud.19.running_var"] == (512,)
    assert shapes["netcnnlip.0.weight"] == (96, 3, 5, 7, 7)
    assert shapes["netcnnlip.18.weight"] == (512, 256, 1, 6, 6) and shapes["netcnnlip.15.weight"] == (256,)
    assert shapes["netfcaud.3.weight"] == shapes["netfclip.3.weight"] == (1024, 512)
    assert len(shapes) == 88  # 6 conv + 6 batch-norm layers per branch, 2 linear + 1 batch-norm per head
    broken = tmp_path / "broken.model"
    torch.save({"netcnnaud.0.weight": torch.zeros(1)}, broken)
    with pytest.raises(ValueError, match="is not a SyncNet v2 state dict"):
        load_syncnet(broken)


def test_shifted_audio_shifts_the_distance_table(weights, assets):
    scorer = SyncNetScorer(weights, batch_size=8)
    samples = load_audio(assets / "demo1_audio.wav")[: 16000 * 2]
    shift = 3  # frames: 3 * 640 samples = 12 MFCC frames
    shifted = samples[shift * 640 :]
    base, moved = torch.from_numpy(mfcc(samples)), torch.from_numpy(mfcc(shifted))
    assert torch.allclose(moved[:, 10:100], base[:, 10 + 4 * shift : 100 + 4 * shift], atol=1e-3)

    def audio_embeddings(coefficients, count):
        windows = torch.stack([coefficients[None, :, 4 * i : 4 * i + 20] for i in range(count)])
        with torch.no_grad():
            return scorer.model.embed_audio(windows)

    a0, a1 = audio_embeddings(base, 30), audio_embeddings(moved, 30 - shift)
    assert torch.allclose(a1[2:], a0[2 + shift :], atol=1e-3)  # away from the MFCC edge frames
    lip = torch.randn(30 - shift, 1024)
    t0, t1 = offset_distances(lip, a0[: len(lip)]), offset_distances(lip, a1)
    # t1[i, j] compares lip i with shifted audio i + j - 15, which is original audio i + j - 15 + shift
    for i in range(len(lip)):
        for j in range(31):
            if 2 <= i + j - 15 and i + j - 15 + shift < len(lip) and j + shift < 31:
                assert t1[i, j] == pytest.approx(t0[i, j + shift].item(), abs=1e-2)


def test_score_runs_end_to_end_and_validates_inputs(weights, assets):
    scorer = SyncNetScorer(weights, batch_size=8)
    faces = np.random.default_rng(0).integers(0, 255, size=(20, 256, 256, 3), dtype=np.uint8)
    samples = load_audio(assets / "demo1_audio.wav")[: 20 * 640]
    result = scorer.score(faces, samples)
    assert result.distances.shape == (31,) and -15 <= result.offset <= 15
    assert result.confidence == pytest.approx(float(np.median(result.distances) - result.distances.min()), abs=1e-5)
    assert scorer.score(faces[:6], samples[: 6 * 640]) is None  # too short to score
    with pytest.raises(ValueError, match="do not cover"):
        scorer.score(faces, samples[:1000])
    with pytest.raises(ValueError, match="RGB"):
        scorer.score(faces[..., 0], samples)
