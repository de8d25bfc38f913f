"""Generate the bad-input corpus: hostile and unusual inputs made from the demo clips with ffmpeg.

Each case is a (video, audio) pair plus the outcome we promise for it, written down in CASES:
either an output (its length and size, and what the report says was regenerated where) or one
clear error sentence (a pattern). Errors name the input ("The video input ...") and never a path.

The hostile cases are files whose content would make ffmpeg do more than decode them: playlists
and scripts that read other files of the machine (or wait forever on a "live" stream), also as
the speech the web app previews, image sequence patterns, files that hold more than their header
declares, change size midway or declare a frame rate that would stretch ffmpeg's time budget,
names that look like options, and options that are not numbers (NaN, infinity, a seed past the
random generator's range), refused before any file is read.

    python -m scripts.make_corpus tests/corpus
"""

import json
import struct
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from latentsync.config import shared_dir
from latentsync.media.ffmpeg import run_ffmpeg as ffmpeg

ASSETS = shared_dir() / "assets"
SIZE = "540:960"  # small enough to be quick, large enough for a face that passes the size filter
DASH_NEWLINE_VIDEO = "-face\nclip.mp4"  # a name ffmpeg could take for an option, with a line break
DASH_NEWLINE_AUDIO = "-i\nspeech.wav"


@dataclass
class Case:
    name: str
    video: str
    audio: str
    expect: str  # "output" or "error"
    error: str = ""  # a regular expression the one-sentence error matches
    duration: float | None = None  # expected output duration (s)
    size: tuple | None = None  # expected output (width, height)
    spans: tuple = ()  # the report's spans, (start s, end s, action) in order; () promises none
    lip_synced: bool = False  # some frames are regenerated (which ones is the face detector's business)
    one_of_two_faces: bool = False  # two faces side by side: exactly one of them is regenerated
    note: str = ""
    inputs: dict = field(default_factory=dict)  # service inputs (Cog names) besides the two files


def regenerated(seconds: float) -> tuple:
    """The spans of an output regenerated from its start to its end."""
    return ((0.0, seconds, "generated"),)


