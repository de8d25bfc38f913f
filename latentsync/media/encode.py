"""Encoding: frames into an H.264 mp4 with the original audio, in one ffmpeg process."""

import os
import tempfile
from pathlib import Path

import numpy as np

from .ffmpeg import QUIET, MediaError, Process, file_url, input_args, reason, run, time_limit
from .probe import probe


class VideoWriter:
    """Encode frames to an H.264 mp4 with the original audio, in one ffmpeg process.

    Use as a context manager. The file appears at `path` only when everything succeeded; on any
    error the partial files are removed. The encoded video waits in `work_dir` (default: next to
    `path`) until the audio is added. Audio from `audio_path` keeps its sample rate and channels
    and is cut or padded with silence to the video's length (frames written / fps).

    With `cuts` (frame indices), the encoder starts afresh at each: the frames between two cuts
    are encoded by a process of their own and the parts joined without re-encoding. No reference,
    rate control or look-ahead crosses a cut, so the frames on one side encode the same whatever
    the other side holds (a job with segments: outside them, exactly the encode of the source).
    """

    def __init__(self, path, width: int, height: int, fps: float, audio_path=None, crf: int = 18, work_dir=None, cuts=()):
        self.path = Path(path)
        self.work_dir = Path(work_dir) if work_dir else self.path.parent  # for the video-only intermediate
        self.width, self.height, self.fps = width, height, fps
        self.audio_path = audio_path
        self.crf = crf
        self.cuts = {cut for cut in cuts if cut > 0}
        self.frames_written = 0
        self._process = None
        self._parts: list[Path] = []  # with cuts: each part's video, joined into `_video_only` at the end
        self._time_per_frame = time_limit(1 / fps, width, height, fps) - time_limit(0)  # the encoder's budget grows by this

    def __enter__(self) -> "VideoWriter":
        self._audio = probe(self.audio_path, "audio") if self.audio_path is not None else None  # now, not after the last frame
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._video_only = self._temporary(".video.mp4")
        self._start_encoder()
        return self

    def _temporary(self, suffix: str) -> Path:
        handle, partial = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=suffix, dir=self.work_dir)
        os.close(handle)
        return Path(partial)

    def _start_encoder(self) -> None:
        """An encoder for the frames from here to the next cut (without cuts: the whole video)."""
        target = self._video_only
        if self.cuts:
            target = self._temporary(f".part{len(self._parts)}.mp4")
            self._parts.append(target)
        command = [
            "ffmpeg", *QUIET, "-y",
            "-protocol_whitelist", "pipe", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{self.width}x{self.height}", "-framerate", str(self.fps), "-i", "pipe:",
            "-vf", "pad=ceil(iw/2)*2:ceil(ih/2)*2",  # yuv420p needs even sizes: one black row/column for odd ones
            "-c:v", "libx264", "-crf", str(self.crf), "-preset", "medium", "-pix_fmt", "yuv420p", "-f", "mp4", file_url(target),
        ]
        self._process = Process(command, time_limit(0), stdin=True)

    def _finish_encoder(self) -> None:
        try:
            if self._process.finish() != 0:
                raise MediaError(f"Encoding {self.path.name} failed: {self._stderr()}")
        finally:
            self._process.close()

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"Frame must be uint8 ({self.height}, {self.width}, 3), got {frame.dtype} {frame.shape}.")
        if self.frames_written in self.cuts:
            self._finish_encoder()
            self._start_encoder()
        self._process.extend(self._time_per_frame)
        try:
            self._process.write(np.ascontiguousarray(frame).data)
        except BrokenPipeError:
            raise MediaError(f"The video encoder stopped: {self._stderr()}") from None
        self.frames_written += 1

    def __exit__(self, exc_type, exc, traceback) -> None:
        try:
            if exc_type is not None:
                return
            self._finish_encoder()
            if self.frames_written == 0:
                raise MediaError("No frames were written.")
            if self._parts:
                self._join_parts()
            self._mux()
        finally:
            self._process.close()
            for path in (self._video_only, *self._parts):
                path.unlink(missing_ok=True)

    def _join_parts(self) -> None:
        """The parts, one after the other, into the video-only file (the concat demuxer, on a list
        of our own files, copying)."""
        listing = self._temporary(".parts.txt")
        self._parts.append(listing)  # removed with them
        quoted = (str(part.resolve()).replace("'", "'\\''") for part in self._parts[:-1])  # the concat list's quoting
        listing.write_text("".join(f"file '{path}'\n" for path in quoted))
        command = ["ffmpeg", *QUIET, "-y", "-f", "concat", "-safe", "0", "-i", file_url(listing), "-c", "copy", "-f", "mp4", file_url(self._video_only)]
        result = run(command, timeout=time_limit(self.frames_written / self.fps))
        if result.returncode != 0:
            raise MediaError(f"Joining the encoded parts of {self.path.name} failed: {reason(result.stderr, [listing, self._video_only])}")

    def _mux(self) -> None:
        """Add the audio (copied when it is AAC that only needs cutting, else AAC-encoded) and
        move the finished file into place."""
        duration = self.frames_written / self.fps
        handle, muxed = tempfile.mkstemp(prefix=f".{self.path.stem}.", suffix=".mux.mp4", dir=self.path.parent)
        os.close(handle)
        muxed = Path(muxed)
        try:
            inputs, audio_args = ["-i", file_url(self._video_only)], []
            if (audio := self._audio) is not None:
                inputs += input_args(self.audio_path, audio.demuxer)
                if audio.audio_codec == "aac" and audio.audio_duration >= duration:
                    audio_args = ["-map", "1:a:0", "-c:a", "copy"]
                else:
                    audio_args = ["-map", "1:a:0", "-af", f"apad=whole_dur={duration:.6f}", "-c:a", "aac", "-b:a", "256k"]
            command = [
                "ffmpeg", *QUIET, "-y", *inputs, "-map", "0:v:0", "-c:v", "copy", *audio_args,
                "-t", f"{duration:.6f}", "-movflags", "+faststart", "-f", "mp4", file_url(muxed),
            ]
            role = "audio" if self.audio_path is not None else None
            result = run(command, timeout=time_limit(duration), role=role, path=self.audio_path or self.path)
            if result.returncode != 0:
                raise MediaError(f"Adding the audio to {self.path.name} failed: {reason(result.stderr, [self.audio_path, self._video_only, muxed])}")
            os.replace(muxed, self.path)
        finally:
            muxed.unlink(missing_ok=True)

    def _stderr(self) -> str:
        return reason(self._process.stderr(), [self._video_only])
