"""The timeline picture, from a constructed report: a coloured band per span in order on a time axis
in seconds, the sync confidence of regenerated spans above it; and the CLI's --report_plot."""

import json

import cv2
import numpy as np
import pytest
from matplotlib.collections import LineCollection
from matplotlib.colors import to_rgb, to_rgba
from matplotlib.patches import Rectangle

from latentsync.timeline import ACTION_COLOURS, ACTION_LABELS, DPI, FIGURE_SIZE, save_timeline, timeline_figure
from scripts import inference
from tests.media import small_clip, speech

SPANS = [  # (start, end, action, sync confidence)
    (0.0, 3.0, "generated", 7.2),
    (3.0, 4.0, "silence", None),
    (4.0, 6.0, "generated", 4.1),
    (6.0, 7.0, "no_face", None),
    (7.0, 8.0, "other_speaker", None),
    (8.0, 9.0, "passthrough", None),
    (9.0, 12.0, "generated", 8.0),
]


def constructed_report(spans=SPANS, threshold=5.0) -> dict:
    entries = [{"start": a, "end": b, "action": action, "frames": round((b - a) * 25), "sync_confidence": c} for a, b, action, c in spans]
    generated = sum(e["frames"] for e in entries if e["action"] == "generated")
    return {
        "spans": entries, "seed": 7, "version": "1.6", "fps": 25.0, "frames": 300, "duration": 12.0, "frames_generated": generated,
        "fraction_skipped": round(1 - generated / 300, 4), "sync_confidence": 6.7, "options": {"min_sync_confidence": threshold},
    }


@pytest.fixture(scope="module")
def figure():
    return timeline_figure(constructed_report())


def band_axis(figure):
    return figure.axes[1]


def test_each_span_is_a_band_in_its_actions_colour_in_order(figure):
    bands = [p for p in band_axis(figure).patches if isinstance(p, Rectangle)]
    assert [(b.get_x(), b.get_x() + b.get_width()) for b in bands] == [(a, b) for a, b, _, _ in SPANS]
    assert [b.get_facecolor() for b in bands] == [to_rgba(ACTION_COLOURS[action]) for _, _, action, _ in SPANS]
    assert len({ACTION_COLOURS[a] for a in ACTION_COLOURS}) == len(ACTION_COLOURS)  # a colour of its own each


def test_the_legend_names_each_action_present_once(figure):
    legend = figure.legends[0]
    labels = [text.get_text() for text in legend.get_texts()]
    assert labels[:5] == [ACTION_LABELS[a] for a in ("generated", "silence", "no_face", "other_speaker", "passthrough")]
    assert labels[5:] == ["sync confidence", "threshold 5"]
    colours = [handle.get_facecolor() for handle in legend.legend_handles[:5]]
    assert colours == [to_rgba(ACTION_COLOURS[a]) for a in ("generated", "silence", "no_face", "other_speaker", "passthrough")]


def test_the_time_axis_is_the_outputs_duration_in_seconds(figure):
    axis = band_axis(figure)
    assert axis.get_xlim() == (0.0, 12.0)
    assert axis.get_xlabel() == "output time (s)"
    ticks = [t for t in axis.get_xticks() if 0 <= t <= 12]
    assert ticks[0] == 0 and ticks[-1] == 12 and all(b > a for a, b in zip(ticks, ticks[1:]))


def test_generated_spans_show_their_sync_confidence_and_the_threshold(figure):
    scores = figure.axes[0]
    levels = [segment for collection in scores.collections if isinstance(collection, LineCollection) for segment in collection.get_segments()]
    assert [(s[0][0], s[1][0], s[0][1]) for s in levels] == [(a, b, c) for a, b, action, c in SPANS if action == "generated"]
    assert [line.get_ydata()[0] for line in scores.get_lines()] == [5.0]  # the dashed min_sync_confidence line
    assert {text.get_text() for text in scores.texts} == {"7.2", "4.1", "8.0"}


