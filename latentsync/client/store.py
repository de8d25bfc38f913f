"""The client's job store: job key -> prediction, uploads by content, webhook deliveries.

SQLite by default (one file, safe across threads and processes on one machine, created 0600: it
holds input and output URLs); Redis (`redis_store.py`) for several machines sharing one store. Every change is one
atomic read-modify-write (a write transaction in SQLite, WATCH/MULTI in Redis) that runs the
rules of `latentsync.client.jobs`, written once for both: claims, heartbeats, fenced owner
updates, and prediction news from webhooks, recorded together with the delivery's id.
"""

import json
import os
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, fields, replace
from pathlib import Path

from .jobs import ClaimLost, Job, News, claimed, is_live, merged

CLAIM_TTL_S = 120.0  # an owner that has not refreshed its claim for this long is presumed gone
UPLOAD_TTL_S = 24 * 3600  # Replicate's file URLs live for a day: Redis may forget them after that
WEBHOOK_ID_TTL_S = 24 * 3600  # seen webhook ids and early news are kept this long
JOB_FIELDS = [field.name for field in fields(Job)]


class _Store:
    """The store's operations. Each runs as one `_atomically(change)`: the backend calls
    `change(txn, now)` inside a transaction whose object reads (job, key_of, pending, seen) and
    writes (put, put_pending, drop_pending, mark_seen); Redis re-runs it if a key it read changed."""

    claim_ttl_s: float

    def claim(self, key: str, token: str, input: dict | None = None) -> tuple[Job, bool]:
        """Atomically: the usable job for `key` (claimed=False), or `token`'s claim on it.

        With claimed=True the caller owns the job: it refreshes it with `heartbeat` and changes
        it with `update`/`record` under its token. A take-over returns what the previous owner
        may have started, to be looked for before anything new is created.
        """

        def change(txn, now):
            job = txn.job(key)
            if is_live(job, now, self.claim_ttl_s):
                return job, False
            return self._save(txn, claimed(job, key, token, input, now)), True

        return self._atomically(change)

    def heartbeat(self, key: str, token: str) -> bool:
        """Refresh `token`'s claim; False once another owner has taken the job over."""

        def change(txn, now):
            job = txn.job(key)
            if job is None or job.owner != token:
                return False
            txn.put(replace(job, heartbeat_at=now))
            return True

        return self._atomically(change)

    def update(self, key: str, token: str | None, **changes) -> Job:
        """Set fields of `token`'s job (raises ClaimLost if another owner took it over). Without a
        token the change is not fenced: only for what any process may do (e.g. `output_path`)."""

        def change(txn, now):
            job = txn.job(key)
            if job is None or (token is not None and job.owner != token):
                raise ClaimLost(key)
            return self._save(txn, replace(job, **changes, updated_at=now))

        return self._atomically(change)

    def record(self, key: str, token: str | None, news: News) -> Job:
        """Record news of the job's prediction (a create's answer or a poll). With a token, the
        prediction becomes the job's (fenced: ClaimLost if taken over), and news a webhook brought
        before the create's answer is merged in."""

        def change(txn, now):
            job = txn.job(key)
            if job is None or (token is not None and job.owner != token):
                raise ClaimLost(key)
            if token is not None and job.prediction_id != news.prediction_id:
                job = replace(job, prediction_id=news.prediction_id, status="claimed", output_url=None, error=None)
            return self._save(txn, merged(job, news, now) or job)

        return self._atomically(change)

    def receive(self, news: News, webhook_id: str | None = None, attempt: str | None = None) -> str:
        """Apply a webhook's news and mark its delivery id seen, in one transaction.

        Returns "updated"; "duplicate" (a delivery or news seen before: nothing changes); "stale"
        (news of a superseded prediction, or of a self-hosted worker's attempt other than `attempt`); or
        "recorded" (a Replicate prediction not known yet: kept until its create is recorded).
        """

        def change(txn, now):
            if webhook_id is not None and txn.seen(webhook_id):
                return "duplicate"
            key = txn.key_of(news.prediction_id)
            job = txn.job(key) if key else None
            if job is None and attempt is None:
                txn.put_pending(news)
                outcome = "recorded"
            elif job is None or job.prediction_id != news.prediction_id or (attempt is not None and job.attempt != attempt):
                return "stale"
            else:
                after = merged(job, news, now)
                outcome = "updated" if after else "duplicate"
                if after:
                    txn.put(after)
            if webhook_id is not None:
                txn.mark_seen(webhook_id)
            return outcome

        return self._atomically(change)

    def _save(self, txn, job: Job) -> Job:
        if job.prediction_id:
            early = txn.pending(job.prediction_id)
            if early is not None:
                job = merged(job, early, time.time()) or job
                txn.drop_pending(job.prediction_id)
        txn.put(job)
        return job

    @contextmanager
    def heartbeats(self, key: str, token: str):
        """Refresh `token`'s claim every ttl/4 seconds, in a thread, while the block runs."""
        stop = threading.Event()

        def beat():
            while not stop.wait(self.claim_ttl_s / 4) and self.heartbeat(key, token):
                pass

        thread = threading.Thread(target=beat, daemon=True, name=f"heartbeat-{key[:8]}")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()


