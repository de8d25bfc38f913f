"""The one way this package runs ffmpeg and ffprobe.

- Commands are argument lists, never shell strings, and user files are passed behind `file:`,
  so no file name can be mistaken for an option or another protocol.
- A user's file is opened only as one of the containers we accept (`ACCEPTED_DEMUXERS`) and only
  through the file protocol (`input_args`): a playlist, concat script or image-sequence pattern
  could make ffmpeg read other files of the machine, or wait forever on a live stream.
- Every process has a time budget scaled to the media it handles (`time_limit`), so nothing keeps
  running: a one-shot command is killed when the budget is spent (`run`), a streaming one when
  the time spent waiting on it adds up to the budget (`Process`).
- Failures read as one sentence that names the input ("The video input ..."), never a path.
"""

import os
import re
import select
import subprocess
import tempfile
import time
from pathlib import Path

# Demuxers (ffmpeg's names) a user's file may be opened with: the video, audio and still-image
# formats we accept. `image2` reads one still image; its pattern and glob expansion are turned
# off wherever it is used (IMAGE2_SINGLE_FILE).
ACCEPTED_DEMUXERS = (
    "mov", "mp4", "m4a", "3gp", "3g2", "mj2", "matroska", "webm", "avi", "mpegts",
    "wav", "mp3", "aac", "ogg", "flac", "aiff", "image2", "png_pipe", "jpeg_pipe", "webp_pipe",
)
VIDEO_FORMATS = "mp4, mov, mkv, webm, avi, ts, or a still image"
AUDIO_FORMATS = "wav, mp3, aac, m4a, ogg, opus, flac"
# The file names those containers go by, for upload forms (the content still decides: `probe`).
VIDEO_EXTENSIONS = (".mp4", ".mov", ".m4v", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".3gp", ".3g2")
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
AUDIO_EXTENSIONS = (".wav", ".mp3", ".aac", ".m4a", ".ogg", ".oga", ".opus", ".flac", ".aif", ".aiff", ".mka")
IMAGE2_SINGLE_FILE = ("-pattern_type", "none")  # a name like img%03d.png is one file, not a sequence
QUIET = ("-nostdin", "-hide_banner", "-loglevel", "error")
REFUSED_KINDS = {"hls": "an HLS playlist", "concat": "an ffconcat script", "dash": "a DASH manifest", "sdp": "an SDP session description"}


class MediaError(ValueError):
    """A media file cannot be used; the message says why and what to do."""


def file_url(path) -> str:
    """`path` for ffmpeg's command line: behind `file:`, so a name like `-i` or `http:x` is a file."""
    return f"file:{os.fspath(path)}"


def input_args(path, demuxer: str | None = None) -> list[str]:
    """The arguments that open a user's file as ffmpeg's next input: only as an accepted container
    (`demuxer`, from `probe`, when known) and only through the file protocol."""
    forced = ["-f", demuxer] if demuxer else []
    if demuxer == "image2":
        forced += IMAGE2_SINGLE_FILE
    return [*guard_args(), *forced, "-i", file_url(path)]


def guard_args() -> list[str]:
    """The demuxer and protocol allow-lists, for an ffmpeg input or an ffprobe command."""
    return ["-format_whitelist", ",".join(ACCEPTED_DEMUXERS), "-protocol_whitelist", "file"]


# The most time any one ffmpeg run gets, whatever a file declares (its frame rate is the file's
# word: a 10-minute 4K file declaring 1000 fps would otherwise get 11 days). 10 minutes of 4K at
# 60 fps, the largest input the service takes, is 36,000 frames: under 2 frames a second in this time.
MAX_TIME_LIMIT_S = 6 * 3600.0


def time_limit(seconds: float, width: int = 0, height: int = 0, fps: float = 0.0) -> float:
    """How long ffmpeg may take over `seconds` of media: a minute, plus real time, plus more for
    large frames (5 megapixels a second), up to MAX_TIME_LIMIT_S. Generous on a busy machine,
    never endless."""
    return min(MAX_TIME_LIMIT_S, 60.0 + max(0.0, seconds) * (1.0 + width * height * fps / 5e6))


def subject(role: str | None, path) -> str:
    """How a message names a file: "The video input" for a request's input, else its name."""
    return f"The {role} input" if role else Path(path).name


def format_length(seconds: float) -> str:
    """10 minutes, 1.5 minutes, 40 s."""
    return f"{seconds / 60:g} minutes" if seconds >= 60 else f"{seconds:g} s"


