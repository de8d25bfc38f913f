"""Companion client for the lip-sync model, on Replicate or on self-hosted GPU workers that pull
jobs from a queue: idempotent runs, webhooks, batches and long-video fan-out. See `LipSyncClient`."""

from .core import LipSyncClient, LipSyncError, RunResult, open_store
from .jobs import ClaimLost, Job
from .params import PARAMETERS, validate
from .redis_store import RedisStore
from .store import SQLiteStore
from .webhooks import handle_webhook, webhook_app

__all__ = ["ClaimLost", "Job", "LipSyncClient", "LipSyncError", "PARAMETERS", "RedisStore", "RunResult", "SQLiteStore", "handle_webhook", "open_store", "run_long", "validate", "webhook_app"]


def run_long(client, video, audio, output_path, max_segment_s: float = 60.0, concurrency: int = 3, **params):
    """Lip-sync a long video in parallel segments (see `longform.run_long`)."""
    from .longform import run_long as run_segments  # needs the audio stack (torch, webrtcvad)

    return run_segments(client, video, audio, output_path, max_segment_s=max_segment_s, concurrency=concurrency, **params)
