"""Planning: length modes, spans, windows, boundary blending, face tracks and the whole plan of a
job (`plan_job`), all on plain data: no files, no models."""

from dataclasses import dataclass

import numpy as np
import pytest

from latentsync.audio import Pauses
from latentsync.face.align import FaceAligner
from latentsync.face.detect import FaceDetection
from latentsync.face.track import box_area, build_tracks, choose_speaker, iou
from latentsync.options import LipsyncOptions
from latentsync.planner import (
    MAX_SPAN_FRAMES,
    Action,
    LengthMode,
    NoFaceError,
    PlanBuilder,
    Span,
    SpanBuilder,
    blend_weight,
    frames_covering,
    output_fps,
    plan_job,
    plan_timeline,
    silent_frames,
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


def spans_of(actions, cuts=()):
    """The spans a SpanBuilder makes of per-frame actions, with cuts before the given frames."""
    builder = SpanBuilder()
    for frame, action in enumerate(actions):
        builder.push(action, cut=frame in cuts)
    return [(s.start, s.end, s.action) for s in builder.finish()]


def test_spans_cover_the_timeline_in_order():
    G, S, N = Action.GENERATED, Action.SILENCE, Action.NO_FACE
    assert spans_of([G] * 5 + [S] * 3 + [G] * 4 + [N] * 2) == [(0, 5, G), (5, 8, S), (8, 12, G), (12, 14, N)]


def test_short_generated_runs_become_passthrough():
    G, S, P = Action.GENERATED, Action.SILENCE, Action.PASSTHROUGH
    assert spans_of([G] * 20 + [S] * 5 + [G] * 2 + [S] * 5) == [(0, 20, G), (20, 25, S), (25, 27, P), (27, 32, S)]
    assert spans_of([G] * 2 + [G] * 2 + [S] * 3, cuts={2}) == [(0, 4, P), (4, 7, S)]  # short runs on both sides of a cut merge
    assert spans_of([G] * 3) == [(0, 3, G)]  # the whole video: nothing to pass through to


def test_windows_never_straddle_a_split():
    G, S = Action.GENERATED, Action.SILENCE
    assert spans_of([G] * 40 + [S] * 10, cuts={20, 45}) == [(0, 20, G), (20, 40, G), (40, 50, S)]  # silence is not split
    spans = [Span(start, end, action) for start, end, action in spans_of([G] * 40 + [S] * 10, cuts={20, 45})]
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
    default = choose_speaker(frames, CHOICE_FRAMES)
    assert len(default) == 1 and default[0].faces[0].box[2] - default[0].faces[0].box[0] == 300
    picked = choose_speaker(frames, CHOICE_FRAMES, point=(760, 160, 5))
    assert len(picked) == 1 and picked[0].faces[5].box[0] == 700  # the other face co-occurs, so it is not added
    by_box = choose_speaker(frames, CHOICE_FRAMES, box=(690, 90, 860, 260, 0))
    assert by_box[0].faces[0].box[0] == 700
    with pytest.raises(ValueError, match="No face was found on frame 30"):
        choose_speaker(frames, CHOICE_FRAMES, point=(760, 160, 30))


def test_speaker_continues_after_a_scene_cut():
    shot_a = [[_face(100, 100, 300)] for _ in range(20)]
    cutaway = [[] for _ in range(10)]
    shot_b = [[_face(500, 300, 280)] for _ in range(20)]
    assert len(build_tracks(shot_a + cutaway + shot_b)) == 2
    speaker = choose_speaker(shot_a + cutaway + shot_b, CHOICE_FRAMES)
    assert [t.first for t in speaker] == [0, 30]


CHOICE_FRAMES = 50  # two seconds at 25 fps


def test_the_automatic_speaker_is_the_largest_face_of_the_first_seconds_with_faces():
    # A small face alone for 3 s, then beside a larger one that stays 12 s: over the whole video the
    # larger face has the larger area (the rule before streaming chose it); the speaker is chosen
    # from the first 2 s with faces, so the small one speaks, and the larger one, seen beside it,
    # never does.
    small, large = _face(100, 100, 120), _face(600, 100, 300)
    frames = [[] for _ in range(10)] + [[small] for _ in range(75)] + [[large, small] for _ in range(25)] + [[large] for _ in range(300)]
    speaker = choose_speaker(frames, CHOICE_FRAMES)
    assert len(speaker) == 1 and speaker[0].first == 10 and speaker[0].last == 109
    assert max(build_tracks(frames), key=lambda t: t.total_area()).faces[110].box[0] == 600


def test_a_face_in_another_shot_speaks_once_it_lasted_long_enough_and_is_not_much_smaller():
    speaker = [[_face(100, 100, 300)] for _ in range(60)]
    flicker = [[_face(500, 300, 280)] for _ in range(7)]  # too short to be the speaker again
    tiny = [[_face(500, 300, 100)] for _ in range(20)]  # a ninth of the speaker's area: someone else
    later = [[_face(500, 300, 280)] for _ in range(20)]
    gap = [[] for _ in range(5)]
    chosen = choose_speaker(speaker + gap + flicker + gap + tiny + gap + later, CHOICE_FRAMES)
    assert [t.first for t in chosen] == [0, 60 + 5 + 7 + 5 + 20 + 5]


def test_iou():
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)