def last_line(text: str) -> str:
    """The last non-empty line of ffmpeg's stderr: where it says what went wrong."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no details"


def reason(stderr: str, paths=()) -> str:
    """ffmpeg's last error line without the internal addresses and without any of `paths`
    (or their `file:` URLs), which are server paths a caller must not see."""
    line = re.sub(r"\[[^\]]* @ 0x[0-9a-f]+\]\s*", "", last_line(stderr))
    for path in paths:
        for text in (file_url(path), os.fspath(path)):
            line = line.replace(f"{text}: ", "").replace(text, "the file")
    return line.strip(" :") or "no details"


def refuse_unaccepted(stderr: str, role: str | None, path) -> None:
    """Raise the one-sentence error when ffmpeg refused a demuxer outside ACCEPTED_DEMUXERS."""
    refused = re.search(r"\[(\w+) @ 0x[0-9a-f]+\] Format not on whitelist", stderr or "")
    if refused is None and "not on whitelist" not in (stderr or ""):
        return
    kind = REFUSED_KINDS.get(refused.group(1), f"a {refused.group(1)} file") if refused else "a kind of file"
    wanted = {"video": f"a video file ({VIDEO_FORMATS})", "audio": f"an audio file ({AUDIO_FORMATS}) or a video"}.get(role, "the media file")
    raise MediaError(f"{subject(role, path)} is {kind}, which can refer to other files and is not accepted; pass {wanted} itself.")


def run(command: list[str], timeout: float, role: str | None = None, path=None) -> subprocess.CompletedProcess:
    """Run ffmpeg or ffprobe to completion within `timeout` seconds. Returns the finished process
    (stdout as bytes, stderr as text; the caller judges the return code). A refused container and
    a spent time budget raise MediaError naming the input (`role`, else `path`'s name)."""
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:  # subprocess.run has killed it
        raise MediaError(f"{_timed_out(role, path, timeout)}.") from None
    result.stderr = result.stderr.decode(errors="replace")
    refuse_unaccepted(result.stderr, role, path)
    return result


def run_ffmpeg(*args, timeout: float | None = None, role: str | None = None, path=None) -> None:
    """Run `ffmpeg -nostdin -y <args>` quietly to completion; MediaError with ffmpeg's reason if it
    fails or outlasts `timeout` (default: what 10 minutes of media may take). A user's file must
    be opened with `input_args`; files we made ourselves (test media, segments) need not be."""
    result = run(["ffmpeg", *QUIET, "-y", *map(str, args)], timeout or time_limit(600.0), role, path)
    if result.returncode != 0:
        why = reason(result.stderr, [path] if path else [])
        raise MediaError(f"{subject(role, path)} could not be processed ({why})." if role else f"ffmpeg failed: {why}.")


def _timed_out(role, path, timeout) -> str:
    if role or path:
        return f"{subject(role, path)} could not be processed within {timeout:.0f} s (ffmpeg was stopped); re-encode it (e.g. to H.264 mp4) and try again"
    return f"ffmpeg took longer than {timeout:.0f} s and was stopped"


class Process:
    """A streaming ffmpeg: frames read from its stdout or written to its stdin.

    It has a time budget for the time spent waiting on it (a read that gets no data, a write it
    does not take, the wait for its exit); when the waits add up to more, it is killed and
    MediaError is raised. Time spent between calls (the caller working) does not count, so a slow
    consumer never times out a healthy process. Closing it early kills it. Use as a context
    manager: the process has ended when the block is left, whatever happened.
    """

    def __init__(self, command: list[str], budget: float, role: str | None = None, path=None, stdin: bool = False, stdout: bool = False):
        self.budget, self.role, self.path = budget, role, path
        self._granted = budget
        self._errors = tempfile.TemporaryFile()
        self._process = subprocess.Popen(
            command,
            stdin=subprocess.PIPE if stdin else subprocess.DEVNULL,
            stdout=subprocess.PIPE if stdout else subprocess.DEVNULL,
            stderr=self._errors,
        )
        if stdin:
            os.set_blocking(self._process.stdin.fileno(), False)

    def __enter__(self) -> "Process":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def pid(self) -> int:
        return self._process.pid

    def extend(self, seconds: float) -> None:
        """Give the process more time (e.g. for each frame written to an encoder)."""
        self.budget += seconds
        self._granted += seconds

    def read(self, size: int) -> bytearray:
        """Exactly `size` bytes of stdout, or fewer at its end (a new buffer each time)."""
        buffer = bytearray(size)
        view, filled, fd = memoryview(buffer), 0, self._process.stdout.fileno()
        while filled < size:
            self._wait_until_ready(fd, for_writing=False)
            count = os.readv(fd, [view[filled:]])
            if count == 0:
                break
            filled += count
        return buffer if filled == size else buffer[:filled]

    def write(self, data) -> None:
        """Write all of `data` to stdin; raises BrokenPipeError when the process has stopped."""
        view, fd = memoryview(data).cast("B"), self._process.stdin.fileno()
        while len(view):
            self._wait_until_ready(fd, for_writing=True)
            try:
                view = view[os.write(fd, view):]
            except BlockingIOError:
                continue

    def finish(self) -> int:
        """Close stdin (end of input), wait for the process to exit within the budget; its code."""
        if self._process.stdin and not self._process.stdin.closed:
            self._process.stdin.close()
        started = time.monotonic()
        try:
            return self._process.wait(timeout=max(0.0, self.budget))
        except subprocess.TimeoutExpired:
            self._expire()
        finally:
            self.budget -= time.monotonic() - started

    def close(self) -> None:
        """End the process now (if it still runs) and release its pipes."""
        for pipe in (self._process.stdin, self._process.stdout):
            if pipe and not pipe.closed:
                try:
                    pipe.close()
                except BrokenPipeError:
                    pass
        if self._process.poll() is None:
            self._process.kill()
        self._process.wait()
        self._errors.close()

    @property
    def returncode(self) -> int | None:
        return self._process.poll()

    def stderr(self) -> str:
        """What ffmpeg wrote to stderr so far."""
        self._errors.seek(0)
        return self._errors.read().decode(errors="replace")

    def _wait_until_ready(self, fd: int, for_writing: bool) -> None:
        started = time.monotonic()
        ready = select.select([], [fd], [], max(0.0, self.budget)) if for_writing else select.select([fd], [], [], max(0.0, self.budget))
        self.budget -= time.monotonic() - started
        if not any(ready):
            self._expire()

    def _expire(self):
        self._process.kill()
        self._process.wait()
        raise MediaError(f"{_timed_out(self.role, self.path, self._granted)}.")
