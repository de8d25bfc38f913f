"""The web app's jobs, apart from the page: the service's checks, a run on the loaded models into
a result folder of its own, a job's plan (no model runs), the finished results kept for the
browsers that asked for them, and the speech preview (our own ffmpeg runner's re-encoding of a
speech file that passed the checks).

A result folder (under the app's results/) holds the lip-synced video, the report, its timeline
picture, a link to the source video and `job.json`; it appears under its final name only when
complete, so a failed or cancelled job leaves nothing behind.
"""

import json
import logging
import re
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..cache import place
from ..config import APP_BROWSERS_KEPT, APP_KEEP_S, APP_RESULTS_PER_BROWSER, SERVICE_INPUTS
from ..media.ffmpeg import AUDIO_EXTENSIONS, AUDIO_FORMATS, IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, VIDEO_FORMATS, input_args, run_ffmpeg, time_limit
from ..media.splice import segment_audio_role
from ..options import LipsyncOptions, options_from_inputs, validate_inputs
from ..progress import ProgressCallback
from ..segments import Segment, parse_segments, with_audio_files
from ..serving import ModelVersions, OutputFolders, remove_older_than
from ..timeline import save_timeline
from ..validation import check_audio, check_inputs

JOB_FILE = "job.json"
logger = logging.getLogger("latentsync")
PREVIEW_MAX_AGE_S = 3600  # speech previews are served once, right after they are made
BROWSER_ID = re.compile(r"[0-9a-f]{32}")  # what `new_browser_id` makes; anything else a browser sends is replaced
# What the upload boxes take (their `file_types`, checked again here: a client need not use the page).
VIDEO_UPLOADS = VIDEO_EXTENSIONS + IMAGE_EXTENSIONS  # a still image: a talking photo
SPEECH_UPLOADS = AUDIO_EXTENSIONS + VIDEO_EXTENSIONS  # or a video's audio track


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
    """Runs jobs on `models` into `results_dir`, and remembers which browser asked for which.
    `versions` are the model versions this server offers (all the service's, unless told);
    results are removed `keep_s` after they were made."""

    def __init__(self, models: ModelVersions, data_dir: Path, versions: tuple[str, ...] | None = None, keep_s: float = APP_KEEP_S):
        self.models, self.keep_s = models, keep_s
        self.versions = tuple(versions or SERVICE_INPUTS["version"].choices)
        self.results_dir = Path(data_dir) / "results"
        self.previews_dir = Path(data_dir) / "previews"
        self.work_dir = Path(data_dir) / "work"
        for folder in (self.results_dir, self.previews_dir):
            folder.mkdir(parents=True, exist_ok=True)
        self._results = OutputFolders(self.results_dir, keep_s)
        self._by_browser = Recent(APP_BROWSERS_KEPT)  # browser id -> its job ids, oldest first
        self._lock = threading.Lock()

    def check(self, video, audio, inputs: dict, segment_audio=()) -> tuple[LipsyncOptions, str, list[Segment]]:
        """The service's checks and messages, cheapest first: every input's type and range (the
        one table), the version this server offers, the segments (each naming its file in
        `segment_audio` by index), the uploads' kinds, then the files (`validation.check_inputs`).
        Returns the job's options, model version and segments; raises ValueError (one sentence)."""
        inputs = validate_inputs(inputs)
        if inputs["version"] not in self.versions:
            raise InputError(f"version must be one of {', '.join(self.versions)} on this server, got {inputs['version']!r}.")
        options = options_from_inputs(**inputs)
        segments = with_audio_files(parse_segments(inputs.get("segments", "")), [Path(path) for path in segment_audio or []])
        if not video:
            raise InputError(f"Upload a video with a visible face ({VIDEO_FORMATS}).")
        if not audio and not segments:
            raise InputError("Upload the speech to lip-sync to: an audio file, or a video whose audio track to use (or add segments, each with its clip).")
        check_upload_name(video, "video")
        if audio:
            check_upload_name(audio, "audio")
        for index, segment in enumerate(segments):
            if segment.own_audio:
                check_upload_name(segment.audio, segment_audio_role(index))
        check_inputs(Path(video), Path(audio) if audio else None, segments)
        return options, inputs["version"], segments

    def plan(self, video, audio, inputs: dict, segment_audio=(), progress: ProgressCallback | None = None,
             cancel: threading.Event | None = None) -> dict:
        """What lip-syncing these inputs would do, and its estimated GPU time: the plan as a dict
        (`LipsyncPipeline.plan`); no model runs."""
        options, version, segments = self.check(video, audio, inputs, segment_audio)
        preview = self.models.get(version).plan(Path(video), Path(audio) if audio else None, options, segments=segments, progress=progress, cancel=cancel)
        return preview.to_dict()

    def speech_preview(self, audio) -> Path:
        """A playable copy of the speech upload `audio` for the page (AAC, mono): made by our ffmpeg
        runner (allow-lists, time budget) from a file that passed the service's audio checks, so
        nothing else ever opens the upload. Raises ValueError (one sentence) for a bad upload."""
        check_upload_name(audio, "audio")
        info = check_audio(Path(audio))
        self._remove_old_previews()
        preview = self.previews_dir / f"{uuid.uuid4().hex}.m4a"
        try:
            run_ffmpeg(*input_args(audio, info.demuxer), "-map", "0:a:0", "-vn", "-ac", "1", "-c:a", "aac", "-b:a", "64k", "-f", "mp4", preview,
                       timeout=time_limit(info.audio_duration), role="audio", path=audio)
        except BaseException:
            preview.unlink(missing_ok=True)
            raise
        return preview

    def run(self, video, audio, inputs: dict, progress: ProgressCallback | None = None, cancel: threading.Event | None = None,
            browser: str | None = None, visitor: str = "", segment_audio=()) -> JobResult:
        """Check and lip-sync `video` to `audio` with the service `inputs` (with segments: only
        their time ranges, to their clips in `segment_audio`); the result is listed for
        `browser` (an id the page keeps in the browser), if given. The result cache answers
        only this `visitor`'s own repeats, so no one learns from it what someone else ran."""
        options, version, segments = self.check(video, audio, inputs, segment_audio)
        self._results.remove_old()  # the cache removes its expired entries as it stores this job's
        video, audio = Path(video), Path(audio) if audio else None
        job_id = uuid.uuid4().hex[:12]
        with self._results.new(job_id) as work:
            output = work / f"{video.stem}_lipsync.mp4"
            result = self.models.run(version, video, audio, output, options, report_path=work / "report.json", temp_dir=self.work_dir,
                                     progress=progress, cancel=cancel, cache_scope=visitor, segments=segments)
            report = result.report.to_dict()
            save_timeline(report, work / "timeline.png")
            source = work / f"source{video.suffix.lower()}"
            place(video, source)
            speech = f"{audio.name} + " if audio else ""
            title = f"{video.name} + {speech}{len(segments)} segment{'s' * (len(segments) != 1)}" if segments else f"{video.name} + {audio.name}"
            record = {"id": job_id, "title": title, "created": time.time(), "video": output.name, "source": source.name}
            (work / JOB_FILE).write_text(json.dumps(record))
        if browser:
            self.remember(browser, job_id)
        return self.result(job_id)

    @property
    def sweep_period_s(self) -> float:
        """How often what is older than `keep_s` is looked for (`remove_old`)."""
        return min(3600, max(60, self.keep_s / 4))

    def remove_old(self) -> None:
        """Remove what is older than `keep_s`: finished results, speech previews (after an hour at
        most: each is played once) and results the cache has not used since."""
        self._results.remove_old()
        self._remove_old_previews()
        if self.models.cache is not None:
            self.models.cache.remove_expired()

    def _remove_old_previews(self) -> None:
        remove_older_than(self.previews_dir, min(PREVIEW_MAX_AGE_S, self.keep_s))

    def remove_old_while_serving(self) -> None:
        """`remove_old` every `sweep_period_s` on a thread of its own, so that nothing outlives
        `keep_s` by more than that on a server no one uses."""

        def sweep() -> None:
            while True:
                time.sleep(self.sweep_period_s)
                try:
                    self.remove_old()
                except OSError:
                    logger.exception("removing old results failed; trying again in %.0f s", self.sweep_period_s)

        threading.Thread(target=sweep, daemon=True, name="remove-old").start()

    def remember(self, browser: str, job_id: str) -> None:
        """List `job_id` among `browser`'s results (its newest APP_RESULTS_PER_BROWSER are kept)."""
        with self._lock:
            self._by_browser.put(browser, [*self._by_browser.get(browser, []), job_id][-APP_RESULTS_PER_BROWSER:])

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


def check_upload_name(path, role: str) -> None:
    """Refuse an upload whose name is not of a kind the upload box offers (ValueError, one sentence)."""
    allowed, wanted = (VIDEO_UPLOADS, f"a video ({VIDEO_FORMATS})") if role == "video" else (SPEECH_UPLOADS, f"an audio file ({AUDIO_FORMATS}) or a video")
    suffix = Path(path).suffix.lower()
    if suffix not in allowed:
        raise InputError(f"The {role} input is {f'a {suffix} file' if suffix else 'a file without an extension'}; upload {wanted}.")


def new_browser_id(sent=None) -> str:
    """The id a browser keeps in its storage: `sent` if it is one of ours, else a fresh one."""
    return sent if isinstance(sent, str) and BROWSER_ID.fullmatch(sent) else uuid.uuid4().hex


class Recent:
    """The `size` most recently used keys and their values; older ones are forgotten, so keys a
    client chooses cannot grow it without bound. Thread-safe."""

    def __init__(self, size: int):
        self.size = size
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._items:
                return default
            self._items.move_to_end(key)
            return self._items[key]

    def put(self, key, value) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)

