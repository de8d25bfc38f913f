"""A GPU worker: takes one job at a time from the queue and runs it through its own Cog server.

A job, in steps (see `latentsync.client.queue` for the queue's rules):
1. Read an entry (one whose lease ran out first) and take the job: a new attempt token.
2. Fetch the job's inputs from the storage (checked by sha256) and hand them to Cog over the
   loopback; URL inputs pass through as they are.
3. Run the prediction, renewing the lease every lease/4 s. A SIGTERM cancels it and puts the job
   back at once; a lease found lost or a job canceled by the client cancels it too.
4. Write the output to the storage (retried, checked by hash) and report the result, fenced by the
   attempt's token; a bad input (Cog's 422, or the model's one-sentence failure) fails the job at
   once. The job's webhook, if any, gets the Replicate-shaped prediction, signed.
"""

import base64
import binascii
import hashlib
import ipaddress
import json
import logging
import os
import signal
import socket
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, TimeoutError as FutureTimeout
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from .. import config
from ..client.inputs import is_url
from ..client.jobs import Job, News, news_of
from ..client.queue import Delivery, JobQueue
from ..client.storage import StorageError
from ..client.webhooks import signed_headers
from .cog import CogError, InputRefused, LocalCog, is_loopback
from .loopback import MAX_OUTPUT_BYTES, LoopbackFiles

logger = logging.getLogger("latentsync.worker")
CANCEL_GRACE_S = 30.0  # how long a canceled prediction may take to stop before the job is released anyway
INPUTS_KEPT = 16  # inputs kept on disk for later jobs (a batch often shares a video)
WEBHOOK_ATTEMPTS = 8  # a webhook is posted up to this many times, over about two minutes


