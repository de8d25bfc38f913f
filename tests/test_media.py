"""Media through the real ffmpeg binary: probing, streaming video decode and encode, audio decoding."""

import itertools
import os
import time

import numpy as np
import psutil
import pytest
import whisper

from latentsync.config import AUDIO_SAMPLE_RATE as SR
from latentsync.media.decode import AudioError, frames_in_order, load_audio, read_frames
from latentsync.media.encode import VideoWriter
from latentsync.media.ffmpeg import Process, reason, run, time_limit
from latentsync.media.probe import MediaError, probe, probe_video
from latentsync.validation import check_inputs
from scripts import make_corpus
from tests.conftest import ASSETS
from tests.media import ffmpeg


@pytest.fixture(scope="module")
def clips(tmp_path_factory, assets):
    """Small clips derived from the demo: 2 s at 30 and 24 fps, 360x640 at 25 fps."""
    folder = tmp_path_factory.mktemp("clips")
    source = assets / "demo1_video.mp4"
    for name, fps in (("c30.mp4", 30), ("c24.mp4", 24), ("c25.mp4", 25)):
        ffmpeg("-i", source, "-t", 2, "-vf", f"scale=360:640,fps={fps}", "-c:v", "libx264", "-g", 12, "-c:a", "aac", folder / name)
    return folder


def test_probe_reads_the_demo(assets):
    info = probe(assets / "demo1_video.mp4")
    assert (info.width, info.height, info.fps) == (1080, 1920, 25.0)
    assert info.duration == pytest.approx(10.0, abs=0.05) and info.has_audio and info.sample_rate == 44100


def test_probe_errors_are_clear(tmp_path, assets):
    with pytest.raises(MediaError, match="File not found: missing.mp4"):
        probe(tmp_path / "missing.mp4")
    empty = tmp_path / "empty.mp4"
    empty.touch()
    with pytest.raises(MediaError, match="empty"):
        probe(empty)
    text = tmp_path / "text.mp4"
    text.write_text("hello, I am not a video\n" * 10)
    with pytest.raises(MediaError, match="not a readable audio or video file"):
        probe(text)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes((assets / "demo1_video.mp4").read_bytes()[:20000])
    with pytest.raises(MediaError):
        probe_video(truncated)
    with pytest.raises(MediaError, match="has no video stream"):
        probe_video(assets / "demo1_audio.wav")


@pytest.mark.parametrize("name,fps", [("c30.mp4", 30), ("c24.mp4", 24), ("c25.mp4", 25)])
def test_frame_counts_at_the_model_rate_and_the_source_rate(clips, name, fps):
    at_25 = sum(1 for _ in read_frames(clips / name, 25))
    at_source = sum(1 for _ in read_frames(clips / name, fps))
    assert at_25 == 50
    assert at_source == 2 * fps


def test_seeking_returns_the_frames_a_full_decode_does(clips):
    path = clips / "c30.mp4"  # resampled 30 -> 25 fps, keyframes every 12 source frames
    full = [frame.copy() for frame in read_frames(path, 25)]
    for start in (1, 17, 33, 49):
        part = list(read_frames(path, 25, start=start, count=3))
        assert all(np.array_equal(a, b) for a, b in zip(part, full[start : start + 3]))
    order = [40, 41, 42, 42, 41, 40, 39, 5, 6, 6, 7, 49, 0]
    assert all(np.array_equal(frame, full[i]) for frame, i in zip(frames_in_order(path, 25, order), order))


def test_rotation_metadata_is_honoured(tmp_path, clips):
    rotated = tmp_path / "rotated.mp4"
    ffmpeg("-i", clips / "c25.mp4", "-c", "copy", "-metadata:s:v:0", "rotate=90", rotated)
    info = probe(rotated)
    assert info.rotation in (90, 270) and (info.width, info.height) == (640, 360)
    frame = next(read_frames(rotated, 25))
    assert frame.shape == (360, 640, 3)


