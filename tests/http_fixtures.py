"""A real HTTP file server on 127.0.0.1 for download tests, with range support and faults on demand,
and a manifest of tiny random-weight models served from it."""

import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from latentsync.files import sha256_of
from tests.conftest import SHARED


@dataclass
class Faults:
    """Per URL path: drop the connection after N bytes of the next longer response (once), serve
    corrupted bytes, fail with a status for the first K requests, always fail requests for a
    range starting at a given offset, send N bytes more than asked in every answer (counted in
    its Content-Length: a lying length), ignore Range headers, or send no Content-Length (the
    body then ends when the connection closes)."""

    drop_after: dict = field(default_factory=dict)
    corrupt: set = field(default_factory=set)
    fail_first: dict = field(default_factory=dict)  # path -> (status, count)
    fail_range_start: dict = field(default_factory=dict)  # path -> byte offset
    extra_bytes: dict = field(default_factory=dict)  # path -> bytes added to every answer
    no_ranges: set = field(default_factory=set)
    no_length: set = field(default_factory=set)


class FileServer:
    """Serves a folder over HTTP with byte ranges; records every request."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.faults = Faults()
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                server._serve(self)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    def bytes_sent(self, path: str) -> int:
        return sum(r["sent"] for r in self.requests if r["path"] == path)

    def _serve(self, handler: BaseHTTPRequestHandler) -> None:
        quoted, _, query = handler.path.partition("?")
        path = unquote(quoted)
        record = {"path": path, "query": query, "authorization": handler.headers.get("Authorization"), "range": handler.headers.get("Range"), "sent": 0}
        with self._lock:
            self.requests.append(record)
            status, count = self.faults.fail_first.get(path, (None, 0))
            if count:
                self.faults.fail_first[path] = (status, count - 1)
        requested = None if path in self.faults.no_ranges else re.fullmatch(r"bytes=(\d+)-(\d*)", handler.headers.get("Range") or "")
        if count or (requested and self.faults.fail_range_start.get(path) == int(requested.group(1))):
            handler.send_error(status or 500)
            return
        file = (self.root / path.lstrip("/")).resolve()
        if not file.is_file() or self.root.resolve() not in file.parents:
            handler.send_error(404)
            return
        data = file.read_bytes()
        if path in self.faults.corrupt:
            data = bytes(b ^ 0xFF for b in data[:64]) + data[64:]
        start, end = 0, len(data) - 1
        if requested:
            start = int(requested.group(1))
            end = min(int(requested.group(2)), end) if requested.group(2) else end
            handler.send_response(206)
            handler.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
        else:
            handler.send_response(200)
        body = data[start : end + 1] + b"\0" * self.faults.extra_bytes.get(path, 0)
        handler.send_header("Accept-Ranges", "bytes")
        if path in self.faults.no_length:
            handler.close_connection = True
        else:
            handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        with self._lock:
            drop = self.faults.drop_after.get(path)
            if drop is not None and drop < len(body):
                del self.faults.drop_after[path]
                body = body[:drop]
            else:
                drop = None
        try:
            handler.wfile.write(body)
            record["sent"] = len(body)
            if drop is not None:
                handler.close_connection = True
        except (BrokenPipeError, ConnectionResetError):
            pass


TINY_FILES = {
    # file id -> (path in the weights dir, source in ../shared)
    "unet": ("tiny/latentsync_unet.pt", SHARED / "reference" / "unet_tiny.pt"),
    "whisper": ("tiny/whisper/tiny.pt", SHARED / "reference" / "whisper_tiny_random.pt"),
    "vae_config": ("tiny/vae/config.json", SHARED / "reference" / "vae_tiny" / "config.json"),
    "vae_weights": ("tiny/vae/diffusion_pytorch_model.safetensors", SHARED / "reference" / "vae_tiny" / "diffusion_pytorch_model.safetensors"),
    "mask": ("tiny/mask.png", SHARED / "assets" / "mask.png"),
}


def tiny_weights_manifest(folder: Path, base_url: str, versions=("1.5", "1.6")) -> Path:
    """Lay out the tiny random-weight models under `folder`/files for a FileServer and write a
    manifest pointing at `base_url` (with their real sizes and sha256). Returns the manifest path.

    Both versions use the tiny U-Net config at 64 px, so the whole product runs in seconds."""
    served = folder / "files"
    files = {}
    for role, (path, source) in TINY_FILES.items():
        (served / path).parent.mkdir(parents=True, exist_ok=True)
        (served / path).write_bytes(source.read_bytes())
        files[role] = {
            "path": path,
            "urls": [f"{base_url}/{path}"],
            "size": source.stat().st_size,
            "sha256": sha256_of(source),
            "license": "test",
        }
    config = folder / "unet_tiny.yaml"
    config.write_bytes((SHARED / "reference" / "unet_tiny.yaml").read_bytes())
    manifest = {
        "schema": 1,
        "files": files,
        "versions": {v: {"unet_config": config.name, "resolution": 64, "files": {role: role for role in files}} for v in versions},
    }
    path = folder / "manifest.json"
    path.write_text(json.dumps(manifest, indent=2))
    return path
