"""The self-hosted queue: jobs wait in a Redis stream that GPU workers read as one consumer group
(`python -m latentsync.worker`), beside the client's job store in the same Redis. Nothing pushes
to a worker: it needs outbound connections only, to Redis and to the storage.

1. The client claims the job's key in the store (see `latentsync.client.jobs`), then queues the
   job: its record (status queued, its input, the stream entry that carries it) and the stream
   entry are written in one transaction, so a job is queued once or not at all.
2. A worker reads an entry (XREADGROUP) and *takes* the job in the store: a new random token for
   this attempt (`attempt`), its name (`server`), one more attempt. A job already finished, or an
   entry that no longer carries its job, is acknowledged and skipped.
3. While it runs the job the worker renews its lease: XCLAIM ... JUSTID resets the entry's idle
   time, in a script that first checks the entry is still this worker's and the job still this
   attempt's. Every write the worker makes is fenced by its token, so once the job has moved on,
   its late news changes nothing.
4. An entry idle for longer than the lease belongs to a worker that died or was cut off: the next
   idle worker takes it over (XAUTOCLAIM), and counts the loss. A worker told to stop (SIGTERM,
   a spot instance's notice) cancels its prediction and puts the job back at once (a new entry).
5. A job lost `max_attempts` times fails with the reason; the model's own failure (a bad input)
   fails it at once. A finished job's entry is acknowledged and deleted, so the stream holds
   exactly the jobs waiting or running, and the group's lag counts the waiting ones (the scaling
   signal; see the README).
"""

import json
import secrets
import socket
import time
from dataclasses import dataclass, replace
from pathlib import Path

from .. import config
from ..files import sha256_of
from .inputs import is_url, local_file
from .jobs import ClaimLost, Job, News
from .redis_store import RedisStore
from .storage import open_storage

GROUP = "workers"
FAILURES_KEPT = 100  # the status command shows the latest of these
WORKER_FORGOTTEN_AFTER_S = 24 * 3600  # a worker silent this long is dropped from the status

# XADD the job's entry and note its id in the job's record (in the store's transaction).
ENQUEUE = """
local id = redis.call('XADD', KEYS[1], '*', 'key', ARGV[1], 'webhook', ARGV[2])
redis.call('HSET', KEYS[2], 'entry', id)
return id
"""

# Renew a worker's lease on an entry: only while the entry is pending for that worker and the job
# is still that attempt's. Returns ok, finished (canceled meanwhile) or lost.
RENEW = """
local job = redis.call('HMGET', KEYS[2], 'entry', 'attempt', 'status')
if job[1] ~= ARGV[3] or job[2] ~= ARGV[4] then return 'lost' end
if job[3] == 'succeeded' or job[3] == 'failed' or job[3] == 'canceled' then return 'finished' end
local pending = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[3], ARGV[3], 1)
if #pending == 0 or pending[1][2] ~= ARGV[2] then return 'lost' end
redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[3], 'JUSTID')
redis.call('HSET', KEYS[2], 'heartbeat_at', ARGV[5])
return 'ok'
"""


@dataclass(frozen=True)
class Delivery:
    """One stream entry as a worker received it, and the token of its attempt at the job."""

    entry: str
    key: str
    webhook: str | None
    worker: str
    token: str
    reclaimed: bool = False  # taken over from a worker whose lease ran out


