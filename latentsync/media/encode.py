"""Encoding: frames into an H.264 mp4 with the original audio, in one ffmpeg process."""

import os
import subprocess
import tempfile
from pathlib import Path

import ffmpeg
import numpy as np

from .ffmpeg import MediaError, file_url, last_line
from .probe import probe


class VideoWriter:
    """Encode frames to an H.264 mp4 with the original audio, in one ffmpeg process.

    Use as a context manager. The file appears at `path` only when everything succeeded; on any
    error the partial files are removed. The encoded video waits in `work_dir` (default: next to
    `path`) until the audio is added. Audio from `audio_path` keeps its sample rate and channels
    and is cut or padded with silence to the video's length (frames written / fps).
    """

    def __init__(self, path, width: int, height: int, fps: float, audio_path=None, crf: int = 18, work_dir=None):
        self.path = Path(path)
        self.work_dir = Path(work_dir) if work_dir else self.path.parent  # for the video-only intermediate
        self.width, self.height, self.fps = width, height, fps
        self.audio_path = audio_path
        self.crf = crf
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
            video.output(file_url(self._video_only), vcodec="libx264", crf=self.crf, preset="medium", pix_fmt="yuv420p", format="mp4")
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
            video = ffmpeg.input(file_url(self._video_only)).video
            streams, output_args = [video], {"vcodec": "copy", "movflags": "+faststart", "t": f"{duration:.6f}", "format": "mp4"}
            if self.audio_path is not None:
                audio_info = probe(self.audio_path)
                audio = ffmpeg.input(file_url(self.audio_path)).audio
                if audio_info.audio_codec == "aac" and audio_info.audio_duration >= duration:
                    output_args["acodec"] = "copy"
                else:
                    audio = audio.filter("apad", whole_dur=f"{duration:.6f}")
                    output_args.update(acodec="aac", audio_bitrate="256k")
                streams.append(audio)
            command = (
                ffmpeg.output(*streams, file_url(muxed), **output_args)
                .global_args("-nostdin", "-hide_banner", "-loglevel", "error", "-y")
                .compile()
            )
            result = subprocess.run(command, capture_output=True, text=True)
            if result.returncode != 0:
                raise MediaError(f"Adding the audio to {self.path.name} failed: {last_line(result.stderr)}")
            os.replace(muxed, self.path)
        finally:
            muxed.unlink(missing_ok=True)

    def _stderr(self) -> str:
        self._errors.seek(0)
        return last_line(self._errors.read().decode(errors="replace"))
