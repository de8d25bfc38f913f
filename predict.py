"""Cog predictor: the hosted lip-sync model. A thin layer that checks the inputs, calls the
`latentsync` library and returns the file.

    cog predict -i video=@talk.mp4 -i audio=@dub.wav
"""

import asyncio
import logging
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path as LocalPath
from typing import Any

from cog import BaseRunner, Input, Path

from latentsync.pipeline import LipsyncOptions, LipsyncPipeline, default_device_and_dtype, load_unet
from latentsync.planner import LengthMode
from latentsync.validation import check_inputs
from latentsync.weights import ensure_weights, load_manifest

DEFAULT_VERSION = "1.6"
OUTPUT_MAX_AGE_S = 3600  # finished outputs are removed after this; Cog uploads them right after run()

logging.basicConfig(level=logging.INFO, format="%(message)s")
logger = logging.getLogger("latentsync")


class Predictor(BaseRunner):
    def setup(self) -> None:
        """Fetch (if needed) and load the default version's weights."""
        started = time.perf_counter()
        self.manifest = load_manifest()
        self.device, self.dtype = default_device_and_dtype()
        files = ensure_weights(DEFAULT_VERSION, manifest=self.manifest)
        fetched = time.perf_counter()
        self.pipelines = {DEFAULT_VERSION: LipsyncPipeline.from_files(files, device=self.device)}
        self._loading = threading.Lock()
        self._outputs = LocalPath(tempfile.mkdtemp(prefix="latentsync-outputs-"))
        logger.info(
            "setup: weights ready in %.1f s, models loaded in %.1f s on %s (%s), peak memory %.2f GB",
            fetched - started, time.perf_counter() - fetched, self.device, self.dtype, _peak_rss_gb(),
        )

    def pipeline_for(self, version: str) -> LipsyncPipeline:
        """The pipeline of a model version; a new version loads only its U-Net (and mask size),
        sharing the VAE, Whisper, face detector and sync scorer with the loaded one."""
        with self._loading:
            if version not in self.pipelines:
                files = ensure_weights(version, manifest=self.manifest)
                loaded = self.pipelines[DEFAULT_VERSION]
                self.pipelines[version] = loaded.for_version(files, load_unet(files, self.device, self.dtype))
            return self.pipelines[version]

    async def run(
        self,
        video: Path = Input(description="Video with a visible face (mp4, mov, mkv, webm, avi; up to 4K, 10 minutes)."),
        audio: Path = Input(description="Speech to lip-sync to (wav, mp3, aac, m4a, ogg, flac, opus, or a video's audio track)."),
        guidance_scale: float = Input(description="How strongly the mouth follows the audio (classifier-free guidance).", ge=1.0, le=3.0, default=1.5),
        inference_steps: int = Input(description="Denoising steps: more is slower and slightly sharper.", ge=20, le=50, default=20),
        seed: int = Input(description="Random seed; -1 or 0 picks one (printed and put in the report).", default=1247),
        version: str = Input(description="LatentSync model: 1.6 (512 px, sharper) or 1.5 (256 px, faster).", choices=["1.5", "1.6"], default=DEFAULT_VERSION),
        enable_deepcache: bool = Input(description="Reuse deep U-Net features between steps: about 2x faster, nearly identical.", default=True),
        length_mode: str = Input(
            description="When audio and video lengths differ: bounce (play the video back and forth), loop, cut_off (shorter of the two), "
            "silence (keep the video length; silent tail), remap (stretch the video to the audio).",
            choices=[mode.value for mode in LengthMode], default=LengthMode.BOUNCE.value,
        ),
        skip_silence: bool = Input(description="Keep the original frames where the audio pauses (0.3 s or longer).", default=True),
        speaker_point: str = Input(description="When several faces are visible: 'x,y' (pixels, first frame) or 'x,y,frame' on the speaker's face. Empty: the largest, most present face.", default=""),
        min_sync_confidence: float = Input(description="Regenerate or pass through spans whose SyncNet confidence is lower (0: off).", ge=0.0, le=15.0, default=0.0),
        low_sync_action: str = Input(description="What to do with spans below min_sync_confidence.", choices=["regenerate", "passthrough"], default="regenerate"),
        output_fps: str = Input(description="25 (the model's rate, as the official) or source (keep a 24-30 fps source's rate).", choices=["25", "source"], default="25"),
        crf: int = Input(description="H.264 quality of the output: lower is better and bigger.", ge=10, le=35, default=18),
        return_report: bool = Input(description="Return {video, report} instead of just the video; the report lists what was regenerated and why.", default=False),
    ) -> Any:
        """Lip-sync `video` to `audio`. Returns the mp4 (or {video, report} with return_report)."""
        self._remove_old_outputs()
        await asyncio.to_thread(check_inputs, LocalPath(video), LocalPath(audio))
        if seed in (-1, 0):
            seed = int.from_bytes(os.urandom(4), "big") % 2**31
        print(f"Using seed: {seed}")
        options = LipsyncOptions(
            num_inference_steps=inference_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            enable_deepcache=enable_deepcache,
            length_mode=length_mode,
            skip_silence=skip_silence,
            keep_source_fps=output_fps == "source",
            speaker_point=_speaker_point(speaker_point),
            min_sync_confidence=min_sync_confidence or None,
            low_sync_action=low_sync_action,
            crf=crf,
        )
        folder = LocalPath(tempfile.mkdtemp(dir=self._outputs))
        # The work runs in a thread, so the server can take another prediction meanwhile
        # (COG_MAX_CONCURRENCY > 1 needs an async run()).
        pipeline = await asyncio.to_thread(self.pipeline_for, version)
        result = await asyncio.to_thread(pipeline, LocalPath(video), LocalPath(audio), folder / "output.mp4", options, temp_dir=folder / "work")
        shutil.rmtree(folder / "work", ignore_errors=True)
        report = result.report
        self.record_metric("frames_generated", report["frames_generated"])
        if report.get("sync_confidence") is not None:
            self.record_metric("sync_confidence", report["sync_confidence"])
        if return_report:
            return {"video": Path(result.output_path), "report": report}
        return Path(result.output_path)

    def _remove_old_outputs(self) -> None:
        for folder in self._outputs.iterdir():
            if time.time() - folder.stat().st_mtime > OUTPUT_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)


def _speaker_point(text: str):
    """'x,y' or 'x,y,frame' -> (x, y, frame), or None."""
    if not text.strip():
        return None
    parts = text.split(",")
    try:
        point = (float(parts[0]), float(parts[1]), int(parts[2]) if len(parts) == 3 else 0)
    except (ValueError, IndexError):
        point = None
    if point is None or len(parts) not in (2, 3):
        raise ValueError(f"speaker_point must be 'x,y' or 'x,y,frame' (pixels, frame number), got {text!r}.")
    return point


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
