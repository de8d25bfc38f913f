"""Logs that carry our lines without the libraries' noise, for the front ends that load models
(the Cog predictor, the web app, scripts/eval_sync.py).

Each kind of noise is silenced where it starts, not filtered from the output: a logger's level,
a warnings filter on the one deprecation, and file descriptor 2
captured while native libraries start.
"""

import contextlib
import logging
import os
import sys
import tempfile
import types
import warnings

import numpy as np

logger = logging.getLogger("latentsync")

WARM_UP_FRAME = (64, 64, 3)  # a blank frame the face detector sees once at load


def configure_logging() -> None:
    """Our log lines from INFO, other libraries' from WARNING, and the known noise of the
    libraries we load silenced where it starts:

    - httpx logs every HTTP request at INFO: each range request of the weights download;
    - MediaPipe's packet getter calls protobuf's deprecated `SymbolDatabase.GetPrototype()` for
      every detection result, which warns (with the venv's path) on the first one.

    (diffusers' hint to install accelerate is avoided where the VAE is loaded: `denoise.load_vae`.)

    MediaPipe's native start-up messages bypass Python: see `native_stderr_captured`.
    """
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logger.setLevel(logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=r"SymbolDatabase\.GetPrototype\(\) is deprecated", category=UserWarning, module=r"google\.protobuf\.symbol_database")


@contextlib.contextmanager
def native_stderr_captured():
    """Point file descriptor 2 at a temporary file for the block.

    Native libraries write there directly, past Python's logging and warnings: each graph
    MediaPipe starts has TensorFlow Lite print "Created TensorFlow Lite XNNPACK delegate" and
    "Feedback manager requires a model with a single signature inference" (after absl's "before
    InitializeLog" banner). What the block wrote is logged at DEBUG when it succeeds and written
    to stderr when it fails, so a real error is never lost; it is also the `text` of the object
    the block gets, once the block has ended.
    """
    sys.stderr.flush()
    original = os.dup(2)
    failed = True
    written = types.SimpleNamespace(text="")
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield written
            failed = False
        finally:
            sys.stderr.flush()
            os.dup2(original, 2)
            os.close(original)
            captured.seek(0)
            text = written.text = captured.read().decode(errors="replace")
            if failed:
                sys.stderr.write(text)
            elif text.strip():
                logger.debug("native libraries wrote while loading:\n%s", text.rstrip())


def warm_up(detector) -> None:
    """Run `detector`, and each MediaPipe graph it holds, once on a blank frame.

    A MediaPipe graph opens its models, and prints, in threads of its own after it is built; its
    first run waits for that. (On a blank frame the face mesh would not run through `detect`.)
    """
    blank = np.zeros(WARM_UP_FRAME, np.uint8)
    detector.detect(blank)
    solutions = sys.modules.get("mediapipe.python.solution_base")
    if solutions is None:  # MediaPipe was never loaded: another detector
        return
    for graph in vars(detector).values():
        if isinstance(graph, solutions.SolutionBase):
            graph.process(blank)