def test_odd_dimensions_round_trip(tmp_path, clips):
    odd = tmp_path / "odd.mp4"
    ffmpeg("-i", clips / "c25.mp4", "-vf", "scale=361:641", "-c:v", "libx264", "-pix_fmt", "yuv444p", odd)
    frames = list(read_frames(odd, 25))
    assert frames[0].shape == (641, 361, 3)
    out = tmp_path / "out.mp4"
    with VideoWriter(out, 361, 641, 25) as writer:
        for frame in frames:
            writer.write(frame)
    info = probe(out)
    assert (info.width, info.height) == (362, 642)  # padded by one pixel to even sizes for yuv420p
    decoded = next(read_frames(out, 25))
    assert np.abs(decoded[:641, :361].astype(int) - frames[0].astype(int)).mean() < 3


def write_clip(path, frames, fps=25, audio=None):
    with VideoWriter(path, frames[0].shape[1], frames[0].shape[0], fps, audio_path=audio) as writer:
        for frame in frames:
            writer.write(frame)
    return probe(path)


@pytest.mark.parametrize("seconds", [1.0, 4.0])
def test_writer_cuts_or_pads_the_original_audio(tmp_path, clips, assets, seconds):
    frames = [frame.copy() for frame in read_frames(clips / "c25.mp4", 25)]
    frames = (frames * 3)[: int(seconds * 25)]  # 2 s of source: cut to 1 s or looped to 4 s
    for audio in (assets / "demo1_audio.wav", assets / "demo1_video.mp4"):  # PCM is encoded, AAC copied
        info = write_clip(tmp_path / f"out{seconds}.mp4", frames, audio=audio)
        source = probe(audio)
        assert info.video_codec == "h264" and info.pix_fmt == "yuv420p" and info.fps == 25
        assert info.audio_codec == "aac" and info.sample_rate == source.sample_rate and info.channels == source.channels
        assert info.duration == pytest.approx(seconds, abs=0.05)
        assert info.audio_duration == pytest.approx(seconds, abs=0.05)


