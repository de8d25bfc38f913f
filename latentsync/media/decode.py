"""Decoding: video frames as RGB arrays streamed from one ffmpeg process at a time, and audio as
16 kHz mono samples.

Frames are raw RGB on a pipe, so a video of any length is never held in memory.
"""

import subprocess
import tempfile
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np

from ..config import AUDIO_SAMPLE_RATE
from .ffmpeg import MediaError, file_url, last_line
from .probe import MediaInfo, probe_video


class AudioError(MediaError):
    """The audio input cannot be used; the message says why and what to do."""


def read_frames(path, fps: float, start: int = 0, count: int | None = None, info: MediaInfo | None = None) -> Iterator[np.ndarray]:
    """Frames [start, start + count) of the video resampled to `fps`, as RGB uint8 (H, W, 3).

    Streams from one ffmpeg process. Frame indices are exact at any start: the process seeks
    (fast) to shortly before the frame, keeps the file's timestamps, and the fps filter counts
    frames from the file's start time, so a seek returns the same frames a full decode would.
    """
    info = info or probe_video(path)
    seek = max(0.0, info.start_time + start / fps - 2.0) if start > 0 else None
    stream = ffmpeg.input(file_url(path), copyts=None, **({"ss": f"{seek:.6f}"} if seek is not None else {}))
    video = stream.video.filter("fps", fps=fps, start_time=info.start_time)
    if start > 0:
        video = video.filter("select", f"gte(n,{start})")
    output_args = {"format": "rawvideo", "pix_fmt": "rgb24"}
    if count is not None:
        output_args["frames:v"] = count
    command = video.output("pipe:", **output_args).global_args("-nostdin", "-hide_banner", "-loglevel", "error").compile()
    frame_bytes = info.width * info.height * 3
    with tempfile.TemporaryFile() as errors:
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, stdin=subprocess.DEVNULL)
        produced = 0
        try:
            while count is None or produced < count:
                data = process.stdout.read(frame_bytes)
                if len(data) < frame_bytes:
                    break
                produced += 1
                yield np.frombuffer(data, np.uint8).reshape(info.height, info.width, 3)
        finally:
            process.stdout.close()
            if process.poll() is None:
                process.kill()
            returncode = process.wait()
        if returncode not in (0, -9) and produced == 0:
            errors.seek(0)
            raise MediaError(f"Cannot decode {Path(path).name}: {last_line(errors.read().decode(errors='replace'))}.")


def frames_in_order(path, fps: float, indices=None, chunk: int = 32, info: MediaInfo | None = None) -> Iterator[np.ndarray]:
    """Frames of the video at `fps` in the order of `indices` (all frames when None).

    Runs of increasing indices stream from one decoder; a run going backwards (the ping-pong of
    "bounce" mode) is read `chunk` frames at a time and reversed, so memory stays bounded. Pass
    the video's `info` when it is known, so the file is not probed again.
    """
    info = info or probe_video(path)
    if indices is None:
        yield from read_frames(path, fps, info=info)
        return
    indices = np.asarray(indices, dtype=np.int64)
    position = 0
    while position < len(indices):
        end = position + 1
        if end < len(indices) and indices[end] < indices[position]:
            while end < len(indices) and indices[end] <= indices[end - 1] and indices[end] >= indices[end - 1] - 1:
                end += 1
            yield from _backwards(path, fps, info, indices[position:end], chunk)
        else:
            while end < len(indices) and indices[end - 1] <= indices[end] <= indices[end - 1] + 1:
                end += 1
            yield from _forwards(path, fps, info, indices[position:end])
        position = end


def _forwards(path, fps, info, run) -> Iterator[np.ndarray]:
    """A non-decreasing run of consecutive-or-repeated indices from one decoder."""
    frames = read_frames(path, fps, start=int(run[0]), count=int(run[-1] - run[0] + 1), info=info)
    current_index, current = int(run[0]) - 1, None
    try:
        for index in run:
            while current_index < index:
                current, current_index = next(frames), current_index + 1
            yield current
    finally:
        frames.close()


def _backwards(path, fps, info, run, chunk) -> Iterator[np.ndarray]:
    """A non-increasing run, read in chunks from its far end."""
    cached_start, cached = None, []
    for index in run:
        index = int(index)
        if cached_start is None or not cached_start <= index < cached_start + len(cached):
            cached_start = max(0, index - chunk + 1)
            cached = list(read_frames(path, fps, start=cached_start, count=index - cached_start + 1, info=info))
        yield cached[index - cached_start]


def load_audio(path, sample_rate: int = AUDIO_SAMPLE_RATE) -> np.ndarray:
    """Decode the audio of any file ffmpeg reads (audio, or a video's audio track) to mono float32
    samples in [-1, 1] at `sample_rate`.

    The ffmpeg command and int16 scaling are Whisper's own `load_audio`, so features computed from
    these samples equal those the official code computes from the file.
    """
    path = Path(path)
    if not path.is_file():
        raise AudioError(f"Audio file not found: {path}; pass the path of an existing audio or video file.")
    command = [
        "ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0",
        "-i", file_url(path),
        "-f", "s16le", "-ac", "1", "-acodec", "pcm_s16le", "-ar", str(sample_rate), "-",
    ]
    result = subprocess.run(command, capture_output=True)
    if result.returncode != 0:
        raise _decoding_error(path, result.stderr.decode(errors="replace"))
    samples = np.frombuffer(result.stdout, np.int16).astype(np.float32)
    samples /= 32768.0  # in place: long audio is tens of megabytes
    if samples.size == 0:
        raise AudioError(f"{path.name} contains no audio samples (zero length); pass a file with sound in it.")
    return samples


def _decoding_error(path: Path, ffmpeg_message: str) -> AudioError:
    """Tell a file without an audio stream from one that cannot be decoded at all."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a", "-show_entries", "stream=index", "-of", "csv=p=0", file_url(path)],
        capture_output=True,
        text=True,
    )
    if probe.returncode == 0 and not probe.stdout.strip():
        return AudioError(f"{path.name} has no audio stream; pass a file with an audio track.")
    return AudioError(
        f"Cannot decode the audio of {path.name} ({last_line(ffmpeg_message)}); pass an audio file "
        "(wav, mp3, aac, m4a, ogg, opus, flac) or a video with an audio track."
    )

