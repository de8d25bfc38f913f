"""The web page: the uploads, the service's options (built from `latentsync.config.SERVICE_INPUTS`)
and the presets of the field, a small table of segments (time ranges to re-make, a clip each);
one job at a time on the model, with the queue position and the pipeline's progress shown; the
lip-synced video beside its source, the timeline picture and the report; a plan preview (what a
job would do and its estimated GPU time, without running the model); and the results of earlier
jobs from the same browser, kept across page reloads.

The Run button's event is also the programmatic endpoint, named `lipsync`, taking the inputs by
their Cog names; Preview plan's is `plan`:

    from gradio_client import Client, handle_file
    video, report, timeline = Client("http://127.0.0.1:7860/").predict(
        handle_file("talk.mp4"), handle_file("dub.wav"), guidance_scale=2.0, api_name="/lipsync")
    video, report, timeline = Client("http://127.0.0.1:7860/").predict(
        handle_file("template.mp4"), segments='[{"start": 0.4, "end": 1.9, "audio": 0}]',
        segment_audio=[handle_file("name.wav")], api_name="/lipsync")

No Gradio component is handed an upload its own ffmpeg would open: the speech preview plays our
runner's re-encoding of a file that passed the service's checks (`Jobs.speech_preview`), and the
events take the raw uploads (preprocess=False) for the service's checks. Errors reach the visitor
as the service's one sentence; anything unexpected as one sentence too, with the details logged.
"""

import contextlib
import json
import logging
import threading
from dataclasses import replace

import gradio as gr

from ..config import APP_BROWSERS_KEPT, APP_CHECKS_AT_ONCE, APP_SEGMENT_ROWS, PRESETS, SEGMENT_AUDIO_DESCRIPTION, SERVICE_INPUTS, InputSpec
from ..progress import Progress, windows_denoised
from ..serving import in_thread
from ..timeline import timeline_image
from ..weights import WeightsError
from ..windows import AlignmentError, ModelError
from .jobs import SPEECH_UPLOADS, JobResult, Jobs, Recent, new_browser_id
from .uploads import FileInput, VideoInput

logger = logging.getLogger("latentsync")

# The service's inputs the endpoints take by name: all but return_report (the page always returns
# the report) and plan_only (the plan has its own button and endpoint).
PAGE_INPUTS = [name for name in SERVICE_INPUTS if name not in ("return_report", "plan_only")]
MAIN_OPTIONS = ("version", "guidance_scale", "inference_steps", "enable_deepcache")  # the rest go under "More options"
SEGMENT_FIELDS = ("start", "end", "audio_start", "inference_steps", "guidance_scale")  # a segment row's numbers; its clip besides
VIDEO_HEIGHT = 420  # pixels: portrait and landscape clips both fit beside each other
SLIDER_MAX_STEPS = 1000  # a number input with a wider range (the seed) is a number box, not a slider
# bad inputs, no usable face, weights that cannot be fetched, the model failing on the device: each one sentence
USER_ERRORS = (ValueError, WeightsError, FileNotFoundError, ModelError, AlignmentError)
SERVER_ERROR = "Something failed on the server (its log has the details); try again, and report it if it happens again."


