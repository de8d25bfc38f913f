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


class FrameReader:
    """Frames of the video at `fps` by index, asked for in any order, with bounded memory.

    A request at or a little ahead of the decoder reads on (a frame asked for again is kept); a
    step back (the ping-pong of "bounce" mode) decodes the `chunk` frames up to it at once, so
    going backwards costs one decoder per `chunk` frames; any other jump starts a decoder at the
    frame (at the video's start when the frame is near it). Indices are exact wherever a decoder starts (see `read_frames`). Pass the video's `info`
    when it is known, so the file is not probed again; `close()` ends the decoder.
    """

    def __init__(self, path, fps: float, info: MediaInfo | None = None, chunk: int = 32, role: str | None = "video"):
        self.path, self.fps, self.chunk, self.role = path, fps, chunk, role
        self.info = info or probe_video(path, role)
        self.read_on = max(chunk, math.ceil(2 * fps))  # frames worth decoding rather than seeking over (a seek starts 2 s early)
        self._stream: Iterator[np.ndarray] | None = None
        self._next = 0  # the stream's next frame
        self._held_start, self._held = 0, []  # frames that need no decoding: the last one read, or a chunk
        self._last = -1  # the index asked for last

    def __getitem__(self, index: int) -> np.ndarray:
        index = int(index)
        if not self._held_start <= index < self._held_start + len(self._held):
            if self._stream is not None and self._next <= index < self._next + self.read_on:
                self._read_on_to(index)
            elif index == self._last - 1:
                self._read_chunk_up_to(index)
            else:  # a decoder from the start when the frame is near it (no seek), else at the frame
                self.close()
                start = 0 if index < self.read_on else index
                self._stream, self._next = self._decode(start), start
                self._read_on_to(index)
        self._last = index
        return self._held[index - self._held_start]

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None

    def _decode(self, start: int, count: int | None = None) -> Iterator[np.ndarray]:
        return read_frames(self.path, self.fps, start, count, info=self.info, role=self.role)

    def _read_on_to(self, index: int) -> None:
        while self._next <= index:
            frame = next(self._stream, None)
            if frame is None:
                raise IndexError(f"frame {index} is past the end of the video ({self._next} frames)")
            self._held_start, self._held, self._next = self._next, [frame], self._next + 1

    def _read_chunk_up_to(self, index: int) -> None:
        start = max(0, index - self.chunk + 1)
        self._held_start, self._held = start, list(self._decode(start, index - start + 1))
        if len(self._held) != index - start + 1:
            raise IndexError(f"frame {index} is past the end of the video")


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
