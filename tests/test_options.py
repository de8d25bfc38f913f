"""A job's options and how the front ends' inputs become them: the service's input table checked
(`options.validate_inputs`, which the client's `params.validate` is), turned into `LipsyncOptions` (`options.options_from_inputs`), and the
speaker point/box and seed rules shared by the Cog predictor, the web app and the CLI. Numbers that
are not numbers (NaN, infinity, out-of-range seeds) are refused in one sentence naming the input,
before any file is read: Python's json reads NaN and Infinity, so they do reach us."""

import json
import math

import pytest

from latentsync.client.params import validate
from latentsync.options import validate_inputs
from latentsync.config import SEED_MAX, SERVICE_INPUTS
from latentsync.options import LipsyncOptions, options_from_inputs, parse_speaker_box, parse_speaker_point, resolve_seed

def test_validate_fills_every_default_from_the_table():
    assert validate is validate_inputs  # one check for every surface
    # inputs newer deployments added (segments, plan_only) only when set: jobs without them keep their keys
    assert validate({}) == {name: spec.default for name, spec in SERVICE_INPUTS.items() if not spec.only_when_set}
    assert validate({"plan_only": True})["plan_only"] is True and "segments" not in validate({"segments": ""})
    assert validate({"seed": 5, "guidance_scale": 2})["guidance_scale"] == 2.0
    assert isinstance(validate({"guidance_scale": 2})["guidance_scale"], float)
    assert isinstance(validate({"crf": 20.0})["crf"], int)


@pytest.mark.parametrize("params,message", [
    ({"colour": 1, "size": 2}, "Unknown input(s) colour, size; known: guidance_scale, inference_steps,"),
    ({"enable_deepcache": "yes"}, "enable_deepcache must be true or false, got 'yes'."),
    ({"enable_deepcache": 1}, "enable_deepcache must be true or false, got 1."),
    ({"inference_steps": 20.5}, "inference_steps must be an integer, got 20.5."),
    ({"inference_steps": True}, "inference_steps must be an integer, got True."),
    ({"guidance_scale": "2"}, "guidance_scale must be a number, got '2'."),
    ({"guidance_scale": 3.01}, "guidance_scale must be between 1 and 3, got 3.01."),
    ({"guidance_scale": 0.99}, "guidance_scale must be between 1 and 3, got 0.99."),
    ({"inference_steps": 51}, "inference_steps must be between 20 and 50, got 51."),
    ({"crf": 9}, "crf must be between 10 and 35, got 9."),
    ({"length_mode": "stretch"}, "length_mode must be one of bounce, loop, cut_off, silence, remap, got 'stretch'."),
    ({"version": "2.0"}, "version must be one of 1.5, 1.6, got '2.0'."),
])
def test_validate_refuses_with_one_sentence_naming_the_parameter(params, message):
    with pytest.raises(ValueError) as raised:
        validate(params)
    assert str(raised.value).startswith(message), str(raised.value)


def test_validate_takes_the_ends_of_each_range():
    for name, spec in SERVICE_INPUTS.items():
        if spec.minimum is not None:
            assert validate({name: spec.minimum})[name] == spec.minimum and validate({name: spec.maximum})[name] == spec.maximum


def test_options_from_inputs_maps_the_service_names():
    options = options_from_inputs(
        inference_steps=30, guidance_scale=2.5, seed=11, enable_deepcache=False, length_mode="loop", skip_silence=False,
        output_fps="source", speaker_point="800, 380, 10", min_sync_confidence=4.5, low_sync_action="passthrough", crf=23, version="1.5",
    )
    assert options == LipsyncOptions(
        num_inference_steps=30, guidance_scale=2.5, seed=11, enable_deepcache=False, length_mode="loop", skip_silence=False,
        keep_source_fps=True, speaker_point=(800.0, 380.0, 10), min_sync_confidence=4.5, low_sync_action="passthrough", crf=23,
    )


