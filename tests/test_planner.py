"""Planning: length modes, spans, windows, boundary blending, face tracks and the whole plan of a
job (`plan_job`), all on plain data: no files, no models."""

from dataclasses import dataclass

import numpy as np
import pytest

from latentsync.face.align import FaceAligner
from latentsync.face.detect import FaceDetection
from latentsync.face.track import build_tracks, choose_speaker, iou
from latentsync.options import LipsyncOptions
from latentsync.planner import (
    MAX_SPAN_FRAMES,
    Action,
    LengthMode,
    NoFaceError,
    Span,
    absorb_short_generated_spans,
    blend_weight,
    frames_covering,
    output_fps,
    plan_job,
    plan_timeline,
    spans_from_actions,
    split_at,
    windows_for,
)
from tests.official import assert_affine_close, far_apart, official_affines


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


def run_weights(length, after_original, before_original):
    return [blend_weight(p, length, after_original, before_original, ramp=3) for p in range(length)]


def test_blend_weights_ramp_only_next_to_original_frames():
    assert run_weights(10, after_original=False, before_original=True) == [1, 1, 1, 1, 1, 1, 1, 0.75, 0.5, 0.25]  # video start: no ramp
    assert run_weights(10, after_original=True, before_original=False) == [0.25, 0.5, 0.75, 1, 1, 1, 1, 1, 1, 1]
    assert run_weights(8, after_original=False, before_original=False) == [1] * 8  # between cuts, or the whole video


def test_short_runs_ramp_over_half_their_length():
    assert run_weights(4, True, True) == [0.25, 0.5, 0.5, 0.25]
    assert run_weights(5, True, True) == [0.25, 0.5, 1, 0.5, 0.25]
    assert run_weights(1, True, True) == [1]


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


# ---- the whole plan --------------------------------------------------------------------------------


def detection(x=100.0, y=100.0, size=200.0, yaw=0.0) -> FaceDetection:
    landmarks = np.array([[x + 0.3 * size, y + 0.3 * size], [x + 0.7 * size, y + 0.3 * size], [x + 0.5 * size, y + 0.5 * size]])
    return FaceDetection(box=(x, y, x + size, y + size), score=0.9, landmarks3=landmarks, yaw_degrees=yaw)


def plan(detections, audio_s=None, pauses=(), fps=25.0, **options):
    speaker = choose_speaker(build_tracks(detections))
    audio_s = len(detections) / fps if audio_s is None else audio_s
    return plan_job(detections, speaker, audio_s, list(pauses), fps, LipsyncOptions(**options), resolution=256)


def actions(result):
    return [(s.start, s.end, s.action) for s in result.spans]


G, S, N, O, P = Action.GENERATED, Action.SILENCE, Action.NO_FACE, Action.OTHER_SPEAKER, Action.PASSTHROUGH


def test_a_steady_face_under_speech_is_regenerated_and_aligned_everywhere():
    result = plan([[detection()] for _ in range(40)])
    assert actions(result) == [(0, 40, G)] and result.fps == 25.0
    assert sorted(result.affines) == list(range(40)) and result.affines[0].shape == (2, 3)
    np.testing.assert_array_equal(result.source_frames, np.arange(40))


def test_alignment_is_smoothed_within_each_face_track_and_starts_afresh_at_a_cut():
    """Two shots of differently shaped, jittering faces: each track's affines are the official's
    smoothing run over that track alone (the official carries it over the cut, which shows)."""
    rng = np.random.default_rng(7)

    def shot(x, y, size, nose):
        faces = []
        for _ in range(20):
            face = detection(x, y, size)
            face.landmarks3 = face.landmarks3 + np.array([[0.0, 0.0], [0.0, 0.0], nose]) * size + rng.uniform(-4.0, 4.0, (3, 2))
            faces.append([face])
        return faces

    shot_a, shot_b = shot(100, 100, 300, (0.0, 0.0)), shot(500, 300, 280, (-0.08, 0.12))
    result = plan(shot_a + shot_b)
    assert actions(result) == [(0, 20, G), (20, 40, G)]
    template = FaceAligner(256).template
    landmarks = [faces[0].landmarks3 for faces in shot_a + shot_b]
    expected = official_affines(landmarks[:20], template) + official_affines(landmarks[20:], template)
    for frame in range(40):
        assert_affine_close(result.affines[frame], expected[frame], err_msg=f"frame {frame}")
    carried_over_the_cut = official_affines(landmarks, template)
    assert far_apart(carried_over_the_cut[20], expected[20])


