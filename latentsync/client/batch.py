"""Batches: one CSV row per job, run through a `LipSyncClient` (on Replicate or on self-hosted workers).

The CSV has a header row with the columns `video`, `audio` and `output` (paths or URLs; output a
local path), and optionally columns named like the model's inputs (`guidance_scale`, `seed`,
`version`, ...; an empty cell takes the default); `segments` holds the path of a segments JSON
file (the row's audio may then be empty if every segment has its own). Rows run `concurrency` at
a time; identical rows make one prediction; `plan_rows` asks for every row's plan instead. A re-run is cheap: rows whose output already holds their job's result
are skipped, jobs still running (in another process that stopped) are taken over, failed ones
are tried again.
"""

import csv
import json
import os
import re
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..files import sha256_of
from .core import LipSyncError
from .params import PARAMETERS, validate

REQUIRED = ("video", "audio", "output")
COLUMNS = [name for name in PARAMETERS if name != "plan_only"]  # the model's inputs a row may set (a plan is asked for with --plan)
RESULT_FIELDS = ("row", "status", "output", "reason", "video", "audio", "job", "server", "attempts", "seconds")


@dataclass
class Row:
    """One job of the batch, as read from its CSV (number: 1 for the first row after the header)."""

    number: int
    video: str
    audio: str
    output: str
    params: dict = field(default_factory=dict)
    segments: str | None = None  # the path of its segments file
    error: str | None = None  # why the row cannot run, found while reading it


@dataclass
class RowResult:
    row: int
    status: str  # done | failed | skipped | queued (left in the queue: --detach)
    output: str
    reason: str = ""
    video: str = ""
    audio: str = ""
    job: str = ""  # the job key
    server: str = ""  # self-hosted: the worker that ran it
    attempts: int = 0
    seconds: float = 0.0


def read_rows(path) -> list[Row]:
    """The CSV's rows. Raises ValueError (one sentence) if its columns are wrong; a bad value only
    marks its row (`Row.error`)."""
    path = Path(path)
    with open(path, newline="", encoding="utf-8-sig") as file:
        reader = csv.DictReader(file)
        columns = [name.strip() for name in reader.fieldnames or []]
        missing = [name for name in REQUIRED if name not in columns]
        if missing:
            raise ValueError(f"{path.name} needs a header row with the columns video, audio and output; it lacks {', '.join(missing)}.")
        unknown = [name for name in columns if name not in REQUIRED and name not in COLUMNS]
        if unknown:
            raise ValueError(f"{path.name} has unknown column(s) {', '.join(unknown)}; besides video, audio and output, columns are the model's inputs: {', '.join(COLUMNS)}.")
        return [_row(number, {key.strip(): (value or "").strip() for key, value in record.items() if key}) for number, record in enumerate(reader, 1)]


def _row(number: int, record: dict) -> Row:
    row = Row(number, record["video"], record["audio"], record["output"], segments=record.get("segments") or None)
    try:
        if not (row.video and row.output and (row.audio or row.segments)):
            raise ValueError("video, audio and output must not be empty (audio may be, with segments that each have their own).")
        row.params = {name: _typed(name, text) for name, text in record.items() if name in COLUMNS and name != "segments" and text != ""}
        validate(row.params)
    except ValueError as error:
        row.error = str(error)
    return row


def _typed(name: str, text: str):
    kind = PARAMETERS[name].kind
    if kind is bool:
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise ValueError(f"{name} must be true or false, got {text!r}.")
        return text.lower() in ("true", "1", "yes")
    if kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            raise ValueError(f"{name} must be {'an integer' if kind is int else 'a number'}, got {text!r}.") from None
    return text


def run_batch(client, rows: list[Row], concurrency: int = 4, progress: bool = True) -> list[RowResult]:
    """Run every row (`concurrency` at a time) and place each output; returns one result per row."""
    from tqdm import tqdm

    results = []
    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool, tqdm(total=len(rows), unit="job", disable=not progress) as bar:
        futures = [pool.submit(run_row, client, row) for row in rows]
        for future in as_completed(futures):
            results.append(future.result())
            counts = {status: sum(r.status == status for r in results) for status in ("done", "failed", "skipped")}
            bar.set_postfix(counts, refresh=False)
            bar.update()
    return sorted(results, key=lambda result: result.row)


def submit_rows(client, rows: list[Row], concurrency: int = 4) -> list[RowResult]:
    """Queue every row's job at once (on a self-hosted queue): one result per row, "queued" while
    its job waits or runs; a row whose job has already succeeded is collected (done or skipped);
    a row that cannot run has failed."""

    def submit(row: Row) -> RowResult:
        if row.error:
            return RowResult(row.number, "failed", row.output, one_sentence(row.error), row.video, row.audio)
        try:
            job = client.submit(row.video, row.audio or None, segments=row.segments, **row.params)
        except (ValueError, OSError) as error:
            return RowResult(row.number, "failed", row.output, one_sentence(str(error)), row.video, row.audio)
        if job.status == "succeeded":
            return run_row(client, row)
        return RowResult(row.number, "queued", row.output, video=row.video, audio=row.audio, job=job.key)

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(submit, rows))


