"""Model weights: the manifest of files each model version needs, and a careful downloader.

`ensure_weights("1.6")` returns local paths for every file of that version, downloading what is
missing or fails verification. Downloads use `pget` when it is installed (Replicate's parallel
downloader), else our own: parallel HTTP range requests, resumable after an interruption (a
sidecar file records the finished chunks), retried with backoff, checked against the manifest's
size and sha256, and moved into place atomically. A per-file lock keeps two processes from
fetching the same file.

Environment overrides, for mirrors, air-gapped installs and tests (read in `latentsync.config`):
  LATENTSYNC_WEIGHTS_DIR       where weights live (default: checkpoints/ in the repository)
  LATENTSYNC_WEIGHTS_MANIFEST  another manifest file (its paths resolve relative to its folder)
  LATENTSYNC_WEIGHTS_BASE_URL  replaces the scheme and host of every URL, keeping the path
"""

import json
import logging
import os
import random
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import httpx
from filelock import FileLock

from .config import DEFAULT_MANIFEST, REPO_ROOT, weights_base_url, weights_manifest
from .config import weights_dir as default_weights_dir
from .files import sha256_of, write_json_atomically

logger = logging.getLogger("latentsync.weights")

LOCK_FILE = "weights.lock.json"  # sha256 recorded at first download for entries without one
VERIFIED_FILE = ".verified.json"  # (size, mtime) of files already hashed, to skip re-hashing
CHUNK_SIZE = 16 * 1024 * 1024
PARALLEL_CHUNKS = 8
ROLES = ("unet", "whisper", "vae_config", "vae_weights", "mask", "face_detector", "face_landmarks", "syncnet")


class WeightsError(RuntimeError):
    """A weight file could not be fetched or verified; the message names the file, URL and reason."""


@dataclass
class WeightFile:
    id: str
    path: str  # relative to the weights directory
    urls: list[str]
    size: int | None
    sha256: str | None
    license: str = ""
    description: str = ""


@dataclass
class VersionSpec:
    unet_config: Path
    resolution: int
    files: dict[str, str]  # role -> file id


@dataclass
class Manifest:
    files: dict[str, WeightFile]
    versions: dict[str, VersionSpec]
    source: Path

    def files_for(self, version: str) -> dict[str, WeightFile]:
        """role -> file entry for a model version."""
        if version not in self.versions:
            raise WeightsError(f"Unknown model version {version!r}; the manifest {self.source} has {sorted(self.versions)}.")
        return {role: self.files[file_id] for role, file_id in self.versions[version].files.items()}


@dataclass
class ModelFiles:
    """Local paths of one model version's files (None for roles the manifest leaves out)."""

    version: str
    unet_config: Path
    resolution: int
    unet_checkpoint: Path
    whisper: Path
    vae_dir: Path
    mask: Path
    insightface_root: Path | None
    syncnet: Path | None


def load_manifest(path=None) -> Manifest:
    """Read and check a manifest (`LATENTSYNC_WEIGHTS_MANIFEST` or the repository's)."""
    path = Path(path or weights_manifest())
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise WeightsError(f"Cannot read the weights manifest {path}: {error}") from error
    base_dir = REPO_ROOT if path.resolve() == DEFAULT_MANIFEST.resolve() else path.parent
    files = {}
    for file_id, entry in data.get("files", {}).items():
        missing = [key for key in ("path", "urls") if not entry.get(key)]
        if missing:
            raise WeightsError(f"Manifest {path}: file {file_id!r} lacks {', '.join(missing)}.")
        files[file_id] = WeightFile(
            file_id, entry["path"], list(entry["urls"]), entry.get("size"), entry.get("sha256"),
            entry.get("license", ""), entry.get("description", ""),
        )
    versions = {}
    for version, spec in data.get("versions", {}).items():
        unknown = [f for f in spec.get("files", {}).values() if f not in files]
        roles = set(spec.get("files", {})) - set(ROLES)
        if unknown or roles:
            raise WeightsError(f"Manifest {path}: version {version} names unknown files {unknown} or roles {sorted(roles)}.")
        config = Path(spec["unet_config"])
        versions[version] = VersionSpec(config if config.is_absolute() else base_dir / config, int(spec["resolution"]), dict(spec["files"]))
    return Manifest(files, versions, path)


