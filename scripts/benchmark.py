"""The benchmark report: one JSON, a markdown table and two plots, from the measurements in
benchmark_unet.py and benchmark_pipeline.py plus the work the planner and DeepCache avoid and
the cold setup time.

    python -m scripts.benchmark                      # everything (about 45 minutes on 2 CPU cores)
    python -m scripts.benchmark --sections stages work   # a subset; other sections keep their last figures
    python -m scripts.benchmark --sections simulated-gpu # does the GPU wait? (scripts/benchmark_simulated_gpu.py)

Writes bench/benchmark.json, bench/benchmark.md, bench/memory.png and bench/stages.png.
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from latentsync.config import REPO_ROOT, shared_dir
from scripts.benchmark_gpu import table_rows as gpu_table_rows

OUT = REPO_ROOT / "bench"
SHARED_ASSETS = shared_dir() / "assets"


def run_json(*args) -> dict:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, "-m", *args, "--json", out.name], check=True, cwd=REPO_ROOT, capture_output=True)
        return json.loads(Path(out.name).read_text())


def work_avoided() -> dict:
    """U-Net window-steps the planner skips on the demo clips with a pause and a cut-away spliced in."""
    from latentsync.options import LipsyncOptions
    from latentsync.pipeline import LipsyncPipeline
    from tests.media import ffmpeg, tiny_files

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        video, audio = folder / "video.mp4", folder / "audio.wav"
        ffmpeg(
            "-i", SHARED_ASSETS / "demo1_video.mp4", "-f", "lavfi", "-i", "color=c=0x406080:s=1080x1920:r=25:d=2", "-i", SHARED_ASSETS / "demo2_video.mp4",
            "-filter_complex", "[0:v]fps=25[a];[2:v]fps=25[c];[a][1:v][c]concat=n=3:v=1:a=0,scale=540:960[v]", "-map", "[v]", "-c:v", "libx264", "-crf", 16, video,
        )
        # The cut-away (video 10-12 s) has speech over it; the 2 s pause comes later (audio 14.6-16.6 s).
        ffmpeg(
            "-i", SHARED_ASSETS / "demo1_audio.wav", "-i", SHARED_ASSETS / "demo2_audio.wav", "-f", "lavfi", "-i", "anullsrc=r=16000:cl=mono:d=2",
            "-filter_complex", "[1:a]atrim=0:5[b1];[1:a]atrim=5,asetpts=PTS-STARTPTS[b2];[0:a][b1][2:a][b2]concat=n=4:v=0:a=1[a]", "-map", "[a]", audio,
        )
        pipeline = LipsyncPipeline.from_files(tiny_files(), device="cpu", face_detector="mediapipe")
        tick = time.perf_counter()
        report = pipeline(video, audio, folder / "out.mp4", LipsyncOptions(num_inference_steps=20)).report.to_dict()
        wall = time.perf_counter() - tick
    actions = {}
    for span in report["spans"]:
        actions[span["action"]] = actions.get(span["action"], 0) + span["frames"]
    return {
        "frames": report["frames"],
        "frames_by_action": actions,
        "unet_window_steps": report["unet_window_steps"],
        "unet_window_steps_every_frame": report["unet_window_steps_every_frame"],
        "window_steps_avoided": round(1 - report["unet_window_steps"] / report["unet_window_steps_every_frame"], 3),
        "wall_s_tiny_models": round(wall, 1),
    }


def cold_setup() -> dict:
    """Loading a full-size U-Net checkpoint (random weights, generated once into bench/) with
    the rest of the pipeline, as setup() does once the weights are on disk."""
    from latentsync.config import load_yaml
    from latentsync.models.unet import UNet3DConditionModel
    from latentsync.pipeline import LipsyncPipeline
    from latentsync.weights import load_manifest

    config = load_manifest().versions["1.5"].unet_config
    from tests.media import tiny_files

    checkpoint = OUT / "random_full_unet.pt"
    if not checkpoint.exists():
        with torch.device("meta"):
            unet = UNet3DConditionModel.from_config(load_yaml(config)["model"])
        torch.save({"state_dict": {k: torch.randn(v.shape) * 0.02 for k, v in unet.state_dict().items()}}, checkpoint)
    files = tiny_files()
    files.unet_config, files.unet_checkpoint, files.resolution = config, checkpoint, 256
    tick = time.perf_counter()
    LipsyncPipeline.from_files(files, device="cpu", face_detector="mediapipe")
    return {"seconds": round(time.perf_counter() - tick, 1), "checkpoint_gb": round(checkpoint.stat().st_size / 1e9, 2), "note": "full-size U-Net; VAE and Whisper are the tiny test models"}


def voice_activity() -> dict:
    """silero-vad on 10 minutes of speech (demo2 repeated; best of 3 runs, one thread), and the
    share of each gap that is a pause in the test corpus's mixes of demo2 (the worst of three
    places), and of the speech."""
    import numpy as np

    from latentsync.audio import pause_detector, silent_spans
    from latentsync.config import AUDIO_SAMPLE_RATE
    from latentsync.media.decode import load_audio
    from tests.test_voice_activity import GAP_KINDS, GAP_POSITIONS, GAP_S, gap_mix, paused, speech_share_paused

    speech = load_audio(SHARED_ASSETS / "demo2_audio.wav")
    audio = np.resize(speech, 600 * AUDIO_SAMPLE_RATE)
    silent_spans(audio[:AUDIO_SAMPLE_RATE])  # loads the model
    seconds = []
    for _ in range(3):
        tick = time.perf_counter()
        silent_spans(audio)
        seconds.append(time.perf_counter() - tick)
    shares = {}
    for kind in GAP_KINDS:
        gap_paused, speech_paused = [], []
        for position in GAP_POSITIONS:
            samples, gap, regions = gap_mix(speech, kind, position)
            pauses = silent_spans(samples)
            gap_paused.append(paused(pauses, *gap) / GAP_S)
            speech_paused.append(speech_share_paused(pauses, regions))
        shares[kind] = {"gap_paused": round(min(gap_paused), 3), "speech_paused": round(max(speech_paused), 4)}
    return {"detector": pause_detector(), "seconds_10_min": round(min(seconds), 2), "seconds_per_minute": round(min(seconds) / 10, 3), "demo2_mixes": shares}


def segments_work() -> dict:
    """The U-Net work of replacing a few seconds against re-making the whole clip, on the demos at
    full size (tiny models; window counts do not depend on the weights): a personalised clip
    (demo1, a 1.5 s name line) and a lecture fix (demo2, 20 s, one re-recorded 2.4 s sentence).
    The whole jobs are planned (a plan's windows are its run's: tests/test_segment_jobs.py); the
    segment jobs run, and their reports count the windows denoised."""
    from latentsync.options import LipsyncOptions
    from latentsync.pipeline import LipsyncPipeline
    from tests.media import ffmpeg, tiny_files

    pipeline = LipsyncPipeline.from_files(tiny_files(), device="cpu", face_detector="mediapipe")
    options = LipsyncOptions(num_inference_steps=20)
    cases = {
        "personalised clip (demo1, 10 s; a 1.5 s name)": ("demo1_video.mp4", "demo1_audio.wav", 4.0, 1.5, "demo2_audio.wav", 2.0),
        "lecture fix (demo2, 20 s; a 2.4 s sentence)": ("demo2_video.mp4", "demo2_audio.wav", 12.0, 2.4, "demo1_audio.wav", 3.0),
    }
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for name, (video, audio, start, length, line_source, line_start) in cases.items():
            line = folder / f"line{len(results)}.wav"
            ffmpeg("-ss", line_start, "-i", SHARED_ASSETS / line_source, "-t", length, line)
            whole = pipeline.plan(SHARED_ASSETS / video, SHARED_ASSETS / audio, options).to_dict()
            segments = [{"start": start, "end": start + length, "audio": str(line)}]
            tick = time.perf_counter()
            report = pipeline(SHARED_ASSETS / video, None, folder / "out.mp4", options, segments=segments).report.to_dict()
            results[name] = {
                "whole_windows": whole["windows"], "segment_windows": report["unet_window_steps"] // options.num_inference_steps,
                "whole_gpu_s_1.6": whole["estimate"]["by_version"]["1.6"]["gpu_seconds"],
                "segment_gpu_s_1.6": round(report["unet_window_steps"] * whole["estimate"]["by_version"]["1.6"]["gpu_seconds"] / max(1, whole["unet_window_steps"]), 2),
                "segment_job_wall_s_cpu": round(time.perf_counter() - tick, 1),
            }
    return results


def markdown(results: dict) -> str:
    lines = ["| measurement | figure |", "| --- | --- |"]
    stages = results.get("stages", {})
    for name, fps in stages.get("stages_fps", {}).items():
        if name.startswith("restore_") and name != "restore_official_whole_frame":
            continue
        lines.append(f"| {name.replace('_', ' ')} (1080x1920 demo) | {fps} frames/s |")
    if "stages_fps" in stages:
        s = stages["stages_fps"]
        lines.append(f"| restore speed-up over the official whole-frame arithmetic | {s['restore_speedup']}x (max difference {s['restore_max_grey_difference']} grey level) |")
        p = stages["pipeline_model_stubbed"]
        lines.append(f"| whole pipeline, model stubbed: analysis / render / total | {p['analysis_fps']} / {p['render_fps']} / {p['total_fps']} frames/s |")
    for length, figures in results.get("memory", {}).get("memory", {}).items():
        lines.append(f"| peak RSS, {length} input (whole job, tiny models) | {figures['peak_rss_gb']} GB ({figures['wall_s']} s) |")
    unet = results.get("unet")
    if unet:
        lines.append(f"| U-Net step, 256 px, 16 frames, guidance batch 2, CPU fp32 | {unet['seconds_per_step']} s (peak RSS {unet['peak_rss_gb']} GB) |")
        if "seconds_per_cached_step" in unet:
            lines.append(f"| DeepCache step between refreshes / saving over 20 steps | {unet['seconds_per_cached_step']} s / {100 * unet['deepcache_saving_20_steps']:.0f}% of U-Net time |")
    tiny = results.get("unet_tiny_window")
    if tiny:
        lines.append(
            f"| DeepCache on a 20-step window, tiny U-Net (CPU) | {tiny['window_s_plain']} s -> {tiny['window_s_deepcache']} s "
            f"({100 * tiny['deepcache_saving']:.0f}% saved; final latents differ by {100 * tiny['deepcache_relative_difference']:.1f}% of their norm) |"
        )
    work = results.get("work")
    if work:
        lines.append(
            f"| U-Net window-steps avoided (pause + cut-away spliced into the demos) | {100 * work['window_steps_avoided']:.0f}% "
            f"({work['unet_window_steps']} of {work['unet_window_steps_every_frame']}; frames {work['frames_by_action']}) |"
        )
    vad = results.get("vad")
    if vad:
        lines.append(f"| voice activity ({vad['detector']}, ONNX, one thread), 10 min of speech | {vad['seconds_10_min']} s ({vad['seconds_per_minute']} s per minute of audio) |")
        for kind, share in vad["demo2_mixes"].items():
            lines.append(f"| pause found in a 3 s gap of {kind} cut into demo2 (worst of 3 places) / speech called a pause | {100 * share['gap_paused']:.0f}% / {100 * share['speech_paused']:.1f}% |")
    for name, case in results.get("segments", {}).items():
        lines.append(
            f"| U-Net windows, {name}: whole clip -> segment only | {case['whole_windows']} -> {case['segment_windows']} "
            f"({100 * (1 - case['segment_windows'] / case['whole_windows']):.0f}% saved; 1.6 estimate {case['whole_gpu_s_1.6']} -> {case['segment_gpu_s_1.6']} GPU s) |"
        )
    setup = results.get("setup")
    if setup:
        lines.append(f"| cold setup, weights on disk ({setup['checkpoint_gb']} GB U-Net) | {setup['seconds']} s |")
    for version, simulated in sorted(results.get("simulated_gpu", {}).items()):
        for row in simulated["rows"]:
            cpu = row["cpu_s_per_output_s"]
            lines.append(
                f"| simulated GPU at {row['rate']:g} s per output s, {version} ({simulated['resolution']} px), {simulated['video']} | "
                f"{row['wall_s']} s ({'job / GPU ' + str(row['job_over_gpu']) + 'x, ' if row['job_over_gpu'] else ''}"
                f"first U-Net call {row['first_unet_call_s']} s, longest GPU wait {row['longest_gpu_idle_s']} s, after the last call "
                f"{row['after_last_call_s']} s{f' (encoder alone {alone} s)' if (alone := row.get('encoder_alone_after_last_s')) is not None else ''}; CPU s per output s "
                f"{row['cpu_s_per_output_s_total']}: decode {cpu['decode']}, detect {cpu['detection']}, align {cpu['alignment']}, "
                f"paste {cpu['paste_back']}, encode {cpu['encode']}; others' CPU {row.get('other_cpu_s')} s) |"
            )
    gpu = results.get("gpu")
    if gpu:
        lines += gpu_table_rows(gpu)
    else:
        from latentsync.config import FRAMES_PER_WINDOW, MODEL_FPS
        from latentsync.estimate import RATES, REFERENCE_GPU

        window_s = FRAMES_PER_WINDOW / MODEL_FPS  # output seconds one window covers
        per_second = ", ".join(f"{version}: {rate.seconds_per_window_step * 20 / window_s:.2f}" for version, rate in RATES.items())
        bases = "; ".join(f"{version}: {rate.basis}" for version, rate in RATES.items())
        lines.append(f"| U-Net GPU seconds per output second on an {REFERENCE_GPU}, 20 steps, before DeepCache (latentsync.estimate.RATES; "
                     f"no GPU in this run) | {per_second} ({bases}) |")
    return "\n".join(lines) + "\n"


def plots(results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    memory = results.get("memory", {}).get("memory")
    if memory:
        lengths = [float(k.rstrip("s")) for k in memory]
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot(lengths, [v["peak_rss_gb"] for v in memory.values()], marker="o")
        ax.set(xlabel="input length (s)", ylabel="peak RSS (GB)", title="Peak memory of a whole job", ylim=(0, None))
        fig.tight_layout()
        fig.savefig(OUT / "memory.png", dpi=120)
    stages = results.get("stages", {}).get("stages_fps")
    if stages:
        names = ["decode", "detect", "align", "restore", "restore_official_whole_frame", "encode"]
        fig, ax = plt.subplots(figsize=(6, 3.2))
        ax.barh([n.replace("_", " ") for n in names], [stages[n] for n in names])
        ax.set(xlabel="frames per second (1080x1920, 2 CPU cores)", title="Stages around the model")
        fig.tight_layout()
        fig.savefig(OUT / "stages.png", dpi=120)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sections = ["stages", "memory", "unet", "work", "segments", "vad", "setup", "simulated-gpu"]
    parser.add_argument("--sections", nargs="*", default=sections, choices=[*sections, "gpu"])
    args = parser.parse_args(argv)
    OUT.mkdir(exist_ok=True)
    path = OUT / "benchmark.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    for section in args.sections:
        print(f"measuring {section} ...", flush=True)
        if section == "stages":
            results["stages"] = run_json("scripts.benchmark_pipeline")
        elif section == "memory":
            results["memory"] = run_json("scripts.benchmark_pipeline", "--memory", "10", "60", "300")
        elif section == "unet":
            results["unet"] = run_json("scripts.benchmark_unet", "--resolution", "256", "--repeats", "2", "--deepcache-step")
            reference = shared_dir() / "reference"
            results["unet_tiny_window"] = run_json(
                "scripts.benchmark_unet", "--config", str(reference / "unet_tiny.yaml"), "--checkpoint", str(reference / "unet_tiny.pt"), "--resolution", "64", "--window-steps", "20"
            )
        elif section == "work":
            results["work"] = work_avoided()
        elif section == "segments":
            results["segments"] = segments_work()
        elif section == "vad":
            results["vad"] = voice_activity()
        elif section == "setup":
            results["setup"] = cold_setup()
        elif section == "simulated-gpu":
            results["simulated_gpu"] = {
                version: run_json("scripts.benchmark_simulated_gpu", "--resolution", str(resolution)) for version, resolution in (("1.6", 512), ("1.5", 256))
            }
        elif section == "gpu" and torch.cuda.is_available():
            # Not run_json: a failed section is reported in the figures while the others stand.
            with tempfile.NamedTemporaryFile(suffix=".json") as out:
                subprocess.run([sys.executable, "-m", "scripts.benchmark_gpu", "--json", out.name], cwd=REPO_ROOT)
                results["gpu"] = json.loads(Path(out.name).read_text())
    results["machine"] = {"cpu_threads": torch.get_num_threads(), "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
    path.write_text(json.dumps(results, indent=2))
    (OUT / "benchmark.md").write_text(markdown(results))
    plots(results)
    print((OUT / "benchmark.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
