"""LipSyncClient: call the hosted lip-sync model through the Replicate API, safely and cheaply.

- Idempotent: a job key (content hashes of video and audio, normalised parameters, model)
  maps to one prediction; a repeat of a finished job returns the stored result without an API
  call, a repeat of a running one returns the same job, and concurrent identical submits (threads
  or processes) create exactly one prediction. Failed or canceled jobs are retried on the next
  submit.
- Robust: 429/5xx and connection errors are retried with exponential backoff and jitter,
  honouring Retry-After. A create that may have gone through (the connection broke after the
  request was sent) is never blindly repeated: recent predictions are searched for it first.
- Inputs: local files are uploaded once per content (Files API; small ones inline as data URIs)
  and the upload URL is remembered, URLs pass through.
"""

import base64
import hashlib
import json
import mimetypes
import os
import random
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import replicate
from replicate.exceptions import ReplicateError

from ..files import sha256_of
from .params import validate
from .store import CLAIM_TTL_S, Job, SQLiteStore, open_store

DEFAULT_MODEL = "bytedance/latentsync"
UPLOAD_MAX_AGE_S = 20 * 3600  # Replicate file URLs live for a day
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")


class LipSyncError(RuntimeError):
    """The prediction failed or was canceled; the message carries Replicate's error."""


@dataclass
class RunResult:
    path: Path  # the downloaded output video
    prediction: dict  # the prediction record (id, status, output, metrics, ...)
    job: Job


class _Ambiguous(Exception):
    """A create request was sent but no answer came back: the prediction may exist."""


