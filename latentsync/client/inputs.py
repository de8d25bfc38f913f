"""What a job's inputs can be: a URL (passed through as it is) or a local file; and its segments,
whose audio is either too."""

import re
from dataclasses import replace
from pathlib import Path

from ..segments import Segment, SegmentError, name, parse_segments

URL = re.compile(r"^(https?|data):")


def is_url(source) -> bool:
    return bool(URL.match(str(source)))


def local_file(source) -> Path:
    """`source` as an existing file; FileNotFoundError naming it otherwise."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Input file not found: {path}")
    return path


def job_segments(value) -> list[Segment]:
    """A job's segments from a list (of dicts or `Segment`s), JSON text, or the path of a JSON file
    (whose relative audio paths are relative to it); each segment's audio a URL or an existing
    local file. None or "" means none."""
    if not value:
        return []
    folder = None
    if isinstance(value, (str, Path)) and not str(value).lstrip().startswith("["):
        path = Path(value)
        try:
            value, folder = path.read_text(encoding="utf-8"), path.parent
        except OSError as error:
            raise SegmentError(f"The segments file {path.name} cannot be read ({error.strerror}).") from None
    resolved = []
    for index, segment in enumerate(parse_segments(value)):
        if segment.own_audio and not is_url(segment.audio):
            if not isinstance(segment.audio, str):
                raise SegmentError(f"{name(index)}'s audio must be the path or URL of an audio file, got {segment.audio!r}.")
            path = Path(segment.audio).expanduser()
            segment = replace(segment, audio=str(local_file(path if path.is_absolute() or folder is None else folder / path)))
        resolved.append(segment)
    return resolved
