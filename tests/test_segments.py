"""Segments on plain data: the list and its one-sentence errors, the segments against the media's
lengths, output frames, the spliced audio, the planner's rule (only inside segments) and the GPU
estimate. No files, no models."""

import json

import numpy as np
import pytest

from latentsync.audio import Pauses
from latentsync.config import MAX_SEGMENTS
from latentsync.estimate import DEEPCACHE_SHARE, NO_GUIDANCE_SHARE, RATES, estimate
from latentsync.options import LipsyncOptions
from latentsync.planner import Action, Span, action_in_segments, plan_job, split_at_segments, windows_for
from latentsync.segments import (
    Segment,
    SegmentError,
    SegmentRange,
    audio_piece,
    check_segments,
    compose_audio,
    parse_segments,
    read_segments_file,
    segment_ranges,
    with_audio_files,
    with_paths,
)
from tests.test_planner import detection, streamed

# ---- the list -----------------------------------------------------------------------------------


def test_a_list_of_objects_or_its_json_text_makes_segments():
    text = '[{"start": 2, "end": 3.5, "audio": "name.wav", "audio_start": 0.25}, {"start": 5.0, "end": 6.0, "inference_steps": 30, "guidance_scale": 2.0}]'
    segments = parse_segments(text)
    assert segments == parse_segments(json.loads(text))
    assert segments[0] == Segment(2, 3.5, "name.wav", 0.25) and segments[0].duration == 1.5 and segments[0].audio_offset == 0.25
    assert segments[1].inference_steps == 30 and segments[1].guidance_scale == 2.0
    assert not segments[1].own_audio and segments[1].audio_offset == 5.0  # the job's audio at that time
    assert parse_segments("") == parse_segments(None) == parse_segments("  ") == []
    assert parse_segments([{"start": 5.0, "end": 6.0}, {"start": 1.0, "end": 2.0}])[1].start == 1.0  # any order; numbered as given


@pytest.mark.parametrize("value,message", [
    ("[{start: 1}]", "segments must be a JSON list like [{\"start\": 2.0, \"end\": 3.5, \"audio\": \"name.wav\"}]; it is not valid JSON"),
    ('{"start": 1, "end": 2}', "segments must be a list like"),
    ("[]", "segments is an empty list: leave it out (or empty) to lip-sync the whole video."),
    ('[{"start": 1, "end": 2}, 7]', "segment 2 must be an object with start and end (seconds of the video), got 7."),
    ('[{"start": 1, "end": 2, "voice": "a.wav"}]', "segment 1 has unknown key(s) voice; known: start, end, audio, audio_start, guidance_scale, inference_steps."),
    ('[{"start": 1}]', "segment 1 needs start and end (seconds of the video)."),
    ('[{"start": "1", "end": 2}]', "segment 1's start must be a finite number of seconds, got \"1\"."),
    ('[{"start": 1, "end": NaN}]', "it is not valid JSON (NaN is not a number JSON allows"),
    ('[{"start": 1, "end": true}]', "segment 1's end must be a finite number of seconds, got true."),
    ('[{"start": -0.5, "end": 2}]', "segment 1 starts before the video (start -0.5 s); times are seconds from the video's start."),
    ('[{"start": 3, "end": 3}]', "segment 1 is empty or reversed (start 3 s, end 3 s): end must be after start."),
    ('[{"start": 4, "end": 3}]', "segment 1 is empty or reversed (start 4 s, end 3 s): end must be after start."),
    ('[{"start": 1, "end": 3}, {"start": 5, "end": 6}, {"start": 2.5, "end": 4}]',
     "segment 3 (2.50-4.00 s) overlaps segment 1 (1.00-3.00 s); segments must not overlap."),
    ('[{"start": 1, "end": 3, "audio_start": -1}]', "segment 1's audio_start must be 0 or more seconds, got -1."),
    ('[{"start": 1, "end": 3, "inference_steps": 10}]', "segment 1's inference_steps must be between 20 and 50, got 10."),
    ('[{"start": 1, "end": 3, "inference_steps": 25.5}]', "segment 1's inference_steps must be an integer, got 25.5."),
    ('[{"start": 1, "end": 3, "guidance_scale": 9}]', "segment 1's guidance_scale must be between 1 and 3, got 9."),
    ('[{"start": 1, "end": 3, "audio": ""}]', "segment 1's audio must name a file (or, on the hosted model, be its index in segment_audio), got \"\"."),
    ('[{"start": 1, "end": 3, "audio": -1}]', "segment 1's audio must name a file"),
])
def test_each_broken_rule_is_one_sentence_naming_the_segment(value, message):
    with pytest.raises(SegmentError) as error:
        parse_segments(value)
    assert message in str(error.value)
    assert str(error.value).count("\n") == 0 and str(error.value).endswith((".", ")"))


