"""The on-disk result cache: keys, hits, concurrency across processes, crashes, full disks and
eviction. Everything runs for real: files under tmp_path, separate Python processes, OS locks."""

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from filelock import FileLock

import latentsync.cache as cache_module
from latentsync.cache import MANIFEST, ResultCache, cache_key, code_version, place

REPO = Path(__file__).resolve().parents[1]
PARAMS = {"guidance_scale": 1.5, "num_inference_steps": 20, "seed": 1247, "speaker_point": (10, 20, 0), "crf": 18}
OUTPUT = b"video" * 1000  # every entry made by `producer` is a little over 5 kB


@pytest.fixture
def inputs(tmp_path):
    video, audio = tmp_path / "video.mp4", tmp_path / "audio.wav"
    video.write_bytes(os.urandom(300_000))
    audio.write_bytes(os.urandom(50_000))
    return video, audio


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 1
    path.write_bytes(bytes(data))


# ---- keys ---------------------------------------------------------------------------------------


def test_key_depends_on_content_not_file_names(inputs, tmp_path):
    video, audio = inputs
    key = cache_key(video, audio, PARAMS, "1.6")
    assert len(key) == 64 and int(key, 16) >= 0
    (tmp_path / "renamed").mkdir()
    renamed_video, renamed_audio = tmp_path / "renamed" / "clip with spaces.mp4", tmp_path / "renamed" / "a.wav"
    renamed_video.write_bytes(video.read_bytes())
    renamed_audio.write_bytes(audio.read_bytes())
    assert cache_key(str(renamed_video), str(renamed_audio), PARAMS, "1.6") == key

    flip_byte(video, 123_456)
    changed_video = cache_key(video, audio, PARAMS, "1.6")
    flip_byte(audio, 1_234)
    changed_both = cache_key(video, audio, PARAMS, "1.6")
    assert len({key, changed_video, changed_both}) == 3
    flip_byte(video, 123_456)
    assert cache_key(video, audio, PARAMS, "1.6") not in (key, changed_video, changed_both)  # audio alone


def test_key_depends_on_every_setting_and_the_model_version(inputs):
    video, audio = inputs
    key = cache_key(video, audio, PARAMS, "1.6")
    changed = [
        {**PARAMS, "guidance_scale": 2.0},
        {**PARAMS, "num_inference_steps": 21},
        {**PARAMS, "seed": 1},
        {**PARAMS, "speaker_point": (10, 21, 0)},
        {**PARAMS, "crf": None},
        {**PARAMS, "enable_deepcache": False},
        {k: v for k, v in PARAMS.items() if k != "crf"},
    ]
    keys = {cache_key(video, audio, params, "1.6") for params in changed} | {cache_key(video, audio, PARAMS, "1.5")}
    assert key not in keys and len(keys) == len(changed) + 1


def test_equal_numbers_and_orderings_give_the_same_key(inputs):
    video, audio = inputs
    key = cache_key(video, audio, PARAMS, "1.6")
    same = [
        {**PARAMS, "guidance_scale": 1.50, "num_inference_steps": 20.0},
        {**PARAMS, "guidance_scale": np.float64(1.5), "seed": np.int64(1247), "speaker_point": [10, 20, 0]},
        dict(reversed(list(PARAMS.items()))),
    ]
    assert {cache_key(video, audio, params, "1.6") for params in same} == {key}
    # A flag is not the number 1.
    assert cache_key(video, audio, {"flag": True}, "1.6") != cache_key(video, audio, {"flag": 1}, "1.6")


def test_a_path_among_the_settings_is_refused_with_a_clear_error(inputs):
    video, audio = inputs
    with pytest.raises(TypeError, match=r"params\['mask'\] is a .*Path.*keyed by their content"):
        cache_key(video, audio, {**PARAMS, "mask": Path("mask.png")}, "1.6")


