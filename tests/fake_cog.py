"""A small stand-in for Cog's HTTP server (coglet 0.23.1) on 127.0.0.1, for the fleet's fault
cases that the real server cannot be made to show quickly: a restart between two health checks,
a server that holds an old copy of a job, a port that stops answering and comes back.

It speaks the parts of Cog's API the fleet uses, as the real one does (see
tests/test_fleet.py for the real one): `GET /health-check` (READY or BUSY, and setup.started_at),
`PUT /predictions/<id>` with `Prefer: respond-async` (202 `{"id", "status": "starting"}`, or the
running prediction's state when the id is in flight, 409 when all `slots` are busy), webhooks
`start` and `completed` with `Authorization: Bearer <token>`, output uploaded with a PUT to
`<upload_url>output.mp4` (the answer's Location becomes the output), `POST .../cancel` (200, or
404 when not in flight). Its "model" fetches both inputs and returns a few bytes naming the
prediction and its number on this server.
"""

import contextlib
import json
import re
import socket
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx


class FakeCog:
    def __init__(self, token: str, upload_url: str, run_seconds: float = 0.5, port: int = 0):
        self.token, self.upload_url, self.run_seconds = token, upload_url, run_seconds
        self.boot = _now()
        self.running: dict[str, dict] = {}
        self.started: list[str] = []  # ids of the predictions it started, in order
        self.puts: list[str] = []  # ids of every PUT it answered
        self.hold_webhooks = threading.Event()  # while set, completed predictions wait before their webhook
        self.slow_cancel = False  # answer a cancel with 200 but let the prediction run on (a worker slow to stop)
        self.slots = 1  # COG_MAX_CONCURRENCY
        self._lock = threading.Lock()
        self._connections: set = set()
        self._port = port
        self.httpd = None
        self.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._port}"

    def start(self) -> None:
        """Listen (again, on the same port)."""
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self._port), _handler(self))
        self.httpd.daemon_threads = True
        self._port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop answering (open connections cut, new ones refused); running predictions go on, as
        on a cut-off machine."""
        self.httpd.shutdown()
        self.httpd.server_close()
        for connection in list(self._connections):
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def restart(self) -> None:
        """A new process on the same port: a new boot, no predictions."""
        with self._lock:
            self.boot, self.running = _now(), {}

    # ---- the API -----------------------------------------------------------------------------

    def health(self) -> dict:
        with self._lock:
            return {"status": "BUSY" if len(self.running) >= self.slots else "READY", "setup": {"started_at": self.boot, "status": "succeeded"}}

    def put(self, prediction_id: str, request: dict) -> tuple[int, dict]:
        with self._lock:
            self.puts.append(prediction_id)
            if prediction_id in self.running:
                record = self.running[prediction_id]
                return 202, {"id": prediction_id, "input": record["input"], "logs": "", "metrics": {}, "status": record["status"]}
            if len(self.running) >= self.slots:
                return 409, {"error": "At capacity - all prediction slots busy", "status": "failed"}
            record = {"input": request["input"], "webhook": request.get("webhook"), "status": "starting", "boot": self.boot, "number": len(self.started)}
            self.running[prediction_id] = record
            self.started.append(prediction_id)
        threading.Thread(target=self._predict, args=(prediction_id, record), daemon=True).start()
        return 202, {"id": prediction_id, "status": "starting"}

    def cancel(self, prediction_id: str) -> int:
        with self._lock:
            record = self.running.get(prediction_id) if self.slow_cancel else self.running.pop(prediction_id, None)
        if record is None:
            return 404
        if self.slow_cancel:
            return 200
        record["status"] = "canceled"
        self._webhook(record, {"id": prediction_id, "status": "canceled"})
        return 200

    def _predict(self, prediction_id: str, record: dict) -> None:
        try:
            for name in ("video", "audio"):
                httpx.get(record["input"][name], timeout=10).raise_for_status()
        except httpx.HTTPError as error:
            with self._lock:
                self.running.pop(prediction_id, None)
            return self._webhook(record, {"id": prediction_id, "status": "failed", "error": f"could not fetch the {name}: {error}"})
        record["status"] = "processing"
        self._webhook(record, {"id": prediction_id, "status": "processing", "logs": ""})
        time.sleep(self.run_seconds)
        while self.hold_webhooks.is_set():
            time.sleep(0.05)
        if record["status"] == "canceled" or record["boot"] != self.boot:
            return  # canceled, or lost in a restart
        content = f"output {record['number']} of {prediction_id}".encode()
        with self._lock:
            self.running.pop(prediction_id, None)
        try:
            output = httpx.put(self.upload_url + "output.mp4", content=content, headers={"Content-Type": "video/mp4"}).headers["location"]
        except httpx.HTTPError:
            output = None  # as Cog: the upload failed, the prediction has no output
        self._webhook(record, {"id": prediction_id, "status": "succeeded", "output": output, "logs": "", "metrics": {"predict_time": self.run_seconds}})

    def _webhook(self, record: dict, payload: dict) -> None:
        if record["webhook"]:
            try:
                httpx.post(record["webhook"], json=payload, headers={"Authorization": f"Bearer {self.token}"}, timeout=10)
            except httpx.HTTPError:
                pass


def _handler(cog: FakeCog):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def setup(self):
            super().setup()
            cog._connections.add(self.connection)

        def finish(self):
            cog._connections.discard(self.connection)
            super().finish()

        def do_GET(self):
            self._reply(*((200, cog.health()) if self.path == "/health-check" else (404, {})))

        def do_PUT(self):
            match = re.fullmatch(r"/predictions/([^/]+)", self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self._reply(*(cog.put(match.group(1), body) if match else (404, {})))

        def do_POST(self):
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            match = re.fullmatch(r"/predictions/([^/]+)/cancel", self.path)
            self._reply(cog.cancel(match.group(1)) if match else 404, {})

        def _reply(self, status: int, payload: dict) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{uuid.uuid4().int % 10**9:09d}+00:00"
