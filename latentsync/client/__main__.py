"""Command line for the client: Replicate (--model) or your own GPU workers (--queue, --storage).

    python -m latentsync.client run --video talk.mp4 --audio dub.wav [--param guidance_scale=2] [--out out.mp4]
    python -m latentsync.client run --video template.mp4 --segments name.json     # re-make only those seconds
    python -m latentsync.client plan --video talk.mp4 --audio dub.wav [--segments fix.json]   # the plan and its GPU estimate
    python -m latentsync.client run --video long.mp4 --audio long.wav --max-segment 60
    python -m latentsync.client batch jobs.csv [--model owner/name | --queue URL --storage URL [--detach]] [--concurrency N] [--results results.csv]
    python -m latentsync.client batch jobs.csv --plan                             # every row's plan and the total, nothing run
    python -m latentsync.client status <job key or prediction id>
    python -m latentsync.client status --queue URL                # depth, in flight, workers, failures
    python -m latentsync.client serve-webhooks --port 8000        # secret: $LATENTSYNC_WEBHOOK_SECRET or --secret-file

Secrets come from the environment or files, never the command line: REPLICATE_API_TOKEN,
LATENTSYNC_WEBHOOK_SECRET, LATENTSYNC_QUEUE_URL (a queue URL with a password), and the AWS
variables of an S3 storage.
"""

import argparse
import json
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

from urllib.parse import urlsplit

from .. import config
from . import LipSyncClient, LipSyncError, run_long, webhook_app
from ..estimate import describe_plan
from .batch import plan_rows, plans_summary, read_rows, run_batch, submit_rows, summary, write_results
from .core import DEFAULT_MODEL, DEFAULT_STORE, open_store
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


def _secret_file(path: str) -> str:
    try:
        return Path(path).read_text().strip()
    except OSError as error:
        raise argparse.ArgumentTypeError(f"cannot read the secret file {path}: {error.strerror}") from None


def _queue_url(url: str) -> str:
    """--queue: a Redis URL without a password (one with a password goes in $LATENTSYNC_QUEUE_URL)."""
    if urlsplit(url).password:
        raise argparse.ArgumentTypeError("the --queue URL carries a password, which the process list would show: set LATENTSYNC_QUEUE_URL instead.")
    return url


class _NoSecretOnTheCommandLine(argparse.Action):
    """The old --secret: refused without echoing its value (it would show in the process list)."""

    def __call__(self, parser, namespace, values, option_string=None):
        parser.error("--secret is not accepted (the process list would show it): set LATENTSYNC_WEBHOOK_SECRET or pass --secret-file.")


