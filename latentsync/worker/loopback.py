"""The worker's file hand-off with its own Cog server, over HTTP on 127.0.0.1 only:

    GET /<secret>/inputs/<name>         a job's input, fetched from the storage and checked first
    PUT /<secret>/outputs/<name>        the prediction's output (Cog's --upload-url is <secret>/outputs/)

Every path starts with a random secret made at start-up, so no other process of the machine can
read a job's inputs or pass off an output: anything else is answered 404. Reads are bounded (a
body needs a Content-Length, not negative, at most the service's 2 GB), every connection times out,
and only a few are served at once. An output is stored by its sha256 (its Location names it), so
what the worker uploads to the storage is checked against what Cog sent.
"""

import hashlib
import hmac
import os
import re
import secrets
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from ..config import MAX_INPUT_BYTES

MAX_OUTPUT_BYTES = MAX_INPUT_BYTES  # an output larger than any input the service takes is refused
CONNECTION_TIMEOUT_S = 30.0  # a connection silent this long is closed
MAX_CONNECTIONS = 8  # Cog fetches two inputs and uploads one output per job
LEFTOVER_AGE_S = 3600  # outputs no job took are removed after this
BLOCK = 1024 * 1024


class LoopbackFiles:
    """Serves inputs to, and receives outputs from, the worker's Cog server (see the module doc)."""

    def __init__(self, folder):
        self.folder = Path(folder)
        self.outputs = self.folder / "outputs"
        self.outputs.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.secret = secrets.token_hex(16)
        self._inputs: dict[str, Path] = {}  # name -> local file
        self._lock = threading.Lock()
        self.httpd = _Server(("127.0.0.1", 0), _Handler)
        self.httpd.files = self
        self.port = self.httpd.server_address[1]
        self.base = f"http://127.0.0.1:{self.port}/{self.secret}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True, name="loopback-files")

    def start(self) -> "LoopbackFiles":
        """Serve (the port is bound from the start; Cog is started before any thread of ours)."""
        self._thread.start()
        return self

    @property
    def upload_url(self) -> str:
        """Cog's --upload-url."""
        return f"{self.base}/outputs/"

    def offer(self, path, name: str) -> str:
        """Serve the local file `path` as `name` (until withdrawn); its URL for Cog."""
        with self._lock:
            self._inputs[name] = Path(path)
        return f"{self.base}/inputs/{name}"

    def withdraw_all(self) -> None:
        with self._lock:
            self._inputs.clear()

    def output_of(self, url: str) -> tuple[Path, str] | None:
        """The local file and sha256 of an output Cog uploaded here (from the URL it reported), else None."""
        match = re.fullmatch(re.escape(self.base) + r"/outputs/([0-9a-f]{64})/[A-Za-z0-9._-]+", url or "")
        path = self.outputs / match.group(1) if match else None
        return (path, match.group(1)) if path is not None and path.is_file() else None

    def remove_leftovers(self, max_age_s: float = LEFTOVER_AGE_S) -> None:
        """Remove outputs older than `max_age_s` (uploads whose job was lost or never reported)."""
        for path in self.outputs.iterdir():
            try:
                if time.time() - path.stat().st_mtime > max_age_s:
                    path.unlink(missing_ok=True)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        if self._thread.is_alive():
            self.httpd.shutdown()
            self._thread.join(timeout=10)
        self.httpd.server_close()

    # ---- requests ----------------------------------------------------------------------------

    def route(self, path: str) -> tuple[str, str] | None:
        """(kind, name) of a request path that carries the secret, else None."""
        match = re.fullmatch(r"/([0-9a-f]{32})/(inputs|outputs)/([A-Za-z0-9._-]{1,200})", path.split("?", 1)[0])
        if match is None or not hmac.compare_digest(match.group(1), self.secret):
            return None
        return match.group(2), match.group(3)

    def input_file(self, name: str) -> Path | None:
        with self._lock:
            return self._inputs.get(name)

    def receive(self, name: str, reader, length: int) -> tuple[int, dict]:
        """Store an output by its content; answer with its URL in Location."""
        if length > MAX_OUTPUT_BYTES:
            return 413, {}
        digest = hashlib.sha256()
        handle, partial = tempfile.mkstemp(dir=self.outputs, prefix=".", suffix=".part")
        try:
            with os.fdopen(handle, "wb") as file:
                left = length
                while left:
                    block = reader.read(min(BLOCK, left))
                    if not block:
                        return 400, {}  # the body ended early
                    digest.update(block)
                    file.write(block)
                    left -= len(block)
            os.replace(partial, self.outputs / digest.hexdigest())
        finally:
            Path(partial).unlink(missing_ok=True)
        return 201, {"Location": f"{self.base}/outputs/{digest.hexdigest()}/{name.lstrip('.') or 'output'}"}


class _Server(ThreadingHTTPServer):
    """At most MAX_CONNECTIONS connections at once; more are closed at once."""

    daemon_threads = True

    def __init__(self, *args):
        super().__init__(*args)
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

    def process_request(self, request, client_address):
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = CONNECTION_TIMEOUT_S  # on the socket: a stalled request is dropped

    def log_message(self, *args):  # paths carry the secret: no access log
        pass

    def do_GET(self):
        files = self.server.files
        route = files.route(self.path)
        path = files.input_file(route[1]) if route and route[0] == "inputs" else None
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

    def do_PUT(self):
        route = self.server.files.route(self.path)
        if route is None or route[0] != "outputs":
            return self._reply(404, "not found")
        length = self._length()
        if length is None:
            return self._reply(411, "a Content-Length (0 or more) is required")
        status, headers = self.server.files.receive(route[1], self.rfile, length)
        self._reply(status, "stored" if status == 201 else "refused", headers)

    def do_POST(self):
        self._reply(404, "not found")

    def _length(self) -> int | None:
        """The request's Content-Length; None if missing, not a number or negative."""
        try:
            length = int(self.headers["Content-Length"])
        except (TypeError, ValueError):
            return None
        return length if length >= 0 else None

    def _reply(self, status: int, message: str, headers: dict | None = None) -> None:
        body = message.encode()
        self.send_response(status)
        for name, value in {"Content-Type": "text/plain; charset=utf-8", "Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)
        if status >= 400:
            self.close_connection = True  # the body may not have been read
