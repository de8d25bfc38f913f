"""An on-disk result cache: the same inputs and settings return the stored output instead of
running the model again.

Layout under the cache root:
    entries/<key>/      finished results; `entry.json` (each file's size and sha256) is written
                        before the folder is renamed into place, so a folder here is complete
    work/<key>.<id>/    results being produced, and entries being deleted; never served
    locks/<key>.lock    one producer per key; an OS lock (flock), so a killed process leaves no
                        stale lock. Lock files are empty and are kept: deleting one safely while
                        another process may be opening it is not possible with flock.

A hit is served only after every file's size and sha256 match the manifest, so a truncated or
edited entry (the user's output is a hard link to the cached file) is produced again.

Entries are evicted least-recently-used first (a hit refreshes the manifest's mtime) to keep the
cache under its size cap. An entry whose lock another process holds is never evicted. The
folder `get_or_create` returns is not locked once it returns: copy the files out (`place`)
straight away, and give the cache room for several results so a fresh one is never the oldest.
"""

import errno
import hashlib
import json
import numbers
import os
import re
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from filelock import FileLock, Timeout

from .config import REPO_ROOT
from .files import sha256_of

MANIFEST = "entry.json"
KEY_PATTERN = re.compile(r"[0-9A-Za-z_-]{1,128}")
DEFAULT_MAX_BYTES = 20 * 1024**3


@lru_cache(maxsize=1)
def code_version() -> str:
    """A hash of the code and configs that shape outputs, computed once per process.

    It covers every .py under latentsync/ except the client (latentsync/client/, which only talks
    to servers) and the web app (latentsync/app/, a page over the pipeline), and every file under
    configs/. Being coarse is deliberate: any edit there invalidates cached results, which is
    cheaper than serving a stale output.
    """
    digest = hashlib.sha256()
    package = REPO_ROOT / "latentsync"
    sources = [p for p in package.rglob("*.py") if p.relative_to(package).parts[0] not in ("client", "app")]
    configs = [p for p in (REPO_ROOT / "configs").rglob("*") if p.is_file()]
    for path in sorted(sources + configs):
        content = path.read_bytes()
        digest.update(f"{path.relative_to(REPO_ROOT).as_posix()}\0{len(content)}\0".encode())
        digest.update(content)
    return digest.hexdigest()[:16]