CASES = [
    Case("empty_file", "empty.mp4", "speech1.wav", "error", r"^The video input is empty \(0 bytes\)"),
    Case("truncated_mp4", "truncated.mp4", "speech1.wav", "error", r"^The video input (is not a readable video file|cannot be decoded|has no video stream)"),
    Case("text_named_mp4", "notes.mp4", "speech1.wav", "error", r"^The video input is not a readable video file"),
    Case("audio_only_as_video", "speech1.wav", "speech1.wav", "error", r"^The video input has no video stream"),
    Case("video_without_audio_as_audio", "face1.mp4", "face1_silent_track.mp4", "error", r"^The audio input has no audio stream",
         note="a video file is accepted as the audio source only if it has an audio track"),
    Case("still_image_as_video", "face.png", "speech1.wav", "output", duration=1.0, size=(540, 960), spans=regenerated(1.0), note="a talking photo"),
    Case("zero_second_audio", "face1.mp4", "empty.wav", "error", r"^The audio input (contains no audio samples|has no audio samples)"),
    Case("one_frame_video", "one_frame.mp4", "speech1.wav", "output", duration=1.0, size=(540, 960), spans=regenerated(1.0)),
    Case("declares_10_hours", "declares_10h.mp4", "speech1.wav", "output", duration=1.0, size=(540, 960), spans=regenerated(1.0),
         note="the container claims 10 h; the 1 s of real data is used (the hosted service also accepts it)"),
    Case("4k_60fps", "uhd60.mp4", "speech1.wav", "output", duration=1.0, size=(2160, 3840), spans=regenerated(1.0)),
    Case("rotated_phone_video", "rotated.mp4", "speech1.wav", "output", duration=1.0, size=(540, 960), spans=regenerated(1.0),
         note="rotation metadata honoured"),
    Case("variable_frame_rate", "vfr.mp4", "speech2.wav", "output", duration=2.0, size=(540, 960), spans=regenerated(2.0)),
    Case("odd_dimensions", "odd.mp4", "speech1.wav", "output", duration=1.0, size=(542, 962), spans=regenerated(1.0),
         note="padded to even sizes for yuv420p"),
    Case("yuv444_10bit", "yuv444_10bit.mp4", "speech1.wav", "output", duration=1.0, size=(540, 960), spans=regenerated(1.0)),
    Case("silent_audio", "face1.mp4", "silence1.wav", "output", duration=1.0, spans=((0.0, 1.0, "silence"),), note="nothing regenerated"),
    Case("pure_noise_audio", "face1.mp4", "noise1.wav", "output", duration=1.0, note="whether noise is speech is the voice detector's call"),
    Case("audio_10x_longer", "face_half.mp4", "speech5.wav", "output", duration=5.0, spans=regenerated(5.0), note="ping-pong of the video"),
    Case("video_10x_longer", "face5.mp4", "speech_half.wav", "output", duration=0.52, spans=regenerated(0.52), note="cut to the audio (13 frames)"),
    Case("no_face_anywhere", "scenery.mp4", "speech1.wav", "error", r"No usable face was found in any of the 25 frames checked"),
    Case("face_only_in_first_second", "face_then_scenery.mp4", "speech2.wav", "output", duration=2.0,
         spans=((0.0, 1.0, "generated"), (1.0, 2.0, "no_face"))),
    Case("two_equal_faces", "two_faces.mp4", "speech1.wav", "output", duration=1.0, size=(1080, 960), spans=regenerated(1.0), one_of_two_faces=True),
    Case("cartoon_face", "cartoon.mp4", "speech1.wav", "output", duration=1.0, lip_synced=True,
         note="a drawn face with brows, eyes and nose is found and lip-synced (MediaPipe loses it while its mouth is wide open)"),
    Case("profile_view", "profile.mp4", "speech1.wav", "error", r"No usable face was found",
         note="stand-in: the face squeezed to a sliver (no real profile footage here); no usable face, so a clear error"),
    Case("hostile_file_name", "a; rm -rf $(touch pwned) 'q\" ünï.mp4", "b; $(touch pwned2) 'x\".wav", "output", duration=1.0, spans=regenerated(1.0)),
    Case("missing_file", "does_not_exist.mp4", "speech1.wav", "error", r"^The video input was not found"),
]

# Hostile content: each is refused in one sentence or read as the one file it is.
HOSTILE = [
    Case("hls_playlist_reading_a_local_file", "playlist.mp4", "speech1.wav", "error", r"^The video input is an HLS playlist",
         note="lists a local .ts by absolute path; ffmpeg would decode it as this upload's frames"),
    Case("live_hls_that_would_hang", "live.mp4", "speech1.wav", "error", r"^The video input is an HLS playlist",
         note="no #EXT-X-ENDLIST and a day-long target duration: ffmpeg would wait for more segments"),
    Case("hls_playlist_as_audio", "face1.mp4", "playlist.m4a", "error", r"^The audio input is an HLS playlist"),
    Case("ffconcat_script", "concat.mp4", "speech1.wav", "error", r"^The video input is an ffconcat script",
         note="lists a local talking-head clip, which would come back lip-synced"),
    Case("image_sequence_pattern_name", "frame%03d.png", "speech1.wav", "output", duration=1.0, size=(540, 960), spans=regenerated(1.0),
         note="read as the one image of that name (a face), not as frame001.png... beside it (scenery: no face)"),
    Case("ts_declaring_less_than_it_holds", "face1.mp4", "repeated.ts", "output", duration=2.24, spans=regenerated(2.24),
         note="five 0.44 s MPEG-TS pieces end to end: the header declares 0.37 s of audio; all 2.2 s are used"),
    Case("midstream_resolution_change", "size_change.ts", "speech2.wav", "output", duration=2.0, size=(540, 960), spans=regenerated(2.0),
         note="1 s at 540x960, then 0.2 s of 8K (4320x7680) frames: every frame comes out at the checked 540x960"),
    Case("names_with_a_dash_and_a_newline", DASH_NEWLINE_VIDEO, DASH_NEWLINE_AUDIO, "output", duration=1.0, size=(540, 960), spans=regenerated(1.0)),
    Case("hls_playlist_as_speech_upload", "face1.mp4", "speech.m3u8", "error", r"^The audio input is (a \.m3u8 file|an HLS playlist)",
         note="lists a local clip with speech, outside any upload folder: neither the web app's preview nor a job may play it"),
    Case("live_hls_as_speech_upload", "face1.mp4", "live_speech.m3u8", "error", r"^The audio input is (a \.m3u8 file|an HLS playlist)",
         note="no #EXT-X-ENDLIST: an ffmpeg opening it would wait for more segments (Gradio's did, for 9.5 minutes)"),
    Case("live_hls_named_like_speech", "face1.mp4", "speech_playlist.mp3", "error", r"^The audio input is an HLS playlist",
         note="a live playlist behind an audio file's name: the content decides"),
    Case("declares_1000_fps", "fps1000.mp4", "speech1.wav", "output", duration=1.0, size=(540, 960), lip_synced=True,
         note="0.2 s at 1000 fps: decoded as any other (ffmpeg's time budget is capped, whatever the rate declared)"),
    Case("nan_guidance_scale", "face1.mp4", "speech1.wav", "error", r"^guidance_scale must be a finite number", inputs={"guidance_scale": float("nan")}),
    Case("infinite_seed", "face1.mp4", "speech1.wav", "error", r"^seed must be a finite number", inputs={"seed": float("inf")}),
    Case("seed_past_the_generators_range", "face1.mp4", "speech1.wav", "error", r"^seed must be between -1 and 4294967295", inputs={"seed": 1e300}),
]
CASES += HOSTILE


