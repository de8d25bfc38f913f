"""The predictor's compact progress lines (latentsync.progress.ProgressLog), on a clock of our own."""

import re

from latentsync.progress import Progress, ProgressLog


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def analyse(log: ProgressLog, clock: Clock, total: int, seconds_each: float) -> None:
    for done in range(1, total + 1):
        clock.now += seconds_each
        log(Progress("analyse", done, total))


def render(log: ProgressLog, clock: Clock, windows: int, seconds_each: float) -> None:
    """The renderer's order: a window reaches the writer, then its 16 frames are written."""
    for window in range(1, windows + 1):
        clock.now += seconds_each
        log(Progress("denoise", window, windows))
        for frame in range((window - 1) * 16 + 1, window * 16 + 1):
            log(Progress("write", frame, windows * 16))


def test_a_stage_of_any_length_writes_a_line_every_five_percent():
    for total in (40, 500, 15000):  # a second and a half of video ... ten minutes
        lines, clock = [], Clock()
        analyse(ProgressLog(lines.append, clock=clock), clock, total, 0.01)
        percents = [int(re.match(r"analyse +(\d+)%", line).group(1)) for line in lines]
        assert len(lines) == 21 and percents[-1] == 100 and all(b - a in (4, 5, 6) for a, b in zip(percents[1:], percents[2:]))
        assert f"(1/{total} frames)" in lines[0] and lines[-1].startswith(f"analyse  100% ({total}/{total} frames)")


def test_lines_carry_stage_percent_elapsed_and_time_left():
    lines, clock = [], Clock()
    log = ProgressLog(lines.append, clock=clock)
    analyse(log, clock, 100, 0.5)  # 50 s of face detection
    assert lines[0] == "analyse    1% (1/100 frames), 0:00 elapsed"  # no estimate before any rate is known
    assert "analyse   50% (50/100 frames), 0:24 elapsed, about 0:25 left" in lines
    assert lines[20] == "analyse  100% (100/100 frames), 0:50 elapsed"
    clock.now += 10
    render(log, clock, 40, 3.0)  # 40 windows, 3 s each
    assert lines[21] == "render     0% (1/640 frames written, 1/40 windows denoised), 1:02 elapsed"
    # 19 windows' time over 319 frames so far: 57 s for the 320 left (a window's frames are written at once)
    assert "render    50% (320/640 frames written, 20/40 windows denoised), 2:00 elapsed, about 0:57 left" in lines
    assert lines[-1] == "render   100% (640/640 frames written, 40/40 windows denoised), 3:00 elapsed"
    assert len(lines) == 42  # two stages, 21 lines each; denoise is told within the render lines


def test_a_render_without_windows_counts_frames_only():
    lines, clock = [], Clock()
    log = ProgressLog(lines.append, clock=clock)
    for frame in range(1, 101):
        clock.now += 0.1
        log(Progress("write", frame, 100))
    assert lines[-1] == "render   100% (100/100 frames written), 0:10 elapsed"


def test_a_long_job_shows_hours():
    lines, clock = [], Clock()
    log = ProgressLog(lines.append, clock=clock)
    log(Progress("analyse", 1, 1000))
    clock.now += 3 * 3600 + 62
    log(Progress("analyse", 500, 1000))
    assert lines[-1] == "analyse   50% (500/1000 frames), 3:01:02 elapsed, about 3:01:24 left"