def test_infinite_numbers_from_python_and_too_many_segments_are_refused():
    with pytest.raises(SegmentError, match=r"segment 1's end must be a finite number of seconds, got Infinity"):
        parse_segments([{"start": 1.0, "end": float("inf")}])
    many = [{"start": i, "end": i + 0.5} for i in range(MAX_SEGMENTS + 1)]
    with pytest.raises(SegmentError, match=f"segments holds {MAX_SEGMENTS + 1} segments; the limit is {MAX_SEGMENTS}."):
        parse_segments(many)
    assert len(parse_segments(many[:MAX_SEGMENTS])) == MAX_SEGMENTS


def test_touching_segments_do_not_overlap():
    assert len(parse_segments([{"start": 1, "end": 2}, {"start": 2, "end": 3}])) == 2


def test_audio_is_a_path_for_the_library_and_an_index_for_the_hosted_model(tmp_path):
    segments = parse_segments([{"start": 1, "end": 2, "audio": 1}, {"start": 3, "end": 4}])
    resolved = with_audio_files(segments, ["/in/a.wav", "/in/b.wav"])
    assert resolved[0].audio == "/in/b.wav" and resolved[1].audio is None
    with pytest.raises(SegmentError, match=r"segment 1's audio must be the index of its file in segment_audio \(0 to 0\), got 1."):
        with_audio_files(segments, ["/in/a.wav"])
    with pytest.raises(SegmentError, match=r"segment_audio \(none: segment_audio is empty\), got \"x.wav\""):
        with_audio_files(parse_segments([{"start": 1, "end": 2, "audio": "x.wav"}]), [])
    with pytest.raises(SegmentError, match="segment 1's audio must be the path of an audio file, got 1."):
        with_paths(segments)
    listing = tmp_path / "cuts" / "segments.json"
    listing.parent.mkdir()
    listing.write_text(json.dumps([{"start": 1, "end": 2, "audio": "name.wav"}, {"start": 3, "end": 4, "audio": "/abs/x.wav"}]))
    assert [s.audio for s in read_segments_file(listing)] == [str(listing.parent / "name.wav"), "/abs/x.wav"]
    with pytest.raises(SegmentError, match="The segments file missing.json cannot be read"):
        read_segments_file(tmp_path / "missing.json")


# ---- against the media --------------------------------------------------------------------------


@pytest.mark.parametrize("segment,lengths,job,message", [
    ({"start": 12, "end": 13}, [None], 20.0, "segment 1 (12.00-13.00 s) is outside the video, which is 10.00 s long."),
    ({"start": 8, "end": 10.5}, [None], 20.0, "segment 1 (8.00-10.50 s) ends after the video, which is 10.00 s long."),
    ({"start": 1, "end": 2, "audio": "a.wav", "audio_start": 3}, [2.5], None,
     "segment 1 (1.00-2.00 s) starts its speech at 3.00 s of its audio, which is only 2.50 s long."),
    ({"start": 6, "end": 7}, [None], 5.0, "segment 1 (6.00-7.00 s) starts its speech at 6.00 s of the job's audio, which is only 5.00 s long."),
    ({"start": 1, "end": 2}, [None], None, "segment 1 (1.00-2.00 s) has no audio of its own and the job has none: give it an audio, or give the job one."),
])
def test_segments_are_checked_against_the_media(segment, lengths, job, message):
    with pytest.raises(SegmentError) as error:
        check_segments(parse_segments([segment]), 10.0, lengths, job)
    assert str(error.value) == message


