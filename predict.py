"""Cog predictor: the hosted lip-sync model. A thin layer that checks the inputs, calls the
`latentsync` library and returns the file.

    cog predict -i video=@talk.mp4 -i audio=@dub.wav
    cog predict -i video=@template.mp4 -i segments='[{"start": 0.4, "end": 1.9, "audio": 0}]' -i segment_audio=@name.wav
    cog predict -i video=@talk.mp4 -i audio=@dub.wav -i plan_only=true       # the plan and its GPU estimate, as JSON

Segment audio comes as a list of files (`segment_audio`), which Cog types like `video` and
`audio` (URLs or uploads, fetched by Cog); a segment names its file by its index in the list.
"""

import logging
import shutil
import tempfile
import threading
from pathlib import Path as LocalPath
from typing import Any

from cog import BaseRunner, Input, Path

from latentsync.config import DEFAULT_VERSION, SEGMENT_AUDIO_DESCRIPTION, SERVICE_INPUTS
from latentsync.files import write_json_atomically
from latentsync.logs import configure_logging
from latentsync.options import options_from_inputs
from latentsync.progress import ProgressLog
from latentsync.segments import parse_segments, with_audio_files
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
        audio: Path | None = Input(
            description="Speech to lip-sync to (wav, mp3, aac, m4a, ogg, flac, opus, or a video's audio track). With segments, "
            "needed only by segments without an audio of their own.", default=None,
        ),
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
        segments: str = _input("segments"),
        segment_audio: list[Path] | None = Input(description=SEGMENT_AUDIO_DESCRIPTION, default=None),
        plan_only: bool = _input("plan_only"),
    ) -> Any:
        """Lip-sync `video` to `audio` (or, with segments, only their time ranges to theirs).
        Returns the mp4 (or {video, report} with return_report; the plan's JSON file with plan_only)."""
        arguments = locals()
        inputs = {name: arguments[name] for name in SERVICE_INPUTS}  # every input of the table, by its name
        self._outputs.remove_old()
        options = options_from_inputs(**inputs)  # the options first: a bad number is refused before any file is read
        video, audio = LocalPath(video), LocalPath(audio) if audio is not None else None
        job_segments = with_audio_files(parse_segments(segments), [LocalPath(path) for path in segment_audio or []])
        await in_thread(check_inputs, video, audio, job_segments)
        print(f"Using seed: {options.seed}")
        # The work runs in a thread, so the server can take another prediction meanwhile
        # (COG_MAX_CONCURRENCY > 1 needs an async run()).
        cancel = threading.Event()  # set when Cog cancels the prediction: the job stops within a window
        if plan_only:
            with self._outputs.new() as folder:
                pipeline = await in_thread(self.models.get, version)
                preview = await in_thread(pipeline.plan, video, audio, options, segments=job_segments, progress=ProgressLog(logger.info), cancel=cancel)
                write_json_atomically(folder / "plan.json", preview.to_dict())
            self.record_metric("windows_planned", preview.windows)
            return Path(folder / "plan.json")
        with self._outputs.new() as folder:
            result = await in_thread(
                self.models.run, version, video, audio, folder / "output.mp4", options, temp_dir=folder / "work",
                progress=ProgressLog(logger.info), cancel=cancel, segments=job_segments,
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
