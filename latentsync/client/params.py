"""The hosted model's parameters (the one table in `latentsync.config.SERVICE_INPUTS`), used to
validate a request before any network call and to normalise it for the idempotency key."""

from ..config import SERVICE_INPUTS, InputSpec
from ..options import check_number

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
        check_number(name, value, spec.minimum, spec.maximum, integer=spec.kind is int)
        return spec.kind(value)
    value = str(value)
    if spec.choices and value not in spec.choices:
        raise ValueError(f"{name} must be one of {', '.join(spec.choices)}, got {value!r}.")
    return value
