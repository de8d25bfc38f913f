"""Voice activity with silero-vad: the pauses of real speech, of speech mixed with generated
silence, music and noise, and a whole job through the command line over a music gap.

The mixes are made here from demo2_audio.wav, which the detector's settings were NOT tuned on
(they were tuned on demo1_audio.wav and the demo videos' own speech tracks), and from sound
generated with a seeded generator: a 3 s gap of silence, music or room noise cut in mid-sentence,
a music bed under everything, room noise under everything, and the speech alone. Which parts of
a mix are speech is known from the clean speech before mixing.
"""

import importlib.metadata
import json
import wave

import numpy as np
import pytest

from latentsync.audio import (
    SPEECH_HANGOVER_S,
    VAD_FRAME,
    VAD_FRAME_S,
    silent_spans,
    speech_probability,
    voice_activity,
)
from latentsync.config import AUDIO_SAMPLE_RATE as SR
from latentsync.planner import Action, Span, label_pauses
from scripts import inference
from tests.media import frames, psnr, small_clip, tiny_files
from tests.test_audio import demo1, demo2  # noqa: F401 (fixtures: the demo speech as samples)

GAP_S = 3.0
GAP_POSITIONS = (0.3, 0.55, 0.8)  # where a gap is cut into the speech, as a share of its length
GAP_KINDS = ("silence", "music", "music over a music bed", "room noise")
MIN_GAP_PAUSED = 0.85  # every gap without a voice is at least this much pause ...
MAX_SPEECH_PAUSED = 0.03  # ... and at most this share of the speech is
MUSIC_BED_DB = -12  # a music bed this far under the speech
ROOM_NOISE_DB = -25  # room noise under the speech
NOISE_GAP_DB = -20  # a gap of room noise alone


# ---- generated sound ------------------------------------------------------------------------------


def level_db(samples: np.ndarray) -> float:
    return float(10 * np.log10(np.mean(np.square(samples, dtype=np.float64)) + 1e-20))


def at_level(samples: np.ndarray, db: float) -> np.ndarray:
    return (samples * 10 ** ((db - level_db(samples)) / 20)).astype(np.float32)