def clip(out: Path, seconds: float, start: float = 1.0, extra=()) -> Path:
    ffmpeg("-ss", start, "-i", ASSETS / "demo1_video.mp4", "-t", seconds, "-vf", f"scale={SIZE}", "-c:v", "libx264", "-crf", 14, "-c:a", "aac", *extra, out)
    return out


def speech(out: Path, seconds: float) -> Path:
    ffmpeg("-ss", 1.0, "-i", ASSETS / "demo1_audio.wav", "-t", seconds, out)
    return out


def declare_ten_hours(path: Path) -> None:
    """Rewrite the movie header's duration field in place (1 s of data claims 10 h)."""
    data = bytearray(path.read_bytes())
    at = data.find(b"mvhd")
    version = data[at + 4]
    timescale_at = at + (20 if version == 1 else 12)
    (timescale,) = struct.unpack(">I", data[timescale_at : timescale_at + 4])
    if version == 1:
        data[timescale_at + 4 : timescale_at + 12] = struct.pack(">Q", 36000 * timescale)
    else:
        data[timescale_at + 4 : timescale_at + 8] = struct.pack(">I", min(36000 * timescale, 2**32 - 1))
    path.write_bytes(bytes(data))


def hls_playlist(path: Path, segment: Path, live: bool = False) -> Path:
    """An HLS playlist (whatever `path`'s name) listing `segment`, a local file, by absolute path.
    A live one has no end and a day-long target duration: a player waits for more segments."""
    lines = ["#EXTM3U", "#EXT-X-VERSION:3", f"#EXT-X-TARGETDURATION:{86400 if live else 2}", "#EXT-X-MEDIA-SEQUENCE:0", "#EXTINF:1.0,", str(segment.resolve())]
    path.write_text("\n".join(lines + ([] if live else ["#EXT-X-ENDLIST"])) + "\n")
    return path


def ffconcat_script(path: Path, listed: str) -> Path:
    """An ffconcat script (whatever `path`'s name) listing a local file: a name beside it passes
    ffmpeg's own "safe" check."""
    path.write_text(f"ffconcat version 1.0\nfile '{listed}'\n")
    return path


def repeated_ts(path: Path, segment: Path, copies: int) -> Path:
    """`copies` MPEG-TS segments end to end, each with the same timestamps: the header's duration
    is one segment's, the audio holds all of them."""
    path.write_bytes(segment.read_bytes() * copies)
    return path


