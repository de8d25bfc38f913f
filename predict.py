"""Cog predictor: the hosted lip-sync model. A thin layer that checks the inputs, calls the
`latentsync` library and returns the file.

    cog predict -i video=@talk.mp4 -i audio=@dub.wav
"""

import logging
import shutil
import tempfile
import threading
from pathlib import Path as LocalPath
from typing import Any

from cog import BaseRunner, Input, Path

from latentsync.config import DEFAULT_VERSION, SERVICE_INPUTS
from latentsync.logs import configure_logging
from latentsync.options import options_from_inputs
from latentsync.progress import ProgressLog
from latentsync.serving import ModelVersions, OutputFolders, in_thread
from latentsync.validation import check_inputs

OUTPUT_MAX_AGE_S = 3600  # finished outputs are removed after this; Cog uploads them right after run()

configure_logging()
logger = logging.getLogger("latentsync")


def _input(name: str):
    """A Cog input built from the service's one table of inputs (latentsync.config.SERVICE_INPUTS)."""
    spec = SERVICE_INPUTS[name]
    return Input(description=spec.description, default=spec.default, ge=spec.minimum, le=spec.maximum, choices=list(spec.choices) if spec.choices else None)


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Fetch (if needed) and load the default version's weights; others load on first use."""
        self.models = ModelVersions(DEFAULT_VERSION)
        self._outputs = OutputFolders(LocalPath(tempfile.mkdtemp(prefix="latentsync-outputs-")), OUTPUT_MAX_AGE_S)

    def healthcheck(self) -> bool:
        """Cog's health check: False once the GPU stopped working (`ModelVersions.run`)."""
        return self.models.healthy()

    async def run(
        self,
        video: Path = Input(description="Video with a visible face (mp4, mov, mkv, webm, avi; up to 4K, 10 minutes)."),
        audio: Path = Input(description="Speech to lip-sync to (wav, mp3, aac, m4a, ogg, flac, opus, or a video's audio track)."),
        guidance_scale: float = _input("guidance_scale"),
        inference_steps: int = _input("inference_steps"),
        seed: int = _input("seed"),
        version: str = _input("version"),
        enable_deepcache: bool = _input("enable_deepcache"),
        length_mode: str = _input("length_mode"),
        skip_silence: bool = _input("skip_silence"),
        speaker_point: str = _input("speaker_point"),
        min_sync_confidence: float = _input("min_sync_confidence"),
        low_sync_action: str = _input("low_sync_action"),
        output_fps: str = _input("output_fps"),
        crf: int = _input("crf"),
        return_report: bool = _input("return_report"),
    ) -> Any:
        """Lip-sync `video` to `audio`. Returns the mp4 (or {video, report} with return_report)."""
        self._outputs.remove_old()
        options = options_from_inputs(  # the options first: a bad number is refused before any file is read
            guidance_scale=guidance_scale, inference_steps=inference_steps, seed=seed, enable_deepcache=enable_deepcache,
            length_mode=length_mode, skip_silence=skip_silence, speaker_point=speaker_point,
            min_sync_confidence=min_sync_confidence, low_sync_action=low_sync_action, output_fps=output_fps, crf=crf,
        )
        await in_thread(check_inputs, LocalPath(video), LocalPath(audio))
        print(f"Using seed: {options.seed}")
        # The work runs in a thread, so the server can take another prediction meanwhile
        # (COG_MAX_CONCURRENCY > 1 needs an async run()).
        cancel = threading.Event()  # set when Cog cancels the prediction: the job stops within a window
        with self._outputs.new() as folder:
            result = await in_thread(
                self.models.run, version, LocalPath(video), LocalPath(audio), folder / "output.mp4", options, temp_dir=folder / "work",
                progress=ProgressLog(logger.info), cancel=cancel,
            )
            shutil.rmtree(folder / "work", ignore_errors=True)
        report = result.report.to_dict()
        self.record_metric("frames_generated", report["frames_generated"])
        self.record_metric("failed_windows", report["failed_windows"])  # kept their original frames: out of GPU memory
        if report.get("sync_confidence") is not None:
            self.record_metric("sync_confidence", report["sync_confidence"])
        if return_report:
            return {"video": Path(result.output_path), "report": report}
        return Path(result.output_path)
