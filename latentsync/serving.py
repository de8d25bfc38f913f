"""What the servers (the Cog predictor and the web app) share: the models, loaded once per
version, each proven on the device before it serves, with the load's timings and memory logged;
a job run in a thread that a cancelled request stops; and one output folder per job."""

import asyncio
import contextlib
import logging
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

# Freed blocks of varying sizes (windows of every length, memory-recovery passes) are given back
# to CUDA instead of fragmenting the cache; the user's own setting wins. Read when CUDA starts.
os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")

from .cache import ResultCache  # noqa: E402 (after the allocator setting)
from .config import DEFAULT_VERSION, MAX_DURATION_S, allow_cpu, compile_requested  # noqa: E402
from .denoise import load_unet  # noqa: E402
from .device import default_device, describe_device, device_works, model_dtype, peak_rss_gb, require_gpu_unless_allowed  # noqa: E402
from .logs import native_stderr_captured, warm_up  # noqa: E402
from .pipeline import LipsyncPipeline, LipsyncResult  # noqa: E402
from .weights import ensure_weights, load_manifest  # noqa: E402
from .windows import ModelError  # noqa: E402

logger = logging.getLogger("latentsync")


class ModelVersions:
    """A server's pipelines, one per model version. `version` is loaded at start (weights fetched
    as the manifest lists them); another version loads on first use only its U-Net and mask,
    sharing the VAE, Whisper, face detector, sync scorer and result cache. Each version runs one
    real window before it serves (`LipsyncPipeline.self_test`), so a broken device, driver or
    checkpoint fails here, not in a user's job."""

    def __init__(self, version: str = DEFAULT_VERSION, cache: ResultCache | None = None):
        started = time.perf_counter()
        self.manifest = load_manifest()
        self.device = default_device()
        require_gpu_unless_allowed(self.device, allow_cpu())
        self.dtype = model_dtype(self.device)
        self.default_version = version
        self.cache = cache  # every version's pipeline stores its results here
        files = ensure_weights(version, manifest=self.manifest)
        fetched = time.perf_counter()
        with native_stderr_captured():
            # The service's length limit holds for what is decoded too, not just what headers declare.
            pipeline = LipsyncPipeline.from_files(files, device=self.device, cache=cache, compile_unet=compile_requested(), max_duration_s=MAX_DURATION_S)
            warm_up(pipeline.models.face_detector)
        loaded = time.perf_counter()
        pipeline.self_test()
        self._pipelines = {version: pipeline}
        self._loading = threading.Lock()
        self.failed_state: str | None = None  # set when the device stopped working: the server is unhealthy
        logger.info(
            "setup: weights ready in %.1f s, models loaded in %.1f s and tested in %.1f s on %s%s, peak memory %.2f GB",
            fetched - started, loaded - fetched, time.perf_counter() - loaded, describe_device(self.device, self.dtype),
            ", U-Net compiled" if pipeline.compile_unet else "", peak_rss_gb(),
        )

    def run(self, version: str, *args, **kwargs) -> LipsyncResult:
        """A job on `version`'s pipeline (arguments as `LipsyncPipeline.__call__`).

        After a model error the device is checked: a GPU left unusable (a sticky CUDA error fails
        every later call of the process) marks the server unhealthy (`healthy()`, which Cog's
        health check reports, so the orchestrator replaces it), and later jobs fail at once with
        that sentence instead of failing on the device one after another.
        """
        if self.failed_state:
            raise ModelError(self.failed_state)
        pipeline = self.get(version)
        try:
            return pipeline(*args, **kwargs)
        except ModelError:
            if not device_works(self.device):
                self.failed_state = (f"The GPU ({describe_device(self.device, self.dtype)}) stopped working after a model error; "
                                     "this server must be restarted.")
                logger.error(self.failed_state)
            raise

    def healthy(self) -> bool:
        return self.failed_state is None

    def get(self, version: str) -> LipsyncPipeline:
        """The pipeline of `version`, loading (and testing) it first if needed."""
        with self._loading:
            if version not in self._pipelines:
                files = ensure_weights(version, manifest=self.manifest)
                loaded = self._pipelines[self.default_version].for_version(files, load_unet(files, self.device, self.dtype))
                loaded.self_test()
                self._pipelines[version] = loaded
            return self._pipelines[version]


async def in_thread(function, *args, **kwargs):
    """`function(*args, **kwargs)` in a thread. When the request is cancelled (CancelledError at
    this await: Cog cancelling a prediction, the web app's Stop) the `cancel` event among `kwargs`,
    if any, is set, so the work stops within a window (with its ffmpeg processes), and the thread
    is waited for. The server reports the request cancelled at once and may start the next one:
    the event is what stops this one."""
    job = asyncio.ensure_future(asyncio.to_thread(function, *args, **kwargs))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        if kwargs.get("cancel") is not None:
            kwargs["cancel"].set()
        await asyncio.wait([job])
        if not job.cancelled():
            job.exception()  # JobCancelled, or whatever ended it: expected, not an unhandled error
        raise


class OutputFolders:
    """One folder per job under `root`.

    A finished folder is kept for `max_age_s` counted from when it finished (Cog uploads a
    prediction's output after run() returns; the web app lists its results). Folders of jobs still
    running are never removed, however old, and a folder another job's cleanup removed first is
    skipped.
    """

    def __init__(self, root: Path, max_age_s: float):
        self.root, self.max_age_s = root, max_age_s
        self._running: set[Path] = set()
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def new(self, name: str | None = None) -> Iterator[Path]:
        """A folder for one job: removed when the job fails or is cancelled. With a `name`, it is
        made as `.<name>.partial` and appears as `<name>` only once the job succeeded."""
        folder = self.root / f".{name}.partial" if name else Path(tempfile.mkdtemp(dir=self.root))
        folder.mkdir(exist_ok=True)
        with self._lock:
            self._running.add(folder)
        try:
            yield folder
            finished = folder.rename(self.root / name) if name else folder
            os.utime(finished)  # finished now: its age counts from here
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        finally:
            with self._lock:
                self._running.discard(folder)

    def remove_old(self) -> None:
        """Remove finished folders older than `max_age_s`."""
        with self._lock:
            running = set(self._running)
        remove_older_than(self.root, self.max_age_s, keep=running)


def remove_older_than(folder: Path, max_age_s: float, keep=frozenset()) -> None:
    """Remove the files and folders in `folder` last changed more than `max_age_s` ago, except
    those in `keep`; one that another cleanup removed first is skipped."""
    now = time.time()
    for item in folder.iterdir():
        if item in keep:
            continue
        try:
            if now - item.stat().st_mtime <= max_age_s:
                continue
            if item.is_dir():
                shutil.rmtree(item, ignore_errors=True)
            else:
                item.unlink(missing_ok=True)
        except FileNotFoundError:  # another job's cleanup got there first
            pass
