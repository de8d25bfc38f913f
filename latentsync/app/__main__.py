"""Serve the web app:

    python -m latentsync.app [--host 127.0.0.1] [--port 7860] [--version 1.6] [--data-dir DIR]

The models load once, at start (weights fetched as the manifest lists them, with the same
LATENTSYNC_WEIGHTS_* variables as the Cog predictor); the other model version loads on first use.
Results, the result cache and job files live under the data folder.
"""

import argparse
import logging
import sys
from pathlib import Path

from ..cache import ResultCache
from ..config import APP_HOST, APP_PORT, DEFAULT_APP_DIR, DEFAULT_VERSION, MAX_INPUT_BYTES, SERVICE_INPUTS
from ..logs import configure_logging
from ..serving import ModelVersions
from ..weights import WeightsError
from .jobs import Jobs
from .page import LipsyncPage

logger = logging.getLogger("latentsync")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m latentsync.app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default=APP_HOST, help=f"address to listen on (default {APP_HOST}: this machine only; 0.0.0.0: the network)")
    parser.add_argument("--port", type=int, default=APP_PORT)
    parser.add_argument("--version", default=DEFAULT_VERSION, choices=SERVICE_INPUTS["version"].choices, help="model version loaded at start (the page's default)")
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_APP_DIR, help=f"results, result cache and job files (default {DEFAULT_APP_DIR})")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging()
    try:
        models = ModelVersions(args.version, cache=ResultCache(args.data_dir / "cache"))
    except (WeightsError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    jobs = Jobs(models, args.data_dir)
    page = LipsyncPage(jobs, args.version).build()
    page.queue(default_concurrency_limit=1)
    logger.info("serving the web app on http://%s:%d", args.host, args.port)
    page.launch(server_name=args.host, server_port=args.port, max_file_size=MAX_INPUT_BYTES, allowed_paths=[str(jobs.results_dir)],
                show_error=True, ssr_mode=False, footer_links=["api"], quiet=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
