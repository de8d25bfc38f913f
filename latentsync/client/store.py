"""The client's job store: job key -> prediction, uploads by content, seen webhook ids.

SQLite by default (one file, safe across threads and processes on one machine); Redis for
several machines sharing one store. A job key is claimed atomically before any prediction is
created (a write transaction in SQLite, an optimistic WATCH/MULTI transaction in Redis), so
concurrent identical submits, in threads or separate processes, create exactly one prediction.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FINISHED = ("succeeded", "failed", "canceled")
CLAIM_TTL_S = 120.0  # a claim not turned into a prediction within this is considered abandoned
UPLOAD_TTL_S = 24 * 3600  # Replicate's file URLs live for a day: Redis may forget them after that
WEBHOOK_ID_TTL_S = 24 * 3600  # Redis forgets seen webhook ids after this (deliveries older than 5 min are refused anyway)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    prediction_id TEXT,
    status TEXT NOT NULL,
    input TEXT,
    output_url TEXT,
    output_path TEXT,
    error TEXT,
    claimed_at REAL,
    updated_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_prediction ON jobs (prediction_id);
CREATE TABLE IF NOT EXISTS uploads (sha256 TEXT PRIMARY KEY, url TEXT NOT NULL, created_at REAL NOT NULL);
CREATE TABLE IF NOT EXISTS webhook_ids (id TEXT PRIMARY KEY, received_at REAL NOT NULL);
"""


@dataclass
class Job:
    """A lip-sync request as the store knows it."""

    key: str
    prediction_id: str | None
    status: str  # claimed | starting | processing | succeeded | failed | canceled | uncertain
    input: dict | None = None
    output_url: str | None = None
    output_path: str | None = None
    error: str | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


def open_store(store):
    """A job store from a store object, a redis:// or rediss:// URL, or the path of a SQLite file."""
    if hasattr(store, "claim"):
        return store
    if str(store).startswith(("redis://", "rediss://", "unix://")):
        return RedisStore(str(store))
    return SQLiteStore(store)


def _reusable(job: Job | None, claimed_at: float | None, now: float) -> bool:
    """Whether a submit should return `job` rather than claim its key anew: a success or a live
    prediction is kept, as is a fresh claim (someone is creating it right now) and an uncertain
    create (to be reconciled); failures, cancellations and abandoned claims are claimed again."""
    if job is None:
        return False
    if job.status == "claimed":
        return now - (claimed_at or 0) < CLAIM_TTL_S
    return job.status in ("succeeded", "starting", "processing", "uncertain")


class SQLiteStore:
    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()
        with self._connect() as db:
            db.executescript(SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=30, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA busy_timeout=30000")
            self._local.connection = connection
        return connection

    def get(self, key: str) -> Job | None:
        row = self._connect().execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return _job(row) if row else None

    def by_prediction(self, prediction_id: str) -> Job | None:
        row = self._connect().execute("SELECT * FROM jobs WHERE prediction_id = ?", (prediction_id,)).fetchone()
        return _job(row) if row else None

    def claim(self, key: str) -> tuple[Job | None, bool]:
        """Atomically: the existing usable job for `key`, or a fresh claim on it.

        Returns (job, claimed). claimed=True: the caller must create the prediction and record
        it. A finished-but-failed or canceled job, or an abandoned claim, is claimed anew;
        an "uncertain" job (a create that may have happened) is returned for reconciliation.
        """
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
            job = _job(row) if row else None
            now = time.time()
            if _reusable(job, row["claimed_at"] if row else None, now):
                db.execute("COMMIT")
                return job, False
            db.execute(
                "INSERT INTO jobs (key, status, claimed_at, updated_at) VALUES (?, 'claimed', ?, ?) "
                "ON CONFLICT(key) DO UPDATE SET prediction_id = NULL, status = 'claimed', output_url = NULL, "
                "output_path = NULL, error = NULL, claimed_at = excluded.claimed_at, updated_at = excluded.updated_at",
                (key, now, now),
            )
            db.execute("COMMIT")
            return Job(key, None, "claimed"), True
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def update(self, key: str, **fields) -> Job:
        if "input" in fields and fields["input"] is not None:
            fields["input"] = json.dumps(fields["input"], sort_keys=True)
        fields["updated_at"] = time.time()
        assignments = ", ".join(f"{name} = ?" for name in fields)
        self._connect().execute(f"UPDATE jobs SET {assignments} WHERE key = ?", (*fields.values(), key))
        return self.get(key)

    def upload_url(self, sha256: str, max_age_s: float) -> str | None:
        row = self._connect().execute("SELECT url, created_at FROM uploads WHERE sha256 = ?", (sha256,)).fetchone()
        return row["url"] if row and time.time() - row["created_at"] < max_age_s else None

    def remember_upload(self, sha256: str, url: str) -> None:
        self._connect().execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?)", (sha256, url, time.time()))

    def first_sighting(self, webhook_id: str) -> bool:
        """Record a webhook id; False if it was seen before (a replay)."""
        cursor = self._connect().execute("INSERT OR IGNORE INTO webhook_ids VALUES (?, ?)", (webhook_id, time.time()))
        return cursor.rowcount == 1

    def __str__(self) -> str:
        return str(self.path)


