"""The HTTP endpoint a fleet's Cog servers call back, run by the client (`callback_url`):

    GET  /files/<sha256><.ext>            an input, by content (only files this client registered)
    PUT  /uploads/<name>                  an output (start the servers with --upload-url <callback_url>/uploads/)
    GET  /uploads/<sha256>/<name>         an uploaded output
    POST /webhooks/<job key>/<dispatch>   a prediction's webhook (Cog's `webhook`, Authorization: Bearer <fleet secret>)

Inputs and outputs travel as files, never as base64. Uploads are stored by content and only
count once an authenticated webhook of the job's current dispatch names them (the Location an
upload answers with becomes the prediction's output); a dispatch token is random and changes
whenever a job moves to another server, so a late webhook from a lost server changes nothing.
Nothing here logs request paths or echoes a secret.
"""

import hashlib
import hmac
import logging
import os
import re
import tempfile
import threading
import time
from base64 import b64decode
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

from ..config import MAX_INPUT_BYTES
from ..files import sha256_of
from .jobs import News
from .webhooks import apply_news, parse_prediction

MAX_WEBHOOK_BYTES = 64 * 1024 * 1024  # servers without --upload-url send outputs inline (base64)
ORPHAN_UPLOAD_AGE_S = 24 * 3600  # uploads no job took are removed after this (at the next start)
BLOCK = 1024 * 1024
logger = logging.getLogger("latentsync.client")


