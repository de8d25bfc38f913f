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
