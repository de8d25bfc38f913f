"""Serve the web app:

    python -m latentsync.app [--host 127.0.0.1] [--port 7860] [--version 1.6] [--versions 1.5,1.6]
                             [--auth-file FILE | --auth USER:PASSWORD] [--max-queue 20] [--data-dir DIR]

The models load once, at start (weights fetched as the manifest lists them, with the same
LATENTSYNC_WEIGHTS_* variables as the Cog predictor); another offered version loads on first use.
Results, the result cache and job files live under the data folder.

With a login (--auth-file, $LATENTSYNC_APP_AUTH or --auth; the first two keep the password out of
the process list), every page, upload and API call needs it. Serving the network (--host 0.0.0.0)
without one lets anyone run jobs on this machine: put it behind a reverse proxy with TLS.
"""

import argparse
import logging
import math
import sys
from pathlib import Path

from starlette.middleware import Middleware

from ..cache import ResultCache
from ..config import APP_HOST, APP_KEEP_S, APP_MAX_QUEUE, APP_PORT, DEFAULT_APP_DIR, DEFAULT_VERSION, MAX_INPUT_BYTES, SERVICE_INPUTS, app_auth
from ..logs import configure_logging
from ..serving import ModelVersions
from ..weights import WeightsError
from .jobs import Jobs
from .page import LipsyncPage
from .uploads import UploadLimits

logger = logging.getLogger("latentsync")
VERSIONS = SERVICE_INPUTS["version"].choices
LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m latentsync.app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=APP_HOST, help=f"address to listen on (default {APP_HOST}: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=APP_PORT)
    parser.add_argument("--version", default=DEFAULT_VERSION, choices=VERSIONS, help="model version loaded at start (the page's default)")
    parser.add_argument("--versions", type=versions_list, default=VERSIONS,
                        help=f"comma-separated model versions the server offers (default: all, {','.join(VERSIONS)}); each loads on first use")
    parser.add_argument("--auth-file", type=Path, help="file of logins, one user:password a line")
    parser.add_argument("--auth", metavar="USER:PASSWORD", help="a login (shows in the process list: prefer --auth-file or $LATENTSYNC_APP_AUTH)")
    parser.add_argument("--max-queue", type=int, default=APP_MAX_QUEUE, help=f"jobs that may wait for the model (default {APP_MAX_QUEUE}); more are told the queue is full")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_APP_DIR, help=f"results, result cache and job files (default {DEFAULT_APP_DIR})")
    parser.add_argument("--keep-hours", type=float, default=APP_KEEP_S / 3600,
                        help=f"hours the results, cached results and uploaded files are kept (default {APP_KEEP_S / 3600:g})")
    args = parser.parse_args(argv)
    if args.version not in args.versions:
        parser.error(f"--version {args.version} is not among --versions {','.join(args.versions)}")
    if args.max_queue < 1:
        parser.error("--max-queue must be at least 1")
    if not 0 < args.keep_hours < math.inf:
        parser.error("--keep-hours must be a positive number of hours")
    try:
        args.logins = logins(args)
    except (OSError, ValueError) as error:
        parser.error(str(error))
    return args


def versions_list(text: str) -> tuple[str, ...]:
    versions = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [version for version in versions if version not in VERSIONS]
    if not versions or unknown:
        raise argparse.ArgumentTypeError(f"choose from {', '.join(VERSIONS)}, comma-separated; got {text!r}")
    return versions


def logins(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(user, password) pairs from --auth-file, $LATENTSYNC_APP_AUTH and --auth; none: no login."""
    lines = args.auth_file.read_text().splitlines() if args.auth_file else []
    lines += [text for text in (app_auth(), args.auth) if text]
    pairs = []
    for line in (line.strip() for line in lines):
        if not line or line.startswith("#"):
            continue
        user, _, password = line.partition(":")
        if not user or not password:
            raise ValueError("a login must be user:password, with neither empty")
        pairs.append((user, password))
    return pairs


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    if not args.logins and args.host not in LOCAL_HOSTS:
        logger.warning("serving %s without a login: anyone who reaches this port can run jobs (see --auth-file)", args.host)
    try:
        models = ModelVersions(args.version, cache=ResultCache(args.data_dir / "cache", max_age_s=args.keep_hours * 3600))
    except (WeightsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    jobs = Jobs(models, args.data_dir, args.versions, keep_s=args.keep_hours * 3600)
    jobs.remove_old_while_serving()
    page = LipsyncPage(jobs, args.version).build()
    page.queue(default_concurrency_limit=1, max_size=args.max_queue)
    logger.info("serving the web app on http://%s:%d%s", args.host, args.port, " (login required)" if args.logins else "")
    page.launch(server_name=args.host, server_port=args.port, auth=args.logins or None, max_file_size=MAX_INPUT_BYTES,
                allowed_paths=[str(jobs.results_dir), str(jobs.previews_dir)], show_error=False, ssr_mode=False, footer_links=["api"], quiet=True,
                app_kwargs={"middleware": [Middleware(UploadLimits)]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
