"""Project-wide settings: where configs and weights live, and the constants the model was trained with."""

import os
from pathlib import Path

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIGS_DIR = REPO_ROOT / "configs"
SCHEDULER_CONFIG_DIR = CONFIGS_DIR  # holds scheduler_config.json (diffusers `from_pretrained` layout)
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "checkpoints"

# The official U-Net config for each released model version.
UNET_CONFIGS = {
    "1.5": CONFIGS_DIR / "unet" / "stage2.yaml",
    "1.6": CONFIGS_DIR / "unet" / "stage2_512.yaml",
}

MODEL_FPS = 25  # video frame rate the model was trained at
AUDIO_SAMPLE_RATE = 16000  # Whisper's input rate
NUM_FRAMES = 16  # frames denoised together in one window
VAE_SCALING_FACTOR = 0.18215
VAE_SHIFT_FACTOR = 0.0


def weights_dir() -> Path:
    """The folder holding downloaded weights (`LATENTSYNC_WEIGHTS_DIR` overrides the default)."""
    return Path(os.environ.get("LATENTSYNC_WEIGHTS_DIR", DEFAULT_WEIGHTS_DIR))


def load_yaml(path) -> dict:
    """Read a YAML config file (e.g. configs/unet/stage2.yaml) into plain dicts and lists."""
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)

# Limits the hosted service enforces on inputs (the library and CLI themselves take any length).
MAX_INPUT_BYTES = 2 * 1024**3
MAX_DURATION_S = 600.0
MAX_FRAME_SIDE = 4096  # 4K (3840x2160 or 4096x2160), portrait or landscape
