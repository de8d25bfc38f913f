"""Blending in the render: the fade between regenerated and original frames follows what rendering
did, not only what was planned (pure arrays; the whole pipeline is in test_production.py)."""

from types import SimpleNamespace

import numpy as np
import pytest

from latentsync.render import Blender

GENERATED = 200  # grey level of every "regenerated" face in these tests; originals are black


def blend(sequence: list) -> list[float]:
    """Push frames described by `sequence` (a run id for a regenerated frame, None for an original
    one) and return each written frame's share of the regenerated face."""
    written = []
    pasting = SimpleNamespace(paste=lambda frame, face, affine: (slice(None), slice(None), np.full_like(frame, GENERATED)))
    with Blender(pasting, write=written.append) as blender:
        for run in sequence:
            face = None if run is None else object()
            blender.push(np.zeros((2, 2, 3), np.uint8), face, affine=None, run=run)
        blender.flush()
    assert len(written) == len(sequence)
    return [frame[0, 0, 0] / GENERATED for frame in written]


def test_a_planned_boundary_fades_over_three_frames():
    assert blend([0] * 8 + [None] * 4) == [1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0, 0, 0]
    assert blend([None] * 4 + [0] * 8) == [0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1, 1, 1]


def test_a_window_passed_through_inside_a_span_fades_like_a_planned_boundary():
    # one planned span (run 0) whose middle window kept its original frames
    weights = blend([0] * 10 + [None] * 5 + [0] * 10)
    assert weights[:10] == [1] * 7 + [0.75, 0.5, 0.25]
    assert weights[10:15] == [0] * 5
    assert weights[15:] == [0.25, 0.5, 0.75] + [1] * 7


def test_regenerated_spans_meeting_at_a_cut_do_not_fade():
    assert blend([0] * 8 + [1] * 8) == [1] * 16


@pytest.mark.parametrize("length,expected", [(4, [0.25, 0.5, 0.5, 0.25]), (1, [1.0])])
def test_short_runs_fade_over_half_their_length(length, expected):
    assert blend([None] + [0] * length + [None])[1:-1] == expected
