"""LipSyncClient: run the lip-sync model on Replicate or on your own GPUs, safely and cheaply,
with the same calls.

- Idempotent: a job key (content hashes of video and audio, normalised parameters, segments with
  their audio's content hashes, model) maps to one prediction; a repeat of a finished job returns the stored result without a request, a
  repeat of a running one returns the same job, and concurrent identical submits (threads or
  processes) create exactly one prediction. Failed or canceled jobs are retried on the next
  submit.
- Claims are fenced (see `latentsync.client.jobs`): inputs are uploaded before the key is
  claimed, the claim is refreshed while its owner works, and an owner that takes over a job
  looks for the prediction its predecessor may have created before creating one.
- Where predictions run is a backend: `ReplicateBackend` (`model="owner/name"`) or
  `QueueBackend` (`queue="redis://..."`, `storage=...`: self-hosted GPU workers that pull jobs
  from a queue, see `latentsync.client.queue`).
"""

import base64
import hashlib
import json
import os
import secrets
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from .. import config
from ..files import sha256_of
from .jobs import WAITING, Job, is_live
from .params import validate
from ..segments import SegmentError, name
from .inputs import is_url, job_segments, local_file
from .replicate_api import ReplicateBackend
from .redis_store import RedisStore
from .store import CLAIM_TTL_S, SQLiteStore

DEFAULT_MODEL = "bytedance/latentsync"
CACHE_DIR = Path.home() / ".cache" / "latentsync"
DEFAULT_STORE = CACHE_DIR / "client.sqlite"


def open_store(store, claim_ttl_s: float = CLAIM_TTL_S):
    """A job store from a store object, a redis:// or rediss:// URL, or the path of a SQLite file."""
    if hasattr(store, "claim"):
        return store
    if str(store).startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(str(store), claim_ttl_s=claim_ttl_s)
    return SQLiteStore(store, claim_ttl_s=claim_ttl_s)


class LipSyncError(RuntimeError):
    """The prediction failed or was canceled; the message carries the model's error, `job` the job."""

    def __init__(self, message: str, job: Job | None = None):
        super().__init__(message)
        self.job = job


@dataclass
class RunResult:
    path: Path  # the downloaded output video
    prediction: dict  # the prediction record (id, status, output, input)
    job: Job


