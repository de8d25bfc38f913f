"""Audio decoding, Whisper features against the official reference, and voice activity."""

import subprocess

import numpy as np
import pytest
import torch

from latentsync.audio import AudioEncoder, AudioError, frame_chunks, load_audio, official_chunk_count, silent_spans


@pytest.fixture(scope="module")
def encoder(reference):
    return AudioEncoder(reference / "whisper_tiny_random.pt")


@pytest.fixture(scope="module")
def demo_samples(assets):
    return load_audio(assets / "demo1_audio.wav")


def ffmpeg(*args):
    subprocess.run(["ffmpeg", "-nostdin", "-y", "-loglevel", "error", *map(str, args)], check=True)


def test_features_and_chunks_match_the_official(encoder, reference, assets):
    expected = torch.load(reference / "audio_chunks.pt", weights_only=True)
    features = encoder.features(assets / "demo1_audio.wav")
    assert list(features.shape) == expected["feature_shape"]
    count = official_chunk_count(len(features), fps=25)
    assert count == expected["num_chunks"]
    chunks = encoder.frame_features(assets / "demo1_audio.wav", fps=25)
    assert chunks.shape == (count, 50, 384)
    assert (chunks[expected["index"]] - expected["chunks"]).abs().max().item() < 1e-4
    assert chunks.double().sum().item() == pytest.approx(expected["sum"], rel=1e-3)
    assert chunks.double().abs().sum().item() == pytest.approx(expected["abs_sum"], rel=1e-3)


def test_chunk_count_and_centring_follow_the_official_rule_at_any_fps():
    def official_loop(length, fps):  # the official loop, restated: emit, then stop once past the end
        i, count = 0, 0
        while True:
            start = int(i * 50.0 / fps)
            count += 1
            i += 1
            if start > length:
                return count

    for length in (1, 7, 480, 991):
        for fps in (24, 25, 29.97, 30):
            assert official_chunk_count(length, fps) == official_loop(length, fps)

    features = torch.arange(20, dtype=torch.float32)[:, None, None].expand(20, 5, 384)
    chunk = frame_chunks(features, start=3, count=1, fps=30)[0].reshape(10, 5, 384)[:, 0, 0]
    centre = int(3 * 50 / 30)  # 5
    assert chunk.tolist() == [float(i) for i in range(centre - 4, centre + 6)]
    edge = frame_chunks(features, start=0, count=1, fps=25)[0].reshape(10, 5, 384)[:, 0, 0]
    assert edge.tolist() == [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]  # clamped at the start


def test_long_audio_has_no_jump_at_30_seconds(reference, assets):
    long_audio = np.concatenate([load_audio(assets / "demo2_audio.wav"), load_audio(assets / "demo1_audio.wav"), load_audio(assets / "demo2_audio.wav")])
    assert len(long_audio) / 16000 > 45

    def steps(mode):
        features = AudioEncoder(reference / "whisper_tiny_random.pt", window_mode=mode).features(long_audio).tensor()
        assert len(features) == len(long_audio) // 160 // 2
        return (features[1:] - features[:-1]).flatten(1).norm(dim=1)

    official, overlap = steps("official"), steps("overlap")
    boundary = 1499  # between the last frame of the first 30 s window and the first of the next
    assert official[boundary] > official.quantile(0.95)  # the glitch users see every 30 s
    assert overlap[boundary] <= overlap.quantile(0.75)
    # Inside the cross-fade (frames 1107-1357 here: the middle of the last window's overlap) steps
    # are as large as the content's own, no larger.
    fade = slice(1100, 1360)
    assert overlap[fade].max() <= 1.1 * official[fade].max()
    assert overlap[fade].mean() <= 1.1 * official[fade].mean()


def test_short_audio_is_identical_in_both_modes(reference, demo_samples):
    official = AudioEncoder(reference / "whisper_tiny_random.pt", window_mode="official").features(demo_samples).tensor()
    overlap = AudioEncoder(reference / "whisper_tiny_random.pt").features(demo_samples).tensor()
    assert torch.equal(official, overlap)


@pytest.mark.parametrize("suffix,codec_args", [
    (".mp3", ["-c:a", "libmp3lame"]),
    (".m4a", ["-c:a", "aac"]),
    (".ogg", ["-c:a", "libopus"]),
    (".flac", ["-c:a", "flac"]),
    (".wav", ["-ar", "44100", "-ac", "2"]),
])
def test_load_audio_decodes_common_formats(tmp_path, assets, demo_samples, suffix, codec_args):
    path = tmp_path / f"speech{suffix}"
    ffmpeg("-i", assets / "demo1_audio.wav", *codec_args, path)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and abs(len(samples) - len(demo_samples)) < 0.1 * 16000
    assert np.abs(samples).max() <= 1.0 and np.abs(samples).mean() > 0.01


def test_load_audio_reads_the_track_of_a_video(assets):
    samples = load_audio(assets / "demo1_video.mp4")
    assert abs(len(samples) / 16000 - 10.0) < 0.1


def test_load_audio_errors_are_clear(tmp_path, assets):
    with pytest.raises(AudioError, match="not found"):
        load_audio(tmp_path / "missing.wav")
    silent_video = tmp_path / "no_audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=1", silent_video)
    with pytest.raises(AudioError, match="has no audio stream"):
        load_audio(silent_video)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(AudioError, match="Cannot decode the audio"):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", empty)
    with pytest.raises(AudioError, match="zero length|Cannot decode"):
        load_audio(empty)


def test_silent_spans_find_inserted_pauses(demo_samples):
    rng = np.random.default_rng(0)
    before, after = demo_samples[: 4 * 16000], demo_samples[4 * 16000 :]
    for pause in (np.zeros(32000, np.float32), (rng.standard_normal(32000) * 0.003).astype(np.float32)):
        spans = silent_spans(np.concatenate([before, pause, after]))
        inserted = [s for s in spans if s[0] < 6.0 and s[1] > 4.0]
        assert len(inserted) == 1
        start, end = inserted[0]
        assert 4.0 <= start <= 4.25 and 5.85 <= end <= 6.0
    speech_only = silent_spans(demo_samples)
    assert sum(end - start for start, end in speech_only) < 0.6  # continuous speech is not called silence


def test_silent_spans_on_pure_silence_cover_everything():
    assert silent_spans(np.zeros(16000 * 2, np.float32)) == [(0.0, 2.0)]


def test_features_are_encoded_window_by_window_with_weights_summing_to_one(reference, assets):
    long_audio = np.concatenate([load_audio(assets / "demo2_audio.wav")] * 4)  # 79 s: 4 overlapping windows
    features = AudioEncoder(reference / "whisper_tiny_random.pt").features(long_audio)
    assert len(features.starts) == 4 and features.starts[-1] == len(features) - 1500
    frames = torch.arange(len(features))
    total = sum(features._weight(k, frames) for k in range(len(features.starts)))
    assert torch.allclose(total, torch.ones(len(features)))
    picked = torch.tensor([[5, 3900], [1400, 2100]])  # any order, any shape
    everything = features.tensor()
    assert torch.equal(features[picked], everything[picked])
    assert len(features._cache) <= 3  # never all windows at once
