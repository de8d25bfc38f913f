"""What a job's video or audio can be: a URL (passed through as it is) or a local file."""

import re
from pathlib import Path

URL = re.compile(r"^(https?|data):")


def is_url(source) -> bool:
    return bool(URL.match(str(source)))


def local_file(source) -> Path:
    """`source` as an existing file; FileNotFoundError naming it otherwise."""
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"Input file not found: {path}")
    return path