class SQLiteStore(_Store):
    def __init__(self, path, claim_ttl_s: float = CLAIM_TTL_S, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.claim_ttl_s, self.busy_timeout_s = claim_ttl_s, busy_timeout_s
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))  # SQLite gives -wal/-shm its mode
        for companion in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
            if companion.exists() and companion.stat().st_mode & 0o077:
                companion.chmod(0o600)  # a store made by an older version
        self._local = threading.local()
        self._atomically(_create_tables)

    def _connect(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=self.busy_timeout_s, isolation_level=None)
            connection.row_factory = sqlite3.Row
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute(f"PRAGMA busy_timeout={int(self.busy_timeout_s * 1000)}")
            self._local.connection = connection
        return connection

    def get(self, key: str) -> Job | None:
        return _SQLiteTransaction(self._connect()).job(key)

    def by_prediction(self, prediction_id: str) -> Job | None:
        key = _SQLiteTransaction(self._connect()).key_of(prediction_id)
        return self.get(key) if key else None

    def _atomically(self, change):
        db = self._connect()
        db.execute("BEGIN IMMEDIATE")
        try:
            result = change(_SQLiteTransaction(db), time.time())
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
        return result

    def upload_url(self, sha256: str, max_age_s: float) -> str | None:
        row = self._connect().execute("SELECT url, created_at FROM uploads WHERE sha256 = ?", (sha256,)).fetchone()
        return row["url"] if row and time.time() - row["created_at"] < max_age_s else None

    def remember_upload(self, sha256: str, url: str) -> None:
        self._connect().execute("INSERT OR REPLACE INTO uploads VALUES (?, ?, ?)", (sha256, url, time.time()))

    def __str__(self) -> str:
        return str(self.path)


SCHEMA = [
    "CREATE TABLE IF NOT EXISTS jobs (key TEXT PRIMARY KEY, prediction_id TEXT, status TEXT NOT NULL, input TEXT, output_url TEXT,"
    " output_path TEXT, error TEXT, owner TEXT, heartbeat_at REAL NOT NULL DEFAULT 0, server TEXT, attempt TEXT,"
    " attempts INTEGER NOT NULL DEFAULT 0, entry TEXT, degraded INTEGER NOT NULL DEFAULT 0, updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS predictions (prediction_id TEXT PRIMARY KEY, key TEXT NOT NULL)",  # every prediction a job had
    "CREATE TABLE IF NOT EXISTS uploads (sha256 TEXT PRIMARY KEY, url TEXT NOT NULL, created_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS webhook_ids (id TEXT PRIMARY KEY, received_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS early_news (prediction_id TEXT PRIMARY KEY, news TEXT NOT NULL, received_at REAL NOT NULL)",
]
ADDED_COLUMNS = {"owner": "TEXT", "heartbeat_at": "REAL NOT NULL DEFAULT 0", "server": "TEXT", "attempt": "TEXT", "attempts": "INTEGER NOT NULL DEFAULT 0", "entry": "TEXT",
                 "degraded": "INTEGER NOT NULL DEFAULT 0"}


def _create_tables(txn, now) -> None:
    """The tables, and the columns a store made by the first version lacks (its rows are kept)."""
    for statement in SCHEMA:
        txn.db.execute(statement)
    present = {row["name"] for row in txn.db.execute("PRAGMA table_info(jobs)")}
    for name, kind in ADDED_COLUMNS.items():
        if name not in present:
            txn.db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {kind}")
    txn.db.execute("INSERT OR IGNORE INTO predictions SELECT prediction_id, key FROM jobs WHERE prediction_id IS NOT NULL")


class _SQLiteTransaction:
    def __init__(self, db: sqlite3.Connection):
        self.db = db

    def job(self, key: str) -> Job | None:
        row = self.db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return job_from_record(dict(row)) if row else None

    def key_of(self, prediction_id: str) -> str | None:
        row = self.db.execute("SELECT key FROM predictions WHERE prediction_id = ?", (prediction_id,)).fetchone()
        return row["key"] if row else None

    def put(self, job: Job) -> None:
        record = record_of(job)
        names = ", ".join(record)
        self.db.execute(f"INSERT OR REPLACE INTO jobs ({names}) VALUES ({', '.join('?' * len(record))})", tuple(record.values()))
        if job.prediction_id:
            self.db.execute("INSERT OR REPLACE INTO predictions VALUES (?, ?)", (job.prediction_id, job.key))

    def pending(self, prediction_id: str) -> News | None:
        row = self.db.execute("SELECT news FROM early_news WHERE prediction_id = ?", (prediction_id,)).fetchone()
        return News(**json.loads(row["news"])) if row else None

    def put_pending(self, news: News) -> None:
        self.db.execute("DELETE FROM early_news WHERE received_at < ?", (time.time() - WEBHOOK_ID_TTL_S,))
        self.db.execute("INSERT OR REPLACE INTO early_news VALUES (?, ?, ?)", (news.prediction_id, json.dumps(asdict(news)), time.time()))

    def drop_pending(self, prediction_id: str) -> None:
        self.db.execute("DELETE FROM early_news WHERE prediction_id = ?", (prediction_id,))

    def seen(self, webhook_id: str) -> bool:
        return self.db.execute("SELECT 1 FROM webhook_ids WHERE id = ?", (webhook_id,)).fetchone() is not None

    def mark_seen(self, webhook_id: str) -> None:
        self.db.execute("INSERT INTO webhook_ids VALUES (?, ?)", (webhook_id, time.time()))


def record_of(job: Job) -> dict:
    record = asdict(job)
    record["input"] = json.dumps(job.input, sort_keys=True) if job.input is not None else None
    record["degraded"] = int(job.degraded)  # SQLite and Redis keep numbers, not booleans
    return record


def job_from_record(record: dict) -> Job:
    """A Job from a SQLite row or a Redis hash (all strings), ignoring columns of older versions."""
    values = {name: record.get(name) for name in JOB_FIELDS if record.get(name) is not None}
    if "input" in values:
        values["input"] = json.loads(values["input"])
    for name, kind in (("heartbeat_at", float), ("updated_at", float), ("attempts", int), ("degraded", lambda v: bool(int(v)))):
        if name in values:
            values[name] = kind(values[name])
    return Job(**values)