def test_a_segment_ending_at_the_video_end_is_inside_it():
    check_segments(parse_segments([{"start": 8.5, "end": 10.0, "audio": "a.wav"}]), 10.0, [0.4], None)  # short audio: allowed


def test_segments_in_output_frames():
    segments = parse_segments([{"start": 1.0, "end": 2.5, "inference_steps": 30}, {"start": 2.5, "end": 3.0, "guidance_scale": 2.0}])
    ranges = segment_ranges(segments, [1.5, 0.2], fps=25.0, num_frames=100)
    assert ranges[0] == SegmentRange(0, 25, 62, 62, 30, None)  # a frame belongs where its centre falls: 2.5 s is frame 62's centre
    assert ranges[1] == SegmentRange(1, 62, 75, 67, None, 2.0)  # its audio covers 0.2 s: frames 62-66
    with pytest.raises(SegmentError, match=r"segment 1 \(1.00-1.01 s\) holds no frame at 25 fps: make it at least 0.04 s long."):
        segment_ranges(parse_segments([{"start": 1.0, "end": 1.01}]), [0.01], 25.0, 100)


# ---- the spliced audio --------------------------------------------------------------------------


def test_the_segments_audio_replaces_the_source_only_in_its_span_sample_accurately():
    rate = 1000
    source = np.linspace(-0.5, 0.5, 5 * rate, dtype=np.float32)
    replacement = np.full(rate, 0.9, np.float32)
    out = compose_audio(source, [(1.0, 2.0, replacement)], rate, crossfade_s=0.005)
    assert out.shape == source.shape
    np.testing.assert_array_equal(out[:1000], source[:1000])  # outside: the source, to the sample
    np.testing.assert_array_equal(out[2000:], source[2000:])
    np.testing.assert_array_equal(out[1005:1995], replacement[5:995])  # inside, past the fades: the segment's audio
    fade = (out[1000:1005] - source[1000:1005]) / (replacement[:5] - source[1000:1005])
    assert np.all(np.diff(fade) > 0) and 0 < fade[0] < 0.1 and 0.9 < fade[-1] < 1  # a smooth ramp in, within 5 ms
    fade_out = (out[1995:2000] - source[1995:2000]) / (replacement[995:] - source[1995:2000])
    np.testing.assert_allclose(fade_out, fade[::-1], atol=1e-5)


def test_a_short_audio_is_padded_with_silence_and_stereo_keeps_its_channels():
    rate = 1000
    source = (np.ones((3 * rate, 2)) * [0.2, -0.2]).astype(np.float32)
    out = compose_audio(source, [(1.0, 2.0, np.full((400, 2), 0.7, np.float32))], rate, crossfade_s=0.002)
    assert out.shape == (3000, 2)
    np.testing.assert_array_equal(out[1002:1400], np.full((398, 2), 0.7, np.float32))
    np.testing.assert_array_equal(out[1400:1998], np.zeros((598, 2)))  # past its end: silence, not the source
    np.testing.assert_array_equal(out[2000:], source[2000:])


def test_a_piece_takes_the_segments_part_of_its_audio():
    rate = 100
    samples = np.arange(1000, dtype=np.float32)
    piece, seconds = audio_piece(samples, Segment(3.0, 4.5, "a.wav", audio_start=2.0), rate)
    assert piece[0] == 200 and len(piece) == 150 and seconds == 1.5
    piece, seconds = audio_piece(samples, Segment(3.0, 4.5), rate)  # the job's audio at the segment's time
    assert piece[0] == 300
    piece, seconds = audio_piece(samples, Segment(3.0, 4.5, "a.wav", audio_start=9.0), rate)
    assert len(piece) == 100 and seconds == 1.0  # ends early: 1 s of speech, then silence


