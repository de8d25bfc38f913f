"""A local fake of the parts of the Replicate HTTP API the client uses, on 127.0.0.1.

It is driven by the real `replicate` package. Predictions "run" a stand-in model (the real
lip-sync model cannot run behind a fake API): ffmpeg re-encodes the input video to the audio's
length at 25 fps with that audio (with segments: to the video's own length, with its own audio),
so outputs are real mp4 files; a plan (plan_only) is a stand-in plan as JSON, every frame of the
segments (or of the audio) to regenerate, priced by the real `latentsync.estimate`. Completed predictions are
delivered to their webhook, signed with a real `whsec_` secret (Standard Webhooks). Faults can
be injected: statuses with Retry-After, and connections dropped before or after a create.
"""

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import subprocess
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from email.parser import BytesParser
from email.policy import default as email_policy
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx

from latentsync.estimate import estimate
from latentsync.media.probe import probe

MODEL_VERSION = "a" * 64


def sign(secret: str, webhook_id: str, timestamp: int, body: str) -> str:
    key = base64.b64decode(secret.split("_", 1)[1])
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.{body}".encode(), hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


@dataclass
class Faults:
    """Queued faults, consumed in order, per request kind ("create", "get", "upload", ...).

    Each entry: ("status", code, retry_after) to refuse the request, ("drop_before",) to close
    the connection without doing anything, ("drop_after",) to do the work, then close without a
    reply, ("delay", seconds) to wait that long before doing the work (a slow API)."""

    queued: dict = field(default_factory=dict)

    def add(self, kind: str, *entries) -> None:
        self.queued.setdefault(kind, []).extend(entries)

    def take(self, kind: str):
        entries = self.queued.get(kind)
        return entries.pop(0) if entries else None


