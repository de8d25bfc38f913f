"""Configuration in one place: where things live, the constants the model was trained with, the
service's inputs with their defaults and ranges, the service's limits, and every LATENTSYNC_*
environment variable.

The model versions themselves (U-Net config, resolution, files) are listed in
weights_manifest.json only (see `latentsync.weights`).
"""

import json
import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import yaml

# ---- where things live --------------------------------------------------------------------------

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"
SCHEDULER_CONFIG_DIR = CONFIGS_DIR  # holds scheduler_config.json (diffusers `from_pretrained` layout)
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "checkpoints"
DEFAULT_MANIFEST = REPO_ROOT / "weights_manifest.json"
DEFAULT_SHARED_DIR = REPO_ROOT.parent / "shared"  # test media and reference vectors (tests, benchmarks)


def load_yaml(path) -> dict:
    """Read a YAML config file (e.g. configs/unet/stage2.yaml) into plain dicts and lists."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


# ---- what the model was trained with ------------------------------------------------------------

MODEL_FPS = 25  # video frame rate
AUDIO_SAMPLE_RATE = 16000  # Whisper's input rate
FRAMES_PER_WINDOW = 16  # video frames the U-Net denoises together
VAE_SCALING_FACTOR = 0.18215
VAE_SHIFT_FACTOR = 0.0

# ---- a job's defaults (the official inference settings, and the hosted model's) -----------------

MODEL_VERSIONS = tuple(json.loads(DEFAULT_MANIFEST.read_text())["versions"])  # the manifest lists them: "1.5", "1.6"
DEFAULT_VERSION = "1.6"
DEFAULT_INFERENCE_STEPS = 20
DEFAULT_GUIDANCE_SCALE = 1.5
DEFAULT_SEED = 1247
SEED_MAX = 2**32 - 1  # the official seeds numpy too, which takes 0 .. 2**32 - 1; JSON and JavaScript carry it exactly
DEFAULT_ENABLE_DEEPCACHE = True  # the service's default; the official CLI flag stays opt-in
DEFAULT_CRF = 18
DEFAULT_MIN_SILENCE_S = 0.3  # a pause in the speech at least this long keeps the original frames


class LengthMode(str, Enum):
    """What to do when the audio and the video differ in length."""

    BOUNCE = "bounce"  # play the video forward, then backward, ... to the audio length (official)
    LOOP = "loop"  # restart the video from the beginning to the audio length
    CUT_OFF = "cut_off"  # stop at the shorter of the two
    SILENCE = "silence"  # keep the video length; missing audio is silence and its frames pass through
    REMAP = "remap"  # time-stretch the video's frame sequence onto the audio length


@dataclass(frozen=True)
class InputSpec:
    """One input of the service (the Cog predictor, the web app and the client share these)."""

    kind: type
    default: object
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None
    # Sent to the model, and part of a client's job key, only when set: deployments made before the
    # input existed do not know it, and jobs without it keep the keys they had.
    only_when_set: bool = False


LENGTH_MODES = tuple(mode.value for mode in LengthMode)
LOW_SYNC_ACTIONS = ("regenerate", "passthrough")

# The service's options by their Cog names (the hosted bytedance/latentsync's, plus ours).
SERVICE_INPUTS = {
    "guidance_scale": InputSpec(float, DEFAULT_GUIDANCE_SCALE, "How strongly the mouth follows the audio (classifier-free guidance).", 1.0, 3.0),
    "inference_steps": InputSpec(int, DEFAULT_INFERENCE_STEPS, "Denoising steps: more is slower and slightly sharper.", 20, 50),
    "seed": InputSpec(int, DEFAULT_SEED, "Random seed; -1 or 0 picks one (printed and put in the report).", -1, SEED_MAX),
    "version": InputSpec(str, DEFAULT_VERSION, "LatentSync model: 1.6 (512 px, sharper) or 1.5 (256 px, faster).", choices=MODEL_VERSIONS),
    "enable_deepcache": InputSpec(bool, DEFAULT_ENABLE_DEEPCACHE, "Reuse deep U-Net features between steps: about 2x faster, nearly identical."),
    "length_mode": InputSpec(
        str, LENGTH_MODES[0],
        "When audio and video lengths differ: bounce (play the video back and forth), loop, cut_off (shorter of the two), "
        "silence (keep the video length; silent tail), remap (stretch the video to the audio).",
        choices=LENGTH_MODES,
    ),
    "skip_silence": InputSpec(bool, True, f"Keep the original frames where the audio pauses ({DEFAULT_MIN_SILENCE_S:g} s or longer)."),
    "speaker_point": InputSpec(
        str, "", "When several faces are visible: 'x,y' (pixels, first frame) or 'x,y,frame' on the speaker's face. Empty: the largest, most present face."
    ),
    "min_sync_confidence": InputSpec(float, 0.0, "Regenerate or pass through spans whose SyncNet confidence is lower (0: off).", 0.0, 15.0),
    "low_sync_action": InputSpec(str, LOW_SYNC_ACTIONS[0], "What to do with spans below min_sync_confidence.", choices=LOW_SYNC_ACTIONS),
    "output_fps": InputSpec(str, "25", "25 (the model's rate, as the official) or source (keep a 24-30 fps source's rate).", choices=("25", "source")),
    "crf": InputSpec(int, DEFAULT_CRF, "H.264 quality of the output: lower is better and bigger.", 10, 35),
    "return_report": InputSpec(bool, False, "Return {video, report} instead of just the video; the report lists what was regenerated and why."),
    "segments": InputSpec(
        str, "",
        'Re-make only these time ranges: a JSON list like [{"start": 2.0, "end": 3.5, "audio": 0}] (seconds of the video; audio: '
        "the index of its file in segment_audio, else the job's audio at that time; optional audio_start, guidance_scale, "
        "inference_steps). Outside them the output is the source, with its own audio. Empty: the whole video.",
        only_when_set=True,
    ),
    "plan_only": InputSpec(
        bool, False, "Return the plan as a JSON file instead of running the model: what each span would get and why, the windows, "
        "and the estimated GPU seconds.", only_when_set=True,
    ),
}
SEGMENT_AUDIO_DESCRIPTION = "Audio files for the segments (each segment names its file by its index in this list, from 0)."

@dataclass(frozen=True)
class Preset:
    """Settings of the field for a kind of job, as the web app offers them."""

    inputs: dict  # the service inputs it sets; the others keep their values
    use: str  # when to choose it


PRESETS = {
    "draft": Preset({"inference_steps": 20, "guidance_scale": 1.5, "enable_deepcache": True}, "fastest: check framing and timing"),
    "standard dub": Preset({"inference_steps": 25, "guidance_scale": 1.5, "enable_deepcache": True}, "most dubbing and presenter clips"),
    "close-up": Preset({"inference_steps": 40, "guidance_scale": 1.5, "enable_deepcache": False}, "large faces, where detail shows"),
    "weak sync": Preset({"inference_steps": 30, "guidance_scale": 2.0, "enable_deepcache": True}, "the mouth lags the audio; raise guidance up to 2.5"),
}

# ---- segments (latentsync.segments) ------------------------------------------------------------

MAX_SEGMENTS = 100
SEGMENT_CROSSFADE_S = 0.005  # the output audio cross-fades this long into and out of each segment: no click

# ---- what the hosted service accepts (the library and the CLI take any length) ------------------

MAX_INPUT_BYTES = 2 * 1024**3
MAX_DURATION_S = 600.0
MAX_FRAME_SIDE = 4096  # 4K (3840x2160 or 4096x2160), portrait or landscape

# ---- the web app (python -m latentsync.app) -------------------------------------------------------

APP_HOST = "127.0.0.1"  # this machine only; --host 0.0.0.0 to serve the network
APP_PORT = 7860  # Gradio's usual port
DEFAULT_APP_DIR = Path.home() / ".cache" / "latentsync" / "app"  # results/, cache/, previews/ and work/
APP_KEEP_S = 24 * 3600  # results, cached results and uploads older than this are removed (--keep-hours)
APP_SEGMENT_ROWS = 3  # segments the page's table offers (the API takes up to MAX_SEGMENTS)
APP_MAX_QUEUE = 20  # jobs waiting for the model; a visitor past this is told the queue is full
APP_CHECKS_AT_ONCE = 4  # upload checks and speech previews (ffprobe, a short encode) run beside the model, this many at a time
APP_FILES_PER_UPLOAD = 2  # files one upload request may carry: the video and the speech, of MAX_INPUT_BYTES each
APP_BROWSERS_KEPT = 10_000  # browsers whose results are listed; the least recently seen is forgotten first
APP_RESULTS_PER_BROWSER = 50  # a browser's newest results listed
APP_URL_FETCH_S = 600.0  # the longest a URL input may take to download (it is also capped at MAX_INPUT_BYTES)

# ---- self-hosted GPUs: the queue and its workers (python -m latentsync.worker) ---------------------

QUEUE_LEASE_S = 60.0  # a worker that has not renewed its job's lease for this long is presumed lost
QUEUE_MAX_ATTEMPTS = 3  # a job lost this many times (workers gone or stopped) fails with the reason
QUEUE_JOB_TIMEOUT_S = 3 * 3600.0  # a prediction still running after this is canceled and the job released
WEBHOOK_LINK_TTL_S = 24 * 3600  # how long the output link in a self-hosted webhook works (S3: presigned)

# ---- environment variables -----------------------------------------------------------------------


def weights_dir() -> Path:
    """The folder holding downloaded weights: $LATENTSYNC_WEIGHTS_DIR, else checkpoints/."""
    return Path(os.environ.get("LATENTSYNC_WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR)


def weights_manifest() -> Path:
    """The weights manifest: $LATENTSYNC_WEIGHTS_MANIFEST (its paths resolve against its folder),
    else the repository's weights_manifest.json."""
    return Path(os.environ.get("LATENTSYNC_WEIGHTS_MANIFEST") or DEFAULT_MANIFEST)