def resolution_change(path: Path, seconds: float, then_size: str, then_seconds: float) -> Path:
    """An MPEG-TS stream of the demo at 540x960, continuing at `then_size` (timestamps run on)."""
    first, second = path.with_suffix(".part1.ts"), path.with_suffix(".part2.ts")
    ffmpeg("-ss", 1.0, "-i", ASSETS / "demo1_video.mp4", "-t", seconds, "-vf", f"scale={SIZE}", "-c:v", "libx264", "-c:a", "aac", "-f", "mpegts", first)
    ffmpeg("-ss", 1.0 + seconds, "-i", ASSETS / "demo1_video.mp4", "-t", then_seconds, "-vf", f"scale={then_size}", "-c:v", "libx264", "-preset", "ultrafast",
           "-c:a", "aac", "-output_ts_offset", seconds, "-f", "mpegts", second)
    path.write_bytes(first.read_bytes() + second.read_bytes())
    first.unlink()
    second.unlink()
    return path


def hostile(folder: Path) -> None:
    """The inputs of the hostile-content cases (they refer to face1.mp4, built before)."""
    f = folder
    ffmpeg("-i", f / "face1.mp4", "-c", "copy", "-f", "mpegts", f / "face1.ts")  # a local media file at a known path
    hls_playlist(f / "playlist.mp4", f / "face1.ts")
    hls_playlist(f / "playlist.m4a", f / "face1.ts")
    hls_playlist(f / "live.mp4", f / "face1.ts", live=True)
    hls_playlist(f / "speech.m3u8", f / "face1.ts")  # face1.ts carries the clip's own speech
    hls_playlist(f / "live_speech.m3u8", f / "face1.ts", live=True)
    hls_playlist(f / "speech_playlist.mp3", f / "face1.ts", live=True)
    ffconcat_script(f / "concat.mp4", "face1.mp4")
    ffmpeg("-i", f / "face1.mp4", "-frames:v", 1, "-update", 1, f / "frame%03d.png")  # the one image named with a pattern
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=540x960:r=25:d=1", f / "frame%03d.png")  # frame001.png...: no face
    ffmpeg("-ss", 1.0, "-i", ASSETS / "demo1_video.mp4", "-t", 0.4, "-vf", f"scale={SIZE}", "-c:v", "libx264", "-c:a", "aac", "-f", "mpegts", f / "piece.ts")
    repeated_ts(f / "repeated.ts", f / "piece.ts", 5)
    resolution_change(f / "size_change.ts", 1.0, "4320:7680", 0.2)
    clip(f / "fps1000.mp4", 0.2, extra=("-r", 1000))
    (f / DASH_NEWLINE_VIDEO).write_bytes((f / "face1.mp4").read_bytes())
    (f / DASH_NEWLINE_AUDIO).write_bytes((f / "speech1.wav").read_bytes())


def cartoon(out: Path) -> None:
    """A drawn face: skin ellipse, eyes, brows, nose and mouth on a flat background."""
    frames = out.with_suffix(".raw")
    with open(frames, "wb") as raw:
        for i in range(25):
            image = np.full((960, 540, 3), (90, 160, 220), np.uint8)
            cv2.ellipse(image, (270, 420), (150, 200), 0, 0, 360, (200, 220, 250), -1)
            for x in (215, 325):
                cv2.circle(image, (x, 380), 22, (255, 255, 255), -1)
                cv2.circle(image, (x, 380), 10, (40, 40, 40), -1)
                cv2.line(image, (x - 30, 335), (x + 30, 330), (40, 40, 60), 8)
            cv2.line(image, (270, 400), (255, 470), (120, 120, 180), 5)
            cv2.ellipse(image, (270, 520), (60, 15 + (i % 5) * 5), 0, 0, 360, (60, 40, 160), -1)
            raw.write(cv2.cvtColor(image, cv2.COLOR_BGR2RGB).tobytes())
    ffmpeg("-f", "rawvideo", "-pix_fmt", "rgb24", "-s", "540x960", "-r", 25, "-i", frames, "-c:v", "libx264", "-pix_fmt", "yuv420p", out)
    frames.unlink()