def test_code_version_covers_the_library_and_configs_but_not_the_client(tmp_path, monkeypatch):
    files = {
        "latentsync/__init__.py": "",
        "latentsync/pipeline.py": "STEPS = 20\n",
        "latentsync/face/align.py": "SIZE = 256\n",
        "latentsync/client/core.py": "RETRIES = 3\n",
        "configs/unet/stage2.yaml": "resolution: 256\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    monkeypatch.setattr(cache_module, "REPO_ROOT", tmp_path)

    def version_after(name, text):
        (tmp_path / name).write_text(text)
        code_version.cache_clear()
        return code_version()

    try:
        original = version_after("latentsync/pipeline.py", "STEPS = 20\n")
        assert version_after("latentsync/client/core.py", "RETRIES = 5\n") == original
        after_align = version_after("latentsync/face/align.py", "SIZE = 512\n")
        assert after_align != original
        assert version_after("configs/unet/stage2.yaml", "resolution: 512\n") not in (original, after_align)
    finally:
        code_version.cache_clear()


def test_code_version_is_the_same_in_another_process():
    script = "from latentsync.cache import code_version; print(code_version())"
    other = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, check=True)
    assert other.stdout.strip() == code_version() and len(code_version()) == 16


# ---- hits, failures, tampering --------------------------------------------------------------------


def producer(calls: list, content: bytes = OUTPUT):
    def produce(folder: Path) -> None:
        calls.append(folder)
        (folder / "output.mp4").write_bytes(content)
        (folder / "report.json").write_text(json.dumps({"frames": 250}))

    return produce


def test_a_repeated_request_is_a_hit_without_producing(tmp_path):
    cache, calls = ResultCache(tmp_path / "cache"), []
    first = cache.get_or_create("k1", producer(calls))
    second = cache.get_or_create("k1", producer(calls))
    assert (first.hit, second.hit, len(calls)) == (False, True, 1)
    assert first.dir == second.dir
    assert (second.dir / "output.mp4").read_bytes() == OUTPUT
    assert json.loads((second.dir / "report.json").read_text()) == {"frames": 250}
    assert calls[0].parent == tmp_path / "cache" / "work"  # produced in a private folder, moved in after