class LipsyncPage:
    """The page over `jobs`; `version` is the model version loaded at start (the default choice)."""

    def __init__(self, jobs: Jobs, version: str):
        self.jobs = jobs
        self.version = version
        self._browsers = Recent(APP_BROWSERS_KEPT)  # page session -> browser id (kept in the browser's storage)

    def build(self) -> gr.Blocks:
        # Gradio's own copies of the uploads go after the same time as the results, looked for this often.
        delete_cache = (round(self.jobs.sweep_period_s), round(self.jobs.keep_s))
        with gr.Blocks(title="LatentSync lip-sync", analytics_enabled=False, delete_cache=delete_cache) as page:
            browser = gr.BrowserState(None, storage_key="latentsync-browser")
            gr.Markdown("## LatentSync lip-sync\nUpload a talking-head video and the speech it should say: "
                        "the same video comes back with only the mouth re-made. Jobs run one at a time.")
            with gr.Row(equal_height=True):
                # Gradio's video box has no file_types: its upload offers video files only, and the checks take the rest.
                source = VideoInput(label="Source video", sources=["upload"], height=VIDEO_HEIGHT, elem_id="source-video")
                output = gr.Video(label="Lip-synced", interactive=False, height=VIDEO_HEIGHT, elem_id="lipsynced-video")
            with gr.Row():
                with gr.Column(scale=2):
                    audio = FileInput(label="Speech: an audio file, or a video whose audio track to use", file_types=list(SPEECH_UPLOADS), elem_id="speech-file")
                    speech = gr.Audio(label="Speech preview", interactive=False, visible=False)
                with gr.Column(scale=1):
                    preset = gr.Radio(list(PRESETS), value=None, label="Preset", info=" · ".join(f"{name}: {p.use}" for name, p in PRESETS.items()))
                    run = gr.Button("Lip-sync", variant="primary", elem_id="run-button")
                    preview_plan = gr.Button("Preview plan", variant="secondary", elem_id="preview-button")
                    stop = gr.Button("Stop", variant="secondary")
            widgets = self._option_widgets()
            rows, segment_audio = self._segment_rows()
            status = gr.Markdown(elem_id="status")
            timeline = gr.Image(label="Timeline", type="filepath", interactive=False, elem_id="timeline")
            with gr.Accordion("Report", open=False):
                report = gr.JSON(label="Report")
            earlier = gr.Dropdown(label="Earlier results from this browser", choices=[], interactive=True, elem_id="earlier-results")

            inputs = [source, audio]  # then the service's inputs by name, and the segments' clips
            named = {**{name: widgets[name] for name in PAGE_INPUTS}, "segment_audio": segment_audio}
            results = [output, report, timeline]
            checks = {"concurrency_limit": APP_CHECKS_AT_ONCE, "concurrency_id": "checks", "preprocess": False}
            audio.change(self.preview, audio, speech, api_visibility="private", show_progress="hidden", **checks)
            # The table's rows become the service's segments (JSON) and clips before the checks.
            table = dict(fn=self.segments_of_rows, inputs=[field for row in rows for field in row], outputs=[widgets["segments"], segment_audio],
                         api_visibility="private", show_progress="hidden", **checks)
            preset.input(self.apply_preset, preset, [widgets[name] for name in _preset_inputs()], api_visibility="private", show_progress="hidden")
            # The cheap checks run at once, outside the model's queue, so a bad upload is told straight away.
            # Both events take the raw values (preprocess=False): out-of-range options then get the
            # service's message, naming the input, rather than Gradio's.
            check = dict(fn=self.check, inputs=inputs, inputs_kwargs=named, api_visibility="private", show_progress="hidden", **checks)
            job = (
                run.click(**table).success(**check)
                .success(self.lipsync, inputs, results, inputs_kwargs=named, api_name="lipsync", concurrency_limit=1, concurrency_id="model", preprocess=False)
            )
            job.success(self.listed, [report, browser], [status, earlier], api_visibility="private", show_progress="hidden")
            planned = (
                preview_plan.click(**table).success(**check)
                .success(self.plan, inputs, [report, timeline, status], inputs_kwargs=named, api_name="plan", concurrency_limit=1,
                         concurrency_id="model", preprocess=False)
            )
            stop.click(None, cancels=[job, planned])
            earlier.input(self.show, earlier, [source, *results, status], api_visibility="private")
            page.load(self.restore, browser, [browser, earlier, source, *results, status], api_visibility="private")
        return page

    def _option_widgets(self) -> dict[str, gr.components.Component]:
        widgets = {}
        with gr.Row():
            for name in MAIN_OPTIONS:
                spec = SERVICE_INPUTS[name]
                if name == "version":  # the versions this server offers, the loaded one first chosen
                    spec = replace(spec, choices=self.jobs.versions)
                widgets[name] = option_widget(name, spec, self.version if name == "version" else None)
        with gr.Accordion("More options", open=False), gr.Row():
            for name in PAGE_INPUTS:
                if name not in (*MAIN_OPTIONS, "segments"):
                    widgets[name] = option_widget(name, SERVICE_INPUTS[name])
        widgets["segments"] = gr.Textbox(SERVICE_INPUTS["segments"].default, visible=False)  # filled from the table below
        return widgets

    def _segment_rows(self) -> tuple[list[tuple], gr.File]:
        """The segments' table: APP_SEGMENT_ROWS rows of start, end, clip and the optional
        settings; and the (hidden) list of clips the endpoints take as segment_audio."""
        rows = []
        with gr.Accordion("Replace a few seconds (segments)", open=False, elem_id="segments"):
            gr.Markdown("Only these time ranges of the video are re-made, each speaking its clip (without one: the speech above at that "
                        "time); outside them the video and its sound stay as they are. A row whose end is 0 is skipped; audio start, "
                        "steps and guidance at 0 take their defaults.")
            for number in range(1, APP_SEGMENT_ROWS + 1):
                with gr.Row(equal_height=True):
                    numbers = {field: gr.Number(None, label=f"{number}: {field.replace('_', ' ')}" + (" (s)" if field in ("start", "end", "audio_start") else ""),
                                                minimum=0, elem_id=f"segment-{number}-{field.replace('_', '-')}", min_width=80)
                               for field in SEGMENT_FIELDS}
                    clip = FileInput(label=f"{number}: its speech", file_types=list(SPEECH_UPLOADS), elem_id=f"segment-{number}-audio", min_width=240)
                rows.append((*numbers.values(), clip))
        return rows, FileInput(file_count="multiple", file_types=list(SPEECH_UPLOADS), visible=False, label=SEGMENT_AUDIO_DESCRIPTION)
    # ---- events ------------------------------------------------------------------------------

    def preview(self, audio):
        """The speech upload, playable: our re-encoding of it once it passed the checks."""
        if not _path(audio):
            return gr.Audio(value=None, visible=False)
        with told_in_one_sentence():
            return gr.Audio(value=str(self.jobs.speech_preview(_path(audio))), visible=True)

    def segments_of_rows(self, *values):
        """The table's filled rows as the service's segments (JSON, each naming its clip by its
        index) and the list of clips. A row whose end is empty or 0 is skipped; its other numbers,
        empty or 0, take their defaults (a number field shows 0 when empty)."""
        segments, clips = [], []
        for row in zip(*[iter(values)] * (len(SEGMENT_FIELDS) + 1)):
            numbers, clip = dict(zip(SEGMENT_FIELDS, row)), _path(row[-1])
            if not numbers["end"]:
                continue
            segment = {"start": numbers["start"] or 0} | {field: value for field, value in numbers.items() if field != "start" and value}
            if clip:
                segment["audio"] = len(clips)
                clips.append(clip)
            segments.append(segment)
        return (json.dumps(segments) if segments else ""), clips

    def check(self, video, audio=None, segment_audio=None, **inputs):
        """The service's checks on the uploads, options and segments, before the job joins the queue."""
        with told_in_one_sentence():
            self.jobs.check(_path(video), _path(audio), inputs, _paths(segment_audio))

    async def lipsync(self, video, audio=None, request: gr.Request = None, progress=gr.Progress(), segment_audio=None, **inputs):
        """Lip-sync `video` to `audio` with the service's inputs (by their Cog names; with
        `segments`, only those time ranges, to the clips in `segment_audio`). Returns the
        lip-synced video, the report and the report's timeline picture (PNG)."""
        session = request.session_hash if request else None
        browser = self._browsers.get(session) if session else None
        visitor = (request.username if request else None) or browser or session or ""  # whose repeats the result cache answers
        progress(0, desc="Reading the audio")
        cancel = threading.Event()
        with told_in_one_sentence():  # Stop, or the client cancelling, sets `cancel`: the pipeline ends within about a window
            result = await in_thread(self.jobs.run, _path(video), _path(audio), inputs, PageProgress(progress), cancel=cancel, browser=browser,
                                     visitor=visitor, segment_audio=_paths(segment_audio))
        return result.video, result.report, result.timeline

    async def plan(self, video, audio=None, progress=gr.Progress(), segment_audio=None, **inputs):
        """What Lip-sync would do with these inputs, without running the model: the plan (as
        the report lists spans), its timeline picture and a line with the estimated GPU time."""
        progress(0, desc="Reading the audio")
        cancel = threading.Event()
        with told_in_one_sentence():
            plan = await in_thread(self.jobs.plan, _path(video), _path(audio), inputs, _paths(segment_audio), PageProgress(progress), cancel=cancel)
        return plan, timeline_image(plan), plan_summary(plan)

    def listed(self, report, browser):
        """After a job: its summary, and the browser's results with the newest chosen."""
        results = self.jobs.results_for(browser) if browser else []
        choices = [(result.label, result.id) for result in results]
        return (summary(report) if report else ""), gr.Dropdown(choices=choices, value=choices[0][1] if choices else None)

    def show(self, job_id):
        """An earlier result, back on the page."""
        result = self.jobs.result(job_id or "")
        if result is None:
            raise gr.Error("That result is no longer kept; results are removed a day after they were made.", print_exception=False)
        return _on_page(result)

    def restore(self, browser, request: gr.Request):
        """On page load: this browser's id (made on its first visit) and its latest result."""
        browser = new_browser_id(browser)
        if request and request.session_hash:
            self._browsers.put(request.session_hash, browser)
        results = self.jobs.results_for(browser)
        choices = gr.Dropdown(choices=[(result.label, result.id) for result in results], value=results[0].id if results else None)
        if not results:
            return browser, choices, *(gr.skip() for _ in range(5))
        return browser, choices, *_on_page(results[0])

    def apply_preset(self, name):
        values = PRESETS[name].inputs
        return [values[input_name] for input_name in _preset_inputs()]


