"""Whisper features against the official reference, and long-audio windows (voice activity is
in test_voice_activity.py). Everything runs on the real files with the real ffmpeg and Whisper
package; the Whisper checkpoint is the random-weight tiny one the official reference was made with."""

import time

import numpy as np
import pytest
import torch
import whisper

from latentsync.audio import (
    AudioEncoder,
    AudioError,
    frame_chunks,
    log_mel,
    num_frames,
)
from latentsync.config import AUDIO_SAMPLE_RATE as SR
from latentsync.media.decode import load_audio
from tests.media import ffmpeg
from tests.parity import within


@pytest.fixture(scope="module")
def whisper_path(reference):
    return reference / "whisper_tiny_random.pt"


@pytest.fixture(scope="module")
def encoder(whisper_path):
    return AudioEncoder(whisper_path)


@pytest.fixture(scope="module")
def demo1(assets):
    return load_audio(assets / "demo1_audio.wav")


@pytest.fixture(scope="module")
def demo2(assets):
    return load_audio(assets / "demo2_audio.wav")


@pytest.fixture(scope="module")
def demo1_features(encoder, demo1):
    return encoder.features(demo1).tensor()


@pytest.fixture(scope="module")
def long_audio(demo1, demo2):
    """58.9 s of speech: two official 30 s windows, three overlapping ones."""
    return np.concatenate([demo2, demo1, demo2, demo1])


@pytest.fixture(scope="module")
def long_features(whisper_path, long_audio):
    """The long audio's features in both window modes, as tensors."""
    return {mode: AudioEncoder(whisper_path, window_mode=mode).features(long_audio).tensor() for mode in ("official", "overlap")}


def official_chunk_count(whisper_frames: int, fps: float) -> int:
    """The official `feature2chunks` loop, restated: emit frame i, then stop once its centre has
    passed the end of the features."""
    multiplier = 50.0 / fps
    count, i = 0, 0
    while True:
        centre = int(i * multiplier)
        count += 1
        i += 1
        if centre > whisper_frames:
            return count


def official_features(whisper_path, samples) -> torch.Tensor:
    """The official feature extraction restated with the openai-whisper package: one log-mel over
    the whole audio, independent 30 s segments padded with zeros, the embedding and every block's
    output (captured with hooks on the package's own encoder), each segment trimmed to half its
    mel frames."""
    model = whisper.load_model(str(whisper_path), device="cpu")
    captured = []
    model.encoder.blocks[0].register_forward_pre_hook(lambda module, args: captured.append(args[0]))
    for block in model.encoder.blocks:
        block.register_forward_hook(lambda module, args, output: captured.append(output))
    mel = whisper.log_mel_spectrogram(torch.from_numpy(samples))
    pieces = []
    with torch.no_grad():
        for seek in range(0, mel.shape[-1], 3000):
            captured.clear()
            model.encoder(whisper.pad_or_trim(mel[:, seek : seek + 3000], 3000)[None])
            kept = int((min(seek + 3000, mel.shape[-1]) - seek) / 2)
            pieces.append(torch.stack(captured, dim=2)[0, :kept])
    return torch.cat(pieces)


def frame_steps(features: torch.Tensor) -> torch.Tensor:
    """How far the features move from each Whisper frame to the next (all layers together)."""
    return (features[1:] - features[:-1]).flatten(1).norm(dim=1)


def local_median(steps: torch.Tensor, i: int, radius: int = 100) -> float:
    return torch.cat([steps[i - radius : i], steps[i + 1 : i + radius + 1]]).median().item()


# ---- Whisper features -----------------------------------------------------------------------------


def test_features_and_chunks_match_the_official_reference(encoder, reference, assets):
    expected = torch.load(reference / "audio_chunks.pt", weights_only=True)
    features = encoder.features(assets / "demo1_audio.wav")
    assert list(features.shape) == expected["feature_shape"] == [480, 5, 384]
    assert num_frames(features, fps=25) == expected["num_chunks"] == 242

    chunks = encoder.frame_features(assets / "demo1_audio.wav", fps=25)
    assert chunks.shape == (242, 50, 384)
    within("Whisper chunks", (chunks[expected["index"]] - expected["chunks"]).abs().max().item(), 2e-5)
    within("Whisper chunks, sum", abs(chunks.double().sum().item() / expected["sum"] - 1), 5e-8, "relative")
    within("Whisper chunks, sum of magnitudes", abs(chunks.double().abs().sum().item() / expected["abs_sum"] - 1), 5e-8, "relative")
    # Chunks cut on demand are the same as the convenience's.
    assert torch.equal(frame_chunks(features, start=100, count=16), chunks[100:116])