class FakeReplicate:
    def __init__(self, run_seconds: float = 0.3):
        self.secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
        self.run_seconds = run_seconds
        self.predictions: dict[str, dict] = {}
        self.files: dict[str, tuple[bytes, str, str]] = {}
        self.creates: list[dict] = []
        self.deliveries: list[httpx.Response] = []
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.fail_next = 0  # the next N predictions fail
        self.fail_once_if: list = []  # predicates on a prediction's input: the first match fails (once each)
        self.faults = Faults()
        self._lock = threading.Lock()
        self._folder = Path(tempfile.mkdtemp(prefix="fake-replicate-"))
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                fake._dispatch(self, "GET")

            def do_POST(self):
                fake._dispatch(self, "POST")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()

    # ---- HTTP plumbing -----------------------------------------------------------------------

    def _dispatch(self, handler: BaseHTTPRequestHandler, method: str) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        path = handler.path.split("?")[0]
        with self._lock:
            self.requests.append((method, path))
        routes = [
            ("POST", r"/v1/models/([^/]+)/([^/]+)/predictions", "create", self._create_for_model),
            ("POST", r"/v1/predictions", "create", self._create_for_version),
            ("GET", r"/v1/predictions", "list", self._list),
            ("GET", r"/v1/predictions/([^/]+)", "get", self._get),
            ("POST", r"/v1/predictions/([^/]+)/cancel", "cancel", self._cancel),
            ("POST", r"/v1/files", "upload", self._upload),
            ("GET", r"/v1/files/([^/]+)/download", "download", self._download),
            ("GET", r"/outputs/([^/]+)", "output", self._output),
            ("GET", r"/v1/webhooks/default/secret", "secret", lambda h, b: (200, {"key": self.secret})),
        ]
        for route_method, pattern, kind, action in routes:
            match = re.fullmatch(pattern, path)
            if route_method == method and match:
                fault = self.faults.take(kind)
                if fault and fault[0] == "status":
                    return self._reply(handler, fault[1], {"detail": "injected"}, {"Retry-After": str(fault[2])} if fault[2] is not None else {})
                if fault and fault[0] == "drop_before":
                    return self._drop(handler)
                if fault and fault[0] == "delay":
                    time.sleep(fault[1])
                status, payload = action(handler, body, *match.groups())
                if fault and fault[0] == "drop_after":
                    return self._drop(handler)
                return self._reply(handler, status, payload)
        self._reply(handler, 404, {"detail": "not found"})

    def _reply(self, handler, status, payload, headers=None) -> None:
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "video/mp4" if isinstance(payload, bytes) else "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    def _drop(self, handler) -> None:
        handler.close_connection = True
        handler.connection.shutdown(2)

    # ---- API ---------------------------------------------------------------------------------

    def _create_for_model(self, handler, body, owner, name):
        return self._create(handler, json.loads(body), model=f"{owner}/{name}")

    def _create_for_version(self, handler, body):
        request = json.loads(body)
        return self._create(handler, request, model="owner/model", version=request["version"])

    def _create(self, handler, request, model, version=MODEL_VERSION):
        prediction_id = uuid.uuid4().hex[:16]
        record = {
            "id": prediction_id,
            "model": model,
            "version": version,
            "status": "starting",
            "input": request.get("input", {}),
            "output": None,
            "error": None,
            "logs": "",
            "metrics": {},
            "created_at": _now(),
            "started_at": None,
            "completed_at": None,
            "urls": {"get": f"{self.url}/v1/predictions/{prediction_id}", "cancel": f"{self.url}/v1/predictions/{prediction_id}/cancel"},
            "_webhook": request.get("webhook"),
            "_done": threading.Event(),
        }
        with self._lock:
            fail = self.fail_next > 0
            self.fail_next -= 1 if fail else 0
            matching = next((p for p in self.fail_once_if if p(record["input"])), None)
            if matching:
                self.fail_once_if.remove(matching)
                fail = True
            self.predictions[prediction_id] = record
            self.creates.append(record)
        threading.Thread(target=self._run, args=(record, fail), daemon=True).start()
        wait = re.match(r"wait(?:=(\d+))?", handler.headers.get("Prefer") or "")
        if wait:
            record["_done"].wait(float(wait.group(1) or 60))
        return 201, self._public(record)

    def _list(self, handler, body):
        with self._lock:
            results = [self._public(r) for r in sorted(self.predictions.values(), key=lambda r: r["created_at"], reverse=True)]
        return 200, {"results": results, "next": None, "previous": None}

    def _get(self, handler, body, prediction_id):
        record = self.predictions.get(prediction_id)
        return (200, self._public(record)) if record else (404, {"detail": "no such prediction"})

    def _cancel(self, handler, body, prediction_id):
        record = self.predictions.get(prediction_id)
        if record is None:
            return 404, {"detail": "no such prediction"}
        with self._lock:
            if record["status"] in ("starting", "processing"):
                record.update(status="canceled", completed_at=_now())
                record["_done"].set()
        return 200, self._public(record)

    def _upload(self, handler, body):
        message = BytesParser(policy=email_policy).parsebytes(
            b"Content-Type: " + handler.headers["Content-Type"].encode() + b"\r\n\r\n" + body
        )
        part = next(p for p in message.iter_parts() if p.get_param("name", header="content-disposition") == "content")
        data, name = part.get_payload(decode=True), part.get_filename()
        file_id = uuid.uuid4().hex[:12]
        self.files[file_id] = (data, name, part.get_content_type())
        return 201, {
            "id": file_id, "name": name, "content_type": part.get_content_type(), "size": len(data),
            "etag": hashlib.md5(data).hexdigest(), "checksums": {"sha256": hashlib.sha256(data).hexdigest()},
            "metadata": {}, "created_at": _now(), "expires_at": None,
            "urls": {"get": f"{self.url}/v1/files/{file_id}/download"},
        }

    def _download(self, handler, body, file_id):
        return (200, self.files[file_id][0]) if file_id in self.files else (404, {"detail": "no such file"})

    def _output(self, handler, body, name):
        path = self._folder / name
        return (200, path.read_bytes()) if path.exists() else (404, {"detail": "no such output"})

    def _public(self, record: dict) -> dict:
        return {k: v for k, v in record.items() if not k.startswith("_")}

    # ---- the stand-in model ------------------------------------------------------------------

    def _run(self, record: dict, fail: bool) -> None:
        record.update(status="processing", started_at=_now())
        time.sleep(self.run_seconds)
        if record["status"] == "canceled":
            return
        try:
            if fail:
                raise RuntimeError("injected model failure")
            inputs = record["input"]
            video = self._fetch(inputs["video"], "video")
            audio = self._fetch(inputs["audio"], "audio") if inputs.get("audio") else video
            for reference in inputs.get("segment_audio") or []:
                self._fetch(reference, "segment")  # as the model would
            if inputs.get("plan_only"):
                output = self._folder / f"{record['id']}.json"
                output.write_text(json.dumps(stand_in_plan(inputs, probe(video).duration, probe(audio).audio_duration)))
                raise _Done({"status": "succeeded", "output": f"{self.url}/outputs/{output.name}"})
            output = self._folder / f"{record['id']}.mp4"
            duration = f"{(probe(video).duration if inputs.get('segments') else probe(audio).audio_duration):.3f}"  # like the model
            subprocess.run(
                ["ffmpeg", "-nostdin", "-y", "-loglevel", "error", "-stream_loop", "-1", "-i", str(video), "-i", str(audio),
                 "-map", "0:v", "-map", "1:a", "-r", "25", "-c:v", "libx264", "-crf", "23", "-pix_fmt", "yuv420p", "-c:a", "aac", "-t", duration, str(output)],
                check=True, capture_output=True,
            )
            result = {"status": "succeeded", "output": f"{self.url}/outputs/{output.name}"}
        except _Done as done:
            result = done.result
        except Exception as error:
            result = {"status": "failed", "error": str(error)}
        with self._lock:
            if record["status"] != "canceled":
                record.update(completed_at=_now(), metrics={"predict_time": self.run_seconds}, **result)
        record["_done"].set()
        if record["_webhook"] and record["status"] != "canceled":
            self.deliver(record["_webhook"], self._public(record))

    def _fetch(self, reference: str, name: str) -> Path:
        path = self._folder / f"{uuid.uuid4().hex[:8]}-{name}"
        if reference.startswith("data:"):
            path.write_bytes(base64.b64decode(reference.split(",", 1)[1]))
        else:
            path.write_bytes(httpx.get(reference, timeout=30).content)
        return path

    def deliver(self, url: str, payload: dict, webhook_id: str | None = None, timestamp: int | None = None, secret: str | None = None) -> httpx.Response:
        """POST a signed webhook (tests call this directly to forge bad ones)."""
        body = json.dumps(payload)
        webhook_id = webhook_id or f"msg_{uuid.uuid4().hex[:12]}"
        timestamp = int(time.time()) if timestamp is None else timestamp
        headers = {
            "content-type": "application/json",
            "webhook-id": webhook_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": sign(secret or self.secret, webhook_id, timestamp, body),
        }
        response = httpx.post(url, content=body, headers=headers, timeout=10)
        self.deliveries.append(response)
        return response