class PageProgress:
    """The page's progress bar, fed by the pipeline's progress callback: frames analysed until the
    first frame is written (the analysis goes on ahead of the writing), then frames written with
    the windows denoised so far (the two advance together)."""

    def __init__(self, bar: gr.Progress):
        self.bar = bar
        self.windows: Progress | None = None
        self.writing = False

    def __call__(self, progress: Progress) -> None:
        self.writing |= progress.stage == "write"
        if progress.stage == "analyse":
            if not self.writing:
                self.bar((progress.done, progress.total), desc="Finding faces", unit="frames")
        elif progress.stage == "denoise":
            self.windows = progress
        else:
            self.bar((progress.done, progress.total), desc=f"Lip-syncing{windows_denoised(self.windows)}", unit="frames")


def option_widget(name: str, spec: InputSpec, value=None) -> gr.components.Component:
    """The widget of one service input: its range, choices, default and description."""
    label, value = name.replace("_", " "), spec.default if value is None else value
    if spec.kind is bool:
        return gr.Checkbox(value=value, label=label, info=spec.description)
    if spec.choices:
        return gr.Radio(list(spec.choices), value=value, label=label, info=spec.description)
    if spec.kind in (int, float) and spec.minimum is not None:
        step = 1 if spec.kind is int else 0.1
        if (spec.maximum - spec.minimum) / step <= SLIDER_MAX_STEPS:
            return gr.Slider(spec.minimum, spec.maximum, value=value, step=step, label=label, info=spec.description)
        return gr.Number(value=value, minimum=spec.minimum, maximum=spec.maximum, precision=0 if spec.kind is int else None, label=label, info=spec.description)
    if spec.kind is int:
        return gr.Number(value=value, precision=0, label=label, info=spec.description)
    return gr.Textbox(value=value, label=label, info=spec.description)