def music(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """A three-note chord (five harmonics a note) over a bass note, a new one every 0.5 s with a
    kick drum, and a noise-burst hi-hat every 0.25 s."""
    n, beat = int(seconds * SR), SR // 2
    out = np.zeros(n)
    for start in range(0, n, beat):
        t = np.arange(min(beat, n - start)) / SR
        root = 110 * 2 ** (rng.integers(0, 12) / 12)
        envelope = np.minimum(1, t / 0.02) * np.exp(-t / 0.8)
        for note in (2 * root, 2 * root * 2 ** ((3 + rng.integers(0, 2)) / 12), 3 * root):  # minor or major
            for k in range(1, 6):
                out[start : start + len(t)] += envelope * np.sin(2 * np.pi * note * k * t + rng.uniform(0, 2 * np.pi)) / k
        out[start : start + len(t)] += 1.5 * envelope * np.sin(2 * np.pi * root / 2 * t)
        out[start : start + len(t)] += 3 * np.exp(-t / 0.05) * np.sin(2 * np.pi * (50 + 60 * np.exp(-t / 0.03)) * t)
    for start in range(0, n, beat // 2):
        hit = min(n - start, int(0.06 * SR))
        out[start : start + hit] += 0.8 * rng.standard_normal(hit) * np.exp(-np.arange(hit) / (0.015 * SR))
    return out.astype(np.float32)


def room_noise(seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Pink noise (air, a fan) with mains hum (50 Hz and harmonics)."""
    n = int(seconds * SR)
    spectrum = np.fft.rfft(rng.standard_normal(n))
    frequency = np.maximum(np.fft.rfftfreq(n, 1 / SR), 1.0)
    pink = np.fft.irfft(spectrum / np.sqrt(frequency), n)
    hum = sum(np.sin(2 * np.pi * 50 * k * np.arange(n) / SR) / k for k in (1, 2, 3, 5))
    return at_level(pink, 0) + 0.3 * at_level(hum, 0)


# ---- what is speech ------------------------------------------------------------------------------


def speech_regions(clean: np.ndarray, frame: int = SR // 100) -> list[tuple[float, float]]:
    """Where clean speech sounds: 10 ms frames within 40 dB of its loud frames and 10 dB above its
    quiet ones, joined across gaps under 0.3 s (shorter gaps are not pauses)."""
    frames_ = clean[: len(clean) // frame * frame].reshape(-1, frame).astype(np.float64)
    levels = 10 * np.log10(np.mean(frames_**2, axis=1) + 1e-12)
    sounding = np.flatnonzero(levels > max(np.percentile(levels, 99) - 40, np.percentile(levels, 5) + 10))
    regions, first = [], sounding[0]
    for previous, index in zip(sounding[:-1], sounding[1:]):
        if index - previous > 0.3 * SR / frame:
            regions.append((first, previous + 1))
            first = index
    regions.append((first, sounding[-1] + 1))
    return [(a * frame / SR, b * frame / SR) for a, b in regions]


def paused(pauses, start: float, end: float) -> float:
    """Seconds of [start, end) inside the pauses."""
    return sum(max(0.0, min(b, end) - max(a, start)) for a, b in pauses)


def speech_share_paused(pauses, regions) -> float:
    return sum(paused(pauses, a, b) for a, b in regions) / sum(b - a for a, b in regions)


# ---- the mixes -----------------------------------------------------------------------------------


def with_gap(speech: np.ndarray, at_s: float, gap: np.ndarray):
    """`gap` cut into `speech` at `at_s`; the speech regions shifted around it."""
    cut = round(at_s * SR)
    regions = []
    for a, b in speech_regions(speech):
        regions += [(a, min(b, at_s))] if a < at_s else []
        regions += [(max(a, at_s) + GAP_S, b + GAP_S)] if b > at_s else []
    return np.concatenate([speech[:cut], gap, speech[cut:]]), regions


def gap_mix(speech: np.ndarray, kind: str, position: float):
    """(samples, the gap's (start, end), the speech regions) for a gap of `kind`."""
    rng = np.random.default_rng([GAP_POSITIONS.index(position), len(kind)])
    at_s = round(position * len(speech) / SR, 2)
    loudness = level_db(speech[speech != 0])
    gap = {
        "silence": np.zeros(int(GAP_S * SR), np.float32),
        "music": at_level(music(GAP_S, rng), loudness),
        "music over a music bed": at_level(music(GAP_S, rng), loudness),
        "room noise": at_level(room_noise(GAP_S, rng), loudness + NOISE_GAP_DB),
    }[kind]
    samples, regions = with_gap(speech, at_s, gap)
    if kind == "music over a music bed":
        samples = samples + at_level(music(len(samples) / SR, rng), loudness + MUSIC_BED_DB)
    return samples, (at_s, at_s + GAP_S), regions


def table_row(name, pauses, gap, regions) -> str:
    gap_share = f"{paused(pauses, *gap) / GAP_S:.0%}" if gap else "-"
    return f"{name}: gap {gap_share} pause, speech {speech_share_paused(pauses, regions):.1%} pause; pauses {pauses}"


@pytest.mark.parametrize("position", GAP_POSITIONS)
@pytest.mark.parametrize("kind", GAP_KINDS)
def test_a_gap_without_a_voice_is_a_pause_and_the_speech_is_not(demo2, kind, position):
    samples, gap, regions = gap_mix(demo2, kind, position)
    pauses = silent_spans(samples)
    row = table_row(f"{kind} at {gap[0]} s", pauses, gap, regions)
    assert paused(pauses, *gap) >= MIN_GAP_PAUSED * GAP_S, row
    assert speech_share_paused(pauses, regions) <= MAX_SPEECH_PAUSED, row


@pytest.mark.parametrize("under", [None, "music bed", "room noise"])
def test_speech_throughout_is_not_a_pause(demo2, under):
    rng = np.random.default_rng(7)
    loudness = level_db(demo2[demo2 != 0])
    beneath = {
        None: np.zeros(len(demo2), np.float32),
        "music bed": at_level(music(len(demo2) / SR, rng), loudness + MUSIC_BED_DB),
        "room noise": at_level(room_noise(len(demo2) / SR, rng), loudness + ROOM_NOISE_DB),
    }[under]
    pauses = silent_spans(demo2 + beneath)
    regions = speech_regions(demo2)
    assert speech_share_paused(pauses, regions) <= MAX_SPEECH_PAUSED, table_row(f"speech, {under} under it", pauses, None, regions)
    # the one real pause, 0.65 s at 16.2 s, is found under the music and the noise as well
    assert any(a < 16.5 and b > 16.8 for a, b in pauses), pauses


def test_pauses_name_their_detector(demo1):
    assert silent_spans(demo1).detector == f"silero-vad {importlib.metadata.version('silero-vad')}"


def test_only_silence_spans_holding_a_detected_pause_name_the_detector():
    spans = [Span(0, 10, Action.GENERATED), Span(10, 20, Action.SILENCE), Span(20, 30, Action.GENERATED), Span(30, 40, Action.SILENCE)]
    silent = np.arange(40) // 10 == 1  # frames 30-39 are silence past the audio's end, not a pause
    labelled = label_pauses(spans, silent, "silero-vad 6.2.3")
    assert [span.details for span in labelled] == [{}, {"detector": "silero-vad 6.2.3"}, {}, {}]
    assert all(not span.details for span in label_pauses(spans[:1] + [Span(10, 20, Action.SILENCE)], silent, None))


# ---- the detector on speech alone ------------------------------------------------------------------


def frame_levels_db(samples: np.ndarray, frame: int = 480) -> np.ndarray:
    frames_ = samples[: len(samples) // frame * frame].reshape(-1, frame).astype(np.float64)
    return 10 * np.log10(np.mean(frames_**2, axis=1) + 1e-12)


def assert_spans_are_real_pauses(samples, spans):
    """No clearly audible 30 ms frame (louder than -30 dBFS; the speech is at -20 dBFS) lies even
    partly inside a silent span, and most frames inside are quieter than -40 dBFS."""
    levels = frame_levels_db(samples)
    starts = np.arange(len(levels)) * 0.03
    for start, end in spans:
        touching = (starts + 0.03 > start) & (starts < end)
        assert levels[touching].max() < -30 and np.median(levels[touching]) < -40, (start, end)


def test_voice_activity_flags_speech_per_frame(demo1):
    probability = speech_probability(demo1)
    speech = voice_activity(demo1)
    assert len(probability) == len(speech) == -(-len(demo1) // VAD_FRAME)  # 32 ms frames, the last one padded
    assert probability.dtype == np.float32 and probability.min() >= 0 and probability.max() <= 1
    assert not speech[:11].any()  # the demo opens with 0.36 s of digital silence
    assert speech.mean() > 0.8
    # Blocks of frames carry the model's state: any block size gives the same probabilities.
    assert np.array_equal(speech_probability(np.tile(demo1, 3))[: len(probability) - 1], probability[:-1])


def test_speech_alone_has_only_its_real_pauses(demo1, demo2):
    # demo1 opens with 0.45 s of near-silence and pauses for 0.36 s at 6.85 s; its other pauses
    # between words are under 0.3 s. demo2 pauses for 0.75 s at 16.2 s.
    assert np.allclose(silent_spans(demo1), [(0.0, 0.39), (6.9, 7.17)], atol=0.05)
    assert np.allclose(silent_spans(demo2), [(16.3, 16.95)], atol=0.1)
    assert_spans_are_real_pauses(demo1, silent_spans(demo1))
    assert_spans_are_real_pauses(demo2, silent_spans(demo2))


@pytest.mark.parametrize("noise_dbfs", [None, -60, -50])  # digital silence, low room noise
def test_inserted_pauses_are_found_at_the_right_times(demo1, noise_dbfs):
    rng = np.random.default_rng(0)
    for at in (1.5, 2.5, 5.5, 8.0):  # mid-sentence
        pause = np.zeros(int(1.5 * SR), np.float32)
        if noise_dbfs is not None:
            pause = (rng.standard_normal(len(pause)) * 10 ** (noise_dbfs / 20)).astype(np.float32)
        audio = np.concatenate([demo1[: int(at * SR)], pause, demo1[int(at * SR) :]])
        spans = silent_spans(audio)
        inserted = [(start, end) for start, end in spans if end > at and start < at + 1.5]
        assert len(inserted) == 1, (at, spans)
        start, end = inserted[0]
        assert start == pytest.approx(at, abs=0.1) and end == pytest.approx(at + 1.5, abs=0.1), (at, spans)
        assert_spans_are_real_pauses(audio, spans)


def test_a_click_inside_a_pause_does_not_split_it(demo1):
    pause = np.zeros(int(1.5 * SR), np.float32)
    pause[int(0.7 * SR) : int(0.7 * SR) + 480] = demo1[2 * SR : 2 * SR + 480]  # 30 ms of speech at 3.2 s
    audio = np.concatenate([demo1[: int(2.5 * SR)], pause, demo1[int(2.5 * SR) :]])
    assert voice_activity(audio)[98:103].any()  # the detector hears it
    in_pause = [(start, end) for start, end in silent_spans(audio) if end > 2.5 and start < 4.0]
    assert in_pause == [(pytest.approx(2.5, abs=0.1), pytest.approx(4.0, abs=0.1))]


def test_short_dropouts_inside_speech_are_not_pauses(demo1, demo2):
    hangover = round(SPEECH_HANGOVER_S / VAD_FRAME_S)
    found = 0
    for speech in (demo1, demo2):
        raw = voice_activity(speech)
        edges = np.flatnonzero(np.diff(raw.astype(np.int8))) + 1
        runs = zip(edges[:-1], edges[1:])  # the runs between two changes: bounded on both sides
        dropouts = [(a * VAD_FRAME_S, b * VAD_FRAME_S) for a, b in runs if not raw[a] and b - a < hangover]
        found += len(dropouts)
        spans = silent_spans(speech, min_silence_s=0.01)  # even when asking for the shortest pauses
        for a, b in dropouts:
            assert not any(start < b and end > a for start, end in spans), ((a, b), spans)
        assert_spans_are_real_pauses(speech, spans)
    assert found >= 2  # the detector does drop out inside words


def test_silence_alone_is_one_span():
    assert silent_spans(np.zeros(2 * SR, np.float32)) == [(0.0, 2.0)]
    assert silent_spans(np.zeros(100, np.float32)) == []
    assert silent_spans(np.zeros(0, np.float32)) == []


# ---- a whole job -----------------------------------------------------------------------------------


def test_a_job_keeps_the_original_frames_over_a_music_gap(demo1, tmp_path):
    """The command line on 3.2 s of demo1_video.mp4 with a dub whose middle 1.6 s are music."""
    video = small_clip(tmp_path / "video.mp4", seconds=3.2)
    gap_start, gap_end = 0.8, 2.4
    music_gap = at_level(music(gap_end - gap_start, np.random.default_rng(3)), level_db(demo1[demo1 != 0]))
    dub = np.concatenate([demo1[int(1.0 * SR) : int(1.8 * SR)], music_gap, demo1[int(1.8 * SR) : int(2.6 * SR)]])
    audio = tmp_path / "dub.wav"
    with wave.open(str(audio), "wb") as wav:
        wav.setnchannels(1), wav.setsampwidth(2), wav.setframerate(SR)
        wav.writeframes(np.round(np.clip(dub, -1, 1) * 32767).astype(np.int16).tobytes())
    files, out = tiny_files(), tmp_path / "out.mp4"
    code = inference.main([
        "--unet_config_path", str(files.unet_config), "--inference_ckpt_path", str(files.unet_checkpoint),
        "--whisper_path", str(files.whisper), "--vae_path", str(files.vae_dir), "--mask_path", str(files.mask),
        "--resolution", str(files.resolution), "--face_detector", "mediapipe", "--inference_steps", "1",
        "--video_path", str(video), "--audio_path", str(audio), "--video_out_path", str(out),
    ])
    assert code == 0
    report = json.loads(out.with_suffix(".report.json").read_text())
    silence = [span for span in report["spans"] if span["action"] == "silence"]
    assert len(silence) == 1 and silence[0]["detector"] == f"silero-vad {importlib.metadata.version('silero-vad')}", report["spans"]
    span = silence[0]
    assert gap_start < span["start"] <= gap_start + 0.45 and gap_end - 0.15 <= span["end"] < gap_end, span
    # Over the gap the output shows the source's frames (inside the 3-frame blends); around it the mouth is regenerated.
    source, output = frames(video), frames(out)
    first, last = round(span["start"] * 25) + 3, round(span["end"] * 25) - 3
    assert last - first >= 20 and psnr(source[first:last], output[first:last]) > 38
    assert psnr(source[:15], output[:15]) < 38 and psnr(source[65:80], output[65:80]) < 38
