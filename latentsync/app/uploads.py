"""What reaches the web app from outside before any of our checks run, bounded as the service is:

- Gradio's upload route (`UploadLimits`): at most APP_FILES_PER_UPLOAD files of MAX_INPUT_BYTES
  in one request (Gradio itself takes a thousand files of any size a request).
- URL inputs (`VideoInput`, `FileInput`): an API client may pass a URL instead of uploading;
  Gradio would download it whole into memory. These components fetch it with `fetch_url`:
  public addresses only (as Gradio's own fetch), up to MAX_INPUT_BYTES, within APP_URL_FETCH_S.
"""

import asyncio
import re
import tempfile
from pathlib import Path
from urllib.parse import urljoin

import anyio
import gradio as gr
import httpx
import safehttpx
from gradio_client.utils import is_http_url_like, strip_invalid_filename_characters

from ..config import APP_FILES_PER_UPLOAD, APP_URL_FETCH_S, MAX_INPUT_BYTES

UPLOAD_ROUTE = "/gradio_api/upload"
FORM_OVERHEAD = 64 * 1024  # multipart headers and boundaries around the files
MAX_REDIRECTS = 5


class UploadLimits:
    """ASGI middleware for Gradio's upload route: a request carrying more than `max_files` files,
    or more than `max_files` x `max_bytes` in all, gets 413 with one sentence. A declared length
    is judged before anything is read; a body without one is counted as it streams in, and the
    files are counted by their multipart boundaries, so a refused request is cut short."""

    def __init__(self, app, max_files: int = APP_FILES_PER_UPLOAD, max_bytes: int = MAX_INPUT_BYTES):
        self.app, self.max_files = app, max_files
        self.max_body = max_files * max_bytes + FORM_OVERHEAD
        self.too_many = f"An upload may carry at most {max_files} files (the video and the speech)."
        self.too_big = f"An upload may carry at most {max_files} files of {max_bytes / 1024**3:g} GB."

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].endswith(UPLOAD_ROUTE):
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return await _refuse(send, self.too_big)
        boundary = re.search(rb'boundary="?([^";]+)"?', headers.get(b"content-type", b""))
        body = _Multipart(boundary.group(1) if boundary else None)
        refusal = None

        async def counted_receive():
            nonlocal refusal
            message = await receive()
            if message["type"] == "http.request" and refusal is None:
                body.feed(message.get("body", b""))
                if body.size > self.max_body:
                    refusal = self.too_big
                elif body.parts > self.max_files:
                    refusal = self.too_many
            # Past the limit, the app sees the client gone: it stops reading and writing the file.
            return {"type": "http.disconnect"} if refusal else message

        async def answer(message):
            if refusal is None:
                await send(message)

        try:
            await self.app(scope, counted_receive, answer)
        except Exception:
            if refusal is None:
                raise
        if refusal is not None:
            await _refuse(send, refusal)


class _Multipart:
    """Counts a multipart body's bytes and the parts opened so far, across chunk boundaries."""

    def __init__(self, boundary: bytes | None):
        self.delimiter = b"--" + boundary if boundary else None
        self.size = self.parts = 0
        self._tail = b""

    def feed(self, chunk: bytes) -> None:
        self.size += len(chunk)
        if self.delimiter is None:
            return
        data, start, found = self._tail + chunk, 0, -1
        while True:
            found = data.find(self.delimiter, start)
            if found < 0 or found + len(self.delimiter) + 2 > len(data):
                break
            end = found + len(self.delimiter)
            if data[end : end + 2] != b"--":  # "--boundary--" closes the body; anything else opens a part
                self.parts += 1
            start = end
        # Keep what may hold a delimiter cut in two (never one already counted).
        self._tail = data[found:] if found >= 0 else data[max(start, len(data) - len(self.delimiter) - 1) :]


async def _refuse(send, sentence: str) -> None:
    body = sentence.encode()
    await send({"type": "http.response.start", "status": 413, "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


async def fetch_url(url: str, folder: Path, max_bytes: int = MAX_INPUT_BYTES, public_only: bool = True, within_s: float = APP_URL_FETCH_S) -> Path:
    """Download a URL input into a new folder under `folder`: at most `max_bytes` (a declared
    larger size is refused before anything is read) within `within_s` seconds, following up to
    MAX_REDIRECTS redirects, each to a public address when `public_only`. Returns the file;
    raises ValueError (one sentence, naming the input, never the URL) and leaves nothing behind."""
    folder.mkdir(parents=True, exist_ok=True)
    name = strip_invalid_filename_characters(Path(httpx.URL(url).path).name) or "input"
    target = Path(tempfile.mkdtemp(dir=folder)) / name
    try:
        async with asyncio.timeout(within_s):
            await _download(url, target, max_bytes, public_only)
    except BaseException as error:
        target.unlink(missing_ok=True)
        target.parent.rmdir()
        if isinstance(error, TimeoutError):
            raise ValueError(f"The URL input did not download within {within_s:.0f} s; upload the file instead.") from None
        if isinstance(error, httpx.HTTPError):
            raise ValueError(f"The URL input could not be fetched ({type(error).__name__}); upload the file instead.") from None
        raise
    return target


async def _download(url: str, target: Path, max_bytes: int, public_only: bool) -> None:
    too_big = f"The URL input is larger than {max_bytes / 1024**3:g} GB, the limit per file."
    for _ in range(MAX_REDIRECTS + 1):
        transport = safehttpx.AsyncSecureTransport(await _public_address(url)) if public_only else None
        async with httpx.AsyncClient(transport=transport, timeout=30.0) as client, client.stream("GET", url) as response:
            if response.is_redirect:
                url = urljoin(str(response.url), response.headers["location"])
                continue
            if response.status_code != 200:
                raise ValueError(f"The URL input could not be fetched (HTTP {response.status_code}).")
            if int(response.headers.get("content-length") or 0) > max_bytes:
                raise ValueError(too_big)
            written = 0
            async with await anyio.open_file(target, "wb") as file:
                async for chunk in response.aiter_bytes():  # decoded: a compressed body counts at its real size
                    written += len(chunk)
                    if written > max_bytes:
                        raise ValueError(too_big)
                    await file.write(chunk)
            return
    raise ValueError(f"The URL input redirects more than {MAX_REDIRECTS} times.")


async def _public_address(url: str) -> str:
    """The public IP address `url`'s host resolves to (the address then connected to, so a second
    lookup cannot point elsewhere); ValueError for loopback, private and other local addresses."""
    try:
        return await safehttpx.async_validate_url(httpx.URL(url).host)
    except ValueError:
        raise ValueError("The URL input is not on a public address; the web app fetches only from the internet: upload the file instead.") from None


class _FetchedWithinLimits:
    """For an input component: a URL value is fetched with `fetch_url` instead of Gradio's fetch."""

    async def async_move_resource_to_block_cache(self, url_or_file_path):
        if isinstance(url_or_file_path, str) and is_http_url_like(url_or_file_path):
            try:
                path = str(await fetch_url(url_or_file_path, Path(self.GRADIO_CACHE) / "fetched"))
            except ValueError as error:
                raise gr.Error(str(error), print_exception=False) from None
            self.temp_files.add(path)
            return path
        return await super().async_move_resource_to_block_cache(url_or_file_path)


class VideoInput(_FetchedWithinLimits, gr.Video):
    def get_block_name(self) -> str:
        return "video"  # the page draws it as Gradio's video box


class FileInput(_FetchedWithinLimits, gr.File):
    def get_block_name(self) -> str:
        return "file"
