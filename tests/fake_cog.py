"""A small stand-in for Cog's HTTP server (coglet 0.23.1) on 127.0.0.1, for the worker's fault
cases that the real server cannot be made to show quickly: a prediction held as long as a test
needs, a server busy with another prediction, an old copy of the same prediction still running,
a server that dies mid-prediction.

It speaks the parts of Cog's API the worker uses, as the real one does (see tests/test_worker.py
for the real one): `GET /health-check` (READY or BUSY), `PUT /predictions/<id>` without
`Prefer: respond-async`, held until the prediction ends and answered with its record (200
succeeded, failed or canceled), 202 with the running prediction's state when the id is in
flight, 409 when its slot is busy, 422 with Cog's `detail` for an input out of the schema's range
(guidance_scale above 3); `POST /predictions/<id>/cancel` (200, or 404 when not in flight). Its
"model" fetches both inputs, fails like predict.py on a video that is not one, and returns a few
bytes naming the prediction, its number on this server and its inputs' hashes: uploaded to
`upload_url` (Cog's --upload-url: the answer's Location becomes the output) or inline as a data
URI without one.
"""

import base64
import hashlib
import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx

NOT_A_VIDEO = b"definitely not a video"


class FakeCog:
    def __init__(self, upload_url: str | None = None, run_seconds: float = 0.3):
        self.upload_url, self.run_seconds = upload_url, run_seconds
        self.running: dict[str, dict] = {}
        self.started: list[str] = []  # ids of the predictions it started, in order
        self.canceled: list[str] = []
        self.hold = threading.Event()  # while set, predictions do not finish
        self.alive = True
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def stop(self) -> None:
        """Stop answering; held requests get their connection closed (a server that died)."""
        self.alive = False
        self.hold.clear()
        self.httpd.shutdown()
        self.httpd.server_close()

    def health(self) -> dict:
        with self._lock:
            return {"status": "BUSY" if self.running else "READY", "setup": {"status": "succeeded", "logs": ""}}

    def predict(self, prediction_id: str, request: dict) -> tuple[int, dict]:
        guidance = request["input"].get("guidance_scale", 1.5)
        if guidance > 3:
            return 422, {"detail": [{"loc": ["body", "input", "guidance_scale"], "msg": f"{guidance} is greater than the maximum of 3.0", "type": "value_error"}]}
        with self._lock:
            if prediction_id in self.running:
                record = self.running[prediction_id]
                return 202, {"id": prediction_id, "input": record["input"], "status": "processing"}
            if self.running:
                return 409, {"error": "At capacity - all prediction slots busy", "status": "failed"}
            record = {"input": request["input"], "canceled": threading.Event(), "number": len(self.started)}
            self.running[prediction_id] = record
            self.started.append(prediction_id)
        try:
            return 200, self._run(prediction_id, record)
        finally:
            with self._lock:
                self.running.pop(prediction_id, None)

    def cancel(self, prediction_id: str) -> int:
        with self._lock:
            record = self.running.get(prediction_id)
        if record is None:
            return 404
        self.canceled.append(prediction_id)
        record["canceled"].set()
        return 200

    def _run(self, prediction_id: str, record: dict) -> dict:
        while self.hold.is_set():  # held before it even reads its inputs: an old copy stays running, whatever they are
            if record["canceled"].wait(0.02):
                return {"id": prediction_id, "status": "canceled", "logs": ""}
        digests = {}
        for name in ("video", "audio"):
            try:
                response = httpx.get(record["input"][name], timeout=10)
                response.raise_for_status()
            except httpx.HTTPError as error:
                return {"id": prediction_id, "status": "failed", "error": f"Input validation error: {type(error).__name__}"}
            if name == "video" and response.content.startswith(NOT_A_VIDEO):
                return {"id": prediction_id, "status": "failed", "error": "Prediction failed: Async prediction failed: MediaError: The video input is not a readable video file (Invalid data found when processing input)."}
            digests[name] = hashlib.sha256(response.content).hexdigest()[:12]
        deadline = time.time() + self.run_seconds
        while time.time() < deadline or self.hold.is_set():
            if record["canceled"].wait(0.02):
                return {"id": prediction_id, "status": "canceled", "logs": ""}
            if not self.alive:
                raise ConnectionAbortedError("the server died")
        content = f"output {record['number']} of {prediction_id} from {digests['video']} and {digests['audio']}".encode()
        if self.upload_url:
            output = httpx.put(self.upload_url + "output.mp4", content=content, headers={"Content-Type": "video/mp4"}, timeout=25).headers["location"]
        else:
            output = "data:video/mp4;base64," + base64.b64encode(content).decode()
        return {"id": prediction_id, "status": "succeeded", "output": output, "logs": "", "metrics": {"predict_time": self.run_seconds}}


def _handler(cog: FakeCog):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            self._reply(*((200, cog.health()) if self.path == "/health-check" else (404, {})))

        def do_PUT(self):
            match = re.fullmatch(r"/predictions/([^/]+)", self.path)
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            try:
                self._reply(*(cog.predict(match.group(1), body) if match else (404, {})))
            except ConnectionAbortedError:
                self.close_connection = True

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