def test_a_report_without_scores_says_so():
    report = constructed_report([(0.0, 2.0, "generated", None), (2.0, 3.0, "silence", None)], threshold=None)
    scores = timeline_figure(report).axes[0]
    assert not scores.collections and not scores.get_lines()
    assert "no sync scores" in scores.texts[0].get_text()


def test_the_png_shows_each_spans_colour_where_its_time_is(tmp_path):
    report = constructed_report()
    path = save_timeline(report, tmp_path / "out.report.png")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    assert image.shape == (round(FIGURE_SIZE[1] * DPI), round(FIGURE_SIZE[0] * DPI), 3)
    figure = timeline_figure(report)
    figure.canvas.draw()  # the layout the PNG was saved with
    axis = band_axis(figure)
    for start, end, action, _ in SPANS:
        x, y = axis.transData.transform(((start + end) / 2, 0.5))
        pixel = image[image.shape[0] - round(y), round(x)]
        assert np.abs(pixel - np.array(to_rgb(ACTION_COLOURS[action])) * 255).max() <= 2, (action, pixel)


def test_the_cli_writes_the_picture_beside_the_output(tmp_path, assets, reference):
    video, audio = small_clip(tmp_path / "clip.mp4", seconds=1.0), speech(tmp_path / "speech.wav", 1.0, start=1.0)
    out = tmp_path / "clip_out.mp4"
    code = inference.main([
        "--unet_config_path", str(reference / "unet_tiny.yaml"), "--inference_ckpt_path", str(reference / "unet_tiny.pt"),
        "--whisper_path", str(reference / "whisper_tiny_random.pt"), "--vae_path", str(reference / "vae_tiny"),
        "--mask_path", str(assets / "mask.png"), "--resolution", "64", "--face_detector", "mediapipe",
        "--video_path", str(video), "--audio_path", str(audio), "--video_out_path", str(out), "--inference_steps", "1", "--report_plot",
    ])
    assert code == 0
    picture = cv2.imread(str(tmp_path / "clip_out.report.png"))
    assert picture is not None and picture.shape[:2] == (round(FIGURE_SIZE[1] * DPI), round(FIGURE_SIZE[0] * DPI))
    report = json.loads((tmp_path / "clip_out.report.json").read_text())
    axis = band_axis(timeline_figure(report))
    assert axis.get_xlim() == (0.0, report["duration"])


def test_segments_are_outlined_and_numbered_where_their_time_is(tmp_path):
    spans = [(0.0, 2.0, "outside_segments", None), (2.0, 3.5, "generated", None), (3.5, 8.0, "outside_segments", None),
             (8.0, 8.4, "silence", None), (8.4, 9.6, "generated", None), (9.6, 12.0, "outside_segments", None)]
    report = constructed_report(spans, threshold=None)
    report["segments"] = [{"segment": 1, "start": 2.0, "end": 3.5}, {"segment": 2, "start": 8.0, "end": 9.6}]
    path = save_timeline(report, tmp_path / "segments.png")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB).astype(int)
    figure = timeline_figure(report)
    figure.canvas.draw()
    axis = band_axis(figure)
    assert sorted(text.get_text() for text in axis.texts) == ["1", "2"]
    assert [text.get_text() for text in figure.legends[0].get_texts()][-1] == "segment"

    def pixel(t, y):
        x, y = axis.transData.transform((t, y))
        return image[image.shape[0] - round(y), round(x)]

    for row in report["segments"]:
        for edge in (row["start"], row["end"]):
            assert pixel(edge, 0.25).max() < 60, edge  # the outline, dark across the bands
    assert np.abs(pixel(1.0, 0.25) - np.array(to_rgb(ACTION_COLOURS["outside_segments"])) * 255).max() <= 2
    assert np.abs(pixel(2.4, 0.25) - np.array(to_rgb(ACTION_COLOURS["generated"])) * 255).max() <= 2
