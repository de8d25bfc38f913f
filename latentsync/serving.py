"""What the servers (the Cog predictor and the web app) share: the models, loaded once per
version, with the load's timings and memory logged."""

import logging
import threading
import time

from .cache import ResultCache
from .config import DEFAULT_VERSION, MAX_DURATION_S, compile_requested
from .denoise import load_unet
from .device import default_device, model_dtype, peak_rss_gb
from .logs import native_stderr_captured, warm_up
from .pipeline import LipsyncPipeline
from .weights import ensure_weights, load_manifest

logger = logging.getLogger("latentsync")


class ModelVersions:
    """A server's pipelines, one per model version. `version` is loaded at start (weights fetched
    as the manifest lists them); another version loads on first use only its U-Net and mask,
    sharing the VAE, Whisper, face detector, sync scorer and result cache."""

    def __init__(self, version: str = DEFAULT_VERSION, cache: ResultCache | None = None):
        started = time.perf_counter()
        self.manifest = load_manifest()
        self.device = default_device()
        self.dtype = model_dtype(self.device)
        self.default_version = version
        files = ensure_weights(version, manifest=self.manifest)
        fetched = time.perf_counter()
        with native_stderr_captured():
            # The service's length limit holds for what is decoded too, not just what headers declare.
            pipeline = LipsyncPipeline.from_files(files, device=self.device, cache=cache, compile_unet=compile_requested(), max_duration_s=MAX_DURATION_S)
            warm_up(pipeline.face_detector)
        if pipeline.compile_unet:
            pipeline.warm_up()  # compile now, not in the first job
        self._pipelines = {version: pipeline}
        self._loading = threading.Lock()
        logger.info(
            "setup: weights ready in %.1f s, models loaded in %.1f s on %s (%s), peak memory %.2f GB",
            fetched - started, time.perf_counter() - fetched, self.device, self.dtype, peak_rss_gb(),
        )

    def get(self, version: str) -> LipsyncPipeline:
        """The pipeline of `version`, loading it first if needed."""
        with self._loading:
            if version not in self._pipelines:
                files = ensure_weights(version, manifest=self.manifest)
                loaded = self._pipelines[self.default_version]
                self._pipelines[version] = loaded.for_version(files, load_unet(files, self.device, self.dtype))
            return self._pipelines[version]