def ensure_weights(version: str, weights_dir=None, manifest: Manifest | None = None) -> ModelFiles:
    """Local, verified paths for every file of `version`, downloading what is missing or broken."""
    manifest = manifest or load_manifest()
    root = Path(weights_dir or default_weights_dir())
    for entry in manifest.files_for(version).values():
        ensure_file(entry, root)
    return model_files(version, root, manifest)


def model_files(version: str, weights_dir=None, manifest: Manifest | None = None) -> ModelFiles:
    """Where `version`'s files live under the weights folder (nothing is checked or fetched)."""
    manifest = manifest or load_manifest()
    root = Path(weights_dir or default_weights_dir())
    entries = manifest.files_for(version)
    spec = manifest.versions[version]

    def path(role):
        return root / entries[role].path if role in entries else None

    detector = path("face_detector")
    return ModelFiles(
        version=version,
        unet_config=spec.unet_config,
        resolution=spec.resolution,
        unet_checkpoint=path("unet"),
        whisper=path("whisper"),
        vae_dir=path("vae_config").parent,
        mask=path("mask"),
        insightface_root=detector.parents[2] if detector else None,  # <root>/models/buffalo_l/det_10g.onnx
        syncnet=path("syncnet"),
    )


def ensure_file(entry: WeightFile, root: Path) -> Path:
    """The verified local file for `entry`, downloaded if missing or not matching."""
    target = root / entry.path
    target.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(target) + ".lock"):
        if target.exists():
            if _verified(entry, target, root):
                return target
            logger.warning("%s does not match the manifest; downloading it again", target)
            target.unlink()
        errors = []
        for url in (_with_base_url(u) for u in entry.urls):
            try:
                _download(url, target, entry, root)
                return target
            except WeightsError as error:
                errors.append(str(error))
                logger.warning("%s", error)
        raise WeightsError(" / ".join(errors))


def _with_base_url(url: str) -> str:
    base = weights_base_url()
    if not base:
        return url
    new, old = urlsplit(base), urlsplit(url)
    return urlunsplit((new.scheme, new.netloc, new.path.rstrip("/") + old.path, old.query, ""))


def _expected_sha256(entry: WeightFile, root: Path) -> str | None:
    return entry.sha256 or _read_json(root / LOCK_FILE).get(entry.path, {}).get("sha256")


def _verified(entry: WeightFile, path: Path, root: Path) -> bool:
    """Size and sha256 match the manifest (or the lock file). A file hashed before with the same
    size and modification time is trusted without hashing its gigabytes again."""
    stat = path.stat()
    if entry.size is not None and stat.st_size != entry.size:
        return False
    expected = _expected_sha256(entry, root)
    seen = _read_json(root / VERIFIED_FILE).get(entry.path)
    if seen and seen["size"] == stat.st_size and seen["mtime_ns"] == stat.st_mtime_ns and seen["sha256"] == expected:
        return True
    actual = sha256_of(path)
    if expected is not None and actual != expected:
        return False
    _remember(root, entry, path, actual)
    return True


def _remember(root: Path, entry: WeightFile, path: Path, sha256: str) -> None:
    stat = path.stat()
    with FileLock(str(root / VERIFIED_FILE) + ".lock"):
        verified = _read_json(root / VERIFIED_FILE)
        verified[entry.path] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        write_json_atomically(root / VERIFIED_FILE, verified, sort_keys=True)
        if entry.sha256 is None:
            locked = _read_json(root / LOCK_FILE)
            locked.setdefault(entry.path, {"sha256": sha256, "size": stat.st_size})
            write_json_atomically(root / LOCK_FILE, locked, sort_keys=True)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}


# ---- downloading ---------------------------------------------------------------------------


