"""Score the lip sync of any video: SyncNet's confidence (LSE-C), distance (LSE-D) and best audio
offset for each face track, the numbers the official `eval/eval_sync_conf.sh` reports.

    python -m scripts.eval_sync output.mp4 [--audio speech.wav] [--json]

Use it to compare lip-sync outputs (ours, the official's, a commercial API's) on one scale: the
scale of our reports' sync confidence. Faces are found and followed with our detector and tracks
(InsightFace when its weights are in the weights folder, else MediaPipe) and aligned as the
pipeline aligns them; SyncNet v2 weights come from the weights folder (`python -m
scripts.download_weights` fetches them) or --syncnet_path. The audio is the video's own track
unless --audio names another file. Higher LSE-C and lower LSE-D are better; offset 0 is in sync.
"""

import argparse
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from latentsync.config import AUDIO_SAMPLE_RATE, DEFAULT_VERSION, MODEL_FPS
from latentsync.face.align import FaceAligner
from latentsync.face.detect import create_detector
from latentsync.face.track import Track, build_tracks
from latentsync.media.decode import load_audio, read_frames
from latentsync.media.probe import probe_video
from latentsync.sync import FRAMES_PER_SAMPLE, INPUT_SIZE, SyncNetScorer, confidence_from_distances
from latentsync.logs import configure_logging, native_stderr_captured, warm_up
from latentsync.weights import load_manifest, model_files

MIN_SECONDS = 2.0  # shorter clips, and face tracks, give no stable score
ALIGN_RESOLUTION = 256  # faces are aligned on the model's template, then resized to SyncNet's 224 px
PIECE_FRAMES = 60 * MODEL_FPS  # longer tracks are scored in pieces of 60 s, to bound memory


class EvalError(ValueError):
    """The video cannot be scored; the message says why."""


@dataclass
class TrackScore:
    track: int
    start: float  # seconds
    end: float
    frames: int
    lse_c: float  # sync confidence: higher is better
    lse_d: float  # distance at the best offset: lower is better
    offset: int  # best audio offset in frames; 0 is in sync


def score_video(video: Path, audio: Path, scorer: SyncNetScorer, detector, fps: float = MODEL_FPS) -> list[TrackScore]:
    """The sync scores of every face track of `video` (at least MIN_SECONDS long) against `audio`."""
    info = probe_video(video, role=None)
    if info.duration < MIN_SECONDS:
        raise EvalError(f"{video.name} is {info.duration:.1f} s long; sync scores need at least {MIN_SECONDS:g} s of video.")
    samples = load_audio(audio, AUDIO_SAMPLE_RATE, role=None)
    if len(samples) < MIN_SECONDS * AUDIO_SAMPLE_RATE:
        raise EvalError(f"The audio of {audio.name} is {len(samples) / AUDIO_SAMPLE_RATE:.1f} s long; sync scores need at least {MIN_SECONDS:g} s.")
    detections = [detector.detect(frame) for frame in read_frames(video, fps, info=info, role=None)]
    tracks = [track for track in build_tracks(detections) if len(track.faces) >= MIN_SECONDS * fps]
    if not tracks:
        raise EvalError(f"No face was followed for {MIN_SECONDS:g} s or more in {video.name} ({len(detections)} frames checked); nothing to score.")
    pieces = _scored_pieces(video, info, fps, tracks, samples, scorer)
    scores = []
    for track in tracks:
        weighted = [(score.distances, windows) for track_id, score, windows in pieces if track_id == track.id]
        if not weighted:
            continue  # the audio ends before this track starts
        distances = sum(d * n for d, n in weighted) / sum(n for _, n in weighted)
        confidence, offset, minimum = confidence_from_distances(distances)
        scores.append(TrackScore(track.id, round(track.first / fps, 3), round((track.last + 1) / fps, 3), len(track.faces), round(confidence, 3), round(minimum, 3), offset))
    if not scores:
        raise EvalError(f"The audio of {audio.name} ends before any face track of {video.name} starts.")
    return scores


