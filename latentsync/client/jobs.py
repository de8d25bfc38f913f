"""A job's life in the store, as pure functions on plain data. The SQLite and the Redis store run
these same rules inside their transactions, so both behave alike.

- A job key is *claimed* by one owner (a random token) before anything is created for it. The
  owner refreshes the claim (`heartbeat_at`) while it creates the prediction (on Replicate) or
  queues the job (self-hosted); from then on the job lives where it runs, as a Replicate
  prediction or as an entry of the self-hosted queue (see `latentsync.client.queue`).
- Every change an owner makes is fenced by its token: once another owner has taken the job over
  (the first one stopped refreshing for `ttl` seconds), the first one's writes are refused.
- A take-over keeps what the previous owner may have started (its input and prediction), so the
  new owner looks for that prediction before creating another.
- News of a prediction (a create's answer, a poll, a webhook) only moves a job forward:
  starting < processing < succeeded | failed | canceled. A late or repeated message changes
  nothing, and news of another prediction than the job's current one is ignored.
"""

from dataclasses import dataclass, replace

FINISHED = ("succeeded", "failed", "canceled")
# claimed: its owner is creating it; uncertain: a create may have gone through (a take-over, or
# a create whose answer was lost): its owner looks for it before creating; queued: in the
# self-hosted queue, waiting for a worker
WAITING = ("claimed", "uncertain", "queued")
RANK = {"claimed": 0, "queued": 0, "uncertain": 0, "starting": 1, "processing": 2, "succeeded": 3, "failed": 3, "canceled": 3}


@dataclass(frozen=True)
class Job:
    """A lip-sync request as the store knows it."""

    key: str
    prediction_id: str | None = None
    status: str = "claimed"  # see RANK
    input: dict | None = None  # what the prediction is (or will be) created with
    output_url: str | None = None
    output_path: str | None = None  # the downloaded output
    error: str | None = None
    owner: str | None = None  # the claim token of whoever drives the job now
    heartbeat_at: float = 0.0  # when the owner last showed it is alive
    server: str | None = None  # self-hosted: the worker that runs (or ran) it
    attempt: str | None = None  # self-hosted: the token of the worker's current attempt, which fences its writes
    attempts: int = 0  # self-hosted: attempts so far (workers that took it)
    entry: str | None = None  # self-hosted: the queue entry that carries it
    degraded: bool = False  # a success whose report shows failed windows: handed over, never reused
    updated_at: float = 0.0

    @property
    def finished(self) -> bool:
        return self.status in FINISHED


@dataclass(frozen=True)
class News:
    """What a prediction record says about itself."""

    prediction_id: str
    status: str
    output_url: str | None = None
    error: str | None = None
    degraded: bool = False  # some windows kept their original frames (the `failed_windows` metric or report field)


def news_of(prediction: dict) -> News:
    """The news in a prediction record (Replicate's or a Cog server's): `{video, report}` outputs
    give their video; failed windows, in the metrics or the report, make it a degraded result."""
    output = prediction.get("output")
    url = output.get("video") if isinstance(output, dict) else output
    report = output.get("report") if isinstance(output, dict) else None
    failed_windows = (prediction.get("metrics") or {}).get("failed_windows") or (report or {}).get("failed_windows") or 0
    return News(prediction["id"], prediction["status"], url if isinstance(url, str) else None, prediction.get("error"), failed_windows > 0)


def is_live(job: Job | None, now: float, ttl: float) -> bool:
    """Whether a submit should use `job` as it is rather than claim its key: a success is kept, and
    so is a job in progress, which lives on Replicate or in the self-hosted queue (where a lost
    worker's job is taken over by another worker). Failures, cancellations, degraded successes
    (windows that kept their original frames), and claims whose owner stopped refreshing before
    the job was created (or let go: heartbeat 0) are claimed again."""
    if job is None or job.status in ("failed", "canceled") or job.degraded:
        return False
    if job.status in ("claimed", "uncertain"):
        return now - job.heartbeat_at < ttl
    return True


def claimed(job: Job | None, key: str, token: str, input: dict | None, now: float) -> Job:
    """The job once `token` claims it: a finished (or new) job starts afresh; a take-over of a
    claim whose owner stopped keeps its input and prediction and becomes "uncertain" (its create
    may have gone through: the new owner looks for it first)."""
    if job is None or job.finished:
        return Job(key, input=input, owner=token, heartbeat_at=now, updated_at=now)
    return replace(job, status="uncertain", input=job.input or input, owner=token, heartbeat_at=now, updated_at=now)


def merged(job: Job, news: News, now: float) -> Job | None:
    """The job after `news` of its prediction, or None when the news changes nothing (another
    prediction's, or not newer than what the job knows)."""
    if news.prediction_id != job.prediction_id or RANK.get(news.status, -1) <= RANK[job.status]:
        return None
    return replace(job, status=news.status, output_url=news.output_url, error=news.error, degraded=news.degraded, updated_at=now)


class ClaimLost(RuntimeError):
    """Another owner took the job over: this owner's change was refused."""

    def __init__(self, key: str):
        super().__init__(f"Job {key[:12]} was taken over by another owner; this change was refused.")
        self.key = key