def test_different_keys_are_different_entries(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    a = cache.get_or_create("a", producer([], b"first"))
    b = cache.get_or_create("b", producer([], b"second"))
    assert (a.dir / "output.mp4").read_bytes() == b"first" and (b.dir / "output.mp4").read_bytes() == b"second"


def test_a_failed_produce_stores_nothing_and_the_error_propagates(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    failure = RuntimeError("ffmpeg exited with status 1")

    def failing(folder):
        (folder / "output.mp4").write_bytes(b"half a video")
        raise failure

    with pytest.raises(RuntimeError) as raised:
        cache.get_or_create("k1", failing)
    assert raised.value is failure
    assert list((tmp_path / "cache" / "entries").iterdir()) == []
    assert list((tmp_path / "cache" / "work").iterdir()) == []
    calls = []
    assert cache.get_or_create("k1", producer(calls)).hit is False and len(calls) == 1  # the next call starts clean


def test_a_full_disk_is_reported_clearly_and_stores_nothing(tmp_path):
    cache = ResultCache(tmp_path / "cache")

    def disk_full(folder):
        (folder / "output.mp4").write_bytes(b"the first half")
        raise OSError(errno.ENOSPC, "No space left on device", str(folder / "output.mp4"))

    with pytest.raises(OSError, match=r"No space left on device.*Nothing was stored; free space on the disk holding .*output\.mp4") as raised:
        cache.get_or_create("k1", disk_full)
    assert raised.value.errno == errno.ENOSPC and isinstance(raised.value.__cause__, OSError)
    assert list((tmp_path / "cache" / "entries").iterdir()) == []
    assert list((tmp_path / "cache" / "work").iterdir()) == []


WRITE_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from latentsync.cache import ResultCache, place
    root, source, destination = sys.argv[1:4]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails with EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    def produce(folder):
        with open(folder / "output.mp4", "wb") as f:
            for _ in range(50):
                f.write(b"x" * 10_000)

    try:
        ResultCache(root).get_or_create("big", produce)
    except OSError as error:
        print("produce:", error.strerror)
    try:
        place(Path(source), Path(destination))
    except OSError as error:
        print("place:", error.strerror)
    """
)


def test_a_write_that_fails_midway_leaves_no_partial_entry_or_output(tmp_path):
    """A real failing write: the process may not write files over 100 kB (RLIMIT_FSIZE)."""
    source = tmp_path / "source.mp4"
    source.write_bytes(b"y" * 500_000)
    copy_target = Path("/dev/shm")  # another filesystem, so `place` has to copy
    if not copy_target.is_dir() or copy_target.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    folder = copy_target / f"latentsync-test-{os.getpid()}"
    destination = folder / "out.mp4"
    try:
        run = subprocess.run(
            [sys.executable, "-c", WRITE_LIMITED, str(tmp_path / "cache"), str(source), str(destination)],
            cwd=REPO, capture_output=True, text=True, timeout=60,
        )
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["produce: File too large", "place: File too large"]
        assert list((tmp_path / "cache" / "entries").iterdir()) == []
        assert list((tmp_path / "cache" / "work").iterdir()) == []
        assert list(folder.iterdir()) == []  # no partial copy beside the destination
    finally:
        for leftover in folder.glob("*"):
            leftover.unlink()
        folder.rmdir()


@pytest.mark.parametrize("damage", ["truncate", "same size edit", "lost manifest", "garbled manifest"])
def test_a_damaged_entry_is_produced_again(tmp_path, damage):
    cache, calls = ResultCache(tmp_path / "cache"), []
    entry = cache.get_or_create("k1", producer(calls)).dir
    if damage == "truncate":
        (entry / "output.mp4").write_bytes(OUTPUT[:100])
    elif damage == "same size edit":
        flip_byte(entry / "output.mp4", 2500)
    elif damage == "lost manifest":
        (entry / MANIFEST).unlink()
    else:
        (entry / MANIFEST).write_text('{"files": ["output.mp4"]}')
    again = cache.get_or_create("k1", producer(calls))
    assert not again.hit and len(calls) == 2
    assert (again.dir / "output.mp4").read_bytes() == OUTPUT
    assert cache.get_or_create("k1", producer(calls)).hit


def test_producing_no_files_or_the_manifest_name_is_an_error(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    with pytest.raises(ValueError, match="wrote no files"):
        cache.get_or_create("k1", lambda folder: None)
    with pytest.raises(ValueError, match=f"must not write {MANIFEST}"):
        cache.get_or_create("k1", lambda folder: (folder / MANIFEST).write_text("{}"))
    assert list((tmp_path / "cache" / "entries").iterdir()) == []


@pytest.mark.parametrize("key", ["", "../escape", "a/b", "k.1", "x" * 129])
def test_keys_that_are_not_plain_names_are_refused(tmp_path, key):
    with pytest.raises(ValueError, match="must be 1-128 letters"):
        ResultCache(tmp_path / "cache").get_or_create(key, producer([]))


def test_max_bytes_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="max_bytes must be positive"):
        ResultCache(tmp_path / "cache", max_bytes=0)


# ---- placing results ------------------------------------------------------------------------------


def test_place_links_on_the_same_filesystem_and_replaces_atomically(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    cached = cache.get_or_create("k1", producer([])).dir / "output.mp4"
    destination = tmp_path / "out" / "result.mp4"
    place(cached, destination)
    assert destination.read_bytes() == OUTPUT
    assert destination.stat().st_ino == cached.stat().st_ino  # a hard link, no copy
    place(cached, destination)  # again, onto the existing link
    destination.unlink()
    destination.write_bytes(b"an older result")
    place(cached, destination)
    assert destination.read_bytes() == OUTPUT
    assert sorted(p.name for p in destination.parent.iterdir()) == ["result.mp4"]  # no temporary files left


def test_place_copies_across_filesystems(tmp_path):
    cache = ResultCache(tmp_path / "cache")
    cached = cache.get_or_create("k1", producer([])).dir / "output.mp4"
    other = Path("/dev/shm")
    if not other.is_dir() or other.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    destination = other / f"latentsync-test-{os.getpid()}.mp4"
    try:
        place(cached, destination)
        assert destination.read_bytes() == OUTPUT and destination.stat().st_ino != cached.stat().st_ino
    finally:
        destination.unlink(missing_ok=True)


def test_an_output_edited_in_place_does_not_poison_the_cache(tmp_path):
    """The user's output is a hard link to the cached file: writing into it changes the entry too."""
    cache, calls = ResultCache(tmp_path / "cache"), []
    destination = tmp_path / "result.mp4"
    place(cache.get_or_create("k1", producer(calls)).dir / "output.mp4", destination)
    with open(destination, "r+b") as f:
        f.write(b"VIDEO")
    again = cache.get_or_create("k1", producer(calls))
    assert not again.hit and len(calls) == 2 and (again.dir / "output.mp4").read_bytes() == OUTPUT


# ---- separate processes -------------------------------------------------------------------------

WORKER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from latentsync.cache import ResultCache
    root, key, log, pause, wait_for = sys.argv[1:6]

    def produce(folder):
        with open(log, "a") as f:
            f.write(f"{key} started\\n")
        deadline = time.time() + float(pause)
        while time.time() < deadline:  # with `wait_for`: until that key's producer has started too
            if wait_for != "-" and f"{wait_for} started" in Path(log).read_text():
                break
            time.sleep(0.05)
        else:
            if wait_for != "-":
                raise TimeoutError(f"{wait_for} never started")
        (folder / "output.mp4").write_text(f"made for {key} by process {os.getpid()}")

    result = ResultCache(root).get_or_create(key, produce)
    print("hit" if result.hit else "miss", (result.dir / "output.mp4").read_text())
    """
)


def start_worker(root, key, log, pause=1.0, wait_for="-"):
    command = [sys.executable, "-c", WORKER, str(root), key, str(log), str(pause), wait_for]
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(worker) -> str:
    out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    return out.strip()


def test_two_processes_with_the_same_key_produce_once(tmp_path):
    log = tmp_path / "log.txt"
    workers = [start_worker(tmp_path / "cache", "shared", log) for _ in range(2)]
    outputs = sorted(finish(w) for w in workers)
    assert [line.split()[0] for line in outputs] == ["hit", "miss"]
    assert outputs[0].split(maxsplit=1)[1] == outputs[1].split(maxsplit=1)[1]  # the same file
    assert log.read_text() == "shared started\n"


def test_different_keys_are_produced_at_the_same_time(tmp_path):
    """Each producer waits until the other has started: with one lock for all keys this times out."""
    log = tmp_path / "log.txt"
    a = start_worker(tmp_path / "cache", "a", log, pause=30, wait_for="b")
    b = start_worker(tmp_path / "cache", "b", log, pause=30, wait_for="a")
    assert finish(a).startswith("miss made for a") and finish(b).startswith("miss made for b")


def test_a_killed_producer_leaves_no_stale_lock_or_partial_entry(tmp_path):
    log, root = tmp_path / "log.txt", tmp_path / "cache"
    victim = start_worker(root, "k", log, pause=60)
    deadline = time.time() + 30
    while not (log.exists() and "started" in log.read_text()) and time.time() < deadline:
        time.sleep(0.05)
    assert len(list((root / "work").iterdir())) == 1  # killed mid-produce, with a half-made folder
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    victim.stdout.close()
    victim.stderr.close()

    cache = ResultCache(root)
    assert list((root / "work").iterdir()) == []  # its abandoned work is cleared on startup
    assert list((root / "entries").iterdir()) == []
    started, calls = time.time(), []
    result = cache.get_or_create("k", producer(calls))
    assert not result.hit and len(calls) == 1 and time.time() - started < 5  # no wait on the dead process's lock
    assert (result.dir / "output.mp4").read_bytes() == OUTPUT


def test_work_in_progress_is_not_cleared_while_its_producer_lives(tmp_path):
    root = tmp_path / "cache"
    ResultCache(root)
    (root / "work" / "busy.abc").mkdir()
    (root / "work" / "dead.abc").mkdir()
    with FileLock(str(root / "locks" / "busy.lock")):  # held as another producer would
        ResultCache(root)
    assert [p.name for p in (root / "work").iterdir()] == ["busy.abc"]


# ---- size cap and eviction ---------------------------------------------------------------------


def entry_names(root: Path) -> list[str]:
    return sorted(p.name for p in (root / "entries").iterdir())


def last_used_at(cache: ResultCache, key: str, seconds: float) -> None:
    os.utime(cache.entries / key / MANIFEST, (seconds, seconds))


def test_least_recently_used_entries_are_evicted_over_the_cap(tmp_path):
    root = tmp_path / "cache"
    cache = ResultCache(root, max_bytes=12_000)  # room for two 5 kB entries
    for key, used in [("a", 1000), ("b", 2000)]:
        cache.get_or_create(key, producer([]))
        last_used_at(cache, key, used)
    assert cache.get_or_create("a", producer([])).hit  # a is now more recent than b
    cache.get_or_create("c", producer([]))
    assert entry_names(root) == ["a", "c"]
    last_used_at(cache, "c", 3000)
    cache.get_or_create("d", producer([]))
    assert entry_names(root) == ["a", "d"]


def test_the_cap_holds_over_many_inserts(tmp_path):
    root = tmp_path / "cache"
    cache = ResultCache(root, max_bytes=30_000)
    for i in range(15):
        cache.get_or_create(f"k{i}", producer([]))
        size = sum(p.stat().st_size for p in (root / "entries").rglob("*") if p.is_file())
        assert size <= 30_000
    assert len(entry_names(root)) == 5


def test_an_entry_in_use_by_another_process_is_not_evicted(tmp_path):
    root = tmp_path / "cache"
    cache = ResultCache(root, max_bytes=12_000)
    cache.get_or_create("old", producer([]))
    last_used_at(cache, "old", 1000)
    with FileLock(str(root / "locks" / "old.lock")):  # held as another process reading it would
        cache.get_or_create("b", producer([]))
        cache.get_or_create("c", producer([]))
        assert entry_names(root) == ["c", "old"]
    cache.get_or_create("d", producer([]))
    assert entry_names(root) == ["c", "d"]


def test_an_entry_bigger_than_the_cap_is_returned_but_not_kept(tmp_path):
    root = tmp_path / "cache"
    cache = ResultCache(root, max_bytes=12_000)
    cache.get_or_create("small", producer([]))
    huge = cache.get_or_create("huge", producer([], b"h" * 20_000))
    assert not huge.hit and (huge.dir / "output.mp4").read_bytes() == b"h" * 20_000
    assert entry_names(root) == ["huge", "small"]  # it pushed nothing out
    cache.get_or_create("next", producer([]))
    assert entry_names(root) == ["next", "small"]


def test_entries_unused_for_longer_than_max_age_are_misses_and_removed(tmp_path):
    root = tmp_path / "cache"
    cache, calls = ResultCache(root, max_age_s=3600), []
    for key in ("old", "recent", "reused"):
        cache.get_or_create(key, producer(calls))
    now = time.time()
    last_used_at(cache, "old", now - 3700)
    last_used_at(cache, "recent", now - 3500)
    last_used_at(cache, "reused", now - 3500)
    assert cache.get_or_create("reused", producer(calls)).hit  # a hit counts as a use: an hour more
    cache.remove_expired()
    assert entry_names(root) == ["recent", "reused"]
    last_used_at(cache, "recent", now - 3700)
    assert not cache.get_or_create("recent", producer(calls)).hit and len(calls) == 4  # expired: made again, not served
    last_used_at(cache, "reused", now - 3700)
    cache.get_or_create("new", producer(calls))  # an insert removes what expired meanwhile
    assert entry_names(root) == ["new", "recent"]
    forever = ResultCache(tmp_path / "forever")
    forever.get_or_create("k", producer([]))
    last_used_at(forever, "k", 0)
    forever.remove_expired()
    assert forever.get_or_create("k", producer([])).hit  # no max_age_s: only the size cap evicts
    with pytest.raises(ValueError, match="max_age_s must be positive"):
        ResultCache(tmp_path / "bad", max_age_s=0)
