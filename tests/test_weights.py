"""The weights manifest and downloader, against a real HTTP server on 127.0.0.1."""

import json
import os
import re
import subprocess
import sys
import textwrap
from dataclasses import replace

import pytest

import latentsync.download as download
import latentsync.weights as weights
from latentsync.files import sha256_of
from latentsync.weights import WeightsError, ensure_weights, load_manifest
from tests.http_fixtures import FileServer, tiny_weights_manifest

UNET = "/tiny/latentsync_unet.pt"


@pytest.fixture
def served(tmp_path, monkeypatch):
    """A file server with the tiny models, their manifest, an empty weights folder; small chunks
    so the 22 MB tiny U-Net downloads in several parallel ranges; no real waiting in backoff."""
    monkeypatch.setattr(download, "CHUNK_SIZE", 2 * 1024 * 1024)
    monkeypatch.setattr(weights.time, "sleep", lambda seconds: None)
    monkeypatch.delenv("LATENTSYNC_WEIGHTS_BASE_URL", raising=False)
    with FileServer(tmp_path / "files") as server:
        manifest = load_manifest(tiny_weights_manifest(tmp_path, server.url))
        yield server, manifest, tmp_path / "weights"


def test_ensure_weights_downloads_verifies_and_then_trusts_the_cache(served, monkeypatch):
    server, manifest, root = served
    files = ensure_weights("1.6", root, manifest)
    assert files.resolution == 64 and files.unet_config.name == "unet_tiny.yaml"
    assert sha256_of(files.unet_checkpoint) == manifest.files["unet"].sha256
    assert (files.vae_dir / "config.json").exists() and files.mask.exists()
    assert files.insightface_root is None and files.syncnet is None
    assert len([r for r in server.requests if r["path"] == UNET]) > 5  # parallel ranges
    assert not list(root.rglob("*.part*"))
    before, hashed = len(server.requests), []
    monkeypatch.setattr(weights, "sha256_of", lambda path: hashed.append(path.name) or sha256_of(path))
    ensure_weights("1.5", root, manifest)  # same files: nothing to fetch, nothing to re-hash
    assert len(server.requests) == before and hashed == []
    stat = files.mask.stat()
    os.utime(files.mask, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # touched: hashed again, still not fetched
    ensure_weights("1.5", root, manifest)
    assert len(server.requests) == before and hashed == [files.mask.name]


def test_the_weights_identity_is_the_manifests_hashes_of_the_verified_files(served):
    """The result cache keys on it: taken from the manifest once ensure_weights verified the files
    (no 5 GB re-read at load), and computed from the files when they were laid out by hand."""
    _, manifest, root = served
    files = ensure_weights("1.6", root, manifest)
    identity = weights.weights_identity(files)
    assert identity["unet"] == manifest.files["unet"].sha256 == sha256_of(files.unet_checkpoint)
    assert set(identity) == set(manifest.versions["1.6"].files) | {"unet_config"}
    by_hand = weights.weights_identity(replace(files, sha256={}))
    assert by_hand[str(files.unet_checkpoint)] == identity["unet"] and by_hand[str(files.mask)] == identity["mask"]


def test_a_dropped_connection_resumes_the_chunk(served):
    server, manifest, root = served
    server.faults.drop_after[UNET] = 100_000  # mid-chunk
    files = ensure_weights("1.6", root, manifest)
    size = manifest.files["unet"].size
    assert sha256_of(files.unet_checkpoint) == manifest.files["unet"].sha256
    assert server.bytes_sent(UNET) < size + 2 * download.CHUNK_SIZE  # only the broken chunk again


def test_an_interrupted_download_continues_where_it_stopped(served):
    server, manifest, root = served
    server.faults.fail_range_start[UNET] = 3 * download.CHUNK_SIZE  # this chunk fails every retry
    with pytest.raises(WeightsError, match=r"tiny/latentsync_unet.pt from http://127.0.0.1.*HTTP 500.*gave up"):
        ensure_weights("1.6", root, manifest)
    assert (root / "tiny" / "latentsync_unet.pt.part.json").exists()
    first = server.bytes_sent(UNET)
    server.faults.fail_range_start.clear()
    files = ensure_weights("1.6", root, manifest)
    assert sha256_of(files.unet_checkpoint) == manifest.files["unet"].sha256
    assert server.bytes_sent(UNET) - first <= download.CHUNK_SIZE + 1  # just the missing chunk


def test_wrong_bytes_are_rejected_and_not_kept(served):
    server, manifest, root = served
    server.faults.corrupt.add(UNET)
    with pytest.raises(WeightsError, match=r"sha256 mismatch for http://127.0.0.1:\d+/tiny/latentsync_unet.pt: expected [0-9a-f]{64}, got"):
        ensure_weights("1.6", root, manifest)
    assert not (root / "tiny" / "latentsync_unet.pt").exists()
    assert not list(root.rglob("latentsync_unet.pt.part*"))


def test_a_missing_file_names_file_url_and_status(served):
    server, manifest, root = served
    (server.root / "tiny" / "mask.png").unlink()
    with pytest.raises(WeightsError, match=r"tiny/mask.png from http://127.0.0.1:\d+/tiny/mask.png: HTTP 404"):
        ensure_weights("1.6", root, manifest)


def test_corruption_on_disk_is_detected_and_fetched_again(served):
    server, manifest, root = served
    files = ensure_weights("1.6", root, manifest)
    data = bytearray(files.unet_checkpoint.read_bytes())
    data[1000:1010] = b"0123456789"
    files.unet_checkpoint.write_bytes(bytes(data))  # same size, new modification time
    before = server.bytes_sent(UNET)
    ensure_weights("1.6", root, manifest)
    assert sha256_of(files.unet_checkpoint) == manifest.files["unet"].sha256
    assert server.bytes_sent(UNET) - before == manifest.files["unet"].size + 1  # + the 1-byte range probe


def test_two_processes_download_once(served, tmp_path):
    server, manifest, root = served
    script = textwrap.dedent(
        f"""
        import latentsync.download as d, latentsync.weights as w
        d.CHUNK_SIZE = 2 * 1024 * 1024
        files = w.ensure_weights("1.6", {str(root)!r}, w.load_manifest({str(manifest.source)!r}))
        print(w.sha256_of(files.unet_checkpoint))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(weights.REPO_ROOT)}
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    outputs = [p.communicate(timeout=300)[0].strip() for p in processes]
    assert [p.returncode for p in processes] == [0, 0]
    assert outputs == [manifest.files["unet"].sha256] * 2
    assert server.bytes_sent(UNET) == manifest.files["unet"].size + 1  # fetched once (+ the range probe)


def test_base_url_override_serves_every_file_from_a_mirror(served, monkeypatch):
    server, manifest, root = served
    for entry in manifest.files.values():
        entry.urls = [re.sub(r"^http://127.0.0.1:\d+", "https://weights.example.invalid", url) for url in entry.urls]
    monkeypatch.setenv("LATENTSYNC_WEIGHTS_BASE_URL", server.url)
    files = ensure_weights("1.6", root, manifest)
    assert files.whisper.exists()


def test_entries_without_a_hash_are_pinned_by_the_first_download(served):
    server, manifest, root = served
    manifest.files["mask"].sha256 = None
    ensure_weights("1.6", root, manifest)
    lock = json.loads((root / weights.LOCK_FILE).read_text())
    assert lock["tiny/mask.png"]["sha256"] == sha256_of(server.root / "tiny" / "mask.png")
    (root / "tiny" / "mask.png").unlink()
    served_mask = server.root / "tiny" / "mask.png"
    served_mask.write_bytes(served_mask.read_bytes()[::-1])  # the mirror now sends other bytes
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        ensure_weights("1.6", root, manifest)


def test_pget_is_used_when_installed_and_its_output_is_still_verified(served, tmp_path, monkeypatch):
    """pget (a Go binary) cannot be installed here, so a stand-in script takes its place on PATH:
    it records its arguments and fetches the URL."""
    server, manifest, root = served
    bin_dir, calls = tmp_path / "bin", tmp_path / "pget_calls.txt"
    bin_dir.mkdir()
    stand_in = bin_dir / "pget"
    stand_in.write_text(
        f"#!{sys.executable}\n"
        "import sys, urllib.request\n"
        f"open({str(calls)!r}, 'a').write(' '.join(sys.argv[1:]) + '\\n')\n"
        "urllib.request.urlretrieve(sys.argv[-2], sys.argv[-1])\n"
    )
    stand_in.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    files = ensure_weights("1.6", root, manifest)
    assert sha256_of(files.unet_checkpoint) == manifest.files["unet"].sha256
    first_call = calls.read_text().splitlines()[0].split()
    assert first_call[0] == "-f" and first_call[1].startswith(server.url) and first_call[2].endswith(".part")
    files.whisper.unlink()
    server.faults.corrupt.add("/tiny/whisper/tiny.pt")
    with pytest.raises(WeightsError, match="sha256 mismatch"):
        ensure_weights("1.6", root, manifest)


def test_manifest_errors_are_clear(tmp_path):
    bad = tmp_path / "manifest.json"
    bad.write_text("{not json")
    with pytest.raises(WeightsError, match="Cannot read the weights manifest"):
        load_manifest(bad)
    bad.write_text(json.dumps({"files": {"a": {"path": "a.bin", "urls": ["http://x/a"]}}, "versions": {"1.6": {"unet_config": "c.yaml", "resolution": 512, "files": {"unet": "b"}}}}))
    with pytest.raises(WeightsError, match="unknown files"):
        load_manifest(bad)
    with pytest.raises(WeightsError, match="Unknown model version '2.0'"):
        load_manifest().files_for("2.0")


def test_the_product_manifest_is_complete():
    manifest = load_manifest(weights.DEFAULT_MANIFEST)
    assert set(manifest.versions) == {"1.5", "1.6"}
    assert (manifest.versions["1.5"].resolution, manifest.versions["1.6"].resolution) == (256, 512)
    for version in manifest.versions.values():
        assert set(version.files) == set(weights.ROLES)
        assert version.unet_config.exists()
    for entry in manifest.files.values():
        assert entry.urls and all(url.startswith("https://") for url in entry.urls)
        assert re.fullmatch(r"[0-9a-f]{64}", entry.sha256) and entry.license
    assert manifest.files["unet-1.6"].path == "latentsync_unet.pt"  # the official command line's path


# ---- a bad mirror: sizes, paths, credentials ------------------------------------------------


def partial_bytes(root) -> int:
    """Bytes on disk of the U-Net's partial download (0 when none is left)."""
    partial = root / "tiny" / "latentsync_unet.pt.part"
    return partial.stat().st_size if partial.exists() else 0


def test_a_declared_size_other_than_the_manifests_is_refused_before_downloading(served):
    server, manifest, root = served
    served_unet = server.root / "tiny" / "latentsync_unet.pt"
    served_unet.write_bytes(served_unet.read_bytes() + b"\0" * 10_000_000)  # the mirror's file is bigger
    size = manifest.files["unet"].size
    with pytest.raises(WeightsError, match=rf"tiny/latentsync_unet.pt from http://127.0.0.1:\d+/tiny/latentsync_unet.pt: the server declares {size + 10_000_000} bytes, the manifest {size}; nothing was downloaded"):
        ensure_weights("1.6", root, manifest)
    assert server.bytes_sent(UNET) <= 1  # at most the one-byte probe
    server.faults.no_ranges.add(UNET)  # a server without ranges declares it in Content-Length
    with pytest.raises(WeightsError, match="the server declares"):
        ensure_weights("1.6", root, manifest)
    assert partial_bytes(root) == 0


def test_range_answers_longer_than_asked_are_cut_off(served):
    server, manifest, root = served
    server.faults.extra_bytes[UNET] = 5_000_000  # every answer's Content-Length lies by 5 MB
    with pytest.raises(WeightsError, match=r"the server sent more than the \d+ bytes asked for"):
        ensure_weights("1.6", root, manifest)
    assert partial_bytes(root) <= manifest.files["unet"].size  # nothing written past the file's end
    assert not (root / "tiny" / "latentsync_unet.pt").exists()


def test_a_stream_without_a_length_stops_at_the_manifests_size(served):
    server, manifest, root = served
    server.faults.no_ranges.add(UNET)
    server.faults.no_length.add(UNET)
    server.faults.extra_bytes[UNET] = 20_000_000  # 20 MB more than the file, until the connection closes
    with pytest.raises(WeightsError, match=r"the server sent more than the manifest's \d+ bytes; the download was stopped and not kept"):
        ensure_weights("1.6", root, manifest)
    assert partial_bytes(root) == 0 and not (root / "tiny" / "latentsync_unet.pt").exists()
    server.faults.extra_bytes.clear()  # the same server, honest: a stream of exactly the file is kept
    files = ensure_weights("1.6", root, manifest)
    assert sha256_of(files.unet_checkpoint) == manifest.files["unet"].sha256


@pytest.mark.parametrize("path", ["/etc/cron.d/latentsync", "../outside.bin", "models/../../outside.bin", "C:\\weights\\unet.pt", "..\\outside.bin"])
def test_manifest_paths_that_leave_the_weights_folder_are_refused(tmp_path, path):
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"files": {"unet": {"path": path, "urls": ["https://example.invalid/unet.pt"]}}, "versions": {}}))
    with pytest.raises(WeightsError, match=r"file 'unet' has the path .*, which leaves the weights folder; use a relative path without '\.\.'"):
        load_manifest(manifest)