# ---- the whole plan --------------------------------------------------------------------------------


def detection(x=100.0, y=100.0, size=200.0, yaw=0.0) -> FaceDetection:
    landmarks = np.array([[x + 0.3 * size, y + 0.3 * size], [x + 0.7 * size, y + 0.3 * size], [x + 0.5 * size, y + 0.5 * size]])
    return FaceDetection(box=(x, y, x + size, y + size), score=0.9, landmarks3=landmarks, yaw_degrees=yaw)


def plan(detections, audio_s=None, pauses=(), fps=25.0, segments=None, **options):
    audio_s = len(detections) / fps if audio_s is None else audio_s
    return plan_job(detections, audio_s, pauses, fps, LipsyncOptions(**options), resolution=256, segments=segments)


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
    pieces = lambda frames: [(s.start, s.end) for s in plan([[detection()] for _ in range(frames)]).spans]  # noqa: E731
    assert pieces(250) == [(0, 250)] and pieces(406) == [(0, 203), (203, 406)] and pieces(500) == [(0, 250), (250, 500)]
    # longer than twice the limit: pieces of the limit from the start while more than twice remains
    assert pieces(600) == [(0, 250), (250, 425), (425, 600)]
    assert pieces(1100) == [(0, 250), (250, 500), (500, 750), (750, 925), (925, 1100)]
    assert MAX_SPAN_FRAMES == 250


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


# ---- the plan, built frame by frame --------------------------------------------------------------------


def streamed(detections, audio_s=None, pauses=(), fps=25.0, segments=None, **options):
    """Feed the detections one frame at a time and check, at every frame, that whatever the plan
    holds is what the whole plan has there: final spans (with their settings), the frames known to
    belong to the open regenerated span (and its settings), source frames and alignments. Returns
    the plan and, per frame added, how many output frames were planned."""
    audio_s = len(detections) / fps if audio_s is None else audio_s
    whole = plan(detections, audio_s, pauses, fps, segments, **options)
    builder = PlanBuilder(audio_s, pauses, fps, LipsyncOptions(**options), resolution=256, segments=segments)
    whole_spans = [(s.start, s.end, s.action, s.details, s.steps, s.guidance) for s in whole.spans]
    planned, checked = [], set()
    for faces in detections:
        builder.add(faces)
        spans = [(s.start, s.end, s.action, s.details, s.steps, s.guidance) for s in builder.plan.spans]
        assert spans == whole_spans[: len(spans)]
        open_span = builder.spans.open_span
        if open_span is not None:
            final = next(s for s in whole.spans if s.start == open_span.start)
            assert final.action is Action.GENERATED and final.end >= open_span.end
            assert (open_span.details, open_span.steps, open_span.guidance) == (final.details, final.steps, final.guidance)
        assert builder.plan.source_frames == list(whole.source_frames[: len(builder.plan.source_frames)])
        assert all(np.array_equal(affine, whole.affines[frame]) for frame, affine in builder.plan.affines.items() if frame not in checked)
        checked.update(builder.plan.affines)
        planned.append(len(builder.plan.source_frames))
    result = builder.finish()
    assert [(s.start, s.end, s.action, s.details, s.steps, s.guidance) for s in result.spans] == whole_spans
    return result, planned


