"""The on-disk result cache: keys, hits, concurrency across processes, crashes and eviction."""

import errno
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from latentsync.cache import ResultCache, cache_key, code_version, place

PARAMS = {"guidance_scale": 1.5, "inference_steps": 20, "seed": 1247}


@pytest.fixture
def inputs(tmp_path):
    video, audio = tmp_path / "video.mp4", tmp_path / "audio.wav"
    video.write_bytes(os.urandom(200_000))
    audio.write_bytes(os.urandom(50_000))
    return video, audio


def test_key_depends_on_content_and_settings_not_names(inputs, tmp_path):
    video, audio = inputs
    key = cache_key(video, audio, PARAMS, "1.6")
    renamed = tmp_path / "other name.mp4"
    renamed.write_bytes(video.read_bytes())
    assert cache_key(renamed, audio, PARAMS, "1.6") == key
    assert cache_key(video, audio, {**PARAMS, "guidance_scale": 1.50}, "1.6") == key
    assert cache_key(video, audio, {**PARAMS, "inference_steps": 20.0}, "1.6") == key
    assert cache_key(video, audio, {**PARAMS, "seed": 1}, "1.6") != key
    assert cache_key(video, audio, PARAMS, "1.5") != key
    changed = bytearray(audio.read_bytes())
    changed[1234] ^= 1
    audio.write_bytes(bytes(changed))
    assert cache_key(video, audio, PARAMS, "1.6") != key
    assert len(code_version()) == 16


def produce_into(calls):
    def produce(folder):
        calls.append(folder)
        (folder / "output.mp4").write_bytes(b"video" * 1000)
        (folder / "report.json").write_text("{}")
    return produce


def test_hit_returns_without_producing(tmp_path):
    cache, calls = ResultCache(tmp_path / "cache"), []
    first = cache.get_or_create("k1", produce_into(calls))
    second = cache.get_or_create("k1", produce_into(calls))
    assert (first.hit, second.hit, len(calls)) == (False, True, 1)
    assert (second.dir / "output.mp4").read_bytes() == b"video" * 1000
    place(second.dir / "output.mp4", tmp_path / "out" / "result.mp4")
    assert (tmp_path / "out" / "result.mp4").read_bytes() == b"video" * 1000


def test_a_failed_produce_leaves_nothing(tmp_path):
    cache = ResultCache(tmp_path / "cache")

    def failing(folder):
        (folder / "output.mp4").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        cache.get_or_create("k1", failing)
    assert list((tmp_path / "cache" / "entries").iterdir()) == []
    assert list((tmp_path / "cache" / "work").iterdir()) == []
    assert cache.get_or_create("k1", produce_into([])).hit is False  # and the next call starts clean


def test_a_tampered_entry_is_produced_again(tmp_path):
    cache, calls = ResultCache(tmp_path / "cache"), []
    entry = cache.get_or_create("k1", produce_into(calls)).dir
    (entry / "output.mp4").write_bytes(b"trunc")
    again = cache.get_or_create("k1", produce_into(calls))
    assert not again.hit and len(calls) == 2 and (again.dir / "output.mp4").stat().st_size == 5000


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from latentsync.cache import ResultCache
    root, key, pause, log = sys.argv[1:5]
    def produce(folder):
        with open(log, "a") as f:
            f.write("produce\\n")
        time.sleep(float(pause))
        (folder / "output.mp4").write_bytes(b"made by one process")
    result = ResultCache(root).get_or_create(key, produce)
    print("hit" if result.hit else "miss", (result.dir / "output.mp4").read_text())
    """
)


def run_worker(root, key, pause, log):
    env = {**os.environ, "PYTHONPATH": str(os.getcwd())}
    return subprocess.Popen([sys.executable, "-c", WORKER, str(root), key, str(pause), str(log)], stdout=subprocess.PIPE, text=True, env=env)


def test_two_processes_same_key_produce_once(tmp_path):
    log = tmp_path / "log.txt"
    workers = [run_worker(tmp_path / "cache", "shared", 1.0, log) for _ in range(2)]
    outputs = sorted(w.communicate(timeout=60)[0].strip() for w in workers)
    assert outputs == ["hit made by one process", "miss made by one process"]
    assert log.read_text().count("produce") == 1


def test_a_killed_producer_leaves_no_stale_lock_or_partial_entry(tmp_path):
    log = tmp_path / "log.txt"
    victim = run_worker(tmp_path / "cache", "k", 30.0, log)
    deadline = time.time() + 30
    while not (log.exists() and "produce" in log.read_text()) and time.time() < deadline:
        time.sleep(0.1)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    assert list((tmp_path / "cache" / "entries").iterdir()) == []
    started = time.time()
    result = ResultCache(tmp_path / "cache").get_or_create("k", produce_into([]))
    assert not result.hit and time.time() - started < 5  # no waiting on the dead process's lock
    assert list((tmp_path / "cache" / "work").iterdir()) == []  # its abandoned work folder is gone


def test_least_recently_used_entries_are_evicted_over_the_cap(tmp_path):
    cache = ResultCache(tmp_path / "cache", max_bytes=12_000)  # room for two 5 kB entries

    def make(key):
        cache.get_or_create(key, produce_into([]))
        time.sleep(0.02)

    make("a")
    make("b")
    cache.get_or_create("a", produce_into([]))  # a is now more recent than b
    time.sleep(0.02)
    make("c")
    assert sorted(p.name for p in (tmp_path / "cache" / "entries").iterdir()) == ["a", "c"]