SECRETS = ("s3cr3t-pass", "t0k3n-value")


def mirrored(manifest, server, monkeypatch) -> str:
    """Point the manifest at an unreachable host and LATENTSYNC_WEIGHTS_BASE_URL, with a user,
    password and token, at the file server. Returns the base URL."""
    for entry in manifest.files.values():
        entry.urls = [re.sub(r"^http://127.0.0.1:\d+", "https://weights.example.invalid", url) for url in entry.urls]
    base = server.url.replace("http://", f"http://mirror-user:{SECRETS[0]}@") + f"/?token={SECRETS[1]}"
    monkeypatch.setenv("LATENTSYNC_WEIGHTS_BASE_URL", base)
    return base


def test_mirror_credentials_are_sent_but_never_logged(served, monkeypatch, caplog):
    server, manifest, root = served
    mirrored(manifest, server, monkeypatch)
    server.faults.fail_first["/tiny/mask.png"] = (503, 1)  # one retry, logged
    with caplog.at_level("INFO", logger="latentsync"):
        files = ensure_weights("1.6", root, manifest)
    assert files.mask.exists()
    unet_requests = [r for r in server.requests if r["path"] == UNET]
    assert all(r["query"] == f"token={SECRETS[1]}" and r["authorization"].startswith("Basic ") for r in unet_requests)
    logged = "\n".join(record.getMessage() for record in caplog.records)
    assert "fetched tiny/latentsync_unet.pt" in logged and "retrying" in logged
    assert not any(secret in logged for secret in SECRETS)


def test_mirror_credentials_never_reach_an_error_or_the_download_script(served, monkeypatch, tmp_path):
    server, manifest, root = served
    mirrored(manifest, server, monkeypatch)
    (server.root / "tiny" / "mask.png").unlink()
    with pytest.raises(WeightsError) as raised:
        ensure_weights("1.6", root, manifest)
    assert "tiny/mask.png from http://***@127.0.0.1" in str(raised.value) and "token=***" in str(raised.value)
    assert not any(secret in str(raised.value) for secret in SECRETS)
    env = {**os.environ, "PYTHONPATH": str(weights.REPO_ROOT)}
    script = subprocess.run(
        [sys.executable, "-m", "scripts.download_weights", "--version", "1.6", "--weights_dir", str(tmp_path / "other"), "--manifest", str(manifest.source)],
        capture_output=True, text=True, env=env, cwd=weights.REPO_ROOT, timeout=300,
    )
    output = script.stdout + script.stderr
    assert script.returncode == 1 and "HTTP 404" in output and "fetched" in output
    assert not any(secret in output for secret in SECRETS), output
