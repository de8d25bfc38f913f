"""The web app's jobs, apart from the page: the service's checks, a run on the loaded models into
a result folder of its own, a job's plan (no model runs), and the finished results kept for the
browsers that asked for them.

A result folder (under the app's results/) holds the lip-synced video, the report, its timeline
picture, a link to the source video and `job.json`; it appears under its final name only when
complete, so a failed or cancelled job leaves nothing behind.
"""

import json
import shutil
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..cache import place
from ..config import APP_RESULT_MAX_AGE_S
from ..options import LipsyncOptions, options_from_inputs, validate_inputs
from ..progress import ProgressCallback
from ..segments import Segment, parse_segments, with_audio_files
from ..serving import ModelVersions
from ..timeline import save_timeline
from ..validation import check_inputs

JOB_FILE = "job.json"


class InputError(ValueError):
    """A request the service refuses; the message is one sentence for the user."""


@dataclass
class JobResult:
    id: str
    title: str  # "talk.mp4 + dub.wav"
    created: float  # time.time()
    folder: Path
    video: Path
    source: Path
    report: dict
    timeline: Path

    @property
    def label(self) -> str:
        """How the result is listed among earlier ones: time, inputs and the main settings."""
        options = self.report.get("options", {})
        when = time.strftime("%H:%M:%S", time.localtime(self.created))
        return f"{when} · {self.title} · {options.get('num_inference_steps')} steps, guidance {options.get('guidance_scale')}"


class Jobs:
    """Runs jobs on `models` into `results_dir`, and remembers which browser asked for which."""

    def __init__(self, models: ModelVersions, data_dir: Path):
        self.models = models
        self.results_dir = Path(data_dir) / "results"
        self.work_dir = Path(data_dir) / "work"
        self.results_dir.mkdir(parents=True, exist_ok=True)
        self._by_browser: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def check(self, video, audio, inputs: dict, segment_audio=()) -> tuple[LipsyncOptions, str, list[Segment]]:
        """The service's checks and messages: every input's type and range (the one table), the
        segments (each naming its file in `segment_audio` by index), and the files
        (`validation.check_inputs`). Returns the job's options, model version and segments;
        raises ValueError (one sentence)."""
        if not video:
            raise InputError("Upload a video with a visible face (mp4, mov, mkv, webm or avi).")
        inputs = validate_inputs(inputs)
        segments = with_audio_files(parse_segments(inputs.get("segments", "")), [Path(path) for path in segment_audio or []])
        if not audio and not segments:
            raise InputError("Upload the speech to lip-sync to: an audio file, or a video whose audio track to use (or add segments, each with its clip).")
        check_inputs(Path(video), Path(audio) if audio else None, segments)
        return options_from_inputs(**inputs), inputs["version"], segments

    def plan(self, video, audio, inputs: dict, segment_audio=(), progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> dict:
        """What lip-syncing these inputs would do, and its estimated GPU time: the plan as a dict
        (`LipsyncPipeline.plan`); no model runs."""
        options, version, segments = self.check(video, audio, inputs, segment_audio)
        preview = self.models.get(version).plan(Path(video), Path(audio) if audio else None, options, segments=segments, progress=progress, cancel=cancel)
        return preview.to_dict()

    def run(self, video, audio, inputs: dict, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
            browser: str | None = None, segment_audio=()) -> JobResult:
        """Check and lip-sync `video` to `audio` with the service `inputs` (with segments: only
        their time ranges, to their clips in `segment_audio`); the result is listed for
        `browser` (an id the page keeps in the browser), if given."""
        options, version, segments = self.check(video, audio, inputs, segment_audio)
        self._remove_old_results()
        video, audio = Path(video), Path(audio) if audio else None
        job_id = uuid.uuid4().hex[:12]
        work = self.results_dir / f".{job_id}.partial"
        work.mkdir()
        try:
            pipeline = self.models.get(version)
            output = work / f"{video.stem}_lipsync.mp4"
            result = pipeline(video, audio, output, options, report_path=work / "report.json", temp_dir=self.work_dir, progress=progress, cancel=cancel,
                              segments=segments)
            report = result.report.to_dict()
            save_timeline(report, work / "timeline.png")
            source = work / f"source{video.suffix.lower()}"
            place(video, source)
            speech = f"{audio.name} + " if audio else ""
            title = f"{video.name} + {speech}{len(segments)} segment{'s' * (len(segments) != 1)}" if segments else f"{video.name} + {audio.name}"
            record = {"id": job_id, "title": title, "created": time.time(), "video": output.name, "source": source.name}
            (work / JOB_FILE).write_text(json.dumps(record))
            work.rename(self.results_dir / job_id)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        if browser:
            with self._lock:
                self._by_browser.setdefault(browser, []).append(job_id)
        return self.result(job_id)

    def result(self, job_id: str) -> JobResult | None:
        """A finished result by id; None if it is unknown or was removed."""
        folder = self.results_dir / job_id
        if not job_id.isalnum() or not (folder / JOB_FILE).is_file():
            return None
        record = json.loads((folder / JOB_FILE).read_text())
        return JobResult(
            id=record["id"], title=record["title"], created=record["created"], folder=folder, video=folder / record["video"],
            source=folder / record["source"], report=json.loads((folder / "report.json").read_text()), timeline=folder / "timeline.png",
        )

    def results_for(self, browser: str) -> list[JobResult]:
        """The results `browser` asked for that are still kept, newest first."""
        with self._lock:
            ids = list(self._by_browser.get(browser, []))
        return [result for result in map(self.result, reversed(ids)) if result is not None]

    def _remove_old_results(self) -> None:
        for folder in self.results_dir.iterdir():
            if time.time() - folder.stat().st_mtime > APP_RESULT_MAX_AGE_S:
                shutil.rmtree(folder, ignore_errors=True)

