"""A fleet of self-hosted Cog servers running the lip-sync model, for `LipSyncClient(servers=[...])`.

Cog's HTTP API has what a fleet needs, and the fleet uses it as it is:

- A job's key is its prediction id: `PUT /predictions/<key>` with `Prefer: respond-async` is
  idempotent while the prediction runs (a repeat answers 202 with its state), so a new owner
  taking a job over first re-sends it to the server it ran on, with the same dispatch token, and
  so adopts it if it still runs there. Cog keeps no finished predictions (there is no GET):
  results come back through the webhook (events start and completed) and the output upload.
- Jobs go to servers whose `/health-check` says READY (a free slot); a 409 (all slots busy) or
  503 (not ready) sends the job to another server or back to the queue.
- Health is rechecked every `health_interval` seconds. A server that stops answering for
  `lost_after_s`, restarts (its setup's start time changes), or turns DEFUNCT/SETUP_FAILED has its
  jobs dispatched again elsewhere under a new dispatch token, so a late webhook from it changes
  nothing; when it answers again its old dispatches are canceled there. A server unreachable for
  `give_up_after_s` is dropped for the rest of the run. A job lost `max_attempts` times fails.
- While this process owns a job (queued or running), it refreshes the job's claim in the store,
  so no other process dispatches it too; if this process dies, another one takes it over after
  the claim's TTL (see `latentsync.client.jobs`).
"""

import logging
import os
import secrets
import shutil
import threading
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx

from ..files import sha256_of
from .exchange import Exchange
from .jobs import ClaimLost, Job, news_of
from .inputs import is_url, local_file
from .transfer import TransferError, download

logger = logging.getLogger("latentsync.client")
GONE = ("DEFUNCT", "SETUP_FAILED")  # health statuses of a server that will not finish its jobs


@dataclass
class Server:
    """What the fleet knows of one server."""

    url: str
    status: str = "UNKNOWN"  # the last /health-check status, UNREACHABLE, or CHECKING after a dispatch
    boot: str | None = None  # its setup's start time: a new one means it restarted (and lost its predictions)
    down_since: float | None = None
    failures: int = 0
    next_check: float = 0.0
    retired: bool = False  # unreachable for too long: not used again in this run


@dataclass
class _Owned:
    """A job this process drives: its claim token, and where it runs."""

    token: str
    server: str | None = None  # where it runs
    boot: str | None = None  # that server's boot when the job was dispatched there
    dispatched_at: float = 0.0
    resume: bool = False  # re-send the recorded dispatch first (a take-over)
    beat_at: float = 0.0


