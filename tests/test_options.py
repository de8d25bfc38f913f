"""Numbers that are not numbers: NaN, infinity and out-of-range seeds are refused in one sentence
naming the input, before any file is read, by the library (LipsyncOptions, options_from_inputs)
and the client (params.validate). Python's json reads NaN and Infinity, so they do reach us."""

import json
import math

import pytest

from latentsync.client.params import validate
from latentsync.config import SEED_MAX
from latentsync.options import LipsyncOptions, options_from_inputs, parse_speaker_point, resolve_seed

NOT_NUMBERS = [float("nan"), float("inf"), -float("inf")]


def one_sentence(message: str) -> bool:
    return message.endswith(".") and message.count(". ") == 0 and "\n" not in message


@pytest.mark.parametrize("field", ["guidance_scale", "min_silence_s", "max_yaw_degrees", "min_sync_confidence", "seed", "num_inference_steps", "crf"])
@pytest.mark.parametrize("value", NOT_NUMBERS, ids=["nan", "inf", "-inf"])
def test_lipsync_options_refuse_what_is_not_a_finite_number(field, value):
    with pytest.raises(ValueError, match=rf"^{field} must be a finite number, got -?(nan|inf)\.$"):
        LipsyncOptions(**{field: value})


@pytest.mark.parametrize("seed", [1e300, 2**32, -1, 2.5])
def test_lipsync_options_take_a_seed_in_the_generators_range_only(seed):
    with pytest.raises(ValueError, match=r"^seed must be ") as error:
        LipsyncOptions(seed=seed)
    assert one_sentence(str(error.value))
    assert LipsyncOptions(seed=SEED_MAX).seed == SEED_MAX and LipsyncOptions(seed=0).seed == 0


@pytest.mark.parametrize(
    "inputs, message",
    [
        ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number, got nan."),
        ({"min_sync_confidence": float("nan")}, "min_sync_confidence must be a finite number, got nan."),
        ({"seed": float("inf")}, "seed must be a finite number, got inf."),
        ({"seed": float("nan")}, "seed must be a finite number, got nan."),
        ({"seed": 1e300}, "seed must be between -1 and 4294967295, got 1e+300."),
        ({"seed": 2**32}, "seed must be between -1 and 4294967295, got 4294967296."),
        ({"seed": 2**64}, "seed must be between -1 and 4294967295, got 18446744073709551616."),
        ({"seed": -2}, "seed must be between -1 and 4294967295, got -2."),
        ({"inference_steps": float("inf")}, "inference_steps must be a finite number, got inf."),
    ],
)
def test_service_inputs_are_refused_with_the_inputs_name_by_the_library_and_the_client(inputs, message):
    with pytest.raises(ValueError) as from_library:
        options_from_inputs(**inputs)
    with pytest.raises(ValueError) as from_client:
        validate(inputs)
    assert str(from_library.value) == str(from_client.value) == message


def test_nan_read_from_json_is_refused():
    inputs = json.loads('{"guidance_scale": NaN, "seed": 7}')  # what a web API's body parser hands on
    assert math.isnan(inputs["guidance_scale"])
    with pytest.raises(ValueError, match=r"^guidance_scale must be a finite number, got nan\.$"):
        validate(inputs)


def test_the_seed_bounds_themselves_are_taken():
    assert options_from_inputs(seed=SEED_MAX).seed == SEED_MAX and validate({"seed": -1})["seed"] == -1
    assert 1 <= options_from_inputs(seed=-1).seed < 2**31 and 1 <= resolve_seed(-1) < 2**31


@pytest.mark.parametrize("text", ["nan,3", "10,inf", "1e999,5"])
def test_a_speaker_point_of_non_numbers_is_refused(text):
    with pytest.raises(ValueError, match=r"^speaker_point must be 'x,y' or 'x,y,frame'"):
        parse_speaker_point(text)
