"""Model weights: the manifest of files each model version needs, and a careful downloader.

`ensure_weights("1.6")` returns local paths for every file of that version, downloading what is
missing or fails verification (see `latentsync.download`: never more than the manifest's size,
credentials never shown), checked against the manifest's size and sha256, and moved into place
atomically. A per-file lock keeps two processes from fetching the same file. Manifest paths must
stay inside the weights folder.

Environment overrides, for mirrors, air-gapped installs and tests (read in `latentsync.config`):
  LATENTSYNC_WEIGHTS_DIR       where weights live (default: checkpoints/ in the repository)
  LATENTSYNC_WEIGHTS_MANIFEST  another manifest file (its paths resolve relative to its folder)
  LATENTSYNC_WEIGHTS_BASE_URL  replaces the scheme and host of every URL, keeping the path (its
                               credentials and query, e.g. a token, are sent but never shown)
"""

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from urllib.parse import urlsplit, urlunsplit

from filelock import FileLock

from .config import DEFAULT_MANIFEST, REPO_ROOT, weights_base_url, weights_manifest
from .config import weights_dir as default_weights_dir
from .download import DownloadError, discard, fetch, redact
from .files import read_json, sha256_of, write_json_atomically

logger = logging.getLogger("latentsync.weights")

LOCK_FILE = "weights.lock.json"  # sha256 recorded at first download for entries without one
VERIFIED_FILE = ".verified.json"  # (size, mtime) of files already hashed, to skip re-hashing
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
    sha256: dict[str, str] = field(default_factory=dict)  # role -> sha256, of the files ensure_weights verified


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
        _check_relative(entry["path"], file_id, path)
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


def _check_relative(text: str, file_id: str, manifest: Path) -> None:
    """A manifest path must stay inside the weights folder: relative, without `..`."""
    posix, windows = PurePosixPath(text), PureWindowsPath(text)
    if posix.is_absolute() or windows.drive or windows.root or ".." in posix.parts or ".." in windows.parts:
        raise WeightsError(
            f"Manifest {manifest}: file {file_id!r} has the path {text!r}, which leaves the weights folder; "
            "use a relative path without '..'."
        )


def ensure_weights(version: str, weights_dir=None, manifest: Manifest | None = None) -> ModelFiles:
    """Local, verified paths for every file of `version`, downloading what is missing or broken."""
    manifest = manifest or load_manifest()
    root = Path(weights_dir or default_weights_dir())
    entries = manifest.files_for(version)
    for entry in entries.values():
        ensure_file(entry, root)
    files = model_files(version, root, manifest)
    files.sha256 = {role: _expected_sha256(entry, root) for role, entry in entries.items()}
    return files


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


def weights_identity(files: ModelFiles) -> dict[str, str]:
    """What the weights of `files` are, for result-cache keys: the sha256 of every file the model
    loads, and of its U-Net config. Files `ensure_weights` verified have theirs from the manifest
    (or the lock file); files laid out by hand are hashed now, so call this once, at load."""
    if files.sha256:
        return {**files.sha256, "unet_config": sha256_of(files.unet_config)}
    folders = [files.vae_dir] + ([files.insightface_root] if files.insightface_root else [])
    paths = [files.unet_checkpoint, files.unet_config, files.whisper, files.mask, files.syncnet]
    paths += [path for folder in folders for path in sorted(Path(folder).rglob("*")) if path.is_file()]
    return {str(path): sha256_of(path) for path in paths if path is not None and Path(path).is_file()}


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
            except (WeightsError, DownloadError) as error:
                errors.append(redact(str(error)))
                logger.warning("%s", errors[-1])
        raise WeightsError(" / ".join(errors))


def _with_base_url(url: str) -> str:
    """`url` on the mirror of LATENTSYNC_WEIGHTS_BASE_URL: its scheme, host (with credentials) and
    path prefix, the file's path, and both queries (a mirror's token stays on every request)."""
    base = weights_base_url()
    if not base:
        return url
    new, old = urlsplit(base), urlsplit(url)
    query = "&".join(q for q in (new.query, old.query) if q)
    return urlunsplit((new.scheme, new.netloc, new.path.rstrip("/") + old.path, query, ""))


def _expected_sha256(entry: WeightFile, root: Path) -> str | None:
    return entry.sha256 or read_json(root / LOCK_FILE).get(entry.path, {}).get("sha256")


def _verified(entry: WeightFile, path: Path, root: Path) -> bool:
    """Size and sha256 match the manifest (or the lock file). A file hashed before with the same
    size and modification time is trusted without hashing its gigabytes again."""
    stat = path.stat()
    if entry.size is not None and stat.st_size != entry.size:
        return False
    expected = _expected_sha256(entry, root)
    seen = read_json(root / VERIFIED_FILE).get(entry.path)
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
        verified = read_json(root / VERIFIED_FILE)
        verified[entry.path] = {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": sha256}
        write_json_atomically(root / VERIFIED_FILE, verified, sort_keys=True)
        if entry.sha256 is None:
            locked = read_json(root / LOCK_FILE)
            locked.setdefault(entry.path, {"sha256": sha256, "size": stat.st_size})
            write_json_atomically(root / LOCK_FILE, locked, sort_keys=True)


# ---- downloading ---------------------------------------------------------------------------


def _download(url: str, target: Path, entry: WeightFile, root: Path) -> None:
    """Fetch `url` into `target` via a `.part` file; verify; then rename into place."""
    partial = target.with_name(target.name + ".part")
    what = f"{entry.path} from {redact(url)}"
    started = time.perf_counter()
    fetch(url, partial, entry.size, what)
    size = partial.stat().st_size
    if entry.size is not None and size != entry.size:
        discard(partial)
        raise WeightsError(f"{what}: the server sent {size} bytes, the manifest expects {entry.size}.")
    actual, expected = sha256_of(partial), _expected_sha256(entry, root)
    if expected is not None and actual != expected:
        discard(partial)
        raise WeightsError(f"{entry.path}: sha256 mismatch for {redact(url)}: expected {expected}, got {actual}; the file was not kept.")
    os.replace(partial, target)
    _remember(root, entry, target, actual)
    logger.info("fetched %s (%.1f MB) in %.1f s", entry.path, size / 1e6, time.perf_counter() - started)
