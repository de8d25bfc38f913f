"""The audio of a job with segments: the source video's own audio with each segment's audio in its
span (`segments.compose_audio`), decoded as samples for the model or written as a WAV file for
the output.

The source's audio runs at least as long as the video (silence where it has none, or where it
ends early), so every output frame has audio; the encoder cuts it to the video's length.
"""

import wave
from pathlib import Path

import numpy as np

from ..segments import Segment, audio_piece, compose_audio, name
from .decode import load_audio
from .probe import MediaInfo, probe


def segment_audio_role(index: int) -> str:
    """How messages name segment `index`'s own audio: "The segment 2 audio input ..."."""
    return f"{name(index)} audio"


def spliced_audio(video_path, info: MediaInfo, job_audio, segments: list[Segment], sample_rate: int, channels: int = 1,
                  max_seconds: float | None = None) -> tuple[np.ndarray, list[float]]:
    """The output's audio at `sample_rate` (mono (n,), else (n, channels)), and for each segment
    how many of its seconds have speech (less than its length when its audio ends early)."""
    length = round(info.duration * sample_rate)
    source = np.zeros((length,) if channels == 1 else (length, channels), np.float32)
    if info.has_audio:
        decoded = load_audio(video_path, sample_rate, max_seconds, role="video", channels=channels)
        if len(decoded) >= len(source):
            source = decoded
        else:
            source[: len(decoded)] = decoded
    job = load_audio(job_audio, sample_rate, max_seconds, channels=channels) if job_audio is not None and any(not s.own_audio for s in segments) else None
    pieces, covered = [], []
    for index, segment in enumerate(segments):
        samples = load_audio(segment.audio, sample_rate, max_seconds, role=segment_audio_role(index), channels=channels) if segment.own_audio else job
        piece, seconds = audio_piece(samples, segment, sample_rate)
        pieces.append((segment.start, segment.end, piece))
        covered.append(seconds)
    return compose_audio(source, pieces, sample_rate), covered


def output_format(video_path, info: MediaInfo, job_audio, segments: list[Segment]) -> tuple[int, int]:
    """The sample rate and channels of the output's audio: the source's, else the first other
    audio's (the job's, then the segments' own)."""
    if info.has_audio:
        return info.sample_rate, info.channels
    for index, path in [(None, job_audio)] + [(i, s.audio) for i, s in enumerate(segments) if s.own_audio]:
        if path is not None:
            found = probe(path, "audio" if index is None else segment_audio_role(index))
            if found.has_audio:
                return found.sample_rate, found.channels
    return 48000, 1


def write_wav(path, samples: np.ndarray, sample_rate: int) -> Path:
    """16-bit PCM WAV of float samples in [-1, 1], (n,) or (n, channels)."""
    path = Path(path)
    pcm = (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")
    with wave.open(str(path), "wb") as file:
        file.setnchannels(1 if pcm.ndim == 1 else pcm.shape[1])
        file.setsampwidth(2)
        file.setframerate(sample_rate)
        file.writeframes(pcm.tobytes())
    return path
