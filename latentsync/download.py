"""Fetching one file over HTTP into a `.part` file, carefully.

The server's declared size (Content-Range's total, or Content-Length) must match the expected
size before a byte is fetched, and no more than that size is ever written, so a bad mirror cannot
fill the disk. With range support the file comes in parallel chunks, resumable after an
interruption (a sidecar file records the finished chunks); requests are retried with backoff on
network errors and 429/5xx. `pget` (Replicate's parallel downloader) is used when installed.
Credentials in URLs (user:password@, query values) never reach a log line or an error: `redact`.
"""

import logging
import os
import random
import shutil
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import httpx

from .config import weights_base_url
from .files import read_json, write_json_atomically
from .redaction import mask_credentials

logger = logging.getLogger("latentsync.weights")

CHUNK_SIZE = 16 * 1024 * 1024
PARALLEL_CHUNKS = 8


class _Redacting(logging.Filter):
    """Masks credentials in the request lines httpx logs at INFO (its URLs are full)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = redact(record.getMessage()), ()
        return True


logging.getLogger("httpx").addFilter(_Redacting())


class DownloadError(RuntimeError):
    """A file could not be fetched; the message names it, its (redacted) URL and the reason."""


def fetch(url: str, partial: Path, size: int | None, what: str) -> None:
    """Download `url` into `partial`, never writing more than `size` bytes (when known). `what`
    names the file and its redacted URL in messages."""
    with httpx.Client(follow_redirects=True, timeout=httpx.Timeout(30.0, read=120.0)) as client:
        status, total = _declared_size(client, url, size, what)
        if shutil.which("pget"):
            _pget(url, partial, size, what)
        elif status != 206 or total is None:
            _retrying(lambda: _fetch_whole(client, url, partial, total, what), what)
        else:
            _fetch_ranges(client, url, partial, total, what)


def discard(partial: Path) -> None:
    """Remove a `.part` file and its sidecar."""
    partial.unlink(missing_ok=True)
    _sidecar(partial).unlink(missing_ok=True)


def redact(text: str) -> str:
    """`text` with the credentials of URLs masked, and the secret parts of
    LATENTSYNC_WEIGHTS_BASE_URL wherever they appear."""
    base = urlsplit(weights_base_url() or "")
    return mask_credentials(text, [base.username, base.password, *(value for _, value in parse_qsl(base.query))])


def _declared_size(client: httpx.Client, url: str, size: int | None, what: str) -> tuple[int, int | None]:
    """Ask for the first byte; returns the status and the file's size as the server declares it
    (Content-Range's total, or Content-Length when ranges are not supported). A size other than
    expected `size` is refused before anything is downloaded."""

    def probe():
        with client.stream("GET", url, headers={"Range": "bytes=0-0"}) as response:
            _check(response, what)
            return response.status_code, response.headers

    status, headers = _retrying(probe, what)
    declared = headers.get("content-range", "").rpartition("/")[2] if status == 206 else headers.get("content-length", "")
    total = int(declared) if declared.isdigit() else None
    if size is not None and total is not None and total != size:
        raise DownloadError(f"{what}: the server declares {total} bytes, the manifest {size}; nothing was downloaded.")
    return status, (size if size is not None else total)


def _pget(url: str, partial: Path, size: int | None, what: str) -> None:
    """Fetch with pget, within a time limit of 10 minutes plus 1 MB/s."""
    try:
        result = subprocess.run(["pget", "-f", url, str(partial)], capture_output=True, text=True, timeout=600 + (size or 0) / 1e6)
    except subprocess.TimeoutExpired:
        result = subprocess.CompletedProcess([], returncode=-9, stderr="timed out")
    if result.returncode != 0:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{what}: pget failed: {redact(result.stderr.strip()[-300:])}")


def _sidecar(partial: Path) -> Path:
    return partial.with_name(partial.name + ".json")


def _retrying(action, what: str, attempts: int = 5, base_delay: float = 0.5):
    """Run `action` with exponential backoff and jitter on network errors and 429/5xx."""
    for attempt in range(1, attempts + 1):
        try:
            return action()
        except (httpx.TransportError, _RetryableStatus) as error:
            if attempt == attempts:
                raise DownloadError(f"{what}: {redact(str(error))} (gave up after {attempts} attempts)") from error
            delay = base_delay * 2 ** (attempt - 1) * (1 + random.random())
            logger.info("%s: %s; retrying in %.1f s", what, redact(str(error)), delay)
            time.sleep(delay)


class _RetryableStatus(Exception):
    pass


def _check(response: httpx.Response, what: str) -> None:
    if response.status_code == 429 or response.status_code >= 500:
        raise _RetryableStatus(f"HTTP {response.status_code}")
    if response.status_code >= 400:
        raise DownloadError(f"{what}: HTTP {response.status_code}")


def _fetch_ranges(client: httpx.Client, url: str, partial: Path, total: int, what: str) -> None:
    """Parallel range requests into a preallocated `.part` file, resuming the chunks its sidecar
    file lists as done."""
    chunks = [(start, min(start + CHUNK_SIZE, total) - 1) for start in range(0, total, CHUNK_SIZE)]
    sidecar = _sidecar(partial)
    state = read_json(sidecar)
    if state.get("url") != url or state.get("total") != total or not partial.exists():
        state = {"url": url, "total": total, "done": []}
        with open(partial, "wb") as file:
            file.truncate(total)
        write_json_atomically(sidecar, state)
    done, lock = set(state["done"]), threading.Lock()

    def fetch_chunk(chunk):
        start, end = chunk
        _retrying(lambda: _fetch_range(client, url, partial, start, end, what), what)
        with lock:
            done.add(start)
            write_json_atomically(sidecar, {"url": url, "total": total, "done": sorted(done)})

    todo = [chunk for chunk in chunks if chunk[0] not in done]
    with ThreadPoolExecutor(max_workers=PARALLEL_CHUNKS) as pool:
        list(pool.map(fetch_chunk, todo))
    sidecar.unlink(missing_ok=True)


def _fetch_whole(client: httpx.Client, url: str, partial: Path, limit: int | None, what: str) -> None:
    """The whole file in one stream, stopped (and removed) at the first byte past `limit`."""
    with client.stream("GET", url) as response:
        _check(response, what)
        written = 0
        with open(partial, "wb") as file:
            for block in response.iter_bytes(1024 * 1024):
                if limit is not None and written + len(block) > limit:
                    break
                file.write(block)
                written += len(block)
            else:
                return
    partial.unlink(missing_ok=True)
    raise DownloadError(f"{what}: the server sent more than the manifest's {limit} bytes; the download was stopped and not kept.")


def _fetch_range(client: httpx.Client, url: str, partial: Path, start: int, end: int, what: str) -> None:
    """Bytes [start, end] into their place in `partial`; a server sending more is cut off."""
    with client.stream("GET", url, headers={"Range": f"bytes={start}-{end}"}) as response:
        _check(response, what)
        if response.status_code != 206:
            raise DownloadError(f"{what}: the server ignored a range request (HTTP {response.status_code})")
        position = start
        with open(partial, "r+b") as file:
            for block in response.iter_bytes(1024 * 1024):
                if position + len(block) > end + 1:
                    raise DownloadError(f"{what}: the server sent more than the {end - start + 1} bytes asked for (bytes {start}-{end}); the download was stopped.")
                os.pwrite(file.fileno(), block, position)
                position += len(block)
        if position != end + 1:
            raise httpx.RemoteProtocolError(f"connection closed after {position - start} of {end - start + 1} bytes")