def test_official_mode_matches_the_official_segments_beyond_30_seconds(whisper_path, long_audio, long_features):
    expected = official_features(whisper_path, long_audio)
    assert expected.shape == long_features["official"].shape == (len(long_audio) // 320, 5, 384)
    assert (long_features["official"] - expected).abs().max().item() < 1e-4


@pytest.mark.parametrize("length", [320, 401, 16000 * 7 + 123])
@pytest.mark.parametrize("chunk_frames", [3, 64, 3000])
def test_log_mel_in_chunks_equals_whispers_whole_file_log_mel(demo1, length, chunk_frames):
    samples = np.ascontiguousarray(demo1[:length])
    expected = whisper.audio.log_mel_spectrogram(torch.from_numpy(samples), 80)
    assert torch.allclose(log_mel(samples, 80, chunk_frames=chunk_frames), expected, rtol=0, atol=1e-6)
    if chunk_frames == 3000:  # one chunk: the very same arithmetic
        assert torch.equal(log_mel(samples, 80, chunk_frames=chunk_frames), expected)


def test_the_decoder_is_not_loaded(encoder, whisper_path):
    checkpoint = torch.load(whisper_path, weights_only=True)["model_state_dict"]
    assert any(name.startswith("decoder.") for name in checkpoint)  # the file does hold a decoder
    encoder_numel = sum(t.numel() for name, t in checkpoint.items() if name.startswith("encoder."))
    assert sum(t.numel() for t in encoder.encoder.state_dict().values()) == encoder_numel
    assert all(p.dtype == torch.float32 for p in encoder.encoder.parameters())  # stored fp16, loaded fp32


@pytest.mark.parametrize("fps", [24, 25, 29.97, 30, 50, 60])
def test_frame_count_follows_the_official_rule(fps):
    for whisper_frames in (1, 7, 480, 991, 15000):
        assert num_frames(range(whisper_frames), fps) == official_chunk_count(whisper_frames, fps)


def test_chunks_at_30_fps_follow_the_official_centring(encoder, demo1, demo1_features):
    at_30 = encoder.frame_features(demo1, fps=30)
    assert num_frames(demo1_features, fps=25) == official_chunk_count(480, 25) == 242
    assert len(at_30) == official_chunk_count(480, 30) == 290
    for i in (0, 1, 7, 150, 289):
        centre = int(i * 50 / 30)
        rows = [min(max(j, 0), 479) for j in range(centre - 4, centre + 6)]
        assert torch.equal(at_30[i], demo1_features[rows].reshape(50, 384)), i


def test_chunks_are_the_ten_frames_around_the_centre_clamped_at_the_ends():
    features = torch.arange(20, dtype=torch.float32)[:, None, None].expand(20, 5, 384)

    def frames_of(chunk):
        return chunk.reshape(10, 5, 384)[:, 0, 0].tolist()

    assert frames_of(frame_chunks(features, start=3, count=1, fps=30)[0]) == list(range(1, 11))  # centre int(150/30) = 5
    assert frames_of(frame_chunks(features, start=0, count=1)[0]) == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]
    assert frames_of(frame_chunks(features, start=9, count=1)[0]) == [14, 15, 16, 17, 18, 19, 19, 19, 19, 19]
    # Frame-major: the 5 layers of Whisper frame 1 follow the 5 layers of Whisper frame 0.
    layered = torch.arange(20 * 5, dtype=torch.float32).reshape(20, 5, 1).expand(20, 5, 384)
    assert frame_chunks(layered, start=5, count=1)[0, :7, 0].tolist() == [30, 31, 32, 33, 34, 35, 36]
    assert frame_chunks(features, start=2, count=0).shape == (0, 50, 384)


def test_short_audio_is_identical_in_both_modes(whisper_path, demo1, demo1_features):
    official = AudioEncoder(whisper_path, window_mode="official").features(demo1).tensor()
    assert torch.equal(official, demo1_features)  # the default, "overlap"


def test_official_mode_jumps_at_30_seconds_and_overlap_mode_does_not(long_features):
    official, overlap = frame_steps(long_features["official"]), frame_steps(long_features["overlap"])
    seam = 1499  # the step from the last frame of the first 30 s window to the first of the next
    # Official: the jump at the seam is 2.6x the steps around it, larger than 99% of all steps.
    assert official[seam] > 2 * local_median(official, seam)
    assert official[seam] > official.quantile(0.99)
    # Overlap: an ordinary step there ...
    assert overlap[seam] < 1.2 * local_median(overlap, seam)
    # ... and where windows hand over (cross-fades over frames 1126-1374 and 1848-2096 here), no
    # step is larger than the content's own (the official's features there come from one window).
    for fade in (slice(1120, 1380), slice(1840, 2100)):
        assert overlap[fade].max() <= 1.05 * official[fade].max()
        assert overlap[fade].mean() <= 1.05 * official[fade].mean()


def test_overlap_mode_keeps_the_middle_of_each_window(whisper_path, long_audio, long_features):
    features = AudioEncoder(whisper_path).features(long_audio)
    starts = [start for start, _ in features.windows]
    assert starts == [0, 1000, len(features) - 1500]  # every 20 s, the last ending with the audio
    overlap = long_features["overlap"]
    middle = features.encoder.encode_window(features.mel, 2 * 1000)  # the window from 20 s to 50 s
    # Its middle is taken as it is; its edges are never used (the neighbours' middles are).
    assert torch.equal(overlap[1400:1800], middle[400:800])
    assert not torch.equal(overlap[1000:1100], middle[0:100])
    assert not torch.equal(overlap[2300:2500], middle[1300:1500])