@pytest.mark.parametrize("mode", list(LengthMode))
def test_a_plan_built_frame_by_frame_is_final_where_it_is_built(mode):
    shot_a = [[detection(100, 100, 300, yaw=80.0 if 30 <= i < 33 else 0.0), detection(700, 100, 150)] for i in range(60)]
    cutaway = [[] for _ in range(10)] + [[detection(600, 500, 200)] for _ in range(5)] + [[] for _ in range(5)]
    shot_b = [[detection(500, 300, 280)] for _ in range(300)]
    frames = shot_a + cutaway + shot_b
    frames[100] = []  # a missed detection, filled from its neighbours
    pauses = [(0.4, 0.9), (7.0, 7.3)]
    for audio_s in (len(frames) / 25 * 1.7, len(frames) / 25 * 0.6):
        result, planned = streamed(frames, audio_s=audio_s, pauses=pauses, length_mode=mode.value)
        assert {span.action for span in result.spans} >= {Action.GENERATED, Action.SILENCE, Action.OTHER_SPEAKER}
        if mode is LengthMode.REMAP:
            assert planned[-1] == 0  # every output frame depends on the video's length
        else:  # planned a few frames behind the analysis, after the first 2 s with faces
            assert all(count >= min(added, audio_s * 25) - 12 for added, count in enumerate(planned, start=1) if added > 60)


def test_the_first_window_is_planned_within_the_first_seconds_whatever_the_length():
    for seconds in (10, 60):
        builder = PlanBuilder(seconds, [], 25.0, LipsyncOptions(), resolution=256)
        for added in range(1, seconds * 25 + 1):
            builder.add([detection()])
            span = builder.spans.open_span
            if span is not None and len(span) >= 16:
                break
        assert added <= CHOICE_FRAMES + 16 + 3, added  # 2 s to choose the speaker, then a window and its settling


# ---- edges that mutation testing (scripts/mutation.sh) found unguarded -----------------------------


def test_a_one_frame_video_or_audio_is_planned():
    np.testing.assert_array_equal(plan_timeline(1, 5, "bounce").source_frames, [0, 0, 0, 0, 0])
    np.testing.assert_array_equal(plan_timeline(5, 1, "loop").source_frames, [0])
    with pytest.raises(ValueError, match=r"^The video has no frames\.$"):
        plan_timeline(0, 10, "bounce")
    with pytest.raises(ValueError, match=r"^The audio is empty \(zero length\)\.$"):
        plan_timeline(10, 0, "bounce")


def test_short_generated_runs_at_the_limit_and_alone():
    def absorbed(lengths_and_actions):  # runs of one action, a cut between two runs of the same one
        actions_, cuts = [], set()
        for length, action in lengths_and_actions:
            cuts.add(len(actions_))
            actions_ += [action] * length
        return spans_of(actions_, cuts)

    assert absorbed([(10, S), (4, G), (10, S)]) == [(0, 10, S), (10, 14, G), (14, 24, S)]  # 4 frames are enough
    assert absorbed([(3, G)]) == [(0, 3, G)]  # a whole video of 3 frames is still regenerated
    assert absorbed([(10, S), (3, G)]) == [(0, 10, S), (10, 13, P)]
    # runs cut short at a loop restart turn into one pass-through run, after whatever came before
    assert absorbed([(10, G), (10, N), (2, G), (2, G), (6, N)]) == [(0, 10, G), (10, 20, N), (20, 24, P), (24, 30, N)]


def test_spans_never_share_their_details():
    """Rendering adds a span's sync scores to its details: the pieces of a cut run and the runs
    on both sides of a cut each have their own."""
    builder = SpanBuilder("a detector")
    for frame in range(620):
        builder.push(S if frame < 10 else G, cut=frame == 40, silent=frame < 10)
    spans = builder.finish()
    assert [(s.start, s.end) for s in spans] == [(0, 10), (10, 40), (40, 290), (290, 455), (455, 620)]
    assert len({id(span.details) for span in spans}) == len(spans) and spans[0].details == {"detector": "a detector"}