class LipSyncClient:
    """Lip-sync through Replicate with idempotent caching.

    Args:
        api_token: Replicate API token (default: $REPLICATE_API_TOKEN).
        model: "owner/name" (latest version), "owner/name:version" or a 64-hex version id.
        store: a job store, a redis:// URL, or the path of a SQLite file (default:
            ~/.cache/latentsync/client.sqlite).
        base_url: another API endpoint (default: Replicate's).
        output_dir: where outputs are downloaded (default: next to a SQLite store, else
            ~/.cache/latentsync/outputs).
    """

    def __init__(self, api_token=None, model=DEFAULT_MODEL, store=None, base_url=None, output_dir=None,
                 poll_interval=1.0, max_poll_interval=10.0, retries=6, backoff=0.5, inline_max_bytes=256 * 1024):
        token = api_token or os.environ.get("REPLICATE_API_TOKEN")
        if not token:
            raise ValueError("A Replicate API token is needed: pass api_token or set REPLICATE_API_TOKEN.")
        self._retry_after = threading.local()  # Retry-After of this thread's last refused request
        self.api = replicate.Client(api_token=token, base_url=base_url, event_hooks={"response": [self._note_retry_after]})
        self.model, self.version = _parse_model(model)
        cache = Path.home() / ".cache" / "latentsync"
        self.store = open_store(store or cache / "client.sqlite")
        self.output_dir = Path(output_dir) if output_dir else (self.store.path.parent if isinstance(self.store, SQLiteStore) else cache) / "outputs"
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self.retries, self.backoff = retries, backoff
        self.inline_max_bytes = inline_max_bytes
        self._webhook_secret = None

    # ---- jobs ------------------------------------------------------------------------------

    def job_key(self, video, audio, params: dict) -> str:
        """sha256 over the inputs' content, the normalised parameters and the model."""
        payload = {"video": _content_id(video), "audio": _content_id(audio), "params": validate(params), "model": self.version or self.model}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def submit(self, video, audio, webhook: str | None = None, wait: int | bool = False, **params) -> Job:
        """Start (or find) the prediction for these inputs. Returns its job at once.

        With `webhook`, Replicate posts the finished prediction there (events: completed).
        `wait` holds the create request open up to that many seconds (the API's sync mode).
        """
        normalised = validate(params)
        key = self.job_key(video, audio, normalised)
        deadline = time.time() + CLAIM_TTL_S
        while True:
            job, claimed = self.store.claim(key)
            if claimed:
                break
            if job.status == "uncertain":
                found = self._find_existing(job)
                if found:
                    return self._record(key, found)
                self.store.update(key, status="failed", error="an earlier create may not have gone through")
                continue
            if job.status != "claimed":
                return job  # finished successfully, or running
            if time.time() > deadline:
                raise TimeoutError(f"Another process has been creating the prediction for job {key[:12]} for too long.")
            time.sleep(0.2)  # another thread or process is creating it right now
        try:
            inputs = {"video": self._input_ref(video), "audio": self._input_ref(audio), **normalised}
            self.store.update(key, input=inputs)
            prediction = self._create(key, inputs, webhook, wait)
        except BaseException as error:
            if not isinstance(error, _Ambiguous):
                self.store.update(key, status="failed", error=str(error))
            raise
        return self._record(key, prediction)

    def get(self, job: Job) -> Job:
        """The job refreshed from the API (no API call once it has finished)."""
        job = self.store.get(job.key) or job
        if job.finished or job.prediction_id is None:
            return job
        prediction = self._retrying(lambda: self.api.predictions.get(job.prediction_id), "get the prediction")
        return self._record(job.key, prediction)

    def wait(self, job: Job, timeout: float | None = None) -> Job:
        """Poll with growing intervals until the job finishes (TimeoutError after `timeout` s)."""
        deadline = None if timeout is None else time.time() + timeout
        interval = self.poll_interval
        while True:
            job = self.get(job)
            if job.finished:
                return job
            if deadline is not None and time.time() + interval > deadline:
                raise TimeoutError(f"Prediction {job.prediction_id} is still {job.status} after {timeout} s.")
            time.sleep(interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    def cancel(self, job: Job) -> Job:
        job = self.store.get(job.key) or job
        if job.finished or job.prediction_id is None:
            return job
        prediction = self._retrying(lambda: self.api.predictions.cancel(job.prediction_id), "cancel the prediction")
        return self._record(job.key, prediction)

    def run(self, video, audio, timeout: float | None = None, **params) -> RunResult:
        """Lip-sync and wait: the API's sync mode first, then polling. Returns the downloaded video."""
        job = self.submit(video, audio, wait=60, **params)
        if not job.finished:
            job = self.wait(job, timeout)
        if job.status != "succeeded":
            raise LipSyncError(f"Prediction {job.prediction_id} {job.status}: {job.error or 'no error message'}")
        path = self._download(job)
        prediction = self._prediction_record(job)
        return RunResult(path, prediction, self.store.get(job.key))

    def webhook_secret(self) -> str:
        """The account's webhook signing secret (whsec_...), fetched once."""
        if self._webhook_secret is None:
            secret = self._retrying(lambda: self.api.webhooks.default.secret(), "fetch the webhook secret")
            self._webhook_secret = secret.key
        return self._webhook_secret

    # ---- internals ---------------------------------------------------------------------------

    def _note_retry_after(self, response: httpx.Response) -> None:
        if response.status_code in (429, 503):
            try:
                self._retry_after.seconds = float(response.headers.get("retry-after", ""))
            except ValueError:
                self._retry_after.seconds = None

    def _record(self, key: str, prediction) -> Job:
        data = prediction if isinstance(prediction, dict) else prediction.dict()
        output = data.get("output")
        url = output.get("video") if isinstance(output, dict) else output
        return self.store.update(key, prediction_id=data["id"], status=data["status"], output_url=url, error=data.get("error"))

    def _prediction_record(self, job: Job) -> dict:
        return {"id": job.prediction_id, "status": job.status, "output": job.output_url, "input": job.input}

    def _create(self, key: str, inputs: dict, webhook, wait):
        extra = {"webhook": webhook, "webhook_events_filter": ["completed"]} if webhook else {}
        if wait:
            extra["wait"] = wait

        def create():
            try:
                if self.version:
                    return self.api.predictions.create(version=self.version, input=inputs, **extra)
                return self.api.models.predictions.create(model=self.model, input=inputs, **extra)
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.WriteTimeout) as error:
                self.store.update(key, status="uncertain")
                found = self._find_existing(self.store.get(key))
                if found:
                    return found
                raise _RetryableAfterCheck(str(error)) from error
            except ReplicateError as error:
                if error.status in (500, 502, 503, 504):
                    found = self._find_existing(self.store.get(key))
                    if found:
                        return found
                raise

        return self._retrying(create, "create the prediction")

    def _find_existing(self, job: Job):
        """A prediction created for this job's exact input since the job was claimed, if any."""
        if not job or not job.input:
            return None
        page = self._retrying(lambda: self.api.predictions.list(), "list recent predictions")
        for prediction in page.results:
            if prediction.input == job.input and (self.version is None or prediction.version == self.version):
                return prediction
        return None

    def _retrying(self, action, what: str):
        """Run `action`, retrying 429/5xx and connection failures with backoff, jitter and Retry-After."""
        for attempt in range(1, self.retries + 1):
            try:
                return action()
            except (ReplicateError, httpx.TransportError, _RetryableAfterCheck) as error:
                status = getattr(error, "status", None)
                retryable = status in (429, 500, 502, 503, 504) or not isinstance(error, ReplicateError)
                if not retryable or attempt == self.retries:
                    raise
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                retry_after = getattr(self._retry_after, "seconds", None) if status in (429, 503) else None
                self._retry_after.seconds = None
                time.sleep(max(delay, retry_after or 0))

    def _input_ref(self, source) -> str:
        text = str(source)
        if re.match(r"^(https?|data):", text):
            return text
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"Input file not found: {path}")
        if path.stat().st_size <= self.inline_max_bytes:
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
        digest = sha256_of(path)
        url = self.store.upload_url(digest, UPLOAD_MAX_AGE_S)
        if url is None:
            url = self._retrying(lambda: self.api.files.create(path).urls["get"], f"upload {path.name}")
            self.store.remember_upload(digest, url)
        return url

    def _download(self, job: Job) -> Path:
        if job.output_path and Path(job.output_path).is_file():
            return Path(job.output_path)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        target = self.output_dir / f"{job.key[:32]}.mp4"

        def fetch():
            handle, partial = tempfile.mkstemp(dir=self.output_dir, suffix=".part")
            os.close(handle)
            try:
                if job.output_url.startswith("data:"):
                    Path(partial).write_bytes(base64.b64decode(job.output_url.split(",", 1)[1]))
                else:
                    with httpx.stream("GET", job.output_url, follow_redirects=True, timeout=60) as response:
                        response.raise_for_status()
                        with open(partial, "wb") as file:
                            for block in response.iter_bytes(1024 * 1024):
                                file.write(block)
                os.replace(partial, target)
            finally:
                Path(partial).unlink(missing_ok=True)

        self._retrying(fetch, "download the output")
        self.store.update(job.key, output_path=str(target))
        return target


class _RetryableAfterCheck(Exception):
    """A create broke off mid-way and no prediction was found for it: safe to try again."""


def _parse_model(model: str) -> tuple[str | None, str | None]:
    if VERSION_ID.match(model):
        return None, model
    if ":" in model:
        name, version = model.split(":", 1)
        return name, version
    if not re.match(r"^[\w.-]+/[\w.-]+$", model):
        raise ValueError(f"model must be 'owner/name', 'owner/name:version' or a version id, got {model!r}.")
    return model, None


def _content_id(source) -> str:
    text = str(source)
    if re.match(r"^(https?|data):", text):
        return "url:" + hashlib.sha256(text.encode()).hexdigest()
    return sha256_of(Path(source))
