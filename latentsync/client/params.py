"""The hosted model's parameters: the service's one table of inputs (`latentsync.config.SERVICE_INPUTS`)
and its one check (`latentsync.options.validate_inputs`), used to validate a request before any
network call and to normalise it for the idempotency key."""

from ..config import SERVICE_INPUTS, InputSpec
from ..options import validate_inputs as validate

PARAMETERS: dict[str, InputSpec] = SERVICE_INPUTS  # the model's inputs besides the video and the audio files

__all__ = ["PARAMETERS", "validate"]
