"""Small file helpers shared by the pipeline, the weights downloader, the result cache and the
client: content hashes, atomic JSON writes, missing weight files, and a job's private folder."""

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

JOB_DIR_PREFIX = "latentsync-job-"  # then the process id, so a dead job's folder can be told apart


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


def require_weight_file(path, what: str) -> Path:
    """`path`, if it exists; else a FileNotFoundError saying which weight file is missing and how
    to get it. `what` names it, e.g. "Whisper checkpoint"."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{what} was not found at {path}: run `python -m scripts.download_weights` or pass its path.")
    return path


@contextmanager
def job_folder(parent=None):
    """A private folder for one job's intermediate files, under `parent` (default: the system's
    temporary folder), removed afterwards. Folders of killed jobs (whose process no longer runs)
    are removed first."""
    parent = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    parent.mkdir(parents=True, exist_ok=True)
    for folder in parent.glob(f"{JOB_DIR_PREFIX}*"):
        pid = folder.name[len(JOB_DIR_PREFIX) :].split("-")[0]
        if pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)
    folder = Path(tempfile.mkdtemp(prefix=f"{JOB_DIR_PREFIX}{os.getpid()}-", dir=parent))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True