def test_only_generated_spans_are_cut_to_the_length_limit():
    assert spans_of([S] * 600 + [G] * 600) == [(0, 600, S), (600, 850, G), (850, 1025, G), (1025, 1200, G)]


def test_output_fps_keeps_24_and_30_fps_themselves():
    assert output_fps(24.0, keep_source_fps=True) == 24.0 and output_fps(30.0, keep_source_fps=True) == 30.0
    assert output_fps(23.9, keep_source_fps=True) == 25.0 and output_fps(30.5, keep_source_fps=True) == 25.0


def test_a_face_turned_exactly_to_the_yaw_limit_is_regenerated():
    frames = [[detection(yaw=60.0 if i < 10 else 0.0)] for i in range(20)]
    assert actions(plan(frames, max_yaw_degrees=60.0)) == [(0, 20, G)]
    with pytest.raises(ValueError, match=r"^The video input has no decodable frames\.$"):
        plan([])


def test_every_pause_counts_and_a_frame_is_silent_from_its_centre():
    # frame i's centre is (i + 0.5) / 25 s: frame 0 at 0.02 s, frame 1 at 0.06 s
    np.testing.assert_array_equal(silent_frames(6, [(0.02, 0.06), (0.14, 1.0)], 25.0), [True, False, False, True, True, True])
    np.testing.assert_array_equal(silent_frames(4, [(0.0, 0.1)], 25.0), [True, True, False, False])  # frame 2's centre is the end


def test_cuts_are_where_the_source_jumps_or_the_track_changes():
    # a loop of 5 frames jumps back 4 at each restart; a remap 2x faster steps 2 frames without a cut
    assert actions(plan([[detection()] for _ in range(5)], audio_s=10 / 25, length_mode="loop")) == [(0, 5, G), (5, 10, G)]
    assert actions(plan([[detection()] for _ in range(20)], audio_s=10 / 25, length_mode="remap")) == [(0, 10, G)]
    # the speaker's face track changes (another shot right after): a cut, though no frame is skipped
    frames = [[detection(100, 100, 300)] for _ in range(20)] + [[detection(500, 300, 280)] for _ in range(20)]
    assert actions(plan(frames)) == [(0, 20, G), (20, 40, G)]


def test_box_area_and_iou_edges():
    assert box_area((10.0, 20.0, 30.0, 50.0)) == 600.0
    assert box_area((0.0, 0.0, 0.5, 10.0)) == 5.0 and box_area((0.0, 0.0, 10.0, 0.5)) == 5.0
    assert box_area((5.0, 5.0, 3.0, 10.0)) == 0.0 and box_area((5.0, 5.0, 10.0, 3.0)) == 0.0
    assert iou((10, 0, 20, 10), (15, 0, 25, 10)) == pytest.approx(50 / 150)
    assert iou((0, 0, 0.5, 1), (0, 0, 0.5, 1)) == 1.0
    assert iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0.0  # empty boxes overlap nothing


def box_face(x1, y1, x2, y2):
    return Face(box=(x1, y1, x2, y2), landmarks3=np.array([[x1, y1], [x2, y1], [(x1 + x2) / 2, (y1 + y2) / 2]], float))


def test_tracks_bridge_two_missed_frames_but_not_three():
    def tracks_with_gap(gap):
        frames = [[_face(100, 100, 200)] for _ in range(10)]
        for i in range(4, 4 + gap):
            frames[i] = []
        return build_tracks(frames)

    assert [sorted(t.faces) for t in tracks_with_gap(2)] == [list(range(10))]
    assert [sorted(t.faces) for t in tracks_with_gap(3)] == [[0, 1, 2, 3], [7, 8, 9]]