def cache_key(video_path, audio_path, params: Mapping, model: Mapping | str, scope: str = "") -> str:
    """sha256 over the video's and audio's bytes, the parameters, the model and the code version.

    Only the files' content counts, not their names. `params` must hold every setting that
    changes the output, as JSON-like values; numbers are compared by value, so 2 and 2.0 match.
    `audio_path` None: a job without audio of its own (segments with their own audio, keyed in `params`).
    `model` is what was loaded: its version label and, from `LipsyncPipeline.from_files`, the
    weights' sha256, the precision, the device type and the face detector actually in use.
    `scope` keeps callers apart (a web app's visitors): the same job in another scope misses.
    """
    payload = {
        "video": sha256_of(video_path),
        "audio": sha256_of(audio_path) if audio_path is not None else None,
        "params": _canonical(params, "params"),
        "model": _canonical(model, "model"),
        "code": code_version(),
        "scope": scope,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _canonical(value, where: str):
    """`value` as plain JSON values, with equal numbers spelled the same way."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        return int(value) if value.is_integer() else value
    if isinstance(value, Mapping):
        return {str(k): _canonical(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v, f"{where}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{where} is a {type(value).__name__}; a cache key takes only numbers, strings, booleans, None, "
        "lists and mappings. Input files are keyed by their content: pass them as video_path/audio_path."
    )


@dataclass(frozen=True)
class CacheResult:
    dir: Path  # holds the produced files
    hit: bool  # True when served from the cache without calling `produce`


class _Entry(NamedTuple):
    key: str
    size: int
    last_used: float


class ResultCache:
    """Finished results by key, in folders under `root`, kept under `max_bytes` in total and,
    with `max_age_s`, no longer than that after their last use (an older entry is a miss;
    `remove_expired` and every insert delete such entries)."""

    def __init__(self, root, max_bytes: int = DEFAULT_MAX_BYTES, max_age_s: float | None = None):
        if max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}.")
        if max_age_s is not None and max_age_s <= 0:
            raise ValueError(f"max_age_s must be positive, got {max_age_s}.")
        self.root = Path(root)
        self.max_bytes, self.max_age_s = max_bytes, max_age_s
        self.entries, self.work, self.locks = (self.root / name for name in ("entries", "work", "locks"))
        for folder in (self.entries, self.work, self.locks):
            folder.mkdir(parents=True, exist_ok=True)
        self._remove_abandoned_work()

    def get_or_create(self, key: str, produce: Callable[[Path], None]) -> CacheResult:
        """The entry for `key`, calling `produce(folder)` to write its files if there is none.

        Two callers with the same key: one produces, the other waits and gets the hit. If
        `produce` raises, nothing is stored and the exception propagates (a full disk is
        reported as such). An entry larger than `max_bytes` is returned but not kept: the
        next insert deletes it.
        """
        if not KEY_PATTERN.fullmatch(key):
            raise ValueError(f"Cache key {key!r} must be 1-128 letters, digits, '_' or '-' (use cache_key()).")
        entry = self.entries / key
        with self._lock(key):
            if _intact(entry) and not self._expired((entry / MANIFEST).stat().st_mtime):
                os.utime(entry / MANIFEST)  # now the most recently used
                return CacheResult(entry, hit=True)
            if entry.exists():
                self._discard(entry, key)  # broken, tampered with or expired
            self._produce_into(entry, key, produce)
        self._remove_abandoned_work()
        self._evict(newest=key)
        return CacheResult(entry, hit=False)

    def _produce_into(self, entry: Path, key: str, produce: Callable[[Path], None]) -> None:
        work = Path(tempfile.mkdtemp(prefix=f"{key}.", dir=self.work))
        try:
            produce(work)
            _write_manifest(work)
            os.replace(work, entry)  # atomic: readers see no entry or a complete one
        except OSError as error:
            if error.errno in (errno.ENOSPC, errno.EDQUOT):
                raise OSError(
                    error.errno,
                    f"No space left on device while producing a result ({error}). Nothing was stored; "
                    f"free space on the disk holding {error.filename or self.root} and try again.",
                ) from error
            raise
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def remove_expired(self) -> None:
        """Delete the entries not used for longer than `max_age_s` (none without it)."""
        if self.max_age_s is not None:  # else nothing expires: no need to read the manifests
            self._without_expired(self._complete_entries())

    def _without_expired(self, entries: list[_Entry]) -> list[_Entry]:
        """`entries` less the expired ones, which are deleted (those not in use)."""
        return [e for e in entries if not (self._expired(e.last_used) and self._discard_unless_in_use(e.key))]

    def _evict(self, newest: str) -> None:
        """Delete expired entries, then too-big ones and then the least recently used until the
        cache fits."""
        entries = self._without_expired(self._complete_entries())  # `newest` was just made: not expired
        total = sum(e.size for e in entries)
        for e in sorted(entries, key=lambda e: (e.size <= self.max_bytes, e.last_used)):
            if total <= self.max_bytes:
                return
            if e.key == newest:
                # Its caller is about to read it. If it alone overflows the cap, it must not push
                # out the others: the next insert deletes it.
                if e.size > self.max_bytes:
                    total -= e.size
                continue
            if self._discard_unless_in_use(e.key):
                total -= e.size

    def _expired(self, last_used: float) -> bool:
        return self.max_age_s is not None and time.time() - last_used > self.max_age_s

    def _complete_entries(self) -> list[_Entry]:
        """Entries with a manifest whose file sizes check out (hashes are checked on hits only)."""
        complete = []
        for entry in self.entries.iterdir():
            manifest = _read_manifest(entry)
            if manifest is not None and _sizes_match(entry, manifest):
                complete.append(_Entry(entry.name, _size(entry), (entry / MANIFEST).stat().st_mtime))
            else:
                self._discard_unless_in_use(entry.name)
        return complete

    def _discard_unless_in_use(self, key: str) -> bool:
        lock = self._lock(key)
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return False
        try:
            self._discard(self.entries / key, key)
        finally:
            lock.release()
        return True

    def _discard(self, entry: Path, key: str) -> None:
        """Remove an entry atomically: move it out of entries/ first, then delete it."""
        doomed = self.work / f"{key}.discard-{uuid.uuid4().hex}"
        try:
            os.replace(entry, doomed)
        except FileNotFoundError:
            return
        shutil.rmtree(doomed, ignore_errors=True)

    def _remove_abandoned_work(self) -> None:
        """Delete work folders whose key nobody holds the lock for: their process died."""
        for work in self.work.iterdir():
            key = work.name.split(".")[0]
            lock = self._lock(key)
            try:
                lock.acquire(timeout=0)
            except Timeout:
                continue  # being produced right now
            try:
                shutil.rmtree(work, ignore_errors=True)
            finally:
                lock.release()

    def _lock(self, key: str) -> FileLock:
        return FileLock(str(self.locks / f"{key}.lock"))


def _write_manifest(work: Path) -> None:
    files = sorted(p for p in work.rglob("*") if p.is_file())
    if not files:
        raise ValueError(f"The result producer wrote no files into {work}.")
    if (work / MANIFEST).exists():
        raise ValueError(f"The result producer must not write {MANIFEST}: the cache keeps its manifest under that name.")
    manifest = {p.relative_to(work).as_posix(): {"size": p.stat().st_size, "sha256": sha256_of(p)} for p in files}
    (work / MANIFEST).write_text(json.dumps({"files": manifest}, indent=1))


def _read_manifest(entry: Path) -> dict | None:
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
        return {name: (int(f["size"]), str(f["sha256"])) for name, f in files.items()}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _sizes_match(entry: Path, manifest: dict) -> bool:
    try:
        return all((entry / name).stat().st_size == size for name, (size, _) in manifest.items())
    except OSError:
        return False


def _intact(entry: Path) -> bool:
    """Whether `entry` holds every file of its manifest with the recorded size and content."""
    manifest = _read_manifest(entry)
    if manifest is None or not _sizes_match(entry, manifest):
        return False
    return all(sha256_of(entry / name) == digest for name, (_, digest) in manifest.items())


def _size(entry: Path) -> int:
    return sum(p.stat().st_size for p in entry.rglob("*") if p.is_file())


def place(source: Path, destination: Path) -> None:
    """Put a cached file at `destination` atomically: a hard link when on the same filesystem,
    else a copy. On failure (a full disk while copying) `destination` is untouched and no partial
    file is left beside it."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.{uuid.uuid4().hex}.tmp")
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    finally:
        # Gone after a successful replace, except when `destination` already was a link to
        # `source`: renaming a link onto another link of the same file does nothing.
        temporary.unlink(missing_ok=True)
