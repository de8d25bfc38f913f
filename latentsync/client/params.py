"""The hosted model's parameters: one table of specs, used to validate a request before any
network call and to normalise it for the idempotency key."""

from dataclasses import dataclass


@dataclass(frozen=True)
class Spec:
    kind: type
    default: object
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple | None = None


PARAMETERS = {
    "guidance_scale": Spec(float, 1.5, 1.0, 3.0),
    "inference_steps": Spec(int, 20, 20, 50),
    "seed": Spec(int, 1247),
    "version": Spec(str, "1.6", choices=("1.5", "1.6")),
    "enable_deepcache": Spec(bool, True),
    "length_mode": Spec(str, "bounce", choices=("bounce", "loop", "cut_off", "silence", "remap")),
    "skip_silence": Spec(bool, True),
    "speaker_point": Spec(str, ""),
    "min_sync_confidence": Spec(float, 0.0, 0.0, 15.0),
    "low_sync_action": Spec(str, "regenerate", choices=("regenerate", "passthrough")),
    "output_fps": Spec(str, "25", choices=("25", "source")),
    "crf": Spec(int, 18, 10, 35),
    "return_report": Spec(bool, False),
}


def validate(params: dict) -> dict:
    """All parameters with defaults filled in, types checked and ranges enforced.

    Raises ValueError naming the parameter and the allowed values.
    """
    unknown = sorted(set(params) - set(PARAMETERS))
    if unknown:
        raise ValueError(f"Unknown parameter(s) {', '.join(unknown)}; known: {', '.join(PARAMETERS)}.")
    normalised = {}
    for name, spec in PARAMETERS.items():
        value = params.get(name, spec.default)
        normalised[name] = _check(name, value, spec)
    return normalised


def _check(name: str, value, spec: Spec):
    if spec.kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be true or false, got {value!r}.")
        return value
    if spec.kind in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (spec.kind is int and value != int(value)):
            raise ValueError(f"{name} must be {'an integer' if spec.kind is int else 'a number'}, got {value!r}.")
        value = spec.kind(value)
        if (spec.minimum is not None and value < spec.minimum) or (spec.maximum is not None and value > spec.maximum):
            raise ValueError(f"{name} must be between {spec.minimum:g} and {spec.maximum:g}, got {value:g}.")
        return value
    value = str(value)
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}.")
    return value