class Fleet:
    """Runs jobs on Cog servers (see the module doc). Created by `LipSyncClient(servers=...)`."""

    takes_webhooks = False  # its servers' webhooks go to this client's exchange

    def __init__(self, servers, store, folder, model="bytedance/latentsync", callback_url=None, listen=None, secret=None,
                 health_interval=5.0, lost_after_s=30.0, give_up_after_s=600.0, max_attempts=3, job_timeout_s=3 * 3600.0,
                 request_timeout_s=10.0):
        self.store, self.model_id = store, f"fleet:{model}"
        self.servers = {url.rstrip("/"): Server(url.rstrip("/")) for url in servers}
        self.health_interval, self.lost_after_s, self.give_up_after_s = health_interval, lost_after_s, give_up_after_s
        self.max_attempts, self.job_timeout_s = max_attempts, job_timeout_s
        self.http = httpx.Client(timeout=request_timeout_s)
        self.exchange = Exchange(folder, store, callback_url, listen, secret, on_news=self._news)
        self._owned: dict[str, _Owned] = {}
        self._queue: deque[str] = deque()
        self._abandoned: dict[str, set[str]] = {url: set() for url in self.servers}  # server -> keys to cancel there
        self._lock = threading.Lock()
        self._changed = threading.Condition()  # notified when a webhook changes a job
        self._wake, self._closing = threading.Event(), threading.Event()
        self._checks = ThreadPoolExecutor(max_workers=min(8, len(self.servers)), thread_name_prefix="fleet-health")
        self._monitor = threading.Thread(target=self._run, daemon=True, name="fleet-monitor")
        self._monitor.start()

    # ---- the backend's interface (see LipSyncClient) -------------------------------------------

    def input_ref(self, source) -> str:
        return str(source) if is_url(source) else self.exchange.input_url(local_file(source))

    def start(self, job: Job, token: str, inputs: dict, webhook=None, wait=False) -> Job:
        """Queue `token`'s claimed job; from here on the monitor refreshes its claim and dispatches
        it. A job taken over while it ran is first sent again to its server, to be adopted there."""
        resume = job.server is not None and job.attempt is not None
        fresh = {} if resume else {"status": "queued", "prediction_id": job.key, "error": None}
        job = self.store.update(job.key, token, input=inputs, **fresh)  # inputs this process serves
        with self._lock:
            self._owned[job.key] = _Owned(token, resume=resume, beat_at=time.time())
            self._queue.append(job.key)
        self._wake.set()
        return job

    def refresh(self, job: Job) -> Job:
        return self.store.get(job.key)

    def pause(self, key: str, seconds: float) -> None:
        """Wait up to `seconds` for news of job `key`."""
        with self._changed:
            self._changed.wait(seconds)

    def cancel(self, job: Job) -> Job:
        with self._lock:
            owned = self._owned.pop(job.key, None)
            if job.key in self._queue:
                self._queue.remove(job.key)
        if job.server:
            self._post_cancel(job.server, job.key)
        return self.store.update(job.key, owned.token if owned else None, status="canceled", error="canceled by the client")

    def fetch_output(self, url: str, target: Path) -> None:
        """Link an output this client's exchange received to `target` (checked against its sha256),
        or download it."""
        digest = self.exchange.upload_sha256(url)
        blob = self.exchange.upload_file(url.split("/uploads/", 1)[1]) if digest else None
        if blob is None:
            return download(url, target, digest)
        if sha256_of(blob) != digest:
            raise TransferError(f"The uploaded output {digest[:12]} is corrupt on disk.")
        target.unlink(missing_ok=True)
        try:
            os.link(blob, target)  # no second copy; the exchange lets go of taken uploads later
        except OSError:
            shutil.copyfile(blob, target)

    def webhook_secret(self) -> str:
        raise ValueError("A fleet has no Replicate webhook secret: its servers authenticate with LATENTSYNC_FLEET_SECRET.")

    def close(self) -> None:
        self._closing.set()
        self._wake.set()
        self._monitor.join(timeout=30)
        self._checks.shutdown(wait=True)
        self.exchange.close()
        self.http.close()

    # ---- the monitor -----------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closing.is_set():
            try:
                self._check_health()
                self._watch_jobs()
                self._dispatch()
            except Exception:  # keep watching: a store or network blip must not stop the fleet
                logger.exception("fleet monitor: unexpected error")
            self._wake.wait(min(1.0, self.health_interval))
            self._wake.clear()

    def _news(self, key: str) -> None:
        with self._changed:
            self._changed.notify_all()
        self._wake.set()

    def _check_health(self) -> None:
        now = time.time()
        due = [server for server in self.servers.values() if not server.retired and server.next_check <= now]
        for server, health in zip(due, self._checks.map(self._health_of, due)):
            self._note_health(server, health, now)

    def _health_of(self, server: Server) -> dict | None:
        try:
            response = self.http.get(f"{server.url}/health-check", timeout=5)
            return response.json() if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError):
            return None

    def _note_health(self, server: Server, health: dict | None, now: float) -> None:
        if health is None:
            server.down_since = server.down_since or now
            server.failures += 1
            server.status = "UNREACHABLE"
            server.next_check = now + min(self.health_interval * 2 ** min(server.failures, 6), 60.0)
            if now - server.down_since > self.give_up_after_s:
                server.retired = True
                logger.warning("fleet: giving up on %s, unreachable for %.0f s", server.url, now - server.down_since)
            return
        boot = (health.get("setup") or {}).get("started_at")
        if server.boot is not None and boot != server.boot:
            logger.warning("fleet: %s restarted; its jobs are dispatched again", server.url)
        if server.down_since is not None:
            logger.info("fleet: %s answers again after %.0f s", server.url, now - server.down_since)
        server.status, server.boot, server.down_since, server.failures = health.get("status", "UNKNOWN"), boot, None, 0
        server.next_check = now + self.health_interval
        self._cancel_abandoned(server)

    def _cancel_abandoned(self, server: Server) -> None:
        with self._lock:
            keys = list(self._abandoned[server.url])
        for key in keys:
            self._post_cancel(server.url, key)

    def _post_cancel(self, server_url: str, key: str) -> None:
        """Cancel a dispatch on a server; until that is confirmed, the job is not sent there again
        (a PUT would adopt the old prediction, whose webhooks carry the old dispatch token)."""
        with self._lock:
            self._abandoned.setdefault(server_url, set()).add(key)
        try:
            response = self.http.post(f"{server_url}/predictions/{key}/cancel")
        except httpx.HTTPError:
            return  # tried again when it answers
        if response.status_code in (200, 404):
            with self._lock:
                self._abandoned[server_url].discard(key)

    def _watch_jobs(self) -> None:
        """Refresh the claims of the jobs this process owns; drop finished ones; redispatch lost ones."""
        now = time.time()
        with self._lock:
            owned = list(self._owned.items())
        for key, mine in owned:
            try:
                if now - mine.beat_at >= self.store.claim_ttl_s / 4:
                    if not self.store.heartbeat(key, mine.token):
                        raise ClaimLost(key)
                    mine.beat_at = now
                job = self.store.get(key)
                if job.finished:
                    self._drop(key, job)
                elif job.server and not mine.resume:
                    lost = self._lost(job, mine, now)
                    if lost:
                        self._redispatch(job, mine, lost)
            except ClaimLost:
                self._drop(key, None)

    def _lost(self, job: Job, mine: _Owned, now: float) -> str | None:
        """Why the job's server will not finish it, or None while it may."""
        server = self.servers.get(job.server)
        if server is None or server.retired:
            return f"{job.server} is no longer used"
        if server.down_since is not None and now - server.down_since > self.lost_after_s:
            return f"{server.url} stopped answering for {now - server.down_since:.0f} s"
        if server.status in GONE:
            return f"{server.url} is {server.status}"
        if mine.boot is not None and server.boot != mine.boot and server.down_since is None:
            return f"{server.url} restarted"
        if now - mine.dispatched_at > self.job_timeout_s:
            return f"it ran on {server.url} for more than {self.job_timeout_s:.0f} s"
        return None

    def _redispatch(self, job: Job, mine: _Owned, reason: str) -> None:
        """Queue a job its server lost (at the back), or fail it after `max_attempts`."""
        if self._requeue(job, mine, reason).status == "queued":
            with self._lock:
                self._queue.append(job.key)

    def _requeue(self, job: Job, mine: _Owned, reason: str) -> Job:
        with self._lock:
            self._abandoned.setdefault(job.server, set()).add(job.key)  # cancel it there if it answers again
        mine.server = None
        if job.attempts >= self.max_attempts:
            logger.warning("fleet: job %s failed: lost %d times (%s)", job.key[:12], job.attempts, reason)
            return self.store.update(job.key, mine.token, status="failed", error=f"The job was lost on {job.attempts} servers; last, {reason}.")
        logger.warning("fleet: job %s is dispatched again: %s", job.key[:12], reason)
        return self.store.update(job.key, mine.token, status="queued", server=None, attempt=None, output_url=None)

    def _drop(self, key: str, job: Job | None) -> None:
        with self._lock:
            self._owned.pop(key, None)
            if key in self._queue:
                self._queue.remove(key)
        self._news(key)
        if job is not None and job.server in self.servers:
            self.servers[job.server].next_check = 0.0  # a slot may be free now
            self._wake.set()

    # ---- dispatch --------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        """Send queued jobs, oldest first, to servers with a free slot."""
        while True:
            with self._lock:
                key = self._queue[0] if self._queue else None
                mine = self._owned.get(key)
            if key is None:
                return
            if mine is None:
                with self._lock:
                    self._queue.popleft()
                continue
            try:
                sent = self._send(self.store.get(key), mine)
            except ClaimLost:
                self._drop(key, None)
                continue
            if not sent:
                return  # no server free: wait for the next health check or webhook
            with self._lock:
                if self._queue and self._queue[0] == key:
                    self._queue.popleft()

    def _send(self, job: Job, mine: _Owned) -> bool:
        """Dispatch `job` to a server (first its recorded one, on a take-over); False if none took it."""
        if mine.resume:
            mine.resume = False
            server = self.servers.get(job.server)
            if server is not None and not server.retired and server.down_since is None and self._put(job, mine, server, job.attempt):
                return True
            job = self._requeue(job, mine, f"{job.server} did not take it back")
        if job.status != "queued":
            return True  # finished (or failed) meanwhile
        for server in sorted(self._ready(job.key), key=lambda s: self._running_on(s.url)):
            if self._put(job, mine, server, secrets.token_hex(16), new=True):
                return True
        return False

    def _ready(self, key: str) -> list[Server]:
        """Servers with a free slot that hold no unconfirmed old dispatch of job `key`."""
        with self._lock:
            return [s for s in self.servers.values() if s.status == "READY" and s.down_since is None and not s.retired
                    and key not in self._abandoned[s.url]]

    def _running_on(self, url: str) -> int:
        with self._lock:
            return sum(1 for mine in self._owned.values() if mine.server == url)

    def _put(self, job: Job, mine: _Owned, server: Server, attempt: str, new: bool = False) -> bool:
        """PUT the job's prediction to `server` under dispatch token `attempt`; True if it runs there now."""
        before = job
        if new:  # recorded before the request, so a fast webhook of this dispatch is accepted
            job = self.store.update(job.key, mine.token, status="starting", server=server.url, attempt=attempt, attempts=job.attempts + 1)
        request = {"input": job.input, "webhook": self.exchange.webhook_url(job.key, attempt), "webhook_events_filter": ["start", "completed"]}
        try:
            response = self.http.put(f"{server.url}/predictions/{job.key}", json=request, headers={"Prefer": "respond-async"})
        except httpx.HTTPError as error:
            server.status, server.next_check = "UNREACHABLE", 0.0
            if not isinstance(error, httpx.ConnectError):  # it may have arrived: cancel it there later
                with self._lock:
                    self._abandoned[server.url].add(job.key)
            return self._undo(before, mine, new)
        if response.status_code == 422:
            detail = "; ".join(str(item.get("msg")) for item in response.json().get("detail", [])) or response.text
            self.store.update(job.key, mine.token, status="failed", error=f"The server refused the input: {detail}")
            return True
        if response.status_code != 202:
            server.status, server.next_check = ("BUSY" if response.status_code == 409 else "CHECKING"), 0.0
            return self._undo(before, mine, new)
        server.status, server.next_check = "CHECKING", 0.0  # a slot was taken: ask before sending more
        state = response.json()
        if new and "input" in state:  # an old prediction of this job still runs there: not ours to adopt
            self._post_cancel(server.url, job.key)
            return self._undo(before, mine, new)
        mine.server, mine.boot, mine.dispatched_at = server.url, server.boot, time.time()
        self.store.record(job.key, mine.token, news_of({"id": job.key, **state}))
        return True

    def _undo(self, before: Job, mine: _Owned, new: bool) -> bool:
        if new:
            self.store.update(before.key, mine.token, status="queued", server=None, attempt=None, attempts=before.attempts)
        return False
