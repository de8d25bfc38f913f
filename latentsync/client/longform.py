"""Long videos: split at pauses near the segment limit, lip-sync the segments in parallel (each
cached on its own), and stitch the results losslessly under the original audio."""

import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..audio import silent_spans
from ..config import MODEL_FPS
from ..media.decode import load_audio
from ..media.ffmpeg import file_url, input_args, run_ffmpeg
from ..media.probe import MediaError, probe

def cut_points(duration: float, pauses: list[tuple[float, float]], max_segment_s: float) -> list[float]:
    """Where to cut `duration` seconds into the fewest segments of at most `max_segment_s`.

    Each cut starts at its even share of the duration and moves to the middle of the nearest
    pause within the slack the limit leaves (so no segment grows past it); cuts land on frame
    boundaries (1/25 s).
    """
    count = math.ceil(duration / max_segment_s)
    share = duration / count
    slack = min(0.25 * share, max(0.0, (max_segment_s - share) / 2))
    points = []
    for k in range(1, count):
        ideal = k * share
        middles = [(a + b) / 2 for a, b in pauses if abs((a + b) / 2 - ideal) <= slack]
        point = min(middles, key=lambda m: abs(m - ideal)) if middles else ideal
        points.append(math.floor(point * MODEL_FPS) / MODEL_FPS)
    return points


def run_long(client, video, audio, output_path, max_segment_s: float = 60.0, concurrency: int = 3, attempts: int = 2, **params) -> Path:
    """Lip-sync a long video as segments of at most `max_segment_s` seconds.

    Segments are cut where the audio pauses, submitted `concurrency` at a time through the
    client (so each is cached by its content), retried alone if they fail, and joined with
    ffmpeg's concat (no re-encode) under the original, uncut audio.
    """
    video, audio, output_path = Path(video), Path(audio), Path(output_path)
    duration = probe(audio, "audio").audio_duration
    points = cut_points(duration, silent_spans(load_audio(audio)), max_segment_s)
    edges = [0.0, *points, duration]
    with tempfile.TemporaryDirectory(prefix="latentsync-long-") as folder:
        folder = Path(folder)
        segments = []
        for index, (start, end) in enumerate(zip(edges, edges[1:])):
            segment_video, segment_audio = folder / f"video{index:03d}.mp4", folder / f"audio{index:03d}.wav"
            _cut(video, segment_video, start, end - start, video=True)
            _cut(audio, segment_audio, start, end - start, video=False)
            segments.append((segment_video, segment_audio))

        def lip_sync(segment):
            for attempt in range(1, attempts + 1):
                try:
                    return client.run(*segment, **params).path
                except Exception:
                    if attempt == attempts:
                        raise

        with ThreadPoolExecutor(max_workers=concurrency) as pool:
            outputs = list(pool.map(lip_sync, segments))
        _stitch(outputs, audio, output_path, folder)
    return output_path


def _cut(source: Path, target: Path, start: float, length: float, video: bool) -> None:
    """A frame-exact piece of the source (video re-encoded near-losslessly; audio as PCM)."""
    common = ["-ss", f"{start:.3f}", *input_args(source), "-t", f"{length:.3f}"]
    if video:
        run_ffmpeg(*common, "-map", "0:v:0", "-r", MODEL_FPS, "-c:v", "libx264", "-crf", 12, "-pix_fmt", "yuv420p", file_url(target), role="video", path=source)
    else:
        run_ffmpeg(*common, "-map", "0:a:0", "-c:a", "pcm_s16le", file_url(target), role="audio", path=source)


def _stitch(parts: list[Path], audio: Path, output_path: Path, folder: Path) -> None:
    """Concatenate the segments' video streams as they are and put the original audio under them.

    The servers' outputs are first copied (not re-encoded) into mp4 files of our own, opened only
    as an mp4 and only from the local disk: the concat demuxer would open each listed file as
    whatever it claims to be (an HLS playlist naming other files, say)."""
    own = []
    for index, part in enumerate(parts):
        own.append(folder / f"part{index:03d}.mp4")
        try:
            run_ffmpeg(*input_args(part, "mov"), "-map", "0:v:0", "-c", "copy", file_url(own[-1]), path=part)
        except MediaError as error:
            raise MediaError(f"The output of segment {index + 1} ({part.name}) is not an mp4 video: {error}") from None
    parts = own
    listing = folder / "parts.txt"
    quoted = (str(p.resolve()).replace("'", "'\\''") for p in parts)  # the concat list's quoting
    listing.write_text("".join(f"file '{path}'\n" for path in quoted))
    joined = folder / "joined.mp4"
    run_ffmpeg("-f", "concat", "-safe", 0, "-i", listing, "-map", "0:v", "-c", "copy", file_url(joined))  # our own segments
    partial = output_path.with_name(f".{output_path.name}.partial.mp4")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        run_ffmpeg(
            "-i", file_url(joined), *input_args(audio), "-map", "0:v", "-map", "1:a", "-c:v", "copy", "-c:a", "aac", "-b:a", "256k",
            "-shortest", "-movflags", "+faststart", file_url(partial), role="audio", path=audio,
        )
        partial.replace(output_path)
    finally:
        partial.unlink(missing_ok=True)
