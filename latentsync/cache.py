"""An on-disk result cache: the same inputs and settings return the stored output instead of
running the model again.

Layout under the cache root:
    entries/<key>/      finished results; `entry.json` (file sizes) is written last and marks it complete
    work/<key>.<id>/    results being produced; renamed into entries/ only when complete
    locks/<key>.lock    one producer per key; an OS lock, so a killed process leaves no stale lock

Entries are evicted least-recently-used first (a hit refreshes the entry's time) to keep the
cache under its size cap. Entries another process is working on are never evicted.
"""

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping

from filelock import FileLock, Timeout

from .config import REPO_ROOT
from .weights import sha256_of

ENTRY_MARKER = "entry.json"


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the library code that shapes outputs: every .py under latentsync/ except the
    Replicate client, plus the configs. Any change there invalidates cached results."""
    digest = hashlib.sha256()
    package = REPO_ROOT / "latentsync"
    sources = [p for p in sorted(package.rglob("*.py")) if "client" not in p.relative_to(package).parts]
    for path in sources + sorted((REPO_ROOT / "configs").rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(REPO_ROOT)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _canonical(value):
    if isinstance(value, float) and value.is_integer():
        return int(value)  # 2.0 and 2 mean the same setting
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in sorted(value.items())}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return value


def cache_key(video_path, audio_path, params: Mapping, model_version: str) -> str:
    """sha256 over the video's and audio's bytes, the parameters, the model and the code version.
    File names do not matter, only content."""
    payload = json.dumps(
        {
            "video": sha256_of(video_path),
            "audio": sha256_of(audio_path),
            "params": _canonical(params),
            "model": model_version,
            "code": code_version(),
        },
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


@dataclass
class CacheResult:
    dir: Path  # holds the produced files
    hit: bool


class ResultCache:
    def __init__(self, root, max_bytes: int = 20 * 1024**3):
        self.root = Path(root)
        self.max_bytes = max_bytes
        for name in ("entries", "work", "locks"):
            (self.root / name).mkdir(parents=True, exist_ok=True)

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self.root / "locks" / f"{key}.lock"))

    def get_or_create(self, key: str, produce: Callable[[Path], None]) -> CacheResult:
        """The entry for `key`, calling `produce(folder)` to create it if there is none.

        Two callers with the same key: one produces, the other waits and gets the hit.
        If `produce` raises, nothing is stored and the exception propagates.
        """
        with self._lock(key):
            entry = self.root / "entries" / key
            if _complete(entry):
                os.utime(entry / ENTRY_MARKER)  # most recently used
                return CacheResult(entry, hit=True)
            shutil.rmtree(entry, ignore_errors=True)  # a broken or half-written entry
            work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=self.root / "work"))
            try:
                produce(work)
                sizes = {p.name: p.stat().st_size for p in work.iterdir() if p.is_file()}
                (work / ENTRY_MARKER).write_text(json.dumps({"files": sizes, "created": time.time()}))
                os.replace(work, entry)
            finally:
                shutil.rmtree(work, ignore_errors=True)
        self.clean(keep=key)
        return CacheResult(entry, hit=False)

    def clean(self, keep: str | None = None) -> None:
        """Remove abandoned work folders and evict least-recently-used entries over the size cap."""
        for work in (self.root / "work").iterdir():
            key = work.name.split(".")[0]
            if self._is_free(key):  # its producer is gone
                shutil.rmtree(work, ignore_errors=True)
        entries = []
        for entry in (self.root / "entries").iterdir():
            if _complete(entry):
                entries.append(((entry / ENTRY_MARKER).stat().st_mtime, _size(entry), entry))
            elif self._is_free(entry.name):
                shutil.rmtree(entry, ignore_errors=True)
        total = sum(size for _, size, _ in entries)
        for _, size, entry in sorted(entries):
            if total <= self.max_bytes:
                break
            if entry.name == keep:
                continue
            lock = self._lock(entry.name)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # in use
            try:
                shutil.rmtree(entry, ignore_errors=True)
                total -= size
            finally:
                lock.release()

    def _is_free(self, key: str) -> bool:
        lock = self._lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        lock.release()
        return True


def _complete(entry: Path) -> bool:
    try:
        sizes = json.loads((entry / ENTRY_MARKER).read_text())["files"]
    except (OSError, ValueError, KeyError):
        return False
    return all((entry / name).is_file() and (entry / name).stat().st_size == size for name, size in sizes.items())


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.iterdir() if p.is_file())


def place(source: Path, destination: Path) -> None:
    """Put a cached file at `destination` atomically: a hard link when possible, else a copy."""
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{os.getpid()}.tmp")
    temporary.unlink(missing_ok=True)
    try:
        os.link(source, temporary)
    except OSError:
        shutil.copyfile(source, temporary)
    os.replace(temporary, destination)