def test_a_filled_gap_interpolates_box_and_landmarks_and_takes_the_lower_score():
    a = Face(box=(100.0, 100.0, 300.0, 300.0), landmarks3=np.array([[150.0, 150.0], [250.0, 150.0], [200.0, 220.0]]), score=0.9)
    b = Face(box=(130.0, 100.0, 330.0, 300.0), landmarks3=np.array([[180.0, 160.0], [280.0, 160.0], [230.0, 232.0]]), score=0.6)
    [track] = build_tracks([[a], [], [], [b]])
    filled = track.faces[1]  # a third of the way from a to b
    np.testing.assert_allclose(filled.box, (110.0, 100.0, 310.0, 300.0))
    np.testing.assert_allclose(filled.landmarks3, [[160.0, 153.333333], [260.0, 153.333333], [210.0, 224.0]])
    assert filled.score == 0.6


def test_tracks_take_their_best_overlapping_face_one_each():
    # Two faces side by side move a little: each track keeps its own face, best overlap first.
    left, right = box_face(0, 0, 100, 100), box_face(40, 0, 140, 100)
    moved_left, moved_right = box_face(5, 0, 105, 100), box_face(45, 0, 145, 100)  # each also overlaps the other's track
    tracks = build_tracks([[left, right], [moved_left, moved_right]])
    assert [[t.faces[0].box, t.faces[1].box] for t in tracks] == [[left.box, moved_left.box], [right.box, moved_right.box]]
    # One track, two overlapping candidates: it takes the better one; the other starts a track
    near, farther = box_face(1, 0, 101, 100), box_face(30, 0, 130, 100)
    tracks = build_tracks([[left], [near, farther]])
    assert [sorted(t.faces) for t in tracks] == [[0, 1], [1]] and tracks[0].faces[1].box == near.box
    # A track already served does not stop another track from taking its own best face
    other = box_face(10, 0, 110, 100)
    tracks = build_tracks([[left, other], [box_face(1, 0, 101, 100), box_face(3, 0, 103, 100)]])
    assert [sorted(t.faces) for t in tracks] == [[0, 1], [0, 1]]


def test_a_face_overlapping_its_track_exactly_at_the_threshold_continues_it():
    before, after = box_face(0.0, 0.0, 6.5, 1.0), box_face(3.5, 0.0, 10.0, 1.0)  # IoU 3 / 10
    assert iou(before.box, after.box) == 0.3
    assert len(build_tracks([[before], [after]], min_iou=0.3)) == 1


def shot(x, y, size, first, count):
    return {first + i: [_face(x, y, size)] for i in range(count)}


def frames_of(*shots, total):
    frames = [[] for _ in range(total)]
    for faces in shots:
        for frame, found in faces.items():
            frames[frame] = frames[frame] + found
    return frames


def test_the_speakers_later_shots_the_largest_first_at_least_8_frames_and_a_fifth_of_the_area():
    first = shot(100, 100, 300, 0, 20)
    frames = frames_of(first, shot(500, 300, 300, 30, 8), total=40)
    assert [t.first for t in choose_speaker(frames, CHOICE_FRAMES)] == [0, 30]  # 8 frames are enough
    frames = frames_of(first, shot(500, 300, 300, 30, 7), total=40)
    assert [t.first for t in choose_speaker(frames, CHOICE_FRAMES)] == [0]  # 7 are not
    # a later shot's faces: the larger one is the speaker's, the smaller one beside it is not
    chosen = choose_speaker(frames_of(first, shot(100, 100, 250, 30, 10), shot(600, 100, 140, 30, 10), total=40), CHOICE_FRAMES)
    assert [(t.first, t.faces[t.first].box[2] - t.faces[t.first].box[0]) for t in chosen] == [(0, 300), (30, 250)]
    # a fifth of the first track's area is enough (150 x 120 of 300 x 300); less is someone else
    for width, expected in ((150, [0, 30]), (149, [0])):
        later = {30 + i: [box_face(500, 300, 500 + width, 420)] for i in range(10)}
        assert [t.first for t in choose_speaker(frames_of(first, later, total=40), CHOICE_FRAMES)] == expected
    # a track skipped on the way (too short) does not end the search
    frames = frames_of(first, shot(500, 300, 310, 22, 4), shot(500, 300, 280, 30, 10), total=40)
    assert [t.first for t in choose_speaker(frames, CHOICE_FRAMES)] == [0, 30]