def weights_base_url() -> str | None:
    """$LATENTSYNC_WEIGHTS_BASE_URL: replaces the scheme and host of every weight URL (mirrors)."""
    return os.environ.get("LATENTSYNC_WEIGHTS_BASE_URL") or None


def compile_requested() -> bool:
    """$LATENTSYNC_COMPILE=1: the service compiles the U-Net (and warms it up in setup)."""
    return os.environ.get("LATENTSYNC_COMPILE", "0") == "1"


def allow_cpu() -> bool:
    """$LATENTSYNC_ALLOW_CPU=1: a server with a CUDA build of PyTorch may run on the CPU (otherwise
    setup fails when it finds no GPU)."""
    return os.environ.get("LATENTSYNC_ALLOW_CPU", "0") == "1"


def shared_dir() -> Path:
    """The provided test media and reference vectors: $LATENTSYNC_SHARED_DIR, else ../shared."""
    return Path(os.environ.get("LATENTSYNC_SHARED_DIR") or DEFAULT_SHARED_DIR)


def webhook_secret() -> str | None:
    """$LATENTSYNC_WEBHOOK_SECRET: the whsec_ secret webhooks are signed with: the Replicate
    account's for `serve-webhooks`, or your own, given to the self-hosted workers that sign with it
    and to whatever receives their webhooks (from the environment, so it never shows in the process
    list)."""
    return os.environ.get("LATENTSYNC_WEBHOOK_SECRET") or None


def app_auth() -> str | None:
    """$LATENTSYNC_APP_AUTH: the web app's login, "user:password" (read from the environment, so it
    never shows in the process list; --auth-file is the other way)."""
    return os.environ.get("LATENTSYNC_APP_AUTH") or None


def queue_url() -> str | None:
    """$LATENTSYNC_QUEUE_URL: the self-hosted queue's Redis URL, for the client and the workers when
    --queue is not given (a URL with a password belongs here, not on the command line)."""
    return os.environ.get("LATENTSYNC_QUEUE_URL") or None


def storage_url() -> str | None:
    """$LATENTSYNC_STORAGE_URL: the self-hosted queue's storage (s3://bucket/prefix or
    file:///folder) when --storage is not given."""
    return os.environ.get("LATENTSYNC_STORAGE_URL") or None