def _scored_pieces(video: Path, info, fps: float, tracks: list[Track], samples: np.ndarray, scorer: SyncNetScorer) -> list:
    """(track id, SyncScore, windows) per piece of each track, from one more pass over the video.

    Each track's aligned faces (smoothed along the track, as the pipeline does) are gathered up
    to PIECE_FRAMES at a time and scored against the audio of the same frames.
    """
    audio_frames = int(len(samples) / AUDIO_SAMPLE_RATE * fps)
    aligners = {track.id: FaceAligner(ALIGN_RESOLUTION) for track in tracks}
    pieces, gathering = [], {}  # gathering: track id -> (first frame, faces) of the piece being gathered

    def score(track_id: int) -> None:
        first, faces = gathering.pop(track_id)
        audio = samples[round(first / fps * AUDIO_SAMPLE_RATE) : round((first + len(faces)) / fps * AUDIO_SAMPLE_RATE)]
        result = scorer.score(np.stack(faces), audio, fps=fps)
        if result is not None:
            pieces.append((track_id, result, len(faces) - FRAMES_PER_SAMPLE))  # the windows it averaged over

    for index, frame in enumerate(read_frames(video, fps, count=audio_frames, info=info, role=None)):
        for track in tracks:
            if index not in track.faces:
                continue
            aligner = aligners[track.id]
            crop = aligner.model_input(frame, aligner.affine(track.faces[index].landmarks3))
            _, faces = gathering.setdefault(track.id, (index, []))
            faces.append(cv2.resize(crop, (INPUT_SIZE, INPUT_SIZE), interpolation=cv2.INTER_AREA))
            if len(faces) == PIECE_FRAMES or index == track.last:
                score(track.id)
    for track_id in list(gathering):  # tracks the audio cut short
        score(track_id)
    return pieces


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m scripts.eval_sync", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("video")
    parser.add_argument("--audio", default=None, help="the speech to score against (default: the video's own audio track)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of lines of text")
    parser.add_argument("--syncnet_path", default=None, help="syncnet_v2.model (default: the weights folder's)")
    parser.add_argument("--weights_dir", default=None, help="weights folder (default: $LATENTSYNC_WEIGHTS_DIR or checkpoints/)")
    parser.add_argument("--face_detector", choices=["auto", "insightface", "mediapipe"], default="auto")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu, cuda, cuda:1 (default: cuda when available)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    video = Path(args.video)
    audio = Path(args.audio) if args.audio else video
    files = model_files(DEFAULT_VERSION, args.weights_dir, load_manifest())
    try:
        for path in (video, audio):
            if not path.is_file():
                raise EvalError(f"File not found: {path}.")
        scorer = SyncNetScorer(args.syncnet_path or files.syncnet, device=args.device)
        with native_stderr_captured():
            detector = create_detector(args.face_detector, model_root=files.insightface_root, device=args.device)
            warm_up(detector)
        scores = score_video(video, audio, scorer, detector)
    except (ValueError, FileNotFoundError) as error:  # EvalError, MediaError, missing weights
        print(f"error: {error}", file=sys.stderr)
        return 1
    frames = sum(s.frames for s in scores)
    overall = {"lse_c": round(sum(s.lse_c * s.frames for s in scores) / frames, 3), "lse_d": round(sum(s.lse_d * s.frames for s in scores) / frames, 3)}
    if args.json:
        print(json.dumps({"video": str(video), "audio": str(audio), "tracks": [asdict(s) for s in scores], **overall}, indent=2))
        return 0
    print(f"{video.name}, scored against {'its own audio' if audio == video else audio.name}")
    for s in scores:
        print(f"track {s.track}  {s.start:7.2f}-{s.end:7.2f} s  {s.frames:5d} frames  LSE-C {s.lse_c:6.3f}  LSE-D {s.lse_d:6.3f}  offset {s.offset:+d}")
    print(f"overall (frame-weighted)  LSE-C {overall['lse_c']:.3f}  LSE-D {overall['lse_d']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