class LipSyncClient:
    """Lip-sync through Replicate or on self-hosted GPU workers, with idempotent caching.

    Args:
        api_token: Replicate API token (default: $REPLICATE_API_TOKEN); not needed for a queue.
        model: "owner/name" (latest version), "owner/name:version" or a 64-hex version id; for a
            queue, the name its job keys carry.
        store: a job store, a redis:// URL, or the path of a SQLite file (default:
            ~/.cache/latentsync/client.sqlite); with a queue, the queue's Redis is the store.
        base_url: another API endpoint (default: Replicate's).
        output_dir: where outputs are downloaded (default: next to a SQLite store, else
            ~/.cache/latentsync/outputs).
        queue: the Redis URL of a self-hosted queue (see `latentsync.client.queue`): predictions
            run on the workers that read it, not on Replicate.
        storage: with a queue, where inputs and outputs are kept: s3://bucket/prefix or
            file:///folder (default: $LATENTSYNC_STORAGE_URL).
        queue_options: more settings of `JobQueue` (lease_s, max_attempts).
    """

    def __init__(self, api_token=None, model=DEFAULT_MODEL, store=None, base_url=None, output_dir=None, queue=None,
                 storage=None, poll_interval=1.0, max_poll_interval=10.0, retries=6, backoff=0.5,
                 inline_max_bytes=256 * 1024, claim_ttl_s=CLAIM_TTL_S, **queue_options):
        self.poll_interval, self.max_poll_interval = poll_interval, max_poll_interval
        self._downloading: dict[str, threading.Lock] = {}  # one download per job at a time
        if queue:
            from .queue import JobQueue, QueueBackend

            if store is not None and str(getattr(store, "url", store)) != str(queue):
                raise ValueError("With a queue, the job store is the queue's Redis: leave store unset.")
            storage = storage or config.storage_url()
            if not storage:
                raise ValueError("A queue needs a storage for inputs and outputs: pass storage (s3://bucket/prefix or file:///folder) or set LATENTSYNC_STORAGE_URL.")
            jobs = JobQueue(str(queue), claim_ttl_s=claim_ttl_s, **queue_options)
            self.store, self.backend = jobs.store, QueueBackend(jobs, storage, model)
        else:
            self.store = open_store(store or DEFAULT_STORE, claim_ttl_s=claim_ttl_s)
            token = api_token or os.environ.get("REPLICATE_API_TOKEN")
            self.backend = ReplicateBackend(self.store, token, model, base_url, retries=retries, backoff=backoff, inline_max_bytes=inline_max_bytes)
        self.output_dir = Path(output_dir) if output_dir else (self.store.path.parent if isinstance(self.store, SQLiteStore) else CACHE_DIR) / "outputs"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """Close the queue's connection (nothing to do for Replicate)."""
        self.backend.close()

    # ---- jobs ------------------------------------------------------------------------------

    def job_key(self, video, audio, params: dict, segments=None) -> str:
        """sha256 over the inputs' content, the normalised parameters, the segments (their own audio
        by content) and the model."""
        payload = {"video": _content_id(video), "audio": _content_id(audio) if audio is not None else None, "params": validate(params),
                   "model": self.backend.model_id}
        segments = job_segments(segments)
        if segments:  # jobs without segments keep the keys they always had
            payload["segments"] = [_segment_id(segment) for segment in segments]
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()

    def submit(self, video, audio=None, webhook: str | None = None, wait: int | bool = False, segments=None, **params) -> Job:
        """Start (or find) the prediction for these inputs. Returns its job at once.

        `segments` (a list of {start, end, audio, ...}, JSON text, or a JSON file: see
        `latentsync.segments`) re-make only those time ranges, each segment's audio a local file
        (uploaded like the video) or a URL; `audio` is then needed only by segments without one.

        With `webhook`, the finished prediction is posted there (events: completed), by Replicate
        or by the self-hosted worker that ran it (signed with $LATENTSYNC_WEBHOOK_SECRET); `wait`
        holds Replicate's create request open up to that many seconds (sync mode). A queue's
        job waits for a worker.
        """
        if webhook and not str(webhook).startswith(("https://", "http://")):
            raise ValueError(f"A webhook must be an http(s) URL, got {webhook!r}.")
        key, make_inputs = self._prepare(video, audio, params, segments)
        return self._start(key, make_inputs, webhook, wait)

    def get(self, job: Job) -> Job:
        """The job as it is now (asks Replicate only while it runs there)."""
        job = self.store.get(job.key) or job
        if job.finished or job.prediction_id is None or job.server is not None or job.status in WAITING:
            return job
        return self.backend.refresh(job)

    def wait(self, job: Job, timeout: float | None = None, make_inputs=None) -> Job:
        """Until the job finishes (TimeoutError after `timeout` s). Polls with growing intervals, and
        takes the job over if its owner (another process) stopped looking after it (with the
        inputs `make_inputs()` gives, else those the job was created with)."""
        deadline = None if timeout is None else time.time() + timeout
        interval = self.poll_interval
        while True:
            job = self.get(job)
            if job.finished:
                return job
            if not is_live(job, time.time(), self.store.claim_ttl_s) and job.input:
                job = self._start(job.key, make_inputs or (lambda: job.input))
            if deadline is not None and time.time() + interval > deadline:
                raise TimeoutError(f"Job {job.key[:12]} is still {job.status} after {timeout} s.")
            self.backend.pause(job.key, interval)
            interval = min(interval * 1.5, self.max_poll_interval)

    def cancel(self, job: Job) -> Job:
        job = self.store.get(job.key) or job
        if job.finished or job.prediction_id is None:
            return job
        return self.backend.cancel(job)

    def run(self, video, audio=None, timeout: float | None = None, segments=None, **params) -> RunResult:
        """Lip-sync and wait (Replicate: its sync mode first, then polling). Returns the downloaded
        video. `segments` as for `submit`."""
        job = self._finished(*self._prepare(video, audio, params, segments), timeout)
        path = self._download(job)
        prediction = {"id": job.prediction_id, "status": job.status, "output": job.output_url, "input": job.input}
        return RunResult(path, prediction, self.store.get(job.key))

    def plan(self, video, audio=None, timeout: float | None = None, segments=None, **params) -> dict:
        """What the job these arguments describe would do, from the model without running it
        (plan_only): the spans it would regenerate or pass through and why, the windows, and
        the estimated GPU seconds (`plan["estimate"]`). A plan is a job of its own, cheap to
        run and answered from the store when asked again."""
        job = self._finished(*self._prepare(video, audio, {**params, "plan_only": True}, segments, planning=True), timeout)
        return json.loads(self._download(job).read_text())

    def webhook_secret(self) -> str:
        """The Replicate account's webhook signing secret (whsec_...), fetched once."""
        return self.backend.webhook_secret()

    # ---- internals ---------------------------------------------------------------------------

    def _prepare(self, video, audio, params: dict, segments=None, planning: bool = False):
        """The job key, and how to make the prediction's inputs (uploads or URLs) when needed."""
        if params.get("plan_only") and not planning:
            raise ValueError("plan_only asks for the plan instead of the video: call plan() (`plan` on the command line).")
        normalised, segments = validate(params), job_segments(segments)
        if audio is None and not segments:
            raise ValueError("An audio input is needed (or segments that each have an audio of their own).")
        silent = next((index for index, segment in enumerate(segments) if audio is None and not segment.own_audio), None)
        if silent is not None:
            raise SegmentError(f"{name(silent, segments[silent])} has no audio of its own and the job has none: give it an audio, or give the job one.")
        key = self.job_key(video, audio, normalised, segments)

        def make_inputs() -> dict:
            inputs = {"video": self.backend.input_ref(video), **({"audio": self.backend.input_ref(audio)} if audio is not None else {}), **normalised}
            if segments:  # the model's form: each segment names its file by its index in segment_audio
                files = list(dict.fromkeys(segment.audio for segment in segments if segment.own_audio))
                listing = [segment.to_dict() | ({"audio": files.index(segment.audio)} if segment.own_audio else {}) for segment in segments]
                inputs.update(segments=json.dumps(listing), segment_audio=[self.backend.input_ref(path) for path in files])
            return inputs

        return key, make_inputs

    def _finished(self, key: str, make_inputs, timeout: float | None) -> Job:
        """The job of `key`, started if need be and waited for; LipSyncError unless it succeeded."""
        job = self._start(key, make_inputs, wait=60)
        if not job.finished:
            job = self.wait(job, timeout, make_inputs)
        if job.status != "succeeded":
            raise LipSyncError(f"Job {job.key[:12]} {job.status}: {job.error or 'no error message'}", job)
        return job

    def _start(self, key: str, make_inputs, webhook=None, wait=False) -> Job:
        """The job of `key` if it is done or under way; else claim it and start its prediction.

        The inputs are made (uploaded) before the claim, once it is clear they are needed; while
        another live owner is creating the prediction, this waits for them.
        """
        token, inputs = secrets.token_hex(16), None
        while True:
            job = self.store.get(key)
            live = is_live(job, time.time(), self.store.claim_ttl_s)
            if live and job.status not in ("claimed", "uncertain"):
                return job  # finished, running, or in the queue
            if not live:
                inputs = inputs or make_inputs()
                job, claimed = self.store.claim(key, token, inputs)
                if claimed:
                    break
                if job.status not in ("claimed", "uncertain"):
                    return job
            time.sleep(0.2)  # its owner is creating it (and refreshing its claim) right now
        with self.store.heartbeats(key, token):
            return self.backend.start(job, token, inputs, webhook=webhook, wait=wait)

    def _download(self, job: Job) -> Path:
        """The job's output as a local file (fetched once, verified, moved into place atomically)."""
        with self._downloading.setdefault(job.key, threading.Lock()):
            job = self.store.get(job.key) or job
            if job.output_path and Path(job.output_path).is_file():
                return Path(job.output_path)
            return self._fetch_output(job)

    def _fetch_output(self, job: Job) -> Path:
        if not job.output_url:
            raise LipSyncError(f"Job {job.key[:12]} succeeded without an output (its upload did not arrive).", job)
        self.output_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        target = self.output_dir / f"{job.key[:32]}{'.json' if (job.input or {}).get('plan_only') else '.mp4'}"  # a plan, or the video
        handle, partial = tempfile.mkstemp(dir=self.output_dir, suffix=".part")
        os.close(handle)
        try:
            if job.output_url.startswith("data:"):
                Path(partial).write_bytes(base64.b64decode(job.output_url.split(",", 1)[1]))
            else:
                self.backend.fetch_output(job.output_url, Path(partial))
            os.replace(partial, target)
        finally:
            Path(partial).unlink(missing_ok=True)
        self.store.update(job.key, None, output_path=str(target))
        return target


def _content_id(source) -> str:
    if is_url(source):
        return "url:" + hashlib.sha256(str(source).encode()).hexdigest()
    return sha256_of(local_file(source))


def _segment_id(segment) -> dict:
    """A segment as the job key holds it: numbers by value, its own audio by content."""
    numbers = {key: (int(value) if key == "inference_steps" else float(value)) for key, value in segment.to_dict().items() if key != "audio"}
    return numbers | ({"audio": _content_id(segment.audio)} if segment.own_audio else {})