class Worker:
    """Runs jobs from `queue` on `cog`, with inputs and outputs in `storage` (see the module doc)."""

    def __init__(self, queue: JobQueue, storage, cog: LocalCog, files: LoopbackFiles, name: str, folder,
                 webhook_secret: str | None = None, job_timeout_s: float = config.QUEUE_JOB_TIMEOUT_S, idle_block_s: float = 2.0):
        self.queue, self.storage, self.cog, self.files, self.name = queue, storage, cog, files, name
        self.inputs = Path(folder) / "inputs"
        self.inputs.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.webhook_secret, self.job_timeout_s, self.idle_block_s = webhook_secret, job_timeout_s, idle_block_s
        self.stopping = threading.Event()
        self.counts = {"done": 0, "failed": 0}
        self._predictions = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prediction")
        self._webhooks: list[threading.Thread] = []

    def stop(self, *_) -> None:
        """Finish now: a running job is canceled and put back in the queue (SIGTERM, SIGINT)."""
        self.stopping.set()

    def run(self, ready_timeout_s: float = 1800.0) -> None:
        """Serve until stopped (CogError if the Cog server fails)."""
        self.queue.beat(self.name, "starting", **self.counts)
        try:
            self.cog.wait_ready(ready_timeout_s, self.stopping)
            logger.info("worker %s ready: Cog at %s", self.name, self.cog.url)
            while not self.stopping.is_set():
                self.cog.check_alive()
                self.queue.beat(self.name, "idle", **self.counts)
                delivery = self.queue.next(self.name, self.idle_block_s)
                if delivery is not None:
                    self.run_job(delivery)
        finally:
            self.queue.leave(self.name)
            for thread in self._webhooks:
                thread.join(timeout=10)

    # ---- one job -----------------------------------------------------------------------------

    def run_job(self, delivery: Delivery) -> None:
        job = self.queue.take(delivery)
        if job is None:
            return
        if job.finished:  # lost too often: failed by this take
            logger.warning("job %s failed: %s", job.key[:12], job.error)
            return self._notify(delivery, job, {})
        logger.info("job %s: attempt %d on %s%s", job.key[:12], job.attempts, self.name, " (taken over)" if delivery.reclaimed else "")
        self.queue.beat(self.name, "running", job.key, **self.counts)
        lease = Lease(self.queue, delivery)
        lease.start()
        try:
            self._run(delivery, job, lease)
        finally:
            lease.stop()
            self.files.withdraw_all()
            self._keep_recent_inputs()

    def _run(self, delivery: Delivery, job: Job, lease: "Lease") -> None:
        try:
            inputs = self._cog_inputs(job)
        except (StorageError, OSError) as error:
            return self._release(delivery, f"worker {self.name} could not fetch the inputs: {error}")
        except ValueError as error:
            return self._finish(delivery, job, News(job.key, "failed", error=str(error)), {})
        self.queue.report(delivery, News(job.key, "processing"))
        prediction = self._predict(delivery, job, inputs, lease)
        if prediction is not None:
            self._conclude(delivery, job, prediction)

    def _predict(self, delivery: Delivery, job: Job, inputs: dict, lease: "Lease") -> dict | None:
        """Cog's record of the prediction; None when the job went away (lost, canceled, or put
        back because this worker stops)."""
        running = self._predictions.submit(self.cog.predict, job.key, inputs, self.job_timeout_s)
        while True:
            try:
                prediction = running.result(timeout=0.5)  # a stop is noticed within half a second
                break
            except FutureTimeout:
                state = "stopping" if self.stopping.is_set() else lease.state
                if state == "ok":
                    continue
            except InputRefused as error:
                return {"status": "failed", "error": f"The model refused the input: {error}."}
            except CogError as error:
                self._release(delivery, f"worker {self.name}'s Cog server failed: {error}")
                raise
            self.cog.cancel(job.key)
            try:
                running.result(timeout=CANCEL_GRACE_S)
            except (FutureTimeout, CogError, InputRefused):
                pass
            if state == "stopping":
                self._release(delivery, f"worker {self.name} was stopped (SIGTERM)")
            elif state == "finished":
                logger.info("job %s was canceled by the client", job.key[:12])
                self.queue.done(delivery, None)
            else:
                logger.warning("job %s: this worker's lease was lost (another worker took it over); its result will not count", job.key[:12])
            return None
        if prediction.get("status") == "canceled":  # by someone else on this machine
            self._release(delivery, f"its prediction was canceled on worker {self.name}")
            return None
        return prediction

    def _conclude(self, delivery: Delivery, job: Job, prediction: dict) -> None:
        """Store the output and report the prediction's end."""
        if prediction["status"] != "succeeded":
            return self._finish(delivery, job, News(job.key, "failed", error=prediction.get("error") or "The prediction failed without a message."), prediction)
        output = self._local_output(prediction)
        if output is None:
            return self._release(delivery, f"the output of worker {self.name}'s prediction did not arrive")
        path, sha256 = output
        try:
            url = self.storage.upload(path, "outputs", sha256)
        except StorageError as error:
            return self._release(delivery, str(error))
        finally:
            path.unlink(missing_ok=True)
        degraded = news_of(prediction).degraded  # windows that kept their original frames: handed over, never reused
        self._finish(delivery, job, News(job.key, "succeeded", output_url=url, degraded=degraded), prediction)

    def _finish(self, delivery: Delivery, job: Job, news: News, prediction: dict) -> None:
        outcome = self.queue.report(delivery, news)
        if outcome != "updated":
            logger.warning("job %s: the result was not recorded (%s): the job had moved on", job.key[:12], outcome)
            return
        self.counts["done" if news.status == "succeeded" else "failed"] += 1
        logger.info("job %s %s%s", job.key[:12], news.status, f": {news.error}" if news.error else "")
        self._notify(delivery, self.queue.store.get(job.key), prediction)

    def _release(self, delivery: Delivery, reason: str) -> None:
        job = self.queue.release(delivery, reason)
        if job is None:
            return
        logger.warning("job %s %s: %s", job.key[:12], "failed" if job.finished else "is back in the queue", reason)
        if job.finished:
            self._notify(delivery, job, {})

    # ---- files -------------------------------------------------------------------------------

    def _cog_inputs(self, job: Job) -> dict:
        """The job's input for Cog: storage files fetched and offered on the loopback, URLs as they
        are; the files are the video, the audio and each of segment_audio."""
        inputs = dict(job.input or {})
        for role in ("video", "audio"):
            if inputs.get(role):
                inputs[role] = self._cog_file(role, str(inputs[role]))
        if isinstance(inputs.get("segment_audio"), list):
            inputs["segment_audio"] = [self._cog_file(f"segment_audio {index}", str(source)) for index, source in enumerate(inputs["segment_audio"])]
        return inputs

    def _cog_file(self, role: str, source: str) -> str:
        if source.startswith("data:"):
            return source
        if is_url(source):
            if _local_host(urlsplit(source).hostname):
                raise ValueError(f"The {role} input's URL points at the worker's own machine, which is refused.")
            return source
        name = self.storage.name_of(source)  # ValueError if it is not this worker's storage
        local = self.inputs / name.split("/", 1)[1]
        if local.is_file():
            os.utime(local)
        else:
            self.storage.download(source, local)
        return self.files.offer(local, local.name)

    def _keep_recent_inputs(self) -> None:
        kept = sorted(self.inputs.iterdir(), key=lambda path: path.stat().st_mtime, reverse=True)
        for path in kept[INPUTS_KEPT:]:
            path.unlink(missing_ok=True)

    def _local_output(self, prediction: dict) -> tuple[Path, str] | None:
        """The prediction's video as a local file and its sha256: uploaded here by Cog, or inline
        (a data URI, from a Cog server started without --upload-url)."""
        output = prediction.get("output")
        url = output.get("video") if isinstance(output, dict) else output
        if not isinstance(url, str):
            return None
        if url.startswith("data:"):
            return self._inline_output(url)
        self.files.remove_leftovers()
        return self.files.output_of(url)

    def _inline_output(self, data_uri: str) -> tuple[Path, str] | None:
        encoded = data_uri.split(",", 1)[-1]
        if len(encoded) * 3 // 4 > MAX_OUTPUT_BYTES:
            return None
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return None
        handle, path = tempfile.mkstemp(dir=self.files.outputs, suffix=".mp4")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        return Path(path), hashlib.sha256(data).hexdigest()

    # ---- webhooks ----------------------------------------------------------------------------

    def _notify(self, delivery: Delivery, job: Job, prediction: dict) -> None:
        """Post the finished job to its webhook, signed, in a thread (retried for about two minutes)."""
        if not delivery.webhook or job is None:
            return
        if not self.webhook_secret:
            logger.error("job %s asked for a webhook, but this worker has no LATENTSYNC_WEBHOOK_SECRET to sign it: not sent", job.key[:12])
            return
        refused = self._refuse_webhook(delivery.webhook)
        if refused:
            logger.error("job %s: webhook not sent: %s", job.key[:12], refused)
            return
        body = json.dumps(self._replicate_record(job, prediction))
        thread = threading.Thread(target=_post_webhook, args=(delivery.webhook, body, f"msg_{delivery.token}", self.webhook_secret, job.key),
                                  daemon=True, name=f"webhook-{job.key[:8]}")
        thread.start()
        self._webhooks = [t for t in self._webhooks if t.is_alive()] + [thread]

    def _refuse_webhook(self, url: str) -> str | None:
        """Why the worker will not post to `url` (its own Cog or hand-off port, link-local hosts), else None."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return "it is not an http(s) URL"
        try:
            if ipaddress.ip_address(parts.hostname).is_link_local:
                return "it points at a link-local address"
        except ValueError:
            pass
        if is_loopback(parts.hostname) and parts.port in (self.cog.port, self.files.port):
            return "it points at this worker's own Cog server or file hand-off"
        return None

    def _replicate_record(self, job: Job, prediction: dict) -> dict:
        """The job as Replicate shapes a prediction, with a link to the output."""
        output = prediction.get("output")
        link = self.storage.link(job.output_url, config.WEBHOOK_LINK_TTL_S) if job.output_url else None
        if job.status == "succeeded":
            output = {**output, "video": link} if isinstance(output, dict) else link
        else:
            output = None
        now = datetime.now(timezone.utc).isoformat()
        return {
            "id": job.key, "version": None, "status": job.status, "input": job.input, "output": output, "error": job.error,
            "logs": prediction.get("logs") or "", "metrics": prediction.get("metrics") or {}, "created_at": None,
            "completed_at": now, "urls": {}, "source": "self-hosted", "worker": self.name,
        }


class Lease(threading.Thread):
    """Renews a delivery's lease every lease/4 s while the job runs; `state` turns "lost" (another
    worker took the job over) or "finished" (the client canceled it) when a renewal says so."""

    def __init__(self, queue: JobQueue, delivery: Delivery):
        super().__init__(daemon=True, name=f"lease-{delivery.key[:8]}")
        self.queue, self.delivery, self.state = queue, delivery, "ok"
        self._done = threading.Event()

    def run(self) -> None:
        while not self._done.wait(self.queue.lease_s / 4):
            try:
                state = self.queue.renew(self.delivery)
            except Exception as error:  # Redis out of reach: try again; the lease runs out if it lasts
                logger.warning("job %s: the lease could not be renewed (%s)", self.delivery.key[:12], type(error).__name__)
                continue
            if state != "ok":
                self.state = state
                return

    def stop(self) -> None:
        self._done.set()
        self.join()


def _local_host(host: str | None) -> bool:
    """Whether a URL's host is this machine (loopback) or link-local (cloud metadata services)."""
    if is_loopback(host):
        return True
    try:
        return ipaddress.ip_address(host or "").is_link_local
    except ValueError:
        return False


def _post_webhook(url: str, body: str, webhook_id: str, secret: str, key: str) -> None:
    """POST a signed delivery, retrying 429, 5xx and broken connections with growing pauses."""
    for attempt in range(WEBHOOK_ATTEMPTS):
        headers = {"Content-Type": "application/json", **signed_headers(secret, webhook_id, body)}
        try:
            response = httpx.post(url, content=body, headers=headers, timeout=10.0)
            if response.status_code < 300:
                return
            if response.status_code < 500 and response.status_code != 429:
                logger.error("job %s: the webhook was refused (%d)", key[:12], response.status_code)
                return
        except httpx.HTTPError:
            pass
        time.sleep(min(2**attempt, 30))
    logger.error("job %s: the webhook could not be delivered", key[:12])


def default_name() -> str:
    """This machine's name and the worker's process id."""
    return f"{socket.gethostname()}-{os.getpid()}"


def install_signal_handlers(worker: Worker) -> None:
    signal.signal(signal.SIGTERM, worker.stop)
    signal.signal(signal.SIGINT, worker.stop)
