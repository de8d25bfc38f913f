"""Self-hosted GPU workers that pull lip-sync jobs from a queue: `python -m latentsync.worker`.

A worker runs in the model's Cog image, starts the image's own Cog server on 127.0.0.1 (or drives
one already running there), takes one job at a time from the queue (a Redis stream, see
`latentsync.client.queue`), runs it through Cog's HTTP API with the job key as the prediction id,
writes the output to the storage and reports the result. It needs outbound connections only, to
Redis and to the storage, and publishes no port.
"""

from .worker import Worker

__all__ = ["Worker"]
