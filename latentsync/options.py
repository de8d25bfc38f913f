"""A job's options, and how the front ends (Cog predictor, web app, CLI, client) turn what a user
typed into them: the service's inputs checked against their one table, the speaker's point or
box, and the random seed."""

import math
import numbers
import os
from dataclasses import dataclass

from .config import (
    DEFAULT_CRF,
    DEFAULT_GUIDANCE_SCALE,
    DEFAULT_INFERENCE_STEPS,
    DEFAULT_MIN_SILENCE_S,
    DEFAULT_SEED,
    LENGTH_MODES,
    LOW_SYNC_ACTIONS,
    SEED_MAX,
    SERVICE_INPUTS,
    InputSpec,
)


@dataclass
class LipsyncOptions:
    """Everything about a job that changes its output (and so its result-cache key)."""

    num_inference_steps: int = DEFAULT_INFERENCE_STEPS
    guidance_scale: float = DEFAULT_GUIDANCE_SCALE
    seed: int = DEFAULT_SEED
    enable_deepcache: bool = False  # opt-in in the library and the CLI, as the official; on in the service
    length_mode: str = LENGTH_MODES[0]  # bounce | loop | cut_off | silence | remap (see config.LengthMode)
    skip_silence: bool = True  # keep the original frames where the audio pauses (>= min_silence_s)
    min_silence_s: float = DEFAULT_MIN_SILENCE_S
    keep_source_fps: bool = False  # output at the source frame rate (24-30 fps sources) instead of 25
    speaker_point: tuple | None = None  # (x, y, frame): speak with the face at that point
    speaker_box: tuple | None = None  # (x1, y1, x2, y2, frame): speak with the face overlapping that box
    max_yaw_degrees: float = 60.0  # faces turned further away than this pass through
    min_sync_confidence: float | None = None  # generated spans scoring lower get `low_sync_action`
    low_sync_action: str = LOW_SYNC_ACTIONS[0]  # regenerate (once, guidance + 0.5) | passthrough
    crf: int = DEFAULT_CRF

    def __post_init__(self):
        """Every option checked at once, before any work: numbers must be finite and in range."""
        if self.length_mode not in LENGTH_MODES:
            raise ValueError(f"length_mode must be one of {', '.join(LENGTH_MODES)}, got {self.length_mode!r}.")
        if self.low_sync_action not in LOW_SYNC_ACTIONS:
            raise ValueError(f"low_sync_action must be one of {', '.join(LOW_SYNC_ACTIONS)}.")
        check_number("num_inference_steps", self.num_inference_steps, 1, integer=True)
        check_number("guidance_scale", self.guidance_scale, 1.0, note=" (1.0 turns classifier-free guidance off)")
        check_number("seed", self.seed, 0, SEED_MAX, integer=True, note=" (the random generator's range)")
        check_number("min_silence_s", self.min_silence_s, 0.0)
        check_number("max_yaw_degrees", self.max_yaw_degrees, 0.0, 180.0)
        if self.min_sync_confidence is not None:
            check_number("min_sync_confidence", self.min_sync_confidence, 0.0)
        check_number("crf", self.crf, 0, 51, integer=True, note=" (H.264's quality scale)")
        for name in ("speaker_point", "speaker_box"):
            for number in getattr(self, name) or ():
                check_number(name, number)


