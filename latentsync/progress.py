"""How a running job tells its caller how far it is, and how a caller stops it.

The pipeline calls `progress(Progress(...))` from the thread that called it, as work is done:

    analyse   frames checked for faces    (total: the video's frames at the output rate)
    denoise   16-frame windows denoised   (total: the windows the plan asks for)
    write     output frames encoded       (total: the output's frames)

`denoise` and `write` advance together (the model runs a few windows ahead of the encoder). A
callback that raises stops the job with that exception. Setting the `cancel` event handed to the
pipeline stops it too: it raises `JobCancelled` within about one window's work, and every ffmpeg
process and worker thread of the job has ended when it does.
"""

import threading
import time
from dataclasses import dataclass
from typing import Callable

STAGES = ("analyse", "denoise", "write")


@dataclass(frozen=True)
class Progress:
    stage: str  # one of STAGES
    done: int
    total: int

    @property
    def fraction(self) -> float:
        return min(1.0, self.done / self.total) if self.total > 0 else 1.0


ProgressCallback = Callable[[Progress], None]


class JobCancelled(Exception):
    """The job was cancelled by its caller; nothing it was writing is left behind."""


def raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise JobCancelled("The job was cancelled.")


def notify(progress: ProgressCallback | None, stage: str, done: int, total: int) -> None:
    if progress is not None:
        progress(Progress(stage, done, total))


class ProgressLog:
    """A ProgressCallback that writes a few compact lines, whatever the video's length: the
    analysis and the render (frames written, with the windows denoised so far: the two advance
    together) each at about every `step` of their work (5%), with the job's elapsed time and the
    stage's estimated time left.

        render    35% (224/640 frames written, 14/40 windows denoised), 1:38 elapsed, about 1:07 left

    `log` takes one line (e.g. a logger's `info`); `clock` returns seconds (tests pass their own).
    """

    def __init__(self, log: Callable[[str], None], step: float = 0.05, clock: Callable[[], float] = time.monotonic):
        self.log = log
        self.steps = max(1, round(1 / step))
        self.clock = clock
        self.windows: Progress | None = None  # the latest denoise progress
        self._job_started: float | None = None
        self._stage_started: dict[str, tuple[float, int]] = {}  # stage -> (time, done) at its first report
        self._last_logged: dict[str, int] = {}  # stage -> the step it was last logged at

    def __call__(self, progress: Progress) -> None:
        if progress.stage == "denoise":
            self.windows = progress
            return
        now = self.clock()
        if self._job_started is None:
            self._job_started = now
        started, done_then = self._stage_started.setdefault(progress.stage, (now, progress.done))
        reached = int(progress.fraction * self.steps + 1e-9)
        if reached <= self._last_logged.get(progress.stage, -1):
            return
        self._last_logged[progress.stage] = reached
        if progress.stage == "analyse":
            line = f"analyse  {progress.fraction:4.0%} ({progress.done}/{progress.total} frames)"
        else:
            line = f"render   {progress.fraction:4.0%} ({progress.done}/{progress.total} frames written{windows_denoised(self.windows)})"
        line += f", {_clock_time(now - self._job_started)} elapsed"
        if progress.done < progress.total and progress.done > done_then:
            line += f", about {_clock_time((now - started) / (progress.done - done_then) * (progress.total - progress.done))} left"
        self.log(line)


def windows_denoised(windows: Progress | None) -> str:
    """", 14/40 windows denoised" for the latest denoise progress; "" before any."""
    return f", {windows.done}/{windows.total} windows denoised" if windows is not None and windows.total else ""


def _clock_time(seconds: float) -> str:
    """0:07, 2:10, 1:02:03"""
    minutes, second = divmod(int(round(seconds)), 60)
    hours, minute = divmod(minutes, 60)
    return f"{hours}:{minute:02d}:{second:02d}" if hours else f"{minute}:{second:02d}"