def test_writer_pads_short_audio_with_silence(tmp_path, clips):
    short = tmp_path / "short.wav"
    ffmpeg("-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000:duration=0.5", short)
    frames = [frame.copy() for frame in read_frames(clips / "c25.mp4", 25)]
    out = tmp_path / "padded.mp4"
    info = write_clip(out, frames, audio=short)
    assert info.audio_duration == pytest.approx(2.0, abs=0.05)
    pcm = run(["ffmpeg", "-v", "error", "-i", str(out), "-f", "s16le", "-ac", "1", "-ar", "8000", "-"], timeout=60).stdout
    samples = np.frombuffer(pcm, np.int16).astype(float)
    assert np.abs(samples[: 8000 // 4]).mean() > 1000 and np.abs(samples[8000 :]).max() < 50  # tone, then silence


def test_writer_leaves_nothing_behind_on_error(tmp_path):
    out = tmp_path / "out.mp4"
    with pytest.raises(RuntimeError):
        with VideoWriter(out, 64, 64, 25) as writer:
            writer.write(np.zeros((64, 64, 3), np.uint8))
            raise RuntimeError("the model failed")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="Frame must be uint8"):
        with VideoWriter(out, 64, 64, 25) as writer:
            writer.write(np.zeros((32, 64, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_hostile_file_names_are_just_names(tmp_path, clips):
    weird = tmp_path / "-rf ; echo $(touch pwned) 'quote\" ünï cödé.mp4"
    weird.write_bytes((clips / "c25.mp4").read_bytes())
    frames = list(read_frames(weird, 25))
    assert len(frames) == 50
    out = tmp_path / "out ; $(touch pwned2).mp4"
    write_clip(out, frames[:5], audio=weird)
    assert out.exists() and not (tmp_path / "pwned").exists() and not (tmp_path / "pwned2").exists()


def test_reading_does_not_accumulate_memory(tmp_path, clips):
    long_clip = tmp_path / "long.mp4"
    ffmpeg("-stream_loop", 14, "-i", clips / "c25.mp4", "-c", "copy", long_clip)  # 30 s
    process = psutil.Process()
    rss = []
    for index, frame in enumerate(read_frames(long_clip, 25)):
        if index in (50, 700):
            rss.append(process.memory_info().rss)
    assert index >= 740
    assert rss[1] - rss[0] < 20e6


# ---- decoding -----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix,codec_args", [
    (".mp3", ["-c:a", "libmp3lame"]),
    (".m4a", ["-c:a", "aac"]),
    (".ogg", ["-c:a", "libvorbis"]),
    (".opus", ["-c:a", "libopus"]),
    (".flac", ["-c:a", "flac"]),
    (".wav", ["-ar", "44100", "-ac", "2"]),  # resampled and mixed down on the way back
])
def test_load_audio_decodes_common_formats(tmp_path, assets, suffix, codec_args):
    demo1 = load_audio(assets / "demo1_audio.wav")
    path = tmp_path / f"speech{suffix}"
    ffmpeg("-i", assets / "demo1_audio.wav", *codec_args, path)
    samples = load_audio(path)
    assert samples.dtype == np.float32 and len(samples) == len(demo1)
    assert np.array_equal(samples, whisper.load_audio(str(path)))  # Whisper's arithmetic: features stay at parity
    correlation = np.dot(samples, demo1) / np.linalg.norm(samples) / np.linalg.norm(demo1)
    assert correlation > 0.99  # the same speech, in time
    if suffix == ".flac":
        assert np.array_equal(samples, demo1)  # lossless at the same rate: sample for sample


def test_load_audio_reads_the_track_of_a_video_and_resamples(assets):
    samples = load_audio(assets / "demo1_video.mp4")
    assert len(samples) / SR == pytest.approx(10.0, abs=0.05)
    assert np.array_equal(samples, whisper.load_audio(str(assets / "demo1_video.mp4")))
    assert len(load_audio(assets / "demo1_audio.wav", sample_rate=8000)) == 9.6 * 8000


def test_load_audio_errors_are_clear(tmp_path):
    with pytest.raises(AudioError, match="^The audio input was not found: pass an existing file.$"):
        load_audio(tmp_path / "missing.wav")
    with pytest.raises(AudioError, match="^File not found: missing.wav.$"):
        load_audio(tmp_path / "missing.wav", role=None)  # a library caller's own file: named
    with pytest.raises(AudioError, match="was not found"):
        load_audio(tmp_path)  # a folder
    video_only = tmp_path / "no_audio.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=c=black:s=64x64:d=1", video_only)
    with pytest.raises(AudioError, match="^The audio input has no audio stream; pass a file with an audio track.$"):
        load_audio(video_only)
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all")
    with pytest.raises(AudioError, match=r"^The audio input is not a readable audio or video file \(Invalid data found when processing input\).$"):
        load_audio(text)
    empty = tmp_path / "empty.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono", "-t", "0", empty)
    with pytest.raises(AudioError, match="^The audio input contains no audio samples"):
        load_audio(empty)
    odd_name = tmp_path / "-i http:x; rm -rf ~.wav"  # read as a file name, never as options or a URL
    odd_name.write_bytes((tmp_path / "empty.wav").read_bytes())
    with pytest.raises(AudioError, match="contains no audio samples"):
        load_audio(odd_name)


# ---- hostile content: allow-lists, limits on decoded data, time limits --------------------------


@pytest.fixture(scope="module")
def hostile(tmp_path_factory, clips):
    """The corpus' hostile files, made by its own builders (scripts/make_corpus.py)."""
    folder = tmp_path_factory.mktemp("hostile")
    ffmpeg("-i", clips / "c25.mp4", "-c", "copy", "-f", "mpegts", folder / "local.ts")
    make_corpus.hls_playlist(folder / "playlist.mp4", folder / "local.ts")
    make_corpus.hls_playlist(folder / "live.mp4", folder / "local.ts", live=True)
    (folder / "clip.mp4").write_bytes((clips / "c25.mp4").read_bytes())
    make_corpus.ffconcat_script(folder / "concat.mp4", "clip.mp4")
    ffmpeg("-i", clips / "c25.mp4", "-t", 0.4, "-c:v", "libx264", "-c:a", "aac", "-f", "mpegts", folder / "piece.ts")
    make_corpus.repeated_ts(folder / "repeated.ts", folder / "piece.ts", 5)
    return folder