def check_number(name: str, value, minimum=None, maximum=None, integer: bool = False, note: str = "") -> None:
    """Raise ValueError (one sentence naming `name`) unless `value` is a finite number (an integer
    when `integer`) within [minimum, maximum]. NaN and infinity pass no comparison, so they are
    refused here explicitly: JSON parsers accept them, and they would otherwise slip through."""
    if not isinstance(value, numbers.Real) or isinstance(value, bool) or (integer and math.isfinite(value) and value != int(value)):
        raise ValueError(f"{name} must be {'an integer' if integer else 'a number'}, got {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = f"between {_shown(minimum)} and {_shown(maximum)}" if maximum is not None else f"at least {_shown(minimum)}"
        raise ValueError(f"{name} must be {bounds}{note}, got {_shown(value)}.")


def _shown(number) -> str:
    """2, 1.5, 18446744073709551615 (integers in full), 1e+300."""
    return str(number) if isinstance(number, numbers.Integral) and abs(number) < 10**20 else f"{number:g}"


def validate_inputs(inputs: dict) -> dict:
    """The service's inputs (by their names in `config.SERVICE_INPUTS`) with the defaults filled
    in, types checked and ranges enforced; an input marked `only_when_set` is left out while it
    has its default. Raises ValueError naming the input and what it accepts."""
    unknown = sorted(set(inputs) - set(SERVICE_INPUTS))
    if unknown:
        raise ValueError(f"Unknown input(s) {', '.join(unknown)}; known: {', '.join(SERVICE_INPUTS)}.")
    checked = {}
    for name, spec in SERVICE_INPUTS.items():
        value = check_input(name, inputs.get(name, spec.default), spec)
        if not (spec.only_when_set and value == spec.default):
            checked[name] = value
    return checked


def check_input(name: str, value, spec: InputSpec):
    """`value` as the input `name` of type and range `spec` takes it; ValueError (one sentence) otherwise."""
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}.")
        return value
    if spec.kind in (int, float):
        check_number(name, value, spec.minimum, spec.maximum, integer=spec.kind is int)
        return spec.kind(value)
    value = str(value)
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}.")
    return value


def options_from_inputs(**inputs) -> LipsyncOptions:
    """LipsyncOptions from the service's inputs (Cog names, checked by `validate_inputs`; missing
    ones take their defaults). Inputs that are not options (segments, plan_only) are the
    caller's to use.

    The seed is resolved here: -1 or 0 draws a random one, as the hosted model does.
    """
    value = {name: spec.default for name, spec in SERVICE_INPUTS.items()} | validate_inputs(inputs)
    return LipsyncOptions(
        num_inference_steps=value["inference_steps"],
        guidance_scale=value["guidance_scale"],
        seed=resolve_seed(value["seed"], zero_is_random=True),
        enable_deepcache=value["enable_deepcache"],
        length_mode=value["length_mode"],
        skip_silence=value["skip_silence"],
        keep_source_fps=value["output_fps"] == "source",
        speaker_point=parse_speaker_point(value["speaker_point"]),
        min_sync_confidence=value["min_sync_confidence"] or None,
        low_sync_action=value["low_sync_action"],
        crf=value["crf"],
    )


def resolve_seed(seed: int, zero_is_random: bool = False) -> int:
    """`seed`, or a fresh random one for -1 (and for 0 where the front end means "random" by it,
    as the hosted model does; the official CLI takes 0 as a seed). Anything else must be an
    integer in the generator's range (ValueError otherwise)."""
    check_number("seed", seed, -1, SEED_MAX, integer=True, note=" (-1 picks one)")
    if seed == -1 or (zero_is_random and seed == 0):
        return int.from_bytes(os.urandom(4), "big") % (2**31 - 1) + 1
    return int(seed)


def parse_speaker_point(text: str | None) -> tuple[float, float, int] | None:
    """'x,y' or 'x,y,frame' (pixels; frame 0 when left out) -> (x, y, frame); empty -> None."""
    return _numbers_then_frame(text, 2, "speaker_point", "'x,y' or 'x,y,frame' (pixels, frame number)")


def parse_speaker_box(text: str | None) -> tuple[float, float, float, float, int] | None:
    """'x1,y1,x2,y2' or 'x1,y1,x2,y2,frame' -> (x1, y1, x2, y2, frame); empty -> None."""
    return _numbers_then_frame(text, 4, "speaker_box", "'x1,y1,x2,y2' or 'x1,y1,x2,y2,frame' (pixels, frame number)")


def _numbers_then_frame(text: str | None, count: int, name: str, form: str) -> tuple | None:
    if text is None or not text.strip():
        return None
    parts = [part.strip() for part in text.split(",")]
    try:
        if len(parts) not in (count, count + 1):
            raise ValueError
        frame = int(parts[count]) if len(parts) > count else 0
        if frame < 0:
            raise ValueError
        numbers_given = tuple(float(part) for part in parts[:count])
        if not all(map(math.isfinite, numbers_given)):
            raise ValueError
        return (*numbers_given, frame)
    except ValueError:
        raise ValueError(f"{name} must be {form}, got {text!r}.") from None