class _Done(Exception):
    def __init__(self, result: dict):
        self.result = result


def stand_in_plan(inputs: dict, video_s: float, audio_s: float) -> dict:
    """A plan as the model returns one, from the stand-in model: every frame of the segments (or
    of the audio) regenerated at the job's or the segment's settings, priced by latentsync.estimate."""
    steps, guidance = inputs.get("inference_steps", 20), inputs.get("guidance_scale", 1.5)
    if inputs.get("segments"):
        ranges = [(s["start"], s["end"], s.get("inference_steps", steps), s.get("guidance_scale", guidance)) for s in json.loads(inputs["segments"])]
    else:
        ranges = [(0.0, audio_s, steps, guidance)]
    work = {}
    for start, end, span_steps, span_guidance in ranges:
        work[(span_steps, span_guidance)] = work.get((span_steps, span_guidance), 0) + math.ceil(round((end - start) * 25) / 16)
    rows = [{"steps": s, "guidance": g, "windows": n} for (s, g), n in work.items()]
    frames = round((video_s if inputs.get("segments") else audio_s) * 25)
    return {"kind": "plan", "frames": frames, "frames_generated": sum(round((end - start) * 25) for start, end, *_ in ranges),
            "duration": frames / 25, "windows": sum(work.values()), "unet_window_steps": sum(r["steps"] * r["windows"] for r in rows),
            "work": rows, "spans": [], "estimate": estimate(rows, inputs.get("enable_deepcache", True), inputs.get("version", "1.6"))}


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime()) + f".{time.time_ns() % 10**9:09d}Z"