@pytest.mark.parametrize("name,kind", [("playlist.mp4", "an HLS playlist"), ("live.mp4", "an HLS playlist"), ("concat.mp4", "an ffconcat script")])
def test_playlists_and_scripts_are_refused_by_every_reader(hostile, name, kind):
    path = hostile / name
    started = time.time()
    for role, read in (("video", lambda: probe_video(path)), ("video", lambda: next(read_frames(path, 25))), ("audio", lambda: load_audio(path))):
        with pytest.raises(MediaError) as raised:
            read()
        message = str(raised.value)
        assert message.startswith(f"The {role} input is {kind}, which can refer to other files and is not accepted; pass ")
        assert str(hostile) not in message and name not in message
    assert time.time() - started < 20  # the live playlist is refused, not waited on


def test_a_pattern_name_is_one_image_not_a_sequence(tmp_path, clips):
    frames = [frame.copy() for frame in read_frames(clips / "c25.mp4", 25)]
    named = tmp_path / "frame%03d.png"
    ffmpeg("-i", clips / "c25.mp4", "-vf", "negate", "-frames:v", 1, "-update", 1, named)
    ffmpeg("-i", clips / "c25.mp4", tmp_path / "frame%03d.png")  # frame001.png... beside it: the clip itself
    info = probe_video(named)
    decoded = list(read_frames(named, 25, info=info))
    assert info.demuxer == "image2" and len(decoded) == 1
    assert np.abs(decoded[0].astype(int) - (255 - frames[0]).astype(int)).mean() < 4  # the negated still, not the sequence


def test_decoding_stops_at_the_limit_whatever_the_header_declares(hostile):
    path = hostile / "repeated.ts"  # five 0.4 s pieces with the same timestamps
    declared = probe(path).audio_duration
    samples = load_audio(path)
    assert declared < 0.5 and len(samples) / SR > 1.8  # the header declares a fifth of it
    with pytest.raises(AudioError, match=r"^The audio input holds more than 1 s of audio, the limit; split it into parts.$"):
        load_audio(path, max_seconds=1.0)
    assert len(load_audio(path, max_seconds=5.0)) == len(samples)
    long_clip = hostile / "long.mp4"
    ffmpeg("-stream_loop", 3, "-i", hostile / "clip.mp4", "-c", "copy", long_clip)  # 8 s
    frames = read_frames(long_clip, 25, max_seconds=2.0)
    assert sum(1 for _ in itertools.islice(frames, 50)) == 50  # up to the limit, frames come
    with pytest.raises(MediaError, match=r"^The video input holds more than 2 s of video, the limit; split it into parts.$"):
        next(frames)
    assert len(list(frames_in_order(long_clip, 25, [49, 48, 10], max_seconds=2.0))) == 3


def test_frames_keep_the_probed_size_when_the_stream_changes_size(tmp_path, monkeypatch):
    monkeypatch.setattr(make_corpus, "ASSETS", ASSETS)
    path = make_corpus.resolution_change(tmp_path / "size_change.ts", 1.0, "1080:1920", 0.4)
    info = probe_video(path)
    frames = list(read_frames(path, 25, info=info))
    assert (info.width, info.height) == (540, 960) and len(frames) >= 34
    assert {frame.shape for frame in frames} == {(960, 540, 3)}
    assert np.abs(frames[-1].astype(int) - frames[-2].astype(int)).mean() < 20  # real pictures, not misaligned bytes


def test_names_with_a_dash_and_a_newline_are_just_names(tmp_path, clips):
    video, audio = tmp_path / "-i\nclip.mp4", tmp_path / "-f\nlavfi.wav"
    video.write_bytes((clips / "c25.mp4").read_bytes())
    ffmpeg("-i", clips / "c25.mp4", "-vn", audio)
    assert sum(1 for _ in read_frames(video, 25)) == 50
    assert len(load_audio(audio)) / SR == pytest.approx(2.0, abs=0.05)
    out = tmp_path / "-y\nout.mp4"
    write_clip(out, [np.zeros((64, 64, 3), np.uint8)] * 5, audio=audio)
    assert probe(out).has_audio


