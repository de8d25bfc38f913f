"""scripts/benchmark_gpu.py runs every section on the CPU (--smoke), so a lent GPU's few minutes
are never spent on a broken script: the sections, each in its own process, the JSON written as
they finish, the whole-job check, and a failing section reported while the others still run."""

import json
import subprocess
import sys

import pytest

from latentsync.config import REPO_ROOT


def test_the_gpu_benchmark_runs_every_section_and_reports_a_failing_one(tmp_path):
    out = tmp_path / "gpu.json"
    command = [sys.executable, "-m", "scripts.benchmark_gpu", "--smoke", "--versions", "no-such-version", "tiny", "--json", str(out)]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    results = json.loads(out.read_text())
    assert done.returncode == 1 and "no-such-version" in results["no-such-version"]["error"]  # failed, and said so
    assert results["gemm"]["tflops"] > 0
    rows = results["tiny"]  # the sections after it still ran
    for model in ("official", "ours eager", "ours compiled"):
        for deepcache in ("off", "on"):
            row = rows[f"{model}, deepcache {deepcache}"]
            assert row["gpu_seconds_per_output_second"] == pytest.approx(row["seconds_per_window"] / 0.64, abs=0.002)
    assert rows["compiled_graphs"] == 4 and rows["best_ours_over_official_deepcache_on"] > 0
    kept = json.loads((tmp_path / "section-tiny.json").read_text())  # each row, as it came: what a killed run leaves
    assert kept == {key: value for key, value in rows.items() if key != "section_s"}
    job = results["job"]
    assert job["detector"] == "mediapipe" and job["frames_generated"] >= 0.9 * job["frames"] and job["model_s"] > 0
    assert "| 1.6 whole job, 2 s clip (mediapipe) |" in done.stdout and "| no-such-version: not measured |" in done.stdout  # the table, printed last