class JobQueue:
    """The queue and the job store in one Redis (see the module doc).

    Args:
        url: the Redis URL (redis://, rediss://, unix://).
        lease_s: how long a worker may go without renewing its lease before its job is taken over.
        max_attempts: how many lost attempts fail a job.
    """

    def __init__(self, url: str, lease_s: float = config.QUEUE_LEASE_S, max_attempts: int = config.QUEUE_MAX_ATTEMPTS,
                 claim_ttl_s: float | None = None, prefix: str = "latentsync:"):
        settings = {"claim_ttl_s": claim_ttl_s} if claim_ttl_s else {}
        self.store = RedisStore(url, prefix=prefix, **settings)
        self.redis = self.store.redis
        self.lease_s, self.max_attempts = lease_s, max_attempts
        self.stream, self.workers, self.failures = f"{prefix}queue", f"{prefix}workers", f"{prefix}failures"
        try:  # from the start of the stream: jobs queued before any worker existed are read too
            self.redis.xgroup_create(self.stream, GROUP, id="0", mkstream=True)
        except Exception as error:
            if "BUSYGROUP" not in str(error):
                raise

    def job_record(self, key: str) -> str:
        return f"{self.store.prefix}job:{key}"

    # ---- the client's side -------------------------------------------------------------------

    def enqueue(self, key: str, token: str, inputs: dict, webhook: str | None = None) -> Job:
        """Queue `token`'s claimed job (ClaimLost if another owner took it over)."""

        def change(txn, now):
            job = txn.job(key)
            if job is None or job.owner != token:
                raise ClaimLost(key)
            queued = replace(job, prediction_id=key, status="queued", input=inputs, output_url=None, error=None, owner=None,
                             server=None, attempt=None, attempts=0, entry=None, updated_at=now)
            txn.put(queued)
            txn.also(lambda pipe: pipe.eval(ENQUEUE, 2, self.stream, self.job_record(key), key, webhook or ""))
            return queued

        return self.store.atomically(change)

    def cancel(self, key: str) -> Job:
        """Cancel a job: a waiting one is skipped when a worker reads it, a running one is stopped
        at its worker's next lease renewal."""

        def change(txn, now):
            job = txn.job(key)
            if job is None or job.finished:
                return job
            canceled = replace(job, status="canceled", error="canceled by the client", owner=None, updated_at=now)
            txn.put(canceled)
            return canceled

        return self.store.atomically(change)

    # ---- a worker's side ---------------------------------------------------------------------

    def next(self, worker: str, block_s: float) -> Delivery | None:
        """The next entry for `worker`: one whose lease ran out first, else a new one (waiting up
        to `block_s` for it)."""
        cursor = "0-0"
        while True:  # XAUTOCLAIM looks at a few pending entries a call: walk the whole list
            cursor, claimed, *_ = self.redis.xautoclaim(self.stream, GROUP, worker, int(self.lease_s * 1000), cursor, count=1)
            if claimed:
                return self._delivery(claimed[0], worker, reclaimed=True)
            if cursor == "0-0":
                break
        answer = self.redis.xreadgroup(GROUP, worker, {self.stream: ">"}, count=1, block=max(1, int(block_s * 1000)))
        for _, entries in answer or []:
            for entry in entries:
                return self._delivery(entry, worker)
        return None

    def _delivery(self, entry, worker: str, reclaimed: bool = False) -> Delivery:
        entry_id, fields = entry
        return Delivery(entry_id, fields.get("key", ""), fields.get("webhook") or None, worker, secrets.token_hex(16), reclaimed)

    def take(self, delivery: Delivery) -> Job | None:
        """Make the job this delivery's attempt; None if there is nothing to run (finished, or the
        entry no longer carries it), or the job as failed when it was lost too often."""

        def change(txn, now):
            job = txn.job(delivery.key)
            if job is None or job.finished or job.entry != delivery.entry:
                return None
            if job.attempt is not None:  # an earlier attempt took it and never let go
                reason = f"worker {job.server} stopped renewing its lease"
                if job.attempts >= self.max_attempts:
                    failed = replace(job, status="failed", error=lost(job.attempts, reason), owner=None, updated_at=now)
                    txn.put(failed)
                    return failed
            taken = replace(job, status="starting", server=delivery.worker, attempt=delivery.token, attempts=job.attempts + 1,
                            owner=None, heartbeat_at=now, error=None, updated_at=now)
            txn.put(taken)
            return taken

        job = self.store.atomically(change)
        if job is None or job.finished:
            self.done(delivery, job)
        return job

    def renew(self, delivery: Delivery) -> str:
        """Renew the delivery's lease: "ok", "finished" (the job was canceled) or "lost" (taken over)."""
        keys = (self.stream, self.job_record(delivery.key))
        return self.redis.eval(RENEW, 2, *keys, GROUP, delivery.worker, delivery.entry, delivery.token, time.time())

    def report(self, delivery: Delivery, news: News) -> str:
        """Record the attempt's news (fenced: "stale" once the job moved on); a final one ends the
        delivery."""
        outcome = self.store.receive(news, attempt=delivery.token)
        if outcome == "updated" and news.status in ("succeeded", "failed", "canceled"):
            self.done(delivery, self.store.get(delivery.key))
        return outcome

    def release(self, delivery: Delivery, reason: str) -> Job | None:
        """Put the attempt's job back in the queue at once (a new entry), or fail it if it was lost
        `max_attempts` times; None if the job had already moved on."""

        def change(txn, now):
            job = txn.job(delivery.key)
            if job is None or job.finished or job.attempt != delivery.token:
                return None
            if job.attempts >= self.max_attempts:
                failed = replace(job, status="failed", error=lost(job.attempts, reason), updated_at=now)
                txn.put(failed)
                return failed
            queued = replace(job, status="queued", server=None, attempt=None, entry=None, updated_at=now)
            txn.put(queued)
            txn.also(lambda pipe: pipe.eval(ENQUEUE, 2, self.stream, self.job_record(delivery.key), delivery.key, delivery.webhook or ""))
            return queued

        job = self.store.atomically(change)
        if job is not None:
            self.done(delivery, job)
        return job

    def done(self, delivery: Delivery, job: Job | None) -> None:
        """Acknowledge and delete the delivery's entry (its job needs it no more); note a failure."""
        with self.redis.pipeline() as pipe:
            pipe.xack(self.stream, GROUP, delivery.entry)
            pipe.xdel(self.stream, delivery.entry)
            if job is not None and job.status == "failed":
                note = {"job": job.key, "error": job.error, "worker": job.server, "at": time.time()}
                pipe.lpush(self.failures, json.dumps(note))
                pipe.ltrim(self.failures, 0, FAILURES_KEPT - 1)
            pipe.execute()

    def beat(self, worker: str, state: str, job: str | None = None, **counts) -> None:
        """Note that `worker` is alive, what it does, and its counts (for the status command)."""
        record = {"host": socket.gethostname(), "state": state, "job": job, "heartbeat_at": time.time(), **counts}
        self.redis.hset(self.workers, worker, json.dumps(record))

    def leave(self, worker: str) -> None:
        """`worker` stops: forget it (its consumer too, when it holds no entry)."""
        self.redis.hdel(self.workers, worker)
        consumers = {c["name"]: c for c in self.redis.xinfo_consumers(self.stream, GROUP)}
        if worker in consumers and consumers[worker]["pending"] == 0:
            self.redis.xgroup_delconsumer(self.stream, GROUP, worker)

    # ---- the status command -------------------------------------------------------------------

    def overview(self, now: float | None = None) -> dict:
        """Depth (jobs waiting), jobs in flight (with their worker and idle time), workers (with
        their last heartbeat) and the latest failures."""
        now = now or time.time()
        group = next(g for g in self.redis.xinfo_groups(self.stream) if g["name"] == GROUP)
        running = []
        for item in self.redis.xpending_range(self.stream, GROUP, "-", "+", 1000):
            entry = self.redis.xrange(self.stream, item["message_id"], item["message_id"])
            key = entry[0][1].get("key") if entry else None
            running.append({"job": key, "worker": item["consumer"], "idle_s": round(item["time_since_delivered"] / 1000, 1),
                            "lease_ran_out": item["time_since_delivered"] / 1000 > self.lease_s})
        workers = {}
        for name, text in self.redis.hgetall(self.workers).items():
            record = json.loads(text)
            if now - record["heartbeat_at"] > WORKER_FORGOTTEN_AFTER_S:
                self.redis.hdel(self.workers, name)
                continue
            workers[name] = {**record, "seen_s_ago": round(now - record["heartbeat_at"], 1)}
        lag = group.get("lag")
        depth = lag if lag is not None else max(0, self.redis.xlen(self.stream) - group["pending"])
        failures = [json.loads(text) for text in self.redis.lrange(self.failures, 0, 19)]
        return {"depth": depth, "in_flight": running, "workers": workers, "failures": failures}

    def close(self) -> None:
        self.redis.close()