def test_a_point_picks_the_face_containing_it_else_the_nearest():
    rng = np.random.default_rng(11)
    for _ in range(200):
        corners = rng.uniform(0, 1000, size=(3, 2))
        sizes = rng.uniform(50, 300, size=3)
        faces = [box_face(x, y, x + s, y + s * 1.2) for (x, y), s in zip(corners, sizes)]
        point = rng.uniform(0, 1200, size=2)
        inside = [i for i, f in enumerate(faces) if f.box[0] <= point[0] <= f.box[2] and f.box[1] <= point[1] <= f.box[3]]
        centres = np.array([((f.box[0] + f.box[2]) / 2, (f.box[1] + f.box[3]) / 2) for f in faces])
        distance = np.hypot(*(centres - point).T)
        candidates = inside or range(3)
        expected = faces[min(candidates, key=lambda i: distance[i])].box
        assert choose_speaker([faces], CHOICE_FRAMES, point=(point[0], point[1], 0))[0].faces[0].box == expected


@pytest.mark.parametrize("point", [(0.0, 200.0), (400.0, 200.0), (200.0, 0.0), (200.0, 400.0)])
def test_a_point_on_a_faces_edge_is_inside_it(point):
    big = box_face(0, 0, 400, 400)
    # a small face just outside that edge, whose centre is nearer the point than the big one's
    x, y = point
    dx, dy = (np.sign(x - 200) * 70, 0) if x in (0.0, 400.0) else (0, np.sign(y - 200) * 70)
    small = box_face(x + dx - 50, y + dy - 50, x + dx + 50, y + dy + 50)
    assert choose_speaker([[big, small]], CHOICE_FRAMES, point=(x, y, 0))[0].faces[0].box == big.box
    # inside one range only is not inside
    assert choose_speaker([[big, box_face(150, 460, 250, 560)]], CHOICE_FRAMES, point=(200, 450, 0))[0].faces[0].box == (150, 460, 250, 560)


def test_choosing_by_point_or_box_on_a_frame_without_faces_names_the_way():
    frames = [[_face(100, 100, 300)], []]
    with pytest.raises(ValueError, match=r"^No face was found on frame 1 to select the speaker by point; pick a frame where the face is visible\.$"):
        choose_speaker(frames, CHOICE_FRAMES, point=(150, 150, 1))
    with pytest.raises(ValueError, match=r"^No face was found on frame 1 to select the speaker by box; pick a frame where the face is visible\.$"):
        choose_speaker(frames, CHOICE_FRAMES, box=(100, 100, 400, 400, 1))


def test_a_three_frame_video_looped_is_cut_at_each_restart():
    # restarts jump two frames back (2 -> 0): each pass is its own run, too short to regenerate
    result = plan([[detection()] for _ in range(3)], audio_s=9 / 25, length_mode="loop")
    assert actions(result) == [(0, 9, P)]


def test_a_track_beside_the_speaker_does_not_end_the_search_for_later_shots():
    first, beside, later = shot(100, 100, 300, 0, 20), shot(600, 100, 200, 0, 20), shot(100, 100, 250, 30, 10)
    frames = frames_of(first, beside, later, total=40)  # beside's total area is larger than later's
    assert [(t.first, t.faces[t.first].box[0]) for t in choose_speaker(frames, CHOICE_FRAMES)] == [(0, 100), (30, 100)]


def test_silence_spans_holding_a_detected_pause_name_the_detector():
    frames = [[detection()] for _ in range(50)]
    pauses = Pauses([(0.8, 1.2)], detector="a detector 1.0")
    result = plan(frames, audio_s=1.6, pauses=pauses, length_mode="silence")  # frames 40-49: past the audio's end
    assert [(s.start, s.end, s.action, s.details) for s in result.spans] == [
        (0, 20, G, {}), (20, 30, S, {"detector": "a detector 1.0"}), (30, 40, G, {}), (40, 50, S, {}),
    ]
    assert all(span.details == {} for span in plan(frames, audio_s=1.6, pauses=[(0.8, 1.2)], length_mode="silence").spans)
