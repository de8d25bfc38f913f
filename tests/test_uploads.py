"""What reaches the web app before our checks (latentsync/app/uploads.py): URL inputs fetched within
the service's size, against a real HTTP server on 127.0.0.1, and the upload route's file count
across any split of the request body. (Through the running app: tests/test_app.py.)"""

import asyncio
import os

import pytest

from latentsync.app.uploads import _Multipart, fetch_url
from tests.http_fixtures import FileServer

MB = 1024 * 1024


@pytest.fixture
def served(tmp_path):
    (tmp_path / "files").mkdir()
    (tmp_path / "files" / "small.mp4").write_bytes(os.urandom(MB))
    (tmp_path / "files" / "big.mp4").write_bytes(os.urandom(3 * MB))
    with FileServer(tmp_path / "files") as server:
        yield server, tmp_path / "fetched"


def fetch(url, folder, **limits):
    # The server is on this machine, which the app never fetches from: `public_only` off here.
    return asyncio.run(fetch_url(url, folder, public_only=False, **limits))


def test_a_url_within_the_limit_is_fetched_whole(served):
    server, folder = served
    path = fetch(f"{server.url}/small.mp4", folder, max_bytes=2 * MB)
    assert path.name == "small.mp4" and path.read_bytes() == (server.root / "small.mp4").read_bytes()


@pytest.mark.parametrize("declared", [True, False], ids=["declared_length", "no_length"])
def test_a_url_past_the_limit_is_refused_and_nothing_is_kept(served, declared):
    server, folder = served
    if not declared:
        server.faults.no_length.add("/big.mp4")  # the body ends when the connection closes: counted as it comes
    with pytest.raises(ValueError, match=r"^The URL input is larger than 0\.00195312 GB, the limit per file\.$"):
        fetch(f"{server.url}/big.mp4", folder, max_bytes=2 * MB)
    assert list(folder.rglob("*")) == []


def test_a_missing_url_and_a_local_one_are_refused_in_one_sentence(served):
    server, folder = served
    with pytest.raises(ValueError, match=r"^The URL input could not be fetched \(HTTP 404\)\.$"):
        fetch(f"{server.url}/missing.mp4", folder)
    with pytest.raises(ValueError, match=r"^The URL input is not on a public address"):
        asyncio.run(fetch_url(f"{server.url}/small.mp4", folder))  # public_only, as the app fetches
    assert not [r for r in server.requests if r["path"] == "/small.mp4"] and list(folder.rglob("*")) == []


@pytest.mark.parametrize("chunk", [1, 3, 7, 64, 10_000])
def test_multipart_parts_are_counted_however_the_body_is_split(chunk):
    boundary = b"----gradio7f3a"
    parts = [b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="a.wav"\r\n\r\n' + b"\x00--" * 50 + b"\r\n" for _ in range(3)]
    body = b"".join(parts) + b"--" + boundary + b"--\r\n"
    counted = _Multipart(boundary)
    for start in range(0, len(body), chunk):
        counted.feed(body[start : start + chunk])
    assert (counted.parts, counted.size) == (3, len(body))  # the closing delimiter opens no part