def test_options_from_inputs_defaults_are_the_services():
    options = options_from_inputs()
    assert options == LipsyncOptions(
        num_inference_steps=SERVICE_INPUTS["inference_steps"].default, guidance_scale=SERVICE_INPUTS["guidance_scale"].default,
        seed=SERVICE_INPUTS["seed"].default, enable_deepcache=SERVICE_INPUTS["enable_deepcache"].default,
    )
    assert options.min_sync_confidence is None and not options.keep_source_fps  # 0 turns the sync check off; "25" keeps 25 fps
    with pytest.raises(ValueError, match=r"^Unknown input\(s\) colour, size; known: guidance_scale, "):
        options_from_inputs(size=1, colour=2)


@pytest.mark.parametrize("seed", [0, -1])
def test_the_service_draws_a_seed_for_0_and_minus_1(seed):
    drawn = {options_from_inputs(seed=seed).seed for _ in range(8)}
    assert len(drawn) > 1 and all(1 <= value < 2**31 for value in drawn)


def test_seeds():
    assert resolve_seed(0) == 0  # the official CLI's seed 0 is a seed
    assert resolve_seed(7) == 7 and resolve_seed(7, zero_is_random=True) == 7
    drawn = [resolve_seed(-1) for _ in range(20)]  # drawn afresh each time
    assert len(set(drawn)) > 1 and all(1 <= value < 2**31 for value in drawn)


@pytest.mark.parametrize("drawn,seed", [(b"\x00\x00\x00\x00", 1), (b"\x7f\xff\xff\xfe", 2**31 - 1), (b"\x80\x00\x00\x00", 2), (b"\xff\xff\xff\xff", 2)])
def test_a_drawn_seed_is_a_positive_31_bit_integer(monkeypatch, drawn, seed):
    monkeypatch.setattr("latentsync.options.os.urandom", lambda count: drawn[:count])
    assert resolve_seed(-1) == seed


def test_speaker_point_and_box_parsing():
    assert parse_speaker_point("800,380") == (800.0, 380.0, 0)
    assert parse_speaker_point(" 12.5 , 7 , 3 ") == (12.5, 7.0, 3)
    assert parse_speaker_point("") is None and parse_speaker_point("   ") is None and parse_speaker_point(None) is None
    assert parse_speaker_box("1,2,3,4") == (1.0, 2.0, 3.0, 4.0, 0) and parse_speaker_box("1,2,3,4,9") == (1.0, 2.0, 3.0, 4.0, 9)
    for text in ("800", "1,2,3,4", "a,b", "1,2,-1", "1,2,1.5"):
        with pytest.raises(ValueError, match=r"^speaker_point must be 'x,y' or 'x,y,frame' \(pixels, frame number\), got "):
            parse_speaker_point(text)
    with pytest.raises(ValueError, match=r"^speaker_box must be 'x1,y1,x2,y2' or 'x1,y1,x2,y2,frame' \(pixels, frame number\), got '1,2,3'\.$"):
        parse_speaker_box("1,2,3")


@pytest.mark.parametrize("options,message", [
    (dict(length_mode="stretch"), r"^length_mode must be one of bounce, loop, cut_off, silence, remap, got 'stretch'\.$"),
    (dict(num_inference_steps=0), r"^num_inference_steps must be at least 1, got 0\.$"),
    (dict(guidance_scale=0.9), r"^guidance_scale must be at least 1 \(1\.0 turns classifier-free guidance off\), got 0\.9\.$"),
    (dict(low_sync_action="retry"), r"^low_sync_action must be one of regenerate, passthrough\.$"),
])
def test_options_refuse_what_the_pipeline_cannot_do(options, message):
    with pytest.raises(ValueError, match=message):
        LipsyncOptions(**options)
    LipsyncOptions(num_inference_steps=1, guidance_scale=1.0)  # the lowest that work


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