class Exchange:
    """Serves inputs, receives outputs and webhooks for a fleet (see the module doc).

    Args:
        folder: where uploaded outputs are kept.
        store: the job store the webhooks update.
        callback_url: the base URL the servers reach this endpoint at (default http://127.0.0.1:7000).
        listen: (host, port) to bind (default: the callback URL's port, on 127.0.0.1 when the URL is
            local, else on all interfaces).
        secret: the servers' WEBHOOK_AUTH_TOKEN; webhooks without it are refused (401).
        on_news: called with a job key after a webhook changed that job.
    """

    def __init__(self, folder, store, callback_url=None, listen=None, secret=None, on_news=None):
        self.url = (callback_url or "http://127.0.0.1:7000").rstrip("/")
        parts = urlsplit(self.url)
        local = parts.hostname in ("127.0.0.1", "localhost", "::1")
        self.folder = Path(folder)
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.store, self.secret, self.on_news = store, secret, on_news or (lambda key: None)
        self._files: dict[str, Path] = {}  # sha256 -> registered input
        self._digests: dict[tuple, str] = {}  # (path, size, mtime) -> sha256
        self._lock = threading.Lock()
        self._remove_orphans()
        address = listen or ("127.0.0.1" if local else "0.0.0.0", parts.port or 80)
        try:
            self.httpd = ThreadingHTTPServer(address, _Handler)
        except OSError as error:
            raise OSError(f"Cannot listen on {address[0]}:{address[1]} for the fleet's callbacks ({error.strerror}); is another client using this callback URL?") from None
        self.httpd.daemon_threads = True
        self.httpd.exchange = self
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="fleet-exchange")
        self._thread.start()

    @property
    def upload_url(self) -> str:
        """What the servers' --upload-url must be."""
        return f"{self.url}/uploads/"

    def input_url(self, path) -> str:
        """The URL the servers fetch a local input file from (registered by content)."""
        path = Path(path).resolve()
        info = path.stat()
        with self._lock:
            digest = self._digests.get((path, info.st_size, info.st_mtime_ns))
        if digest is None:
            digest = sha256_of(path)
        with self._lock:
            self._digests[(path, info.st_size, info.st_mtime_ns)] = digest
            self._files[digest] = path
        extension = path.suffix.lower() if re.fullmatch(r"\.[a-z0-9]{1,8}", path.suffix.lower()) else ""
        return f"{self.url}/files/{digest}{extension}"

    def webhook_url(self, key: str, attempt: str) -> str:
        return f"{self.url}/webhooks/{key}/{attempt}"

    def upload_sha256(self, url: str) -> str | None:
        """The content hash of one of this endpoint's upload URLs (to verify a download), else None."""
        match = re.fullmatch(re.escape(self.url) + r"/uploads/([0-9a-f]{64})/[^/]+", url)
        return match.group(1) if match else None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self._thread.join(timeout=10)

    # ---- requests ----------------------------------------------------------------------------

    def input_file(self, name: str) -> Path | None:
        with self._lock:
            return self._files.get(name.split(".", 1)[0])

    def upload_file(self, name: str) -> Path | None:
        match = re.fullmatch(r"([0-9a-f]{64})/[^/]+", name)
        path = self.folder / match.group(1) if match else None
        return path if path is not None and path.is_file() else None

    def receive_upload(self, name: str, reader, length: int) -> tuple[int, dict]:
        """Store an uploaded output by content; answer with its URL in Location."""
        if length > MAX_INPUT_BYTES:
            return 413, {}
        digest = self._store_blob(lambda write: _copy(reader, length, write))
        if digest is None:
            return 400, {}
        return 201, {"Location": f"{self.url}/uploads/{digest}/{_safe_name(name)}"}

    def receive_webhook(self, key: str, attempt: str, headers, reader, length: int) -> tuple[int, str]:
        """Apply a server's webhook to the job of `key`, fenced by its dispatch token `attempt`."""
        if self.secret and not hmac.compare_digest(headers.get("Authorization", "").encode(), f"Bearer {self.secret}".encode()):
            return 401, "rejected: missing or wrong bearer token"
        if length > MAX_WEBHOOK_BYTES:
            reason = "The server sent its output inline and it is too large; start it with --upload-url " + self.upload_url
            return 413, self._apply(News(key, "failed", error=reason), attempt)[1]
        try:
            text = reader.read(length).decode("utf-8")
        except UnicodeDecodeError:
            return 400, "rejected: the body is not UTF-8 text"
        news = parse_prediction(text)
        if isinstance(news, tuple):
            return news
        if news.prediction_id != key:
            return 400, "rejected: the prediction is not this URL's job"
        if news.output_url and news.output_url.startswith("data:"):
            news = News(key, news.status, self._inline_output(news.output_url), news.error)
        if news.status == "succeeded" and not news.output_url:  # so a re-run tries again
            news = News(key, "failed", error="The server finished, but its output upload did not arrive (check its --upload-url).")
        return self._apply(news, attempt)

    def _apply(self, news: News, attempt: str) -> tuple[int, str]:
        status, message = apply_news(self.store, news, attempt=attempt)
        if message.startswith("updated"):
            self.on_news(news.prediction_id)
        return status, message

    def _inline_output(self, data_uri: str) -> str:
        digest = self._store_blob(lambda write: write(b64decode(data_uri.split(",", 1)[1])))
        return f"{self.url}/uploads/{digest}/output.mp4"

    def _store_blob(self, fill) -> str | None:
        """Write a blob through `fill(write)` into a temporary, then move it to its sha256 name."""
        digest = hashlib.sha256()
        handle, partial = tempfile.mkstemp(dir=self.folder, suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:

                def write(data: bytes) -> None:
                    digest.update(data)
                    file.write(data)

                if fill(write) is False:
                    return None
            os.replace(partial, self.folder / digest.hexdigest())
            return digest.hexdigest()
        finally:
            Path(partial).unlink(missing_ok=True)

    def _remove_orphans(self) -> None:
        """Let go of uploads a job has taken (linked into the outputs) and of day-old ones no job took."""
        for path in self.folder.iterdir():
            info = path.stat()
            if info.st_nlink > 1 or time.time() - info.st_mtime > ORPHAN_UPLOAD_AGE_S:
                path.unlink(missing_ok=True)


def _copy(reader, length: int, write) -> bool:
    """Copy exactly `length` bytes from `reader`; False if the body ended early."""
    left = length
    while left:
        block = reader.read(min(BLOCK, left))
        if not block:
            return False
        write(block)
        left -= len(block)
    return True


def _safe_name(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name.rsplit("/", 1)[-1])[:100].lstrip(".")
    return name or "output.mp4"


class _Handler(BaseHTTPRequestHandler):
    """HTTP for an Exchange (`self.server.exchange`)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # paths carry dispatch tokens: no access log
        pass

    def do_GET(self):
        exchange, path = self.server.exchange, self.path.split("?", 1)[0]
        if path.startswith("/files/"):
            return self._send_file(exchange.input_file(path[len("/files/"):]))
        if path.startswith("/uploads/"):
            return self._send_file(exchange.upload_file(path[len("/uploads/"):]))
        self._reply(404, "not found")

    def do_PUT(self):
        path, length = self.path.split("?", 1)[0], self._length()
        if not path.startswith("/uploads/") or length is None:
            return self._reply(404 if length is not None else 411, "PUT /uploads/<name> with a Content-Length")
        status, headers = self.server.exchange.receive_upload(path[len("/uploads/"):], self.rfile, length)
        self._reply(status, "stored" if status == 201 else "refused", headers)

    def do_POST(self):
        match = re.fullmatch(r"/webhooks/([0-9a-f]{64})/([0-9a-f]{32})", self.path.split("?", 1)[0])
        length = self._length()
        if match is None or length is None:
            return self._reply(404 if match is None else 411, "POST /webhooks/<job>/<dispatch> with a Content-Length")
        self._reply(*self.server.exchange.receive_webhook(*match.groups(), self.headers, self.rfile, length))

    def _length(self) -> int | None:
        try:
            return int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            return None

    def _send_file(self, path: Path | None) -> None:
        if path is None or not path.is_file():
            return self._reply(404, "not found")
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(path.stat().st_size))
        self.end_headers()
        with open(path, "rb") as file:
            try:
                for block in iter(lambda: file.read(BLOCK), b""):
                    self.wfile.write(block)
            except (BrokenPipeError, ConnectionResetError):
                self.close_connection = True

    def _reply(self, status: int, message: str, headers: dict | None = None) -> None:
        body = message.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        if status >= 400:
            self.close_connection = True  # the body may not have been read