# ---- the planner's rule -------------------------------------------------------------------------

G, S, N, X = Action.GENERATED, Action.SILENCE, Action.NO_FACE, Action.OUTSIDE_SEGMENTS


def test_frames_outside_segments_keep_the_source_and_past_the_audio_are_silent():
    actions = [G] * 10 + [N] * 5 + [G] * 15
    segments = [SegmentRange(0, 5, 12, 12), SegmentRange(1, 20, 30, 26)]
    assert [action_in_segments(action, i, segments) for i, action in enumerate(actions)] == [X] * 5 + [G] * 5 + [N] * 2 + [X] * 8 + [G] * 6 + [S] * 4


def test_spans_are_split_at_segment_edges_and_carry_the_segments_settings():
    spans = [Span(0, 10, X), Span(10, 30, G), Span(30, 40, S)]
    segments = [SegmentRange(0, 10, 20, 20, steps=30), SegmentRange(1, 20, 35, 35, guidance=2.0)]
    result = [piece for span in spans for piece in split_at_segments(span, segments)]
    assert [(s.start, s.end, s.action, s.details.get("segment"), s.steps, s.guidance) for s in result] == [
        (0, 10, X, None, None, None), (10, 20, G, 1, 30, None), (20, 30, G, 2, None, 2.0), (30, 35, S, 2, None, 2.0), (35, 40, S, None, None, None),
    ]
    options = LipsyncOptions(num_inference_steps=20, guidance_scale=1.5)
    assert result[1].settings(options) == (30, 1.5) and result[2].settings(options) == (20, 2.0) and result[0].settings(options) == (20, 1.5)


def plan_with(detections, segments, pauses=(), **options):
    return plan_job(detections, len(detections) / 25, list(pauses), 25.0, LipsyncOptions(**options), 256, segments=segments)


def test_a_plan_with_segments_regenerates_only_inside_them_and_keeps_the_video_length():
    frames = [[detection()] for _ in range(100)]
    # the job's audio covers only 1 s, and bounce would lengthen: with segments the video's 100 frames stay
    segments = [SegmentRange(0, 20, 50, 45, steps=30), SegmentRange(1, 50, 60, 60)]
    plan = plan_with(frames, segments, pauses=[(2.0, 2.2)], length_mode="loop")
    assert len(plan.source_frames) == 100 and list(plan.source_frames) == list(range(100))
    summary = [(s.start, s.end, s.action, s.details.get("segment"), s.steps) for s in plan.spans]
    assert summary == [(0, 20, X, None, None), (20, 45, G, 1, 30), (45, 50, S, 1, 30), (50, 55, S, 2, None), (55, 60, G, 2, None), (60, 100, X, None, None)]
    assert all(w.stop <= 50 or w.start >= 50 for s in plan.generated_spans for w in windows_for(s))  # no window crosses segment edges
    assert plan.segments == segments


def test_a_segment_slice_too_short_to_regenerate_passes_through_and_a_faceless_segment_is_named():
    frames = [[detection()] for _ in range(40)] + [[] for _ in range(20)]
    plan = plan_with(frames, [SegmentRange(0, 10, 13, 13), SegmentRange(1, 45, 55, 55)])
    summary = [(s.start, s.end, s.action, s.details.get("segment")) for s in plan.spans]
    assert summary == [(0, 10, X, None), (10, 13, Action.PASSTHROUGH, 1), (13, 45, X, None), (45, 55, N, 2), (55, 60, X, None)]


