"""The client's job store: job key -> prediction, uploads by content, seen webhook ids.

SQLite by default (one file, safe across threads and processes). A job key is claimed inside a
write transaction before any prediction is created, so concurrent identical submits, in threads
or separate processes, create exactly one prediction.
"""

import json
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

FINISHED = ("succeeded", "failed", "canceled")
CLAIM_TTL_S = 120.0  # a claim not turned into a prediction within this is considered abandoned

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
            reusable = job is not None and (
                job.status in ("succeeded", "starting", "processing", "uncertain")
                or (job.status == "claimed" and now - (row["claimed_at"] or 0) < CLAIM_TTL_S)
            )
            if reusable:
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


def _job(row: sqlite3.Row) -> Job:
    key, prediction_id, status, input_json, output_url, output_path, error = tuple(row)[:7]
    return Job(key, prediction_id, status, json.loads(input_json) if input_json else None, output_url, output_path, error)
