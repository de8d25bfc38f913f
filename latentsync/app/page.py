"""The web page: the uploads, the service's options (built from `latentsync.config.SERVICE_INPUTS`)
and the presets of the field; one job at a time on the model, with the queue position and the
pipeline's progress shown; the lip-synced video beside its source, the timeline picture and the
report; and the results of earlier jobs from the same browser, kept across page reloads.

The Run button's event is also the programmatic endpoint, named `lipsync`:

    from gradio_client import Client, handle_file
    video, report, timeline = Client("http://127.0.0.1:7860/").predict(
        handle_file("talk.mp4"), handle_file("dub.wav"), guidance_scale=2.0, api_name="/lipsync")

No Gradio component is handed an upload its own ffmpeg would open: the speech preview plays our
runner's re-encoding of a file that passed the service's checks (`Jobs.speech_preview`), and the
events take the raw uploads (preprocess=False) for the service's checks. Errors reach the visitor
as the service's one sentence; anything unexpected as one sentence too, with the details logged.
"""

import contextlib
import logging
import threading
from dataclasses import replace

import gradio as gr

from ..config import APP_BROWSERS_KEPT, APP_CHECKS_AT_ONCE, PRESETS, SERVICE_INPUTS, InputSpec
from ..progress import Progress, windows_denoised
from ..serving import in_thread
from ..weights import WeightsError
from ..windows import AlignmentError, ModelError
from .jobs import SPEECH_UPLOADS, JobResult, Jobs, Recent, new_browser_id
from .uploads import FileInput, VideoInput

logger = logging.getLogger("latentsync")

PAGE_INPUTS = [name for name in SERVICE_INPUTS if name != "return_report"]  # the page always returns the report
MAIN_OPTIONS = ("version", "guidance_scale", "inference_steps", "enable_deepcache")  # the rest go under "More options"
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
        with gr.Blocks(title="LatentSync lip-sync", analytics_enabled=False, delete_cache=(3600, 24 * 3600)) as page:
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
                    stop = gr.Button("Stop", variant="secondary")
            widgets = self._option_widgets()
            status = gr.Markdown(elem_id="status")
            timeline = gr.Image(label="Timeline", type="filepath", interactive=False, elem_id="timeline")
            with gr.Accordion("Report", open=False):
                report = gr.JSON(label="Report")
            earlier = gr.Dropdown(label="Earlier results from this browser", choices=[], interactive=True, elem_id="earlier-results")

            inputs = [source, audio, *(widgets[name] for name in PAGE_INPUTS)]
            results = [output, report, timeline]
            checks = {"concurrency_limit": APP_CHECKS_AT_ONCE, "concurrency_id": "checks", "preprocess": False}
            audio.change(self.preview, audio, speech, api_visibility="private", show_progress="hidden", **checks)
            preset.input(self.apply_preset, preset, [widgets[name] for name in _preset_inputs()], api_visibility="private", show_progress="hidden")
            # The cheap checks run at once, outside the model's queue, so a bad upload is told straight away.
            # Both events take the raw values (preprocess=False): out-of-range options then get the
            # service's message, naming the input, rather than Gradio's.
            job = (
                run.click(self.check, inputs, None, api_visibility="private", show_progress="hidden", **checks)
                .success(self.lipsync, inputs, results, api_name="lipsync", concurrency_limit=1, concurrency_id="model", preprocess=False)
            )
            job.success(self.listed, [report, browser], [status, earlier], api_visibility="private", show_progress="hidden")
            stop.click(None, cancels=[job])
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
                if name not in MAIN_OPTIONS:
                    widgets[name] = option_widget(name, SERVICE_INPUTS[name])
        return widgets

    # ---- events ------------------------------------------------------------------------------

    def preview(self, audio):
        """The speech upload, playable: our re-encoding of it once it passed the checks."""
        if not _path(audio):
            return gr.Audio(value=None, visible=False)
        with told_in_one_sentence():
            return gr.Audio(value=str(self.jobs.speech_preview(_path(audio))), visible=True)

    def check(self, video, audio, *values):
        """The service's checks on the uploads and options, before the job joins the queue."""
        with told_in_one_sentence():
            self.jobs.check(_path(video), _path(audio), dict(zip(PAGE_INPUTS, values)))

    async def lipsync(self, video, audio, guidance_scale, inference_steps, seed, version, enable_deepcache, length_mode, skip_silence,
                      speaker_point, min_sync_confidence, low_sync_action, output_fps, crf, request: gr.Request, progress=gr.Progress()):
        """Lip-sync `video` to `audio` with the service's options (by their Cog names). Returns
        the lip-synced video, the report and the report's timeline picture (PNG)."""
        inputs = {name: value for name, value in locals().items() if name in PAGE_INPUTS}
        cancel = threading.Event()
        session = request.session_hash if request else None
        browser = self._browsers.get(session) if session else None
        visitor = (request.username if request else None) or browser or session or ""  # whose repeats the result cache answers
        progress(0, desc="Reading the audio")
        with told_in_one_sentence():  # Stop, or the client cancelling, sets `cancel`: the pipeline ends within about a window
            result = await in_thread(self.jobs.run, _path(video), _path(audio), inputs, PageProgress(progress), cancel=cancel, browser=browser,
                                     visitor=visitor)
        return result.video, result.report, result.timeline

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
    parts.append(f"seed {report['seed']}, model {report['version']}")
    parts.append("served from the result cache" if report.get("cache") == "hit" else f"done in {report['timings']['total_s']:.1f} s")
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


def _on_page(result: JobResult) -> tuple:
    """The page's source, video, report, timeline and status for a result."""
    return result.source, result.video, result.report, result.timeline, summary(result.report)


def _preset_inputs() -> list[str]:
    """The inputs the presets set, in a fixed order."""
    return list(dict.fromkeys(name for preset in PRESETS.values() for name in preset.inputs))