def lost(attempts: int, reason: str) -> str:
    return f"The job was lost {attempts} times (workers gone or stopped); last, {reason}."


class QueueBackend:
    """Runs the client's jobs on self-hosted workers through a `JobQueue` and a storage, for
    `LipSyncClient(queue=..., storage=...)`: local inputs are uploaded to the storage once by
    content, outputs are fetched from it and checked against their sha256."""

    def __init__(self, queue: JobQueue, storage, model: str):
        self.queue, self.store, self.storage = queue, queue.store, open_storage(storage)
        self.model_id = f"self-hosted:{model}"
        self._uploads: dict[tuple, str] = {}  # (path, size, mtime) -> storage URL, for this process

    def input_ref(self, source) -> str:
        if is_url(source):
            return str(source)
        path = local_file(source).resolve()
        info = path.stat()
        known = (path, info.st_size, info.st_mtime_ns)
        if known not in self._uploads:
            self._uploads[known] = self.storage.upload(path, "inputs", sha256_of(path))
        return self._uploads[known]

    def start(self, job: Job, token: str, inputs: dict, webhook=None, wait=False) -> Job:
        return self.queue.enqueue(job.key, token, inputs, webhook)

    def refresh(self, job: Job) -> Job:
        return self.store.get(job.key)

    def pause(self, key: str, seconds: float) -> None:
        time.sleep(seconds)

    def cancel(self, job: Job) -> Job:
        return self.queue.cancel(job.key)

    def fetch_output(self, url: str, target: Path) -> None:
        self.storage.download(url, target)

    def webhook_secret(self) -> str:
        raise ValueError("Self-hosted workers sign their webhooks with your own whsec_ secret: give the same "
                         "LATENTSYNC_WEBHOOK_SECRET to the workers and to what receives the webhooks.")

    def close(self) -> None:
        self.queue.close()
