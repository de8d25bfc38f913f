"""Predictions on Replicate's API, for `LipSyncClient(model=...)`.

- 429/5xx and connection errors are retried with exponential backoff and jitter, honouring
  Retry-After. A create that may have gone through (the connection broke after the request was
  sent) is never blindly repeated: recent predictions are searched for its exact input first,
  and so are they when an owner takes over a job whose previous owner stopped mid-create.
- Inputs: local files are uploaded once per content (Files API; small ones inline as data URIs)
  and the upload URL is remembered; URLs pass through.
"""

import base64
import mimetypes
import random
import re
import threading
import time
from pathlib import Path

import httpx
import replicate
from replicate.exceptions import ReplicateError

from ..files import sha256_of
from .inputs import is_url, local_file
from .jobs import ClaimLost, Job, news_of
from .transfer import download

UPLOAD_MAX_AGE_S = 20 * 3600  # Replicate file URLs live for a day
VERSION_ID = re.compile(r"^[0-9a-f]{64}$")


class Ambiguous(Exception):
    """A create request was sent but no answer came back, even after retries: the prediction may exist."""


class ReplicateBackend:
    """Creates, finds, polls and cancels predictions of one model on Replicate."""

    def __init__(self, store, api_token=None, model="bytedance/latentsync", base_url=None, retries=6, backoff=0.5, inline_max_bytes=256 * 1024):
        if not api_token:
            raise ValueError("A Replicate API token is needed: pass api_token or set REPLICATE_API_TOKEN.")
        self.store = store
        self._retry_after = threading.local()  # Retry-After of this thread's last refused request
        self.api = replicate.Client(api_token=api_token, base_url=base_url, event_hooks={"response": [self._note_retry_after]})
        self.model, self.version = parse_model(model)
        self.model_id = self.version or self.model
        self.retries, self.backoff, self.inline_max_bytes = retries, backoff, inline_max_bytes
        self._webhook_secret = None

    def start(self, job: Job, token: str, inputs: dict, webhook=None, wait=False) -> Job:
        """Create the prediction of `token`'s claimed job (or find the one a previous owner created)
        and record it. Returns the job as the store has it."""
        if job.status == "uncertain":
            found = self.find(job.input)
            if found:
                return self.store.record(job.key, token, news_of(found.dict()))
        if job.input != inputs:
            self.store.update(job.key, token, input=inputs)
        try:
            prediction = self._create(job.key, token, inputs, webhook, wait)
        except Ambiguous:
            self.store.update(job.key, token, status="uncertain", heartbeat_at=0.0)  # the next submit looks for it at once
            raise
        except BaseException as error:
            self.store.update(job.key, token, status="failed", error=str(error))
            raise
        news = news_of(prediction.dict())
        try:
            return self.store.record(job.key, token, news)
        except ClaimLost:  # we stalled so long that another owner took over: theirs stands
            current = self.store.get(job.key)
            if current.prediction_id != news.prediction_id:
                self._retrying(lambda: self.api.predictions.cancel(news.prediction_id), "cancel a duplicate prediction")
            return current

    def refresh(self, job: Job) -> Job:
        prediction = self._retrying(lambda: self.api.predictions.get(job.prediction_id), "get the prediction")
        return self.store.record(job.key, None, news_of(prediction.dict()))

    def cancel(self, job: Job) -> Job:
        prediction = self._retrying(lambda: self.api.predictions.cancel(job.prediction_id), "cancel the prediction")
        return self.store.record(job.key, None, news_of(prediction.dict()))

    def webhook_secret(self) -> str:
        """The account's webhook signing secret (whsec_...), fetched once."""
        if self._webhook_secret is None:
            secret = self._retrying(lambda: self.api.webhooks.default.secret(), "fetch the webhook secret")
            self._webhook_secret = secret.key
        return self._webhook_secret

    def input_ref(self, source) -> str:
        """A URL (passed through), a data URI (small files) or a Files API URL (uploaded once per content)."""
        if is_url(source):
            return str(source)
        path = local_file(source)
        if path.stat().st_size <= self.inline_max_bytes:
            mime = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            return f"data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()}"
        digest = sha256_of(path)
        url = self.store.upload_url(digest, UPLOAD_MAX_AGE_S)
        if url is None:
            url = self._retrying(lambda: self.api.files.create(path).urls["get"], f"upload {path.name}")
            self.store.remember_upload(digest, url)
        return url

    def find(self, inputs: dict | None):
        """A recent prediction created with exactly `inputs` (and this version), if any."""
        if not inputs:
            return None
        page = self._retrying(lambda: self.api.predictions.list(), "list recent predictions")
        for prediction in page.results:
            if prediction.input == inputs and (self.version is None or prediction.version == self.version):
                return prediction
        return None

    def pause(self, key: str, seconds: float) -> None:
        time.sleep(seconds)

    def fetch_output(self, url: str, target: Path) -> None:
        self._retrying(lambda: download(url, target), "download the output")

    def close(self) -> None:
        pass

    # ---- internals ---------------------------------------------------------------------------

    def _note_retry_after(self, response: httpx.Response) -> None:
        if response.status_code in (429, 503):
            try:
                self._retry_after.seconds = float(response.headers.get("retry-after", ""))
            except ValueError:
                self._retry_after.seconds = None

    def _create(self, key: str, token: str, inputs: dict, webhook, wait):
        extra = {"webhook": webhook, "webhook_events_filter": ["completed"]} if webhook else {}
        if wait:
            extra["wait"] = wait

        def create():
            try:
                if self.version:
                    return self.api.predictions.create(version=self.version, input=inputs, **extra)
                return self.api.models.predictions.create(model=self.model, input=inputs, **extra)
            except (httpx.ReadTimeout, httpx.RemoteProtocolError, httpx.WriteTimeout) as error:
                found = self.find(inputs)
                if found:
                    return found
                raise _RetryableAfterCheck(str(error)) from error
            except ReplicateError as error:
                if error.status in (500, 502, 503, 504):
                    found = self.find(inputs)
                    if found:
                        return found
                raise

        try:
            return self._retrying(create, "create the prediction")
        except _RetryableAfterCheck as error:
            raise Ambiguous(f"The create request for job {key[:12]} got no answer: {error}") from error

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


class _RetryableAfterCheck(Exception):
    """A create broke off mid-way and no prediction was found for it: safe to try again."""


def parse_model(model: str) -> tuple[str | None, str | None]:
    """(owner/name, version) from "owner/name", "owner/name:version" or a 64-hex version id."""
    if VERSION_ID.match(model):
        return None, model
    if ":" in model:
        name, version = model.split(":", 1)
        return name, version
    if not re.match(r"^[\w.-]+/[\w.-]+$", model):
        raise ValueError(f"model must be 'owner/name', 'owner/name:version' or a version id, got {model!r}.")
    return model, None