def test_errors_name_the_input_never_its_path(tmp_path):
    upload = tmp_path / "tmp9xhfhigsfile.mp4"
    upload.write_text("not a video\n" * 20)
    for read in (lambda: probe_video(upload), lambda: next(read_frames(upload, 25)), lambda: load_audio(upload)):
        with pytest.raises(MediaError) as raised:
            read()
        assert str(raised.value).startswith(("The video input ", "The audio input ")) and "tmp9xhfhigsfile" not in str(raised.value)
    assert reason(f"[mov,mp4 @ 0x55d1] file:{upload}: Invalid data", [upload]) == "Invalid data"


def test_a_stalled_ffmpeg_is_killed_when_its_time_budget_is_spent(tmp_path):
    fifo = tmp_path / "never_written"
    os.mkfifo(fifo)  # ffmpeg blocks opening it: a stand-in for any input that never delivers
    started = time.time()
    with pytest.raises(MediaError, match=r"^The video input could not be processed within 2 s \(ffmpeg was stopped\); re-encode it"):
        with Process(["ffmpeg", "-nostdin", "-i", f"file:{fifo}", "-f", "rawvideo", "pipe:"], budget=2.0, role="video", stdout=True) as process:
            process.read(1000)
    assert time.time() - started < 15 and process.returncode == -9  # killed, and reaped
    with pytest.raises(MediaError, match=r"^The audio input could not be processed within 1 s"):
        run(["ffmpeg", "-nostdin", "-i", f"file:{fifo}", "-f", "null", "-"], timeout=1.0, role="audio")
    assert not [p for p in psutil.Process().children(recursive=True) if p.name() == "ffmpeg"]


def test_the_time_budget_is_capped_whatever_frame_rate_a_file_declares():
    assert time_limit(10.0, 540, 960, 25.0) == pytest.approx(60.0 + 10.0 * (1.0 + 540 * 960 * 25.0 / 5e6))  # ordinary inputs: as before
    assert time_limit(600.0, 3840, 2160, 1000.0) <= 6 * 3600  # 10 minutes of 4K declaring 1000 fps: about 11 days uncapped
    assert time_limit(600.0, 3840, 2160, 1000.0) == time_limit(600.0, 3840, 2160, 1e9) == time_limit(1e9)


def test_a_slow_consumer_does_not_use_up_the_budget(clips):
    frames = read_frames(clips / "c25.mp4", 25)
    first = next(frames)
    time.sleep(3)  # the caller working longer than... a budget that counted wall time would have
    assert first.shape == (640, 360, 3) and sum(1 for _ in frames) == 49


# ---- the service's limits on headers (latentsync.validation) -------------------------------------


def test_service_limits_name_the_input(tmp_path, clips):
    video, audio = clips / "c25.mp4", tmp_path / "speech.wav"
    ffmpeg("-i", video, "-vn", audio)
    assert check_inputs(video, audio).width == 360
    huge = tmp_path / "huge.mp4"
    with open(huge, "wb") as file:
        file.truncate(2 * 1024**3 + 1)  # sparse: no disk used
    with pytest.raises(MediaError, match=r"^The audio input is 2.0 GB; the limit is 2 GB per file.$"):
        check_inputs(video, huge)
    wide = tmp_path / "wide.mp4"
    ffmpeg("-f", "lavfi", "-i", "color=s=4100x64:d=0.2", "-c:v", "libx264", wide)
    with pytest.raises(MediaError, match=r"^The video input is 4100x64; the largest supported is 4K \(4096 px a side\): scale it down.$"):
        check_inputs(wide, audio)
    long_audio = tmp_path / "long.wav"
    ffmpeg("-f", "lavfi", "-i", "anullsrc=r=8000:cl=mono", "-t", 601, long_audio)
    with pytest.raises(MediaError, match=r"^The audio input is 601 s long; the limit is 10 minutes \(600 s\): split it into parts.$"):
        check_inputs(video, long_audio)
    with pytest.raises(MediaError, match=r"^The audio input has no audio stream"):
        check_inputs(video, wide)