def test_a_plan_with_segments_built_frame_by_frame_is_final_where_it_is_built():
    """The streamed plan with segments (each frame decided as the video is decoded): spans inside
    segments carry their settings already while open, a run longer than 20 s inside a segment is
    cut as any other, and a silence run across two touching segments is split at their edge, both
    pieces naming the pause detector."""
    frames = [[detection()] for _ in range(800)]
    segments = [SegmentRange(0, 20, 50, 45, steps=30), SegmentRange(1, 50, 60, 60), SegmentRange(2, 100, 760, 760, guidance=2.0)]
    pauses = Pauses([(2.0, 2.2), (10.0, 10.4)], detector="a detector 1.0")
    result, planned = streamed(frames, pauses=pauses, length_mode="bounce", segments=segments)
    summary = [(s.start, s.end, s.action, s.details.get("segment"), s.steps, s.guidance) for s in result.spans]
    assert summary == [
        (0, 20, X, None, None, None), (20, 45, G, 1, 30, None), (45, 50, S, 1, 30, None), (50, 55, S, 2, None, None), (55, 60, G, 2, None, None),
        (60, 100, X, None, None, None), (100, 250, G, 3, None, 2.0), (250, 260, S, 3, None, 2.0), (260, 510, G, 3, None, 2.0),
        (510, 760, G, 3, None, 2.0), (760, 800, X, None, None, None),
    ]
    assert [s.details.get("detector") for s in result.spans if s.action is S] == ["a detector 1.0"] * 3
    assert len(result.source_frames) == 800 and planned[-1] >= 800 - 12  # the video's length, planned as it is decoded


def test_a_segment_past_the_frames_decoded_is_refused_at_the_end():
    """A video shorter than its header promised: a segment that starts after its last frame is
    one sentence, one that ends after it is cut there."""
    segments = [SegmentRange(0, 10, 40, 40), SegmentRange(1, 45, 60, 60)]
    plan = plan_job([[detection()] for _ in range(50)], 2.0, [], 25.0, LipsyncOptions(), 256, segments=segments)
    assert plan.segments == [SegmentRange(0, 10, 40, 40), SegmentRange(1, 45, 50, 50)] and plan.spans[-1].end == 50
    with pytest.raises(SegmentError, match=r"^segment 2 starts after the video's last frame \(1.60 s\): the video is shorter than its header says.$"):
        plan_job([[detection()] for _ in range(40)], 2.0, [], 25.0, LipsyncOptions(), 256, segments=segments)


def test_without_segments_the_plan_is_todays():
    frames = [[detection()] for _ in range(50)]
    assert [(s.start, s.end, s.action) for s in plan_with(frames, None, pauses=[(0.8, 1.2)]).spans] == [(0, 20, G), (20, 30, S), (30, 50, G)]


# ---- the estimate -------------------------------------------------------------------------------


def test_the_estimate_prices_window_steps_per_version_and_setting():
    work = [{"steps": 20, "guidance": 1.5, "windows": 3}, {"steps": 30, "guidance": 1.0, "windows": 2}]
    priced = estimate(work, deepcache=False, version="1.6")
    expected = {name: 3 * 20 * rate.seconds_per_window_step + 2 * 30 * rate.seconds_per_window_step * NO_GUIDANCE_SHARE for name, rate in RATES.items()}
    for name, seconds in expected.items():
        assert priced["by_version"][name]["gpu_seconds"] == pytest.approx(seconds, abs=0.02)
        assert priced["by_version"][name]["basis"].startswith(("estimate:", "measured:"))
    assert priced["gpu_seconds"] == priced["by_version"]["1.6"]["gpu_seconds"] and priced["by_version"]["1.5"]["gpu_seconds"] < priced["gpu_seconds"]
    cached = estimate(work, deepcache=True, version="1.6")
    assert cached["gpu_seconds"] == pytest.approx(priced["gpu_seconds"] * DEEPCACHE_SHARE, abs=0.02)
    unknown = estimate(work, deepcache=False, version="tiny")
    assert unknown["gpu_seconds"] is None and "no rate for version 'tiny'" in unknown["basis"]
    assert estimate([], deepcache=False, version="1.5")["gpu_seconds"] == 0.0
