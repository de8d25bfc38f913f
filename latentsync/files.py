"""Small file helpers shared by the pipeline, the weights downloader, the result cache and the
client: content hashes and JSON files written atomically and read leniently."""

import hashlib
import json
import os
from pathlib import Path


def sha256_of(path) -> str:
    """The sha256 of a file's bytes, read 8 MB at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(8 * 1024 * 1024), b""):
            digest.update(block)
    return digest.hexdigest()


def write_json_atomically(path, data, **dump_args) -> None:
    """Write `data` as JSON so that readers see the old file or the whole new one, never a part.

    The temporary name carries the process id, so two processes writing the same file do not
    share a temporary.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(json.dumps(data, **({"indent": 2} | dump_args)))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path) -> dict:
    """A JSON file's content, or {} when it is missing or unreadable (e.g. a state file to rebuild)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError):
        return {}
