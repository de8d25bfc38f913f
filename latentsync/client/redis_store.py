"""The job store in Redis, for clients on several machines (see `latentsync.client.store`)."""

import json
import time
from dataclasses import asdict

import redis
from redis.exceptions import WatchError

from .jobs import Job, News
from ..redaction import mask_credentials
from .store import CLAIM_TTL_S, UPLOAD_TTL_S, WEBHOOK_ID_TTL_S, _Store, job_from_record, record_of


class RedisStore(_Store):
    """The same store in Redis, for clients on several machines. Keys live under `prefix`:
    `job:<key>` (a hash), `prediction:<id>` -> job key, `upload:<sha256>`, `webhook:<id>`,
    `early:<prediction id>`."""

    def __init__(self, url: str, prefix: str = "latentsync:", claim_ttl_s: float = CLAIM_TTL_S, timeout_s: float = 30.0):
        self.url, self.prefix, self.claim_ttl_s = url, prefix, claim_ttl_s
        # no call waits forever: a blocking read (the queue's) asks for less than `timeout_s`
        self.redis = redis.Redis.from_url(url, decode_responses=True, socket_timeout=timeout_s, socket_connect_timeout=10, health_check_interval=30)
        try:
            self.redis.ping()  # fail here, not on the first submit
        except redis.RedisError as error:
            raise ConnectionError(f"The Redis job store at {mask_credentials(url)} is not usable: {error}") from None

    def get(self, key: str) -> Job | None:
        fields = self.redis.hgetall(f"{self.prefix}job:{key}")
        return job_from_record(fields) if fields else None

    def by_prediction(self, prediction_id: str) -> Job | None:
        key = self.redis.get(f"{self.prefix}prediction:{prediction_id}")
        return self.get(key) if key else None

    def atomically(self, change):
        """Run `change(txn, now)` as one transaction (see `_Store`); `txn.also(write)` adds a raw
        write to it (the self-hosted queue's stream commands)."""
        return self._atomically(change)

    def _atomically(self, change):
        """`change` re-runs until no key it read changed before its writes were applied."""
        while True:
            with self.redis.pipeline() as pipe:
                txn = _RedisTransaction(pipe, self.prefix)
                try:
                    result = change(txn, time.time())
                    txn.commit()
                    return result
                except WatchError:
                    continue

    def upload_url(self, sha256: str, max_age_s: float) -> str | None:
        record = self.redis.get(f"{self.prefix}upload:{sha256}")
        if record is None:
            return None
        upload = json.loads(record)
        return upload["url"] if time.time() - upload["created_at"] < max_age_s else None

    def remember_upload(self, sha256: str, url: str) -> None:
        record = json.dumps({"url": url, "created_at": time.time()})
        self.redis.set(f"{self.prefix}upload:{sha256}", record, ex=UPLOAD_TTL_S)

    def __str__(self) -> str:
        return mask_credentials(self.url)


class _RedisTransaction:
    """Reads WATCH their keys and run at once; writes are queued and applied in one MULTI."""

    def __init__(self, pipe, prefix: str):
        self.pipe, self.prefix, self.writes = pipe, prefix, []

    def _read(self, name: str, command: str):
        self.pipe.watch(name)
        return getattr(self.pipe, command)(name)

    def job(self, key: str) -> Job | None:
        fields = self._read(f"{self.prefix}job:{key}", "hgetall")
        return job_from_record(fields) if fields else None

    def key_of(self, prediction_id: str) -> str | None:
        return self._read(f"{self.prefix}prediction:{prediction_id}", "get")

    def put(self, job: Job) -> None:
        name = f"{self.prefix}job:{job.key}"
        record = {field: value for field, value in record_of(job).items() if value is not None}  # Redis has no NULL

        def write(pipe):
            pipe.delete(name)
            pipe.hset(name, mapping=record)
            if job.prediction_id:
                pipe.set(f"{self.prefix}prediction:{job.prediction_id}", job.key)

        self.writes.append(write)

    def pending(self, prediction_id: str) -> News | None:
        record = self._read(f"{self.prefix}early:{prediction_id}", "get")
        return News(**json.loads(record)) if record else None

    def put_pending(self, news: News) -> None:
        record = json.dumps(asdict(news))
        self.writes.append(lambda pipe: pipe.set(f"{self.prefix}early:{news.prediction_id}", record, ex=WEBHOOK_ID_TTL_S))

    def drop_pending(self, prediction_id: str) -> None:
        self.writes.append(lambda pipe: pipe.delete(f"{self.prefix}early:{prediction_id}"))

    def seen(self, webhook_id: str) -> bool:
        return bool(self._read(f"{self.prefix}webhook:{webhook_id}", "exists"))

    def mark_seen(self, webhook_id: str) -> None:
        self.writes.append(lambda pipe: pipe.set(f"{self.prefix}webhook:{webhook_id}", time.time(), ex=WEBHOOK_ID_TTL_S))

    def also(self, write) -> None:
        """Apply `write(pipe)` with this transaction's writes, after them."""
        self.writes.append(write)

    def commit(self) -> None:
        if not self.writes:
            return
        self.pipe.multi()
        for write in self.writes:
            write(self.pipe)
        self.pipe.execute()
