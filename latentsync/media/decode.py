"""Decoding: video frames as RGB arrays streamed from one ffmpeg process at a time, and audio as
16 kHz mono samples.

Frames are raw RGB on a pipe, so a video of any length is never held in memory. Every frame has
the size the probe reported: a stream that changes resolution midway is scaled back to it, so
its frames can neither come out garbled nor grow past the size that was checked. `max_seconds`
caps what is decoded, whatever the file's header declares.
"""

import math
from pathlib import Path
from typing import Iterator

import numpy as np

from ..config import AUDIO_SAMPLE_RATE
from .ffmpeg import AUDIO_FORMATS, QUIET, MediaError, Process, format_length, input_args, reason, run, subject, time_limit
from .probe import MediaInfo, probe, probe_video


class AudioError(MediaError):
    """The audio input cannot be used; the message says why and what to do."""


def read_frames(
    path, fps: float, start: int = 0, count: int | None = None, info: MediaInfo | None = None,
    max_seconds: float | None = None, role: str | None = "video",
) -> Iterator[np.ndarray]:
    """Frames [start, start + count) of the video resampled to `fps`, as RGB uint8 (H, W, 3).

    Streams from one ffmpeg process. Frame indices are exact at any start: the process seeks
    (fast) to shortly before the frame, keeps the file's timestamps, and the fps filter counts
    frames from the file's start time, so a seek returns the same frames a full decode would.
    With `max_seconds`, a video holding more than that many seconds of frames raises MediaError
    when the first frame past the limit is reached.
    """
    info = info or probe_video(path, role)
    limit = math.ceil(max_seconds * fps) if max_seconds is not None else None
    if limit is not None:
        count = max(0, limit + 1 - start) if count is None else min(count, max(0, limit + 1 - start))
    frame_bytes = info.width * info.height * 3
    command = _frames_command(path, fps, start, count, info)
    seconds = count / fps if count is not None else info.duration
    with Process(command, time_limit(seconds + 2.0, info.width, info.height, max(fps, info.fps)), role, path, stdout=True) as process:
        produced = 0
        while count is None or produced < count:
            data = process.read(frame_bytes)
            if len(data) < frame_bytes:
                break
            if limit is not None and start + produced >= limit:
                raise MediaError(f"{subject(role, path)} holds more than {format_length(max_seconds)} of video, the limit; split it into parts.")
            produced += 1
            yield np.frombuffer(data, np.uint8).reshape(info.height, info.width, 3)
        returncode = process.finish() if produced == 0 else 0
        if returncode != 0:
            raise MediaError(f"{subject(role, path)} cannot be decoded ({reason(process.stderr(), [path])}).")


def _frames_command(path, fps: float, start: int, count: int | None, info: MediaInfo) -> list[str]:
    """ffmpeg decoding frames [start, start + count) at `fps` to raw RGB of the probed size."""
    seek = ["-ss", f"{max(0.0, info.start_time + start / fps - 2.0):.6f}"] if start > 0 else []
    filters = [f"fps=fps={fps}:start_time={info.start_time}"]
    if start > 0:
        filters.append(f"select=gte(n\\,{start})")
    filters.append(f"scale={info.width}:{info.height}")  # fixed: a mid-stream size change is scaled back
    frames = ["-frames:v", str(count)] if count is not None else []
    return [
        "ffmpeg", *QUIET, "-copyts", *seek, *input_args(path, info.demuxer),
        "-map", f"0:{info.video_stream}", "-vf", ",".join(filters), *frames, "-f", "rawvideo", "-pix_fmt", "rgb24", "pipe:",
    ]