def build(folder: Path) -> Path:
    """Write every input the cases name into `folder` and the cases as cases.json."""
    folder.mkdir(parents=True, exist_ok=True)
    f = folder
    speech(f / "speech1.wav", 1.0)
    speech(f / "speech2.wav", 2.0)
    speech(f / "speech5.wav", 5.0)
    speech(f / "speech_half.wav", 0.52)
    (f / "empty.mp4").write_bytes(b"")
    (f / "notes.mp4").write_text("These are meeting notes, not a video.\n" * 50)
    face1 = clip(f / "face1.mp4", 1.0)
    clip(f / "face5.mp4", 5.0)
    clip(f / "face_half.mp4", 0.5)
    fast = clip(f / "faststart.mp4", 1.0, extra=("-movflags", "+faststart"))
    data = fast.read_bytes()
    moov = data.find(b"moov")
    (f / "truncated.mp4").write_bytes(data[: moov + 200])  # cut inside the moov atom
    ffmpeg("-i", face1, "-an", "-c:v", "copy", f / "face1_silent_track.mp4")
    ffmpeg("-i", face1, "-frames:v", 1, f / "face.png")
    ffmpeg("-i", face1, "-frames:v", 1, "-c:v", "libx264", f / "one_frame.mp4")
    ffmpeg("-i", face1, "-c", "copy", f / "declares_10h.mp4")
    declare_ten_hours(f / "declares_10h.mp4")
    ffmpeg("-ss", 1.0, "-i", ASSETS / "demo1_video.mp4", "-t", 1, "-vf", "scale=2160:3840,fps=60", "-c:v", "libx264", "-preset", "ultrafast", "-crf", 20, "-an", f / "uhd60.mp4")
    ffmpeg("-i", face1, "-vf", "transpose=1", "-c:v", "libx264", "-crf", 14, f / "stored_sideways.mp4")  # as a phone stores it
    ffmpeg("-i", f / "stored_sideways.mp4", "-c", "copy", "-metadata:s:v:0", "rotate=90", f / "rotated.mp4")
    ffmpeg("-ss", 1.0, "-i", ASSETS / "demo1_video.mp4", "-t", 2, "-vf", f"scale={SIZE},setpts='if(lt(N,25),PTS,PTS+0.02*(N-25))'",
           "-fps_mode", "vfr", "-c:v", "libx264", "-crf", 14, f / "vfr.mp4")
    ffmpeg("-i", face1, "-vf", "scale=541:961", "-c:v", "libx264", "-pix_fmt", "yuv444p", f / "odd.mp4")
    ffmpeg("-i", face1, "-c:v", "libx264", "-pix_fmt", "yuv444p10le", f / "yuv444_10bit.mp4")
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=44100:cl=stereo", "-t", 1, f / "silence1.wav")
    ffmpeg("-f", "lavfi", "-i", "anoisesrc=r=16000:a=0.3:c=white", "-t", 1, f / "noise1.wav")
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", 0, f / "empty.wav")
    ffmpeg("-f", "lavfi", "-i", "testsrc2=s=540x960:r=25:d=1", "-c:v", "libx264", f / "scenery.mp4")
    ffmpeg("-i", face1, "-f", "lavfi", "-i", "testsrc2=s=540x960:r=25:d=1", "-filter_complex", "[0:v][1:v]concat=n=2:v=1:a=0[v]", "-map", "[v]", "-c:v", "libx264", f / "face_then_scenery.mp4")
    ffmpeg("-i", face1, "-i", face1, "-filter_complex", "[0:v][1:v]hstack[v]", "-map", "[v]", "-c:v", "libx264", "-crf", 14, f / "two_faces.mp4")
    cartoon(f / "cartoon.mp4")
    # A real profile cannot be made from frontal footage; squeezing the face to a sliver stands in.
    ffmpeg("-i", face1, "-vf", "scale=120:960,pad=540:960:210:0", "-c:v", "libx264", f / "profile.mp4")
    (f / "a; rm -rf $(touch pwned) 'q\" ünï.mp4").write_bytes(face1.read_bytes())
    (f / "b; $(touch pwned2) 'x\".wav").write_bytes((f / "speech1.wav").read_bytes())
    hostile(f)
    (f / "cases.json").write_text(json.dumps([asdict(case) for case in CASES], indent=2))
    return folder


if __name__ == "__main__":
    print(build(Path(sys.argv[1] if len(sys.argv) > 1 else "tests/corpus")))
