"""Run a GPU worker (see `latentsync.worker`).

    python -m latentsync.worker --queue redis://queue-host:6379/0 --storage s3://bucket/lipsync
    python -m latentsync.worker                 # LATENTSYNC_QUEUE_URL and LATENTSYNC_STORAGE_URL

Secrets come from the environment, never the command line: LATENTSYNC_QUEUE_URL (a Redis URL
with a password), the AWS variables of an S3 storage, LATENTSYNC_WEBHOOK_SECRET (the whsec_
secret user webhooks are signed with). SIGTERM (a spot instance's notice) cancels the running
prediction and puts its job back in the queue at once. Exit status 1 when Cog fails.
"""

import argparse
import logging
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

from .. import config
from ..client.queue import JobQueue
from ..client.storage import open_storage
from ..client.webhooks import check_secret
from ..logs import configure_logging
from .cog import CogError, LocalCog
from .loopback import LoopbackFiles
from .worker import Worker, default_name, install_signal_handlers

logger = logging.getLogger("latentsync.worker")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m latentsync.worker", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--queue", metavar="URL", help="the queue's Redis URL (default $LATENTSYNC_QUEUE_URL; one with a password only there)")
    parser.add_argument("--storage", metavar="URL", help="s3://bucket/prefix or file:///folder (default $LATENTSYNC_STORAGE_URL)")
    parser.add_argument("--cog-url", metavar="URL", help="drive this Cog server on 127.0.0.1 instead of starting one (its outputs come back inline)")
    parser.add_argument("--name", default=None, help="this worker's name in the queue (default: host name and process id; must be unique)")
    parser.add_argument("--lease", type=float, default=config.QUEUE_LEASE_S, help="seconds without a renewal after which a job is taken over (same on every worker)")
    parser.add_argument("--max-attempts", type=int, default=config.QUEUE_MAX_ATTEMPTS, help="a job lost this many times fails")
    parser.add_argument("--job-timeout", type=float, default=config.QUEUE_JOB_TIMEOUT_S, help="seconds a prediction may run")
    parser.add_argument("--work-dir", type=Path, default=None, help="for inputs and outputs on their way (default: a temporary folder)")
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    configure_logging()
    queue_url, storage_url = args.queue or config.queue_url(), args.storage or config.storage_url()
    if args.queue and urlsplit(args.queue).password:
        return _fail("the --queue URL carries a password, which the process list would show: set LATENTSYNC_QUEUE_URL instead.")
    if not queue_url or not storage_url:
        return _fail("a worker needs a queue and a storage: --queue and --storage, or LATENTSYNC_QUEUE_URL and LATENTSYNC_STORAGE_URL.")
    try:
        secret = config.webhook_secret()
        secret = check_secret(secret) if secret else None
        queue = JobQueue(queue_url, lease_s=args.lease, max_attempts=args.max_attempts)
        storage = open_storage(storage_url)
    except (ValueError, OSError) as error:
        return _fail(str(error))
    with tempfile.TemporaryDirectory(prefix="latentsync-worker-", dir=args.work_dir) as folder:
        files = LoopbackFiles(Path(folder))
        cog = LocalCog(args.cog_url, upload_url=files.upload_url)  # before any thread: it forks
        files.start()
        worker = Worker(queue, storage, cog, files, args.name or default_name(), folder, webhook_secret=secret, job_timeout_s=args.job_timeout)
        install_signal_handlers(worker)
        try:
            worker.run()
        except CogError as error:
            return _fail(str(error))
        finally:
            cog.stop()
            files.close()
            queue.close()
    logger.info("worker %s stopped", worker.name)
    return 0


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
