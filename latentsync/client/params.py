"""The hosted model's parameters (the one table in `latentsync.config.SERVICE_INPUTS`), used to
validate a request before any network call and to normalise it for the idempotency key."""

from ..config import SERVICE_INPUTS, InputSpec

PARAMETERS: dict[str, InputSpec] = SERVICE_INPUTS  # the model's inputs besides the video and the audio


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


def _check(name: str, value, spec: InputSpec):
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