def _download(url: str, target: Path, entry: WeightFile, root: Path) -> None:
    """Fetch `url` into `target` via a `.part` file; verify; then rename into place."""
    partial = target.with_name(target.name + ".part")
    started = time.perf_counter()
    if shutil.which("pget"):
        result = subprocess.run(["pget", "-f", url, str(partial)], capture_output=True, text=True)
        if result.returncode != 0:
            partial.unlink(missing_ok=True)
            raise WeightsError(f"{entry.path}: pget could not fetch {url}: {result.stderr.strip()[-300:]}")
    else:
        _http_download(url, partial, entry)
    size = partial.stat().st_size
    if entry.size is not None and size != entry.size:
        _discard(partial)
        raise WeightsError(f"{entry.path}: {url} sent {size} bytes, the manifest expects {entry.size}.")
    actual, expected = sha256_of(partial), _expected_sha256(entry, root)
    if expected is not None and actual != expected:
        _discard(partial)
        raise WeightsError(f"{entry.path}: sha256 mismatch for {url}: expected {expected}, got {actual}; the file was not kept.")
    os.replace(partial, target)
    _remember(root, entry, target, actual)
    logger.info("fetched %s (%.1f MB) in %.1f s", entry.path, size / 1e6, time.perf_counter() - started)


def _discard(partial: Path) -> None:
    partial.unlink(missing_ok=True)
    _sidecar(partial).unlink(missing_ok=True)


def _sidecar(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _retrying(action, what: str, attempts: int = 5, base_delay: float = 0.5):
    """Run `action` with exponential backoff and jitter on network errors and 429/5xx."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (httpx.TransportError, _RetryableStatus) as error:
            if attempt == attempts:
                raise WeightsError(f"{what}: {error} (gave up after {attempts} attempts)") from error
            delay = base_delay * 2 ** (attempt - 1) * (1 + random.random())
            logger.info("%s: %s; retrying in %.1f s", what, error, delay)
            time.sleep(delay)


class _RetryableStatus(Exception):
    pass


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code == 429 or response.status_code >= 500:
        raise _RetryableStatus(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise WeightsError(f"{what}: HTTP {response.status_code}")


def _http_download(url: str, partial: Path, entry: WeightFile) -> None:
    what = f"{entry.path} from {url}"
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0)) as client:

        def probe():
            with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
                _check(response, what)
                return response.status_code, response.headers

        status, headers = _retrying(probe, what)
        total = _total_size(status, headers)
        if status != 206 or total is None:
            _retrying(lambda: _fetch_whole(client, url, partial, what), what)
            return
        chunks = [(start, min(start + CHUNK_SIZE, total) - 1) for start in range(0, total, CHUNK_SIZE)]
        sidecar = _sidecar(partial)
        state = _read_json(sidecar)
        if state.get("url") != url or state.get("total") != total or not partial.exists():
            state = {"url": url, "total": total, "done": []}
            with open(partial, "wb") as file:
                file.truncate(total)
            write_json_atomically(sidecar, state)
        done, lock = set(state["done"]), threading.Lock()

        def fetch(chunk):
            start, end = chunk
            _retrying(lambda: _fetch_range(client, url, partial, start, end, what), what)
            with lock:
                done.add(start)
                write_json_atomically(sidecar, {"url": url, "total": total, "done": sorted(done)})

        todo = [chunk for chunk in chunks if chunk[0] not in done]
        with ThreadPoolExecutor(max_workers=PARALLEL_CHUNKS) as pool:
            list(pool.map(fetch, todo))
    sidecar.unlink(missing_ok=True)


def _total_size(status: int, headers) -> int | None:
    if status == 206 and "/" in headers.get("content-range", ""):
        size = headers["content-range"].rsplit("/", 1)[1]
        return int(size) if size.isdigit() else None
    return None


def _fetch_whole(client: httpx.Client, url: str, partial: Path, what: str) -> None:
    with client.stream("GET", url) as response:
        _check(response, what)
        with open(partial, "wb") as file:
            for block in response.iter_bytes(1024 * 1024):
                file.write(block)


def _fetch_range(client: httpx.Client, url: str, partial: Path, start: int, end: int, what: str) -> None:
    with client.stream("GET", url, headers={"Range": f"bytes={start}-{end}"}) as response:
        _check(response, what)
        if response.status_code != 206:
            raise WeightsError(f"{what}: the server ignored a range request (HTTP {response.status_code})")
        position = start
        with open(partial, "r+b") as file:
            for block in response.iter_bytes(1024 * 1024):
                os.pwrite(file.fileno(), block, position)
                position += len(block)
        if position != end + 1:
            raise httpx.RemoteProtocolError(f"connection closed after {position - start} of {end - start + 1} bytes")