def _parser() -> argparse.ArgumentParser:
    # The client's options go before or after the command (no defaults: after it they must not reset those before).
    shared = argparse.ArgumentParser(add_help=False, argument_default=argparse.SUPPRESS, allow_abbrev=False)
    shared.add_argument("--model", help=f"owner/name, owner/name:version or a version id (default {DEFAULT_MODEL})")
    shared.add_argument("--store", help="job store: a SQLite file or a redis:// URL")
    shared.add_argument("--base-url", help="another Replicate API endpoint")
    shared.add_argument("--queue", type=_queue_url, metavar="URL", help="run on your own GPU workers reading this Redis queue instead of Replicate (default $LATENTSYNC_QUEUE_URL)")
    shared.add_argument("--storage", metavar="URL", help="the queue's storage for inputs and outputs: s3://bucket/prefix or file:///folder (default $LATENTSYNC_STORAGE_URL)")
    parser = argparse.ArgumentParser(prog="python -m latentsync.client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter, parents=[shared], allow_abbrev=False)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="lip-sync and download the result", parents=[shared], allow_abbrev=False)
    plan = commands.add_parser("plan", help="what a job would do and its estimated GPU time, without running it", parents=[shared], allow_abbrev=False)
    for command in (run, plan):
        command.add_argument("--video", required=True)
        command.add_argument("--audio", default=None, help="the speech (with --segments: for segments without an audio of their own)")
        command.add_argument("--segments", default=None, help="a JSON file of the time ranges to re-make, each with its audio (relative paths: to the file)")
        command.add_argument("--param", type=_parameter, action="append", default=[], help="name=value, e.g. guidance_scale=2")
    run.add_argument("--out", default=None, help="copy the result here")
    run.add_argument("--max-segment", type=float, default=None, help="split longer inputs into parts of this many seconds, run in parallel")
    batch = commands.add_parser("batch", help="run every row of a CSV (video, audio, output, model inputs...)", parents=[shared], allow_abbrev=False)
    batch.add_argument("csv", type=Path)
    batch.add_argument("--concurrency", type=int, default=None, help="rows at a time (default 4 on Replicate; with a queue, every row is queued first and this many are waited for, default 32)")
    batch.add_argument("--results", type=Path, default=None, help="results file, .csv or .json (default: <csv>.results.csv)")
    batch.add_argument("--detach", action="store_true", help="with a queue: queue the rows and exit; a re-run collects the results")
    batch.add_argument("--plan", action="store_true", help="ask for every row's plan and print the estimated GPU time and the total; run nothing")
    status = commands.add_parser("status", help="show a job, or with --queue and no job the queue", parents=[shared], allow_abbrev=False)
    status.add_argument("job", nargs="?", default=None, help="job key or prediction id")
    status.add_argument("--json", action="store_true", help="print JSON")
    serve = commands.add_parser("serve-webhooks", help="receive Replicate webhooks and update the job store", parents=[shared], allow_abbrev=False)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--secret-file", type=_secret_file, dest="secret", help="a file holding the whsec_ secret (default $LATENTSYNC_WEBHOOK_SECRET, else fetched from the API)")
    serve.add_argument("--secret", action=_NoSecretOnTheCommandLine, help=argparse.SUPPRESS)
    return parser


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    options = vars(args)
    options.setdefault("queue", config.queue_url())
    try:
        if args.command == "status":
            return _status(options, args.job, args.json)
        if args.command == "batch" and args.detach and not options["queue"]:
            raise ValueError("--detach needs a queue (--queue): Replicate's jobs are collected by waiting for them.")
        with _client(options) as client:
            return COMMANDS[args.command](client, args)
    except (ValueError, OSError, LipSyncError, TimeoutError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


def _client(options: dict) -> LipSyncClient:
    return LipSyncClient(model=options.get("model", DEFAULT_MODEL), store=options.get("store"), base_url=options.get("base_url"),
                         queue=options.get("queue"), storage=options.get("storage"))


def _run(client, args) -> int:
    params = dict(args.param)
    if args.max_segment:
        if args.segments or args.audio is None:
            raise ValueError("--max-segment splits a whole-video job: give --audio, and no --segments.")
        out = args.out or "lipsync_long.mp4"
        run_long(client, args.video, args.audio, out, max_segment_s=args.max_segment, **params)
        print(out)
        return 0
    result = client.run(args.video, args.audio, segments=args.segments, **params)
    if args.out:
        shutil.copyfile(result.path, args.out)
    print(args.out or result.path)
    return 0


def _plan(client, args) -> int:
    plan = client.plan(args.video, args.audio, segments=args.segments, **dict(args.param))
    print(describe_plan(plan))
    return 0


def _batch(client, args) -> int:
    rows = read_rows(args.csv)
    if args.plan:
        planned = plan_rows(client, rows, args.concurrency or 4)
        print(plans_summary(planned))
        return 1 if any(plan is None for _, plan, _ in planned) else 0
    started = time.time()
    if args.queue:  # every row goes into the queue first, so every worker can take one at once
        results = submit_rows(client, rows)
        if not args.detach:
            waiting = [row for row, result in zip(rows, results) if result.status == "queued"]
            done = {result.row: result for result in run_batch(client, waiting, args.concurrency or 32)}
            results = [done.get(result.row, result) for result in results]
    else:
        results = run_batch(client, rows, args.concurrency or 4)
    target = args.results or args.csv.with_name(f"{args.csv.stem}.results.csv")
    write_results(results, target)
    print(summary(results, time.time() - started))
    print(f"results: {target}")
    return 1 if any(result.status == "failed" for result in results) else 0


def _status(options: dict, name: str | None, as_json: bool) -> int:
    """A job from the store (one running on Replicate is refreshed from the API first); with a
    queue and no job, the queue."""
    if name is None:
        if not options["queue"]:
            raise ValueError("status needs a job key or prediction id, or --queue to show the queue.")
        from .queue import JobQueue

        overview = JobQueue(options["queue"]).overview()
        print(json.dumps(overview, indent=2) if as_json else describe_queue(overview))
        return 0
    store = open_store(options["queue"] or options.get("store") or DEFAULT_STORE)
    job = store.get(name) or store.by_prediction(name)
    if job is None:
        print(f"error: no job {name!r} in {store}", file=sys.stderr)
        return 1
    if not job.finished and not options["queue"] and job.prediction_id:
        with _client({**options, "store": store}) as client:
            job = client.get(job)
    print(json.dumps(asdict(job), indent=2, default=str))
    return 0


def describe_queue(overview: dict) -> str:
    """The queue's overview as lines of text (see `JobQueue.overview`)."""
    lines = [f"{overview['depth']} waiting, {len(overview['in_flight'])} in flight, {len(overview['workers'])} workers"]
    for item in overview["in_flight"]:
        late = "  LEASE RAN OUT: taken over by the next idle worker" if item["lease_ran_out"] else ""
        lines.append(f"  running {str(item['job'])[:12]} on {item['worker']} (lease renewed {item['idle_s']} s ago){late}")
    for name, worker in sorted(overview["workers"].items()):
        job = f" {worker['job'][:12]}" if worker.get("job") else ""
        lines.append(f"  worker {name} on {worker['host']}: {worker['state']}{job}, seen {worker['seen_s_ago']} s ago, "
                     f"{worker.get('done', 0)} done, {worker.get('failed', 0)} failed")
    for failure in overview["failures"]:
        lines.append(f"  failed {failure['job'][:12]} on {failure['worker']}: {failure['error']}")
    return "\n".join(lines)


def _serve_webhooks(client, args) -> int:
    import uvicorn

    secret = getattr(args, "secret", None) or config.webhook_secret() or client.webhook_secret()
    uvicorn.run(webhook_app(secret, client.store), host=args.host, port=args.port)
    return 0


COMMANDS = {"run": _run, "plan": _plan, "batch": _batch, "serve-webhooks": _serve_webhooks}

if __name__ == "__main__":
    sys.exit(main())