def test_faces_turned_past_the_yaw_limit_pass_through():
    frames = [[detection(yaw=75.0 if 10 <= i < 20 else 5.0)] for i in range(40)]
    assert actions(plan(frames)) == [(0, 10, G), (10, 20, N), (20, 40, G)]
    assert actions(plan(frames, max_yaw_degrees=80.0)) == [(0, 40, G)]


def test_another_face_is_other_speaker_and_no_face_is_no_face():
    speaker, other = detection(100, 100, 300), detection(700, 100, 150)
    frames = [[speaker, other] for _ in range(20)] + [[other] for _ in range(10)] + [[] for _ in range(10)] + [[speaker] for _ in range(20)]
    result = plan(frames)
    assert actions(result) == [(0, 20, G), (20, 30, O), (30, 40, N), (40, 60, G)]


def test_pauses_are_silence_unless_silence_is_regenerated_too():
    frames = [[detection()] for _ in range(50)]
    assert actions(plan(frames, pauses=[(0.8, 1.2)])) == [(0, 20, G), (20, 30, S), (30, 50, G)]
    assert actions(plan(frames, pauses=[(0.8, 1.2)], skip_silence=False)) == [(0, 50, G)]


def test_long_generated_runs_are_cut_into_equal_pieces_within_the_limit():
    result = plan([[detection()] for _ in range(600)])
    assert [(s.start, s.end) for s in result.spans] == [(0, 200), (200, 400), (400, 600)]
    assert all(len(s) <= MAX_SPAN_FRAMES for s in result.spans)


def test_loop_restarts_cut_windows_but_remap_steps_do_not():
    frames = [[detection()] for _ in range(30)]
    looped = plan(frames, audio_s=70 / 25, length_mode="loop")  # 70 output frames over a 30-frame video
    assert [(s.start, s.end) for s in looped.spans] == [(0, 30), (30, 60), (60, 70)]
    assert all(w.stop <= 30 or w.start >= 30 for s in looped.spans for w in windows_for(s))  # no window straddles a restart
    remapped = plan(frames, audio_s=12 / 25, length_mode="remap")  # 12 output frames: the source advances 2-3 frames a step
    assert actions(remapped) == [(0, 12, G)]
    assert remapped.source_frames[-1] - remapped.source_frames[0] > 20


def test_length_modes_with_a_scene_cut():
    shot_a, shot_b = [[detection(100, 100, 300)] for _ in range(20)], [[detection(500, 300, 280)] for _ in range(20)]
    bounced = plan(shot_a + shot_b, audio_s=60 / 25, length_mode="bounce")  # 40 frames forward, 20 back
    assert [(s.start, s.end) for s in bounced.spans] == [(0, 20), (20, 60)]  # the scene cut; the turn at frame 40 is none
    assert bounced.source_frames[40] == 39 and bounced.source_frames[59] == 20
    silent_tail = plan(shot_a + shot_b, audio_s=30 / 25, length_mode="silence")
    assert actions(silent_tail) == [(0, 20, G), (20, 30, G), (30, 40, S)]
    cut_off = plan(shot_a + shot_b, audio_s=30 / 25, length_mode="cut_off")
    assert actions(cut_off) == [(0, 20, G), (20, 30, G)]


def test_a_few_regenerable_frames_between_unusable_ones_pass_through():
    yaws = [80.0] * 10 + [0.0] * 3 + [80.0] * 10 + [0.0] * 20
    assert actions(plan([[detection(yaw=yaw)] for yaw in yaws])) == [(0, 10, N), (10, 13, P), (13, 23, N), (23, 43, G)]


def test_no_usable_face_anywhere_is_a_clear_error():
    with pytest.raises(NoFaceError, match=r"No usable face was found in any of the 25 frames checked \(1.0 s of video\)"):
        plan([[detection(yaw=80.0)] for _ in range(25)])
    with pytest.raises(ValueError, match="The video input has no decodable frames"):
        plan([])


def test_output_fps_keeps_only_24_to_30_fps_sources_when_asked():
    assert output_fps(30.0, keep_source_fps=True) == 30.0
    assert output_fps(30.0, keep_source_fps=False) == 25.0
    assert output_fps(60.0, keep_source_fps=True) == 25.0
