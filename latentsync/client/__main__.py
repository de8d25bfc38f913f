"""Command line for the Replicate client.

    python -m latentsync.client run --video talk.mp4 --audio dub.wav [--param guidance_scale=2] [--out out.mp4]
    python -m latentsync.client run --video long.mp4 --audio long.wav --max-segment 60
    python -m latentsync.client status <job key or prediction id>
    python -m latentsync.client serve-webhooks --port 8000
"""

import argparse
import json
import shutil
import sys

from . import LipSyncClient, LipSyncError, run_long, webhook_app
from .core import DEFAULT_MODEL
from .params import PARAMETERS


def _parameter(text: str):
    name, _, raw = text.partition("=")
    if name not in PARAMETERS:
        raise argparse.ArgumentTypeError(f"unknown parameter {name!r}; known: {', '.join(PARAMETERS)}")
    kind = PARAMETERS[name].kind
    if kind is bool:
        return name, raw.lower() in ("1", "true", "yes")
    try:
        return name, kind(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{name} needs a {kind.__name__}, got {raw!r}") from None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m latentsync.client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=DEFAULT_MODEL, help="owner/name, owner/name:version or a version id")
    parser.add_argument("--store", default=None, help="job store: a SQLite file or a redis:// URL")
    parser.add_argument("--base-url", default=None, help="another API endpoint")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="lip-sync and download the result")
    run.add_argument("--video", required=True)
    run.add_argument("--audio", required=True)
    run.add_argument("--out", default=None, help="copy the result here")
    run.add_argument("--param", type=_parameter, action="append", default=[], help="name=value, e.g. guidance_scale=2")
    run.add_argument("--max-segment", type=float, default=None, help="split longer inputs into segments of this many seconds")
    status = commands.add_parser("status", help="show a job")
    status.add_argument("job", help="job key or prediction id")
    serve = commands.add_parser("serve-webhooks", help="receive Replicate webhooks and update the job store")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--secret", default=None, help="whsec_... (default: fetched from the API)")
    args = parser.parse_args(argv)

    try:
        client = LipSyncClient(model=args.model, store=args.store, base_url=args.base_url)
        if args.command == "run":
            params = dict(args.param)
            if args.max_segment:
                out = args.out or "lipsync_long.mp4"
                run_long(client, args.video, args.audio, out, max_segment_s=args.max_segment, **params)
                print(out)
            else:
                result = client.run(args.video, args.audio, **params)
                if args.out:
                    shutil.copyfile(result.path, args.out)
                print(args.out or result.path)
        elif args.command == "status":
            job = client.store.get(args.job) or client.store.by_prediction(args.job)
            if job is None:
                print(f"error: no job {args.job!r} in {client.store}", file=sys.stderr)
                return 1
            print(json.dumps(client.get(job).__dict__, indent=2, default=str))
        else:
            import uvicorn

            uvicorn.run(webhook_app(args.secret or client.webhook_secret(), client.store), host=args.host, port=args.port)
    except (ValueError, FileNotFoundError, LipSyncError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
