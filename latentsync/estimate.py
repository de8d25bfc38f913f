"""What a job's denoising will cost on a GPU, priced from its plan before it runs: the one table of
GPU rates, the estimate made from it, and a plan as text (`describe_plan`).

The work is counted in window-steps (one 16-frame window through one denoising step), which is
what the plan knows exactly; the rates turn it into seconds. Every rate says what it rests on
(`basis`): "measured" with the GPU and the date of the `python -m scripts.benchmark_gpu` run
it comes from, or "estimate" for a rate no GPU has measured. Only the U-Net's denoising is priced (the analysis, the VAE
and the encoder come on top, as seconds per minute of video rather than per window).
"""

import math
from dataclasses import dataclass

REFERENCE_GPU = "NVIDIA H200"


@dataclass(frozen=True)
class GpuRate:
    """GPU seconds for one 16-frame window through one denoising step, with classifier-free
    guidance (two U-Net passes) at half precision, on `REFERENCE_GPU`."""

    seconds_per_window_step: float
    basis: str


MEASURED_STEPS = 20  # the benchmark's windows: 20 guided steps, between the VAE's encoding and decoding


def _measured(seconds_per_window: float, vae_share: float, how: str) -> GpuRate:
    """A rate from a measured whole window: its time less the VAE's share, per step, to the three
    figures the measurement holds."""
    rate = float(f"{seconds_per_window * (1 - vae_share) / MEASURED_STEPS:.3g}")
    return GpuRate(rate, f"measured: {REFERENCE_GPU}, 2026-12-04, {seconds_per_window:.2f} s per {MEASURED_STEPS}-step window "
                         f"of which {1 - vae_share:.0%} the U-Net, {how} (scripts/benchmark_gpu.py)")


# MEASURED on an NVIDIA H200 (2026-12-04, `python -m scripts.benchmark_gpu --quick`, PyTorch 2.11,
# eager float16 with guidance and DeepCache off, random weights in the released architectures;
# docs/gpu-h200-2026-12-04.json), each version as `device.windows_that_fit` runs it.
RATES = {
    "1.5": _measured(0.9898, 0.115, "two windows per call"),
    "1.6": _measured(3.8033, 0.102, "one window per call"),
}
# DeepCache runs a full U-Net step every third step and a shallow one between: in the same run the
# U-Net's time with it was 0.43 of the time without, for both versions (1.6: 1.97 s x 76% against
# 3.97 s x 88% per window; 1.5: 0.48 s x 77% against 0.99 s x 88%).
DEEPCACHE_SHARE = 0.43
# Guidance 1.0 turns classifier-free guidance off: one U-Net pass per step instead of two.
NO_GUIDANCE_SHARE = 0.5


def window_step_cost(guidance: float, deepcache: bool) -> float:
    """The share of a guided, full window-step that a window-step with these settings costs."""
    return (NO_GUIDANCE_SHARE if guidance <= 1.0 else 1.0) * (DEEPCACHE_SHARE if deepcache else 1.0)


def estimate(work: list[dict], deepcache: bool, version: str) -> dict:
    """The GPU seconds of `work` for every version in the table, and for the job's `version`.

    `work` lists the windows per setting: [{"steps", "guidance", "windows"}, ...]. Returns
    {"gpu", "version", "gpu_seconds" (None when the table lacks `version`), "basis",
    "by_version": {version: {"gpu_seconds", "basis", "by_setting": [...]}}}.
    """
    by_version = {}
    for name, rate in RATES.items():
        rows = [{**row, "deepcache": deepcache, "gpu_seconds": _round(row["windows"] * row["steps"] * rate.seconds_per_window_step
                                                                     * window_step_cost(row["guidance"], deepcache))} for row in work]
        by_version[name] = {"gpu_seconds": _round(sum(row["gpu_seconds"] for row in rows)), "basis": rate.basis, "by_setting": rows}
    mine = by_version.get(version)
    return {
        "gpu": REFERENCE_GPU,
        "version": version,
        "gpu_seconds": mine["gpu_seconds"] if mine else None,
        "basis": mine["basis"] if mine else f"no rate for version {version!r} in latentsync.estimate.RATES",
        "by_version": by_version,
    }


def _round(seconds: float) -> float:
    return math.ceil(seconds * 100) / 100 if seconds else 0.0


def describe_plan(plan: dict) -> str:
    """A plan (`PlanPreview.to_dict()`) as lines of text: the totals, each span, each segment, and
    the estimated GPU seconds per version (labelled estimate or measured, as the table says)."""
    frames, generated = plan["frames"], plan["frames_generated"]
    lines = [f"Plan: {generated} of {frames} frames to regenerate ({generated / frames:.0%} of {plan['duration']:.2f} s) in "
             f"{plan['windows']} windows, {plan['unet_window_steps']} U-Net window-steps."]
    for span in plan["spans"]:
        extra = [f"segment {span['segment']}"] if span.get("segment") else []
        if span.get("steps"):
            extra.append(f"{span['steps']} steps, guidance {span['guidance']:g}")
        extra += [span[key] for key in ("reason", "detector") if span.get(key)]
        lines.append(f"  {span['start']:8.2f}-{span['end']:<8.2f}s {span['action']:<17} {span['frames']:>6} frames  {'; '.join(extra)}".rstrip())
    for row in plan.get("segments") or []:
        ends = f", its audio ends at {row['speech_ends']:.2f} s (silent after)" if "speech_ends" in row else ""
        lines.append(f"  segment {row['segment']}: {row['start']:.2f}-{row['end']:.2f} s, {row['audio']} audio from {row['audio_start']:.2f} s, "
                     f"{row['steps']} steps, guidance {row['guidance']:g}: {row['frames_generated']} of {row['frames']} frames, {row['windows']} windows{ends}")
    priced = plan["estimate"]
    versions = ", ".join(f"{name}: {row['gpu_seconds']:.2f} s" for name, row in priced["by_version"].items())
    label = "measured" if all(row["basis"].startswith("measured") for row in priced["by_version"].values()) else "estimate"
    lines.append(f"GPU time for denoising ({label}, {priced['gpu']}): {versions}")
    return "\n".join(lines)
