"""What every ffmpeg and ffprobe call shares: how user paths are passed, and how failures read.

Commands are argument lists (never shell strings), and user paths are passed with the `file:`
protocol so that no file name can be mistaken for an option or another protocol.
"""

import os


class MediaError(ValueError):
    """A media file cannot be used; the message says why and what to do."""


def file_url(path) -> str:
    """`path` for ffmpeg's command line: behind `file:`, so a name like `-i` or `http:x` is a file."""
    return f"file:{os.fspath(path)}"


def last_line(text: str) -> str:
    """The last non-empty line of ffmpeg's stderr: where it says what went wrong."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else "no details"