def encodings_of(features, monkeypatch) -> list[int]:
    """The first encoder frame of each window `features` encodes from now on, as they start."""
    encoded, original = [], features.encoder.encode_window
    monkeypatch.setattr(features.encoder, "encode_window", lambda mel, start: encoded.append(start // 2) or original(mel, start))
    return encoded


def settled(encoded: list[int], count: int) -> list[int]:
    """`encoded` once it holds `count` windows (encodings run on threads of their own), and a moment more."""
    deadline = time.monotonic() + 30
    while len(encoded) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # time enough for an encoding that should not start
    return sorted(encoded)


def test_features_are_encoded_lazily_a_window_ahead_and_index_like_a_tensor(whisper_path, long_audio, long_features, monkeypatch):
    features = AudioEncoder(whisper_path).features(long_audio)
    encoded = encodings_of(features, monkeypatch)
    starts = [start for start, _ in features.windows]
    assert starts == [0, 1000, 1444]  # 58.9 s: overlap windows every 20 s, the last ending with the audio

    assert torch.equal(frame_chunks(features, start=0, count=16), frame_chunks(long_features["overlap"], start=0, count=16))
    assert settled(encoded, 2) == starts[:2]  # the first seconds need the first window, and the next is encoded meanwhile
    picked = torch.tensor([[5, 2900], [1400, 2100]])
    assert torch.equal(features[picked], long_features["overlap"][picked])
    assert torch.equal(features.tensor(), long_features["overlap"])
    assert settled(encoded, 3) == starts  # each window encoded once while reading forwards
    with pytest.raises(IndexError):
        features[torch.tensor([len(features)])]


def test_encoding_ahead_starts_the_window_a_time_is_read_from_first(whisper_path, long_audio, long_features, monkeypatch):
    features = AudioEncoder(whisper_path).features(long_audio)
    encoded = encodings_of(features, monkeypatch)
    features.encode_ahead(28.0)  # 1400: past the first window's fade-out, read from the second alone
    assert settled(encoded, 1) == [1000]
    assert torch.equal(features[torch.tensor([1400])], long_features["overlap"][1400:1401])
    assert settled(encoded, 2) == [1000, 1444]  # the second's read started the third, never the first


def test_an_encoding_error_is_raised_by_the_read_that_needs_it_and_the_next_read_tries_again(whisper_path, long_audio, long_features, monkeypatch):
    features = AudioEncoder(whisper_path).features(long_audio)

    def fail(mel, start):
        raise torch.OutOfMemoryError(f"CUDA out of memory (window at {start // 2})")

    monkeypatch.setattr(features.encoder, "encode_window", fail)
    features.encode_ahead(0.0)
    with pytest.raises(torch.OutOfMemoryError, match="window at 0"):
        frame_chunks(features, start=0, count=16)
    monkeypatch.undo()  # memory was freed: the next read encodes the window again
    assert torch.equal(frame_chunks(features, start=0, count=16), frame_chunks(long_features["overlap"], start=0, count=16))


def resident_mb() -> float:
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
def test_ten_minutes_are_cut_into_chunks_in_flat_memory(encoder, demo2):
    audio = np.tile(demo2, 30)  # 595 s: all its chunks at once would take 1.1 GB
    features = encoder.features(audio)
    total = num_frames(features)
    baseline, peak = resident_mb(), 0.0
    for start in range(0, total, 16):  # the pipeline's reading pattern: 16 frames at a time
        chunks = frame_chunks(features, start, min(16, total - start))
        peak = max(peak, resident_mb())
    assert total == official_chunk_count(len(audio) // 320, 25) and chunks.shape[1:] == (50, 384)
    assert peak - baseline < 150, (baseline, peak)


def test_encoder_input_errors_are_clear(whisper_path, tmp_path):
    with pytest.raises(FileNotFoundError, match="Whisper checkpoint was not found at .*tiny.pt: run `python -m scripts.download_weights`"):
        AudioEncoder(tmp_path / "tiny.pt")
    with pytest.raises(ValueError, match="window_mode must be 'overlap' or 'official'"):
        AudioEncoder(whisper_path, window_mode="centre")
    not_whisper = tmp_path / "model.pt"
    torch.save({"state_dict": {}}, not_whisper)
    with pytest.raises(ValueError, match="model.pt is not a Whisper checkpoint"):
        AudioEncoder(not_whisper)
    encoder = AudioEncoder(whisper_path)
    with pytest.raises(AudioError, match="must be mono"):
        encoder.features(np.zeros((2, SR), np.float32))
    with pytest.raises(AudioError, match="too short"):
        encoder.features(np.zeros(100, np.float32))