class RedisStore:
    """The same store in Redis, for clients on several machines. Keys live under `prefix`:
    `job:<key>` (a hash), `prediction:<id>` -> job key, `upload:<sha256>`, `webhook:<id>`."""

    def __init__(self, url: str, prefix: str = "latentsync:"):
        import redis  # only needed for this store

        self.url, self.prefix = url, prefix
        self.redis = redis.Redis.from_url(url, decode_responses=True)
        self.redis.ping()  # fail here, with the URL in the error, not on the first submit

    def _job_key(self, key: str) -> str:
        return f"{self.prefix}job:{key}"

    def get(self, key: str) -> Job | None:
        return _job_from_hash(key, self.redis.hgetall(self._job_key(key)))

    def by_prediction(self, prediction_id: str) -> Job | None:
        key = self.redis.get(f"{self.prefix}prediction:{prediction_id}")
        return self.get(key) if key else None

    def claim(self, key: str) -> tuple[Job | None, bool]:
        """As `SQLiteStore.claim`; a concurrent change between read and claim retries the read."""
        name = self._job_key(key)
        outcome = {}

        def transaction(pipe):
            fields = pipe.hgetall(name)
            job, now = _job_from_hash(key, fields), time.time()
            pipe.multi()
            if _reusable(job, float(fields.get("claimed_at") or 0), now):
                outcome.update(job=job, claimed=False)
                return
            pipe.delete(name)
            pipe.hset(name, mapping={"status": "claimed", "claimed_at": now, "updated_at": now})
            outcome.update(job=Job(key, None, "claimed"), claimed=True)

        self.redis.transaction(transaction, name)
        return outcome["job"], outcome["claimed"]

    def update(self, key: str, **fields) -> Job:
        if fields.get("input") is not None:
            fields["input"] = json.dumps(fields["input"], sort_keys=True)
        fields["updated_at"] = time.time()
        name = self._job_key(key)
        pipe = self.redis.pipeline()
        present = {field: value for field, value in fields.items() if value is not None}
        absent = [field for field, value in fields.items() if value is None]  # Redis has no NULL: drop the field
        pipe.hset(name, mapping=present)
        if absent:
            pipe.hdel(name, *absent)
        if fields.get("prediction_id"):
            pipe.set(f"{self.prefix}prediction:{fields['prediction_id']}", key)
        pipe.execute()
        return self.get(key)

    def upload_url(self, sha256: str, max_age_s: float) -> str | None:
        record = self.redis.get(f"{self.prefix}upload:{sha256}")
        if record is None:
            return None
        upload = json.loads(record)
        return upload["url"] if time.time() - upload["created_at"] < max_age_s else None

    def remember_upload(self, sha256: str, url: str) -> None:
        record = json.dumps({"url": url, "created_at": time.time()})
        self.redis.set(f"{self.prefix}upload:{sha256}", record, ex=UPLOAD_TTL_S)

    def first_sighting(self, webhook_id: str) -> bool:
        """Record a webhook id; False if it was seen before (a replay)."""
        return bool(self.redis.set(f"{self.prefix}webhook:{webhook_id}", time.time(), nx=True, ex=WEBHOOK_ID_TTL_S))

    def __str__(self) -> str:
        return self.url


def _job_from_hash(key: str, fields: dict) -> Job | None:
    if not fields:
        return None
    input_json = fields.get("input")
    return Job(key, fields.get("prediction_id"), fields["status"], json.loads(input_json) if input_json else None,
               fields.get("output_url"), fields.get("output_path"), fields.get("error"))


def _job(row: sqlite3.Row) -> Job:
    key, prediction_id, status, input_json, output_url, output_path, error = tuple(row)[:7]
    return Job(key, prediction_id, status, json.loads(input_json) if input_json else None, output_url, output_path, error)