def run_row(client, row: Row) -> RowResult:
    """One row: skipped if its output already holds the job's result, else run and placed."""
    started = time.time()
    result = RowResult(row.number, "failed", row.output, video=row.video, audio=row.audio)
    try:
        if row.error:
            raise ValueError(row.error)
        key = client.job_key(row.video, row.audio or None, row.params, row.segments)
        result.job = key
        job = client.store.get(key)
        if job is not None and job.status == "succeeded" and _holds(Path(row.output), job.output_path):
            result.status = "skipped"
        else:
            run = client.run(row.video, row.audio or None, segments=row.segments, **row.params)
            place(run.path, Path(row.output))
            job, result.status = run.job, "done"
        result.server, result.attempts = job.server or "", job.attempts
    except LipSyncError as error:
        job = error.job
        result.reason = one_sentence(job.error if job is not None and job.error else str(error))
        if job is not None:
            result.server, result.attempts = job.server or "", job.attempts
    except (ValueError, OSError, TimeoutError) as error:
        result.reason = one_sentence(str(error))
    result.seconds = round(time.time() - started, 2)
    return result


def plan_rows(client, rows: list[Row], concurrency: int = 4) -> list[tuple[Row, dict | None, str]]:
    """Every row's plan (`LipSyncClient.plan`, `concurrency` at a time), or why it has none."""

    def plan(row: Row) -> tuple[Row, dict | None, str]:
        try:
            if row.error:
                raise ValueError(row.error)
            return row, client.plan(row.video, row.audio or None, segments=row.segments, **row.params), ""
        except LipSyncError as error:
            return row, None, one_sentence(error.job.error if error.job is not None and error.job.error else str(error))
        except (ValueError, OSError, TimeoutError) as error:
            return row, None, one_sentence(str(error))

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        return list(pool.map(plan, rows))


def plans_summary(planned: list[tuple[Row, dict | None, str]]) -> str:
    """A table of the rows' plans (frames to regenerate, windows, estimated GPU seconds at the
    rows' model version) and the totals, with the estimate's label."""
    lines = [("row", "output", "frames", "windows", "GPU s", "")]
    totals, versions, basis = {"frames": 0, "windows": 0, "seconds": 0.0}, {}, set()
    for row, plan, reason in planned:
        if plan is None:
            lines.append((str(row.number), row.output, "", "", "", f"no plan: {reason}"))
            continue
        priced = plan["estimate"]
        seconds = priced["gpu_seconds"] or 0.0
        lines.append((str(row.number), row.output, f"{plan['frames_generated']}/{plan['frames']}", str(plan["windows"]), f"{seconds:.2f}", f"version {priced['version']}"))
        totals["frames"] += plan["frames_generated"]
        totals["windows"] += plan["windows"]
        totals["seconds"] += seconds
        for name, row_estimate in priced["by_version"].items():
            versions[name] = versions.get(name, 0.0) + row_estimate["gpu_seconds"]
        basis.add("measured" if priced["basis"].startswith("measured") else "estimate")
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    table = ["  ".join(line[i].ljust(widths[i]) for i in range(5)) + "  " + line[5] for line in lines]
    label = "measured rates" if basis == {"measured"} else "estimated rates, not measured"
    table.append(f"total: {totals['frames']} frames to regenerate in {totals['windows']} windows, {totals['seconds']:.2f} GPU s of denoising "
                 f"({label}; at {' / '.join(versions)}: {' / '.join(f'{seconds:.2f}' for seconds in versions.values())} s)")
    return "\n".join(line.rstrip() for line in table)


def _holds(output: Path, job_output: str | None) -> bool:
    """Whether `output` is a copy of the job's downloaded output."""
    if not job_output or not output.is_file() or not Path(job_output).is_file():
        return False
    return output.stat().st_size == Path(job_output).stat().st_size and sha256_of(output) == sha256_of(job_output)


def place(source: Path, target: Path) -> None:
    """Copy `source` to `target` so that `target` is the old file or the whole new one, never a part."""
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, partial = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".part")
    os.close(handle)
    try:
        shutil.copyfile(source, partial)
        os.replace(partial, target)
    finally:
        Path(partial).unlink(missing_ok=True)


def one_sentence(text: str) -> str:
    """A failure's reason without the wrappers Cog and Replicate put around it, on one line."""
    text = " ".join(text.split())
    text = re.sub(r"^(Prediction failed: |Async prediction failed: )+", "", text)
    text = re.sub(r"^[A-Z]\w*(Error|Exception): ", "", text)
    return text[:300]


def write_results(results: list[RowResult], path) -> None:
    """The results as CSV, or as JSON when `path` ends in .json."""
    path = Path(path)
    records = [{name: asdict(result)[name] for name in RESULT_FIELDS} for result in results]
    if path.suffix.lower() == ".json":
        path.write_text(json.dumps(records, indent=2))
        return
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=RESULT_FIELDS)
        writer.writeheader()
        writer.writerows(records)


def summary(results: list[RowResult], seconds: float) -> str:
    """A table of the rows (status, output, reason) and the totals."""
    lines = [("row", "status", "output", "reason")] + [(str(r.row), r.status, r.output, r.reason) for r in results]
    widths = [max(len(line[i]) for line in lines) for i in range(3)]
    table = ["  ".join(line[i].ljust(widths[i]) for i in range(3)) + "  " + line[3] for line in lines]
    counts = {status: sum(r.status == status for r in results) for status in ("done", "failed", "skipped", "queued")}
    queued = f", {counts['queued']} queued (run the batch again to collect them)" if counts["queued"] else ""
    table.append(f"{counts['done']} done, {counts['failed']} failed, {counts['skipped']} skipped{queued} in {seconds:.1f} s")
    return "\n".join(line.rstrip() for line in table)