def summary(report: dict) -> str:
    """One line on what a job did, from its report."""
    frames, generated = report["frames"], report["frames_generated"]
    parts = [f"**{generated} of {frames} frames regenerated** ({generated / frames:.0%} of {report['duration']:.1f} s)"]
    if report.get("failed_windows"):
        parts.append(f"**{report['failed_windows']} windows kept their original frames** (out of GPU memory)")
    if report.get("sync_confidence") is not None:
        parts.append(f"sync confidence {report['sync_confidence']:.2f}")
    if report.get("segments"):
        parts.append(f"{len(report['segments'])} segment{'s' * (len(report['segments']) != 1)}")
    parts.append(f"seed {report['seed']}, model {report['version']}")
    parts.append("served from the result cache" if report.get("cache") == "hit" else f"done in {report['timings']['total_s']:.1f} s")
    return " · ".join(parts)


def plan_summary(plan: dict) -> str:
    """One line on what a job would do and cost, from its plan."""
    frames, generated, priced = plan["frames"], plan["frames_generated"], plan["estimate"]
    parts = [f"**Plan: {generated} of {frames} frames to regenerate** ({generated / frames:.0%} of {plan['duration']:.1f} s) in {plan['windows']} windows"]
    if plan.get("segments"):
        parts.append(f"{len(plan['segments'])} segment{'s' * (len(plan['segments']) != 1)}")
    if priced["gpu_seconds"] is not None:
        label = "measured" if priced["basis"].startswith("measured") else "estimate"
        parts.append(f"about {priced['gpu_seconds']:.1f} GPU s of denoising on an {priced['gpu']} ({label})")
    parts.append("nothing was run")
    return " · ".join(parts)


@contextlib.contextmanager
def told_in_one_sentence():
    """The service's sentence for a bad request; for anything else, one sentence to the visitor
    and the traceback to the log (Gradio would show the exception's own text)."""
    try:
        yield
    except gr.Error:
        raise
    except USER_ERRORS as error:
        raise gr.Error(str(error), print_exception=False) from None
    except Exception:
        logger.exception("a web app request failed")
        raise gr.Error(SERVER_ERROR, print_exception=False) from None


def _path(upload) -> str | None:
    """The server path of an uploaded file, as the events receive it (Gradio's FileData as a dict)."""
    return upload.get("path") if isinstance(upload, dict) else upload


def _paths(uploads) -> list[str]:
    """The server paths of a list of uploads (None: none)."""
    return [_path(upload) for upload in uploads or []]


def _on_page(result: JobResult) -> tuple:
    """The page's source, video, report, timeline and status for a result."""
    return result.source, result.video, result.report, result.timeline, summary(result.report)


def _preset_inputs() -> list[str]:
    """The inputs the presets set, in a fixed order."""
    return list(dict.fromkeys(name for preset in PRESETS.values() for name in preset.inputs))
