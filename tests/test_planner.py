"""Timeline planning: length modes, spans, windows and boundary blending (pure index arithmetic)."""

from dataclasses import dataclass

import numpy as np
import pytest

from latentsync.face.track import build_tracks, choose_speaker, iou
from latentsync.planner import (
    Action,
    LengthMode,
    Span,
    absorb_short_generated_spans,
    blend_weights,
    frames_covering,
    plan_timeline,
    spans_from_actions,
    split_at,
    windows_for,
)


def test_frames_covering_counts_a_partial_last_frame():
    assert frames_covering(9.6, 25) == 240
    assert frames_covering(13.94, 25) == 349  # 348.5 frames of audio: the tail gets its own frame
    assert frames_covering(0.0, 25) == 0
    assert frames_covering(1 / 30 * 7, 30) == 7  # no float drift past an exact count


def test_bounce_is_the_official_ping_pong():
    timeline = plan_timeline(num_video_frames=4, num_audio_frames=11, mode="bounce")
    # official: video, reversed video, video, ... cut to the audio length
    expected = np.concatenate([[0, 1, 2, 3], [3, 2, 1, 0], [0, 1, 2, 3]])[:11]
    np.testing.assert_array_equal(timeline.source_frames, expected)
    assert timeline.has_audio.all()


@pytest.mark.parametrize("mode", list(LengthMode))
def test_length_modes_with_audio_three_times_longer(mode):
    timeline = plan_timeline(num_video_frames=10, num_audio_frames=30, mode=mode)
    expected_length = {"cut_off": 10, "silence": 10}.get(mode.value, 30)
    assert len(timeline) == expected_length
    assert timeline.source_frames.min() >= 0 and timeline.source_frames.max() <= 9
    assert timeline.has_audio.all()


@pytest.mark.parametrize("mode", list(LengthMode))
def test_length_modes_with_audio_three_times_shorter(mode):
    timeline = plan_timeline(num_video_frames=30, num_audio_frames=10, mode=mode)
    expected_length = 30 if mode is LengthMode.SILENCE else 10
    assert len(timeline) == expected_length
    assert timeline.has_audio.sum() == 10
    if mode is LengthMode.SILENCE:
        assert not timeline.has_audio[10:].any()  # the tail has no audio and will pass through


def test_loop_and_remap_mappings():
    np.testing.assert_array_equal(plan_timeline(3, 7, "loop").source_frames, [0, 1, 2, 0, 1, 2, 0])
    remapped = plan_timeline(10, 20, "remap").source_frames
    np.testing.assert_array_equal(remapped, np.repeat(np.arange(10), 2))  # slowed down 2x
    np.testing.assert_array_equal(plan_timeline(20, 10, "remap").source_frames, np.arange(0, 20, 2))


def test_plan_timeline_rejects_empty_inputs():
    with pytest.raises(ValueError, match="video has no frames"):
        plan_timeline(0, 10, "bounce")
    with pytest.raises(ValueError, match="audio is empty"):
        plan_timeline(10, 0, "bounce")
    with pytest.raises(ValueError):
        plan_timeline(10, 10, "sideways")


def test_spans_cover_the_timeline_in_order():
    G, S, N = Action.GENERATED, Action.SILENCE, Action.NO_FACE
    spans = spans_from_actions([G, G, S, S, S, G, N, N])
    assert [(s.start, s.end, s.action) for s in spans] == [(0, 2, G), (2, 5, S), (5, 6, G), (6, 8, N)]


def test_short_generated_runs_become_passthrough():
    G, S = Action.GENERATED, Action.SILENCE
    spans = absorb_short_generated_spans(spans_from_actions([G] * 20 + [S] * 5 + [G] * 2 + [S] * 5), min_frames=4)
    assert [(s.start, s.end, s.action) for s in spans] == [
        (0, 20, G),
        (20, 25, S),
        (25, 27, Action.PASSTHROUGH),
        (27, 32, S),
    ]


def test_windows_never_straddle_a_split():
    spans = split_at([Span(0, 40, Action.GENERATED), Span(40, 50, Action.SILENCE)], {20, 45})
    assert [(s.start, s.end) for s in spans] == [(0, 20), (20, 40), (40, 50)]  # silence is not split
    windows = [w for s in spans if s.action is Action.GENERATED for w in windows_for(s)]
    assert [(w.start, w.stop) for w in windows] == [(0, 16), (16, 20), (20, 36), (36, 40)]


def test_blend_weights_ramp_only_next_to_passthrough():
    spans = [Span(0, 10, Action.GENERATED), Span(10, 20, Action.SILENCE), Span(20, 30, Action.GENERATED)]
    weights = blend_weights(spans, 30, ramp=3)
    np.testing.assert_allclose(weights[:10], [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25])  # video start: no ramp
    assert (weights[10:20] == 0).all()
    np.testing.assert_allclose(weights[20:30], [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1])


@dataclass
class Face:
    box: tuple
    landmarks3: np.ndarray
    score: float = 0.9


def _face(x, y, size):
    return Face(box=(x, y, x + size, y + size), landmarks3=np.array([[x, y], [x + size, y], [x + size / 2, y + size / 2]], float))


def test_tracks_follow_moving_faces_and_fill_short_gaps():
    frames = [[_face(100 + 2 * i, 100, 200), _face(600, 100, 100)] for i in range(10)]
    frames[4] = [frames[4][1]]  # the big face is missed on frame 4
    tracks = build_tracks(frames)
    assert len(tracks) == 2
    big = max(tracks, key=lambda t: t.total_area())
    assert sorted(big.faces) == list(range(10))
    np.testing.assert_allclose(big.faces[4].box[0], 108.0)  # interpolated between frames 3 and 5


def test_speaker_is_the_largest_track_and_point_picks_another():
    frames = [[_face(100, 100, 300), _face(700, 100, 150)] for _ in range(20)]
    tracks = build_tracks(frames)
    default = choose_speaker(tracks)
    assert len(default) == 1 and default[0].faces[0].box[2] - default[0].faces[0].box[0] == 300
    picked = choose_speaker(tracks, point=(760, 160, 5))
    assert len(picked) == 1 and picked[0].faces[5].box[0] == 700  # the other face co-occurs, so it is not added
    by_box = choose_speaker(tracks, box=(690, 90, 860, 260, 0))
    assert by_box[0] is picked[0]
    with pytest.raises(ValueError, match="No face was found on frame 30"):
        choose_speaker(tracks, point=(760, 160, 30))


def test_speaker_continues_after_a_scene_cut():
    shot_a = [[_face(100, 100, 300)] for _ in range(20)]
    cutaway = [[] for _ in range(10)]
    shot_b = [[_face(500, 300, 280)] for _ in range(20)]
    tracks = build_tracks(shot_a + cutaway + shot_b)
    assert len(tracks) == 2
    speaker = choose_speaker(tracks)
    assert [t.first for t in speaker] == [0, 30]


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
