"""Video in and out through the ffmpeg binary, one frame at a time.

Frames are raw RGB on a pipe, so a video of any length is never held in memory. Commands are
built as argument lists (ffmpeg-python), never as shell strings, and user paths are passed with
the `file:` protocol so no file name can be mistaken for an option.
"""

import json
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ffmpeg
import numpy as np


class MediaError(ValueError):
    """A media file cannot be used; the message says why and what to do."""


@dataclass
class MediaInfo:
    """What ffprobe reports about a file; width and height are as displayed (rotation applied)."""

    has_video: bool
    has_audio: bool
    width: int = 0
    height: int = 0
    fps: float = 0.0
    duration: float = 0.0
    start_time: float = 0.0
    rotation: int = 0
    video_codec: str = ""
    pix_fmt: str = ""
    audio_codec: str = ""
    sample_rate: int = 0
    channels: int = 0
    audio_duration: float = 0.0

    def frame_count(self, fps: float) -> int:
        """Approximate number of frames at `fps` (exact counts come from decoding)."""
        return math.ceil(round(self.duration * fps, 6))


def _file(path) -> str:
    return f"file:{os.fspath(path)}"


def probe(path) -> MediaInfo:
    """Inspect a media file; raises MediaError with a readable reason for unusable files."""
    path = Path(path)
    if not path.exists():
        raise MediaError(f"File not found: {path.name}.")
    if path.stat().st_size == 0:
        raise MediaError(f"{path.name} is empty (0 bytes).")
    command = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams", _file(path)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise MediaError(f"{path.name} is not a readable audio or video file ({_last_line(result.stderr)}).")
    data = json.loads(result.stdout or "{}")
    streams = data.get("streams", [])
    video = next((s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")), None)
    audio = next((s for s in streams if s.get("codec_type") == "audio"), None)
    format_duration = _float(data.get("format", {}).get("duration"))
    info = MediaInfo(has_video=video is not None, has_audio=audio is not None, duration=format_duration)
    if video:
        rotation = _rotation(video)
        width, height = int(video.get("width", 0)), int(video.get("height", 0))
        if rotation % 180:
            width, height = height, width
        info.width, info.height, info.rotation = width, height, rotation
        info.fps = _rate(video.get("avg_frame_rate")) or _rate(video.get("r_frame_rate"))
        info.duration = _float(video.get("duration")) or format_duration
        info.start_time = _float(video.get("start_time"))
        info.video_codec, info.pix_fmt = video.get("codec_name", ""), video.get("pix_fmt", "")
    if audio:
        info.audio_codec = audio.get("codec_name", "")
        info.sample_rate = int(audio.get("sample_rate", 0) or 0)
        info.channels = int(audio.get("channels", 0) or 0)
        info.audio_duration = _float(audio.get("duration")) or format_duration
    return info


def probe_video(path) -> MediaInfo:
    """`probe`, requiring a video stream with a usable size and frame rate."""
    info = probe(path)
    name = Path(path).name
    if not info.has_video:
        raise MediaError(f"{name} has no video stream; pass a video file (mp4, mov, mkv, webm, avi).")
    if info.width <= 0 or info.height <= 0 or info.fps <= 0:
        raise MediaError(f"{name} has a video stream ffprobe cannot size or time; re-encode it (e.g. to H.264 mp4).")
    return info


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


def _rate(text) -> float:
    if not text or text in ("0/0", "N/A"):
        return 0.0
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator or 1) if float(denominator or 1) else 0.0


def _rotation(stream: dict) -> int:
    for side_data in stream.get("side_data_list", []):
        if "rotation" in side_data:
            return int(round(float(side_data["rotation"]))) % 360
    return int(float(stream.get("tags", {}).get("rotate", 0))) % 360


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no details"


def read_frames(path, fps: float, start: int = 0, count: int | None = None, info: MediaInfo | None = None) -> Iterator[np.ndarray]:
    """Frames [start, start + count) of the video resampled to `fps`, as RGB uint8 (H, W, 3).

    Streams from one ffmpeg process. Frame indices are exact at any start: the process seeks
    (fast) to shortly before the frame, keeps the file's timestamps, and the fps filter counts
    frames from the file's start time, so a seek returns the same frames a full decode would.
    """
    info = info or probe_video(path)
    seek = max(0.0, info.start_time + start / fps - 2.0) if start > 0 else None
    stream = ffmpeg.input(_file(path), copyts=None, **({"ss": f"{seek:.6f}"} if seek is not None else {}))
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
            raise MediaError(f"Cannot decode {Path(path).name}: {_last_line(errors.read().decode(errors='replace'))}.")


def frames_in_order(path, fps: float, indices=None, chunk: int = 32) -> Iterator[np.ndarray]:
    """Frames of the video at `fps` in the order of `indices` (all frames when None).

    Runs of increasing indices stream from one decoder; a run going backwards (the ping-pong of
    "bounce" mode) is read `chunk` frames at a time and reversed, so memory stays bounded.
    """
    info = probe_video(path)
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


class VideoWriter:
    """Encode frames to an H.264 mp4 with the original audio, in one ffmpeg process.

    Use as a context manager. The file appears at `path` only when everything succeeded; on any
    error the partial files are removed. The encoded video waits in `work_dir` (default: next to
    `path`) until the audio is added. Audio from `audio_path` keeps its sample rate and channels
    and is cut or padded with silence to the video's length (frames written / fps).
    """

    def __init__(self, path, width: int, height: int, fps: float, audio_path=None, crf: int = 18, preset: str = "medium", work_dir=None):
        self.path = Path(path)
        self.work_dir = Path(work_dir) if work_dir else self.path.parent  # for the video-only intermediate
        self.width, self.height, self.fps = width, height, fps
        self.audio_path = audio_path
        self.crf, self.preset = crf, preset
        self.frames_written = 0
        self._process = None

    def __enter__(self) -> "VideoWriter":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".video.mp4", dir=self.work_dir)
        os.close(handle)
        self._video_only = Path(partial)
        self._errors = tempfile.TemporaryFile()
        frames = ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{self.width}x{self.height}", framerate=self.fps)
        # yuv420p needs even sizes: pad odd ones with one black row/column
        video = frames.video.filter("pad", "ceil(iw/2)*2", "ceil(ih/2)*2")
        command = (
            video.output(_file(self._video_only), vcodec="libx264", crf=self.crf, preset=self.preset, pix_fmt="yuv420p", format="mp4")
            .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
            .compile()
        )
        self._process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=self._errors)
        return self

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"Frame must be uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}.")
        try:
            self._process.stdin.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            raise MediaError(f"The video encoder stopped: {self._stderr()}") from None
        self.frames_written += 1

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is not None:
                self._process.kill()
                self._process.wait()
                return
            self._process.stdin.close()
            if self._process.wait() != 0:
                raise MediaError(f"Encoding {self.path.name} failed: {self._stderr()}")
            if self.frames_written == 0:
                raise MediaError("No frames were written.")
            self._mux()
        finally:
            self._errors.close()
            self._video_only.unlink(missing_ok=True)

    def _mux(self) -> None:
        """Add the audio (copied when it is AAC that only needs cutting, else AAC-encoded) and
        move the finished file into place."""
        duration = self.frames_written / self.fps
        handle, muxed = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mux.mp4", dir=self.path.parent)
        os.close(handle)
        muxed = Path(muxed)
        try:
            video = ffmpeg.input(_file(self._video_only)).video
            streams, output_args = [video], {"vcodec": "copy", "movflags": "+faststart", "t": f"{duration:.6f}", "format": "mp4"}
            if self.audio_path is not None:
                audio_info = probe(self.audio_path)
                audio = ffmpeg.input(_file(self.audio_path)).audio
                if audio_info.audio_codec == "aac" and audio_info.audio_duration >= duration:
                    output_args["acodec"] = "copy"
                else:
                    audio = audio.filter("apad", whole_dur=f"{duration:.6f}")
                    output_args.update(acodec="aac", audio_bitrate="256k")
                streams.append(audio)
            command = (
                ffmpeg.output(*streams, _file(muxed), **output_args)
                .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
                .compile()
            )
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise MediaError(f"Adding the audio to {self.path.name} failed: {_last_line(result.stderr)}")
            os.replace(muxed, self.path)
        finally:
            muxed.unlink(missing_ok=True)

    def _stderr(self) -> str:
        self._errors.seek(0)
        return _last_line(self._errors.read().decode(errors="replace"))