def frames_in_order(
    path, fps: float, indices=None, chunk: int = 32, info: MediaInfo | None = None,
    max_seconds: float | None = None, role: str | None = "video",
) -> Iterator[np.ndarray]:
    """Frames of the video at `fps` in the order of `indices` (all frames when None).

    Runs of increasing indices stream from one decoder; a run going backwards (the ping-pong of
    "bounce" mode) is read `chunk` frames at a time and reversed, so memory stays bounded. Pass
    the video's `info` when it is known, so the file is not probed again. `max_seconds` and
    `role` are read_frames'.
    """
    info = info or probe_video(path, role)

    def decode(start: int = 0, count: int | None = None) -> Iterator[np.ndarray]:
        return read_frames(path, fps, start, count, info=info, max_seconds=max_seconds, role=role)

    if indices is None:
        yield from decode()
        return
    indices = np.asarray(indices, dtype=np.int64)
    position = 0
    while position < len(indices):
        end = position + 1
        if end < len(indices) and indices[end] < indices[position]:
            while end < len(indices) and indices[end] <= indices[end - 1] and indices[end] >= indices[end - 1] - 1:
                end += 1
            yield from _backwards(decode, indices[position:end], chunk)
        else:
            while end < len(indices) and indices[end - 1] <= indices[end] <= indices[end - 1] + 1:
                end += 1
            yield from _forwards(decode, indices[position:end])
        position = end


def _forwards(decode, run) -> Iterator[np.ndarray]:
    """A non-decreasing run of consecutive-or-repeated indices from one decoder."""
    frames = decode(int(run[0]), int(run[-1] - run[0] + 1))
    current_index, current = int(run[0]) - 1, None
    try:
        for index in run:
            while current_index < index:
                current, current_index = next(frames), current_index + 1
            yield current
    finally:
        frames.close()


def _backwards(decode, run, chunk) -> Iterator[np.ndarray]:
    """A non-increasing run, read in chunks from its far end."""
    cached_start, cached = None, []
    for index in run:
        index = int(index)
        if cached_start is None or not cached_start <= index < cached_start + len(cached):
            cached_start = max(0, index - chunk + 1)
            cached = list(decode(cached_start, index - cached_start + 1))
        yield cached[index - cached_start]


def load_audio(path, sample_rate: int = AUDIO_SAMPLE_RATE, max_seconds: float | None = None, role: str | None = "audio", channels: int = 1) -> np.ndarray:
    """Decode the audio of any accepted file (audio, or a video's audio track) to mono float32
    samples in [-1, 1] at `sample_rate`.

    The ffmpeg command and int16 scaling are Whisper's own `load_audio`, so features computed from
    these samples equal those the official code computes from the file. With `max_seconds`,
    decoding stops just past the limit and audio longer than that raises AudioError, whatever
    the file's header declares. With `channels` > 1 the samples come as (n, channels), mixed or
    spread by ffmpeg's channel layouts.
    """
    path = Path(path)
    try:
        info = probe(path, role)
    except MediaError as error:
        raise AudioError(str(error)) from None
    if not info.has_audio:
        raise AudioError(f"{subject(role, path)} has no audio stream; pass a file with an audio track.")
    cut = ["-t", f"{max_seconds + 1.0:.6f}"] if max_seconds is not None else []
    command = [
        "ffmpeg", *QUIET, "-threads", "0", *input_args(path, info.demuxer),
        *cut, "-f", "s16le", "-ac", str(channels), "-acodec", "pcm_s16le", "-ar", str(sample_rate), "-",
    ]
    seconds = min(info.audio_duration, max_seconds) if max_seconds is not None else info.audio_duration
    result = run(command, timeout=time_limit(seconds), role=role, path=path)
    if result.returncode != 0:
        raise AudioError(
            f"{subject(role, path)} cannot be decoded ({reason(result.stderr, [path])}); "
            f"pass an audio file ({AUDIO_FORMATS}) or a video with an audio track."
        )
    if max_seconds is not None and len(result.stdout) // (2 * channels) > round(max_seconds * sample_rate):
        raise AudioError(f"{subject(role, path)} holds more than {format_length(max_seconds)} of audio, the limit; split it into parts.")
    samples = np.frombuffer(result.stdout, np.int16).astype(np.float32)
    samples /= 32768.0  # in place: long audio is tens of megabytes
    if samples.size == 0:
        raise AudioError(f"{subject(role, path)} contains no audio samples (zero length); pass a file with sound in it.")
    return samples if channels == 1 else samples.reshape(-1, channels)
