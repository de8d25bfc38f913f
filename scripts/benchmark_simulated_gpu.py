"""Does the GPU wait? A whole job on a real clip, with the diffusion model replaced by a stand-in
that holds "the GPU" for a set time per window (`time.sleep`, which releases the GIL as waiting
on CUDA does), and everything else real: ffmpeg decoding, MediaPipe detection, alignment at the
version's resolution, paste-back, x264 encoding. Figures per rate (GPU seconds per output second):

- whole job, GPU busy, job / GPU;
- the time until the first U-Net call, and the longest the GPU waits between calls after it;
- the time after the last call, beside the least it can be (`encoder_alone`: the same frames
  through the same encoder at the same pace, with nothing else running);
- CPU seconds per output second by stage: decode (the ffmpeg decoders and our reads of their
  pipes), detection (our threads' time in `detect` and MediaPipe's own threads), alignment
  (`FaceAligner.model_input`), paste-back (`FaceAligner.restore`), encode (x264, the mux and our
  writes to its pipe), audio (Whisper features, voice activity, audio decoding), library threads
  (torch's and OpenCV's pools, which no stage can claim alone) and Python (the rest of the
  process: composing, queues, copies).

Our threads' stage times are `time.thread_time` around the wrapped calls; other threads are read
from /proc/self/task and the ffmpeg children with psutil (sampled every 50 ms; what finished
between samples, such as ffprobe, counts as "ffmpeg, other"). Nothing here is in the library: the
components are wrapped from outside. Each measurement runs in a process of its own.

    python -m scripts.benchmark_simulated_gpu                         # rates 0, 1.0, 3.0 at 512 px (1.6)
    python -m scripts.benchmark_simulated_gpu --resolution 256        # 1.5
    python -m scripts.benchmark_simulated_gpu --compare 843867a       # that commit's code and this one, back to back
    python -m scripts.benchmark_simulated_gpu --concurrency 2         # two jobs at once against back to back
    python -m scripts.benchmark_simulated_gpu --seconds 60 --rates 3  # the clip looped to 60 s
    python -m scripts.benchmark --sections simulated-gpu              # both versions, into bench/benchmark.json

Figures from a machine other people use are upper bounds: each row says how many CPU seconds the
rest of the machine used during the job (`/proc/stat`'s busy time less this process's and its
children's, the hypervisor's steal included), which tells a quiet run from a shared one.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import closing
from itertools import islice
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RATES = (0.0, 1.0, 3.0)
STAGES = ("decode", "detection", "alignment", "paste_back", "encode", "audio", "library_threads", "python")


class SimulatedGPU:
    """A stand-in for `latentsync.denoise.denoise_windows` with its signature and its random
    draws (`draw_window_noise`, so the generator advances exactly as the real one's and every
    window's draws stay where they are), which holds "the GPU" for `rate` x (frames / fps) seconds
    per window and returns the input faces in [-1, 1], so paste-back has real work. Those faces are
    made while the GPU is held: a real job's come out of the VAE on the GPU, and only their copy to
    the CPU (milliseconds) falls between calls."""

    def __init__(self, rate: float, fps: float = 25.0):
        self.rate, self.fps = rate, fps
        self.calls: list[tuple[float, float]] = []  # (start, end), perf_counter seconds
        self._lock = threading.Lock()  # one batch at a time, as on one GPU

    def __call__(self, unet, vae, scheduler, faces, audio_embeds, mask, num_inference_steps=20, guidance_scale=1.5,
                 initial_latents=None, generator=None, sample_posterior=True, enable_deepcache=False,
                 split_guidance_batch=False, vae_frames_per_batch=None):
        from latentsync.denoise import draw_window_noise

        windows, frames, _, height, width = faces.shape
        draw_window_noise(generator, windows, frames, (height // 8, width // 8), initial_latents is None, sample_posterior)
        held = self.rate * windows * frames / self.fps
        with self._lock:
            start = time.perf_counter()
            generated = faces.float() / 127.5 - 1
            time.sleep(max(0.0, start + held - time.perf_counter()))
            self.calls.append((start, start + held))
        return generated


# ---- CPU accounting -------------------------------------------------------------------------------


class StageClock:
    """CPU seconds of the calling threads inside wrapped calls, by stage (`time.thread_time`)."""

    def __init__(self):
        self.seconds = {stage: 0.0 for stage in STAGES}
        self.threads: set[int] = set()  # native ids of the threads that ran a wrapped call
        self._lock = threading.Lock()

    def wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            tick = time.thread_time()
            try:
                return function(*args, **kwargs)
            finally:
                spent = time.thread_time() - tick
                with self._lock:
                    self.seconds[stage] += spent
                    self.threads.add(threading.get_native_id())

        return timed


class CpuSampler:
    """Samples every thread of this process and every ffmpeg child (psutil) while a job runs."""

    def __init__(self, period_s: float = 0.05):
        import psutil

        self.period_s, self.process = period_s, psutil.Process()
        self.threads: dict[int, tuple[str, float]] = {}  # tid -> (name, CPU seconds at the last sample)
        self.children: dict[int, tuple[str, float]] = {}  # pid -> (kind, CPU seconds at the last sample)
        self._start_threads: dict[int, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.sampler_tid = None

    def __enter__(self) -> "CpuSampler":
        self._start_threads = {tid: cpu for tid, (_, cpu) in _task_times().items()}
        self._children_at_start = _children_cpu()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._sample()
        self._stop.set()
        self._thread.join()
        self.children_total = _children_cpu() - self._children_at_start  # exact: every reaped child

    def _run(self) -> None:
        self.sampler_tid = threading.get_native_id()
        while not self._stop.wait(self.period_s):
            self._sample()

    def _sample(self) -> None:
        import psutil

        for tid, entry in _task_times().items():
            self.threads[tid] = entry
        for child in self.process.children(recursive=True):
            try:
                kind = self.children[child.pid][0] if child.pid in self.children else _child_kind(child.cmdline())
                times = child.cpu_times()
                self.children[child.pid] = (kind, times.user + times.system)
            except psutil.Error:
                continue

    def thread_seconds(self) -> dict[int, tuple[str, float]]:
        """CPU seconds each thread spent while sampled (threads that ended keep their last sample)."""
        return {tid: (name, cpu - self._start_threads.get(tid, 0.0)) for tid, (name, cpu) in self.threads.items()}


def _task_times() -> dict[int, tuple[str, float]]:
    ticks = os.sysconf("SC_CLK_TCK")
    result = {}
    for tid in os.listdir("/proc/self/task"):
        try:
            name = Path(f"/proc/self/task/{tid}/comm").read_text().strip()
            fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        result[int(tid)] = (name, (int(fields[11]) + int(fields[12])) / ticks)
    return result


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _others_cpu() -> float:
    """CPU seconds the machine has been busy (steal included) beyond this process and its waited children."""
    with open("/proc/stat") as stat:
        user, nice, system, idle, iowait, irq, softirq, steal = (int(field) for field in stat.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK") - time.process_time() - _children_cpu()


def _child_kind(command: list[str]) -> str:
    if not command or "ffprobe" in command[0]:
        return "other"
    if "libx264" in command or ("-c:v" in command and "copy" in command):
        return "encode"
    if "rawvideo" in command and "rgb24" in command and command[-1] == "pipe:":
        return "decode"
    if "s16le" in command:
        return "audio"
    return "other"


def cpu_by_stage(clock: StageClock, sampler: CpuSampler, process_seconds: float) -> dict[str, float]:
    """CPU seconds of the job by stage (see the module's docstring)."""
    stages = dict(clock.seconds)
    python_threads = clock.threads | {thread.native_id for thread in threading.enumerate()}
    library = mediapipe = 0.0
    for tid, (name, seconds) in sampler.thread_seconds().items():
        if tid == sampler.sampler_tid:
            process_seconds -= seconds  # the measurement's own
        elif name.startswith("mediapipe"):
            mediapipe += seconds
        elif tid not in python_threads:
            library += seconds
    stages["detection"] += mediapipe
    stages["library_threads"] = library
    children = {"decode": 0.0, "encode": 0.0, "audio": 0.0, "other": 0.0}
    for kind, seconds in sampler.children.values():
        children[kind] += seconds
    children["other"] += max(0.0, sampler.children_total - sum(children.values()))
    stages["python"] = max(0.0, process_seconds - sum(stages.values()))
    for kind in ("decode", "encode", "audio"):
        stages[kind] += children[kind]
    stages["ffmpeg_other"] = children["other"]
    return stages


# ---- one measurement ---------------------------------------------------------------------------------


def instrumented_pipeline(resolution: int, rate: float, clock: StageClock):
    """The pipeline on the tiny test models at `resolution`, MediaPipe faces, the stand-in GPU,
    and the stages wrapped for the clock."""
    from latentsync.audio import AudioEncoder
    from latentsync.face.align import FaceAligner
    from latentsync.logs import warm_up
    from latentsync.media import ffmpeg
    from latentsync.pipeline import LipsyncPipeline
    from tests.media import tiny_files

    files = tiny_files()
    files.resolution = resolution
    try:  # the CPU threads as a GPU server has them (the code before issue 19 left torch's default)
        from latentsync.device import use_cpu_for_frames

        use_cpu_for_frames("cuda")
    except ImportError:
        pass
    gpu = SimulatedGPU(rate)
    pipeline = LipsyncPipeline.from_files(files, device="cpu", face_detector="mediapipe", denoiser=gpu)
    detector = getattr(pipeline, "models", pipeline).face_detector  # the code before issue 19 kept its parts on the pipeline
    warm_up(detector)
    detector.detect = clock.wrap("detection", detector.detect)
    FaceAligner.model_input = clock.wrap("alignment", FaceAligner.model_input)
    pasting = "paste" if hasattr(FaceAligner, "paste") else "restore"  # what the writer calls, after and before issue 19
    setattr(FaceAligner, pasting, clock.wrap("paste_back", getattr(FaceAligner, pasting)))
    AudioEncoder.features = clock.wrap("audio", AudioEncoder.features)
    AudioEncoder.encode_window = clock.wrap("audio", AudioEncoder.encode_window)  # Whisper runs lazily, as windows need it
    ffmpeg.Process.read = clock.wrap("decode", ffmpeg.Process.read)
    ffmpeg.Process.write = clock.wrap("encode", ffmpeg.Process.write)
    import latentsync.pipeline as pipeline_module

    pipeline_module.silent_spans = clock.wrap("audio", pipeline_module.silent_spans)
    return pipeline, gpu


def encoder_alone(video: Path, audio: Path, rate: float, frames: int, fps: float) -> float:
    """The least a job can take after its last U-Net call at `rate`: seconds from the last
    window's frames to the finished file with nothing else running. The clip's first `frames`
    frames go to the job's encoder (`VideoWriter`, audio added), a window's frames at once, one
    window every `rate` x 16 / fps seconds as the stand-in GPU releases them; x264 `medium`
    encodes its look-ahead (about 40 frames) only once the last frame is in."""
    from latentsync.config import FRAMES_PER_WINDOW
    from latentsync.media.decode import read_frames
    from latentsync.media.encode import VideoWriter
    from latentsync.media.probe import probe_video

    info = probe_video(video)
    period = rate * FRAMES_PER_WINDOW / fps
    with tempfile.TemporaryDirectory(prefix="encoder-alone-") as folder, closing(read_frames(video, fps, count=frames, info=info)) as source:
        with VideoWriter(Path(folder) / "out.mp4", info.width, info.height, fps, audio_path=audio, work_dir=folder) as writer:
            started = time.perf_counter()
            for k in range(-(-frames // FRAMES_PER_WINDOW)):
                window = list(islice(source, FRAMES_PER_WINDOW))  # decoded while "the GPU" works on it
                time.sleep(max(0.0, started + (k + 1) * period - time.perf_counter()))
                released = time.perf_counter()
                for frame in window:
                    writer.write(frame)
        return time.perf_counter() - released


def output_md5(path: Path) -> str:
    """MD5 of the decoded frames: equal outputs have equal pictures, whatever the container says."""
    result = subprocess.run(["ffmpeg", "-v", "error", "-i", str(path), "-map", "0:v", "-f", "md5", "-"], capture_output=True, text=True, check=True)
    return result.stdout.strip().removeprefix("MD5=")


def measure(video: Path, audio: Path, rate: float, resolution: int, jobs: int = 1, at_once: bool = False) -> dict:
    """Run `jobs` jobs (at once in threads, or back to back) and return the figures."""
    import latentsync
    from latentsync.options import LipsyncOptions

    clock = StageClock()
    pipeline, gpu = instrumented_pipeline(resolution, rate, clock)
    options = LipsyncOptions(skip_silence=False)
    others_before = _others_cpu()
    with tempfile.TemporaryDirectory(prefix="simulated-gpu-") as folder:
        outputs = [Path(folder) / f"out{k}.mp4" for k in range(jobs)]
        reports, errors = [None] * jobs, []

        def job(k: int) -> None:
            try:
                reports[k] = pipeline(video, audio, outputs[k], options, temp_dir=folder).report
            except BaseException as error:  # reported below
                errors.append(error)

        process_before = time.process_time()
        with CpuSampler() as sampler:
            started = time.perf_counter()
            if at_once:
                threads = [threading.Thread(target=job, args=(k,)) for k in range(jobs)]
                for thread in threads:
                    thread.start()
                for thread in threads:
                    thread.join()
            else:
                for k in range(jobs):
                    job(k)
            wall = time.perf_counter() - started
        if errors:
            raise errors[0]
        process_seconds = time.process_time() - process_before
        others = _others_cpu() - others_before
        md5 = output_md5(outputs[0])
    output_seconds = sum(report.frames for report in reports) / reports[0].fps
    busy = sum(end - start for start, end in gpu.calls)
    gaps = [later[0] - earlier[1] for earlier, later in zip(gpu.calls, gpu.calls[1:])]
    stages = cpu_by_stage(clock, sampler, process_seconds)
    floor = encoder_alone(video, audio, rate, reports[0].frames, reports[0].fps) if rate > 0 and jobs == 1 else None
    return {
        "rate": rate,
        "resolution": resolution,
        "jobs": jobs,
        "at_once": at_once,
        "output_s": round(output_seconds, 2),
        "windows": len(gpu.calls),
        "wall_s": round(wall, 2),
        "gpu_busy_s": round(busy, 2),
        "job_over_gpu": round(wall / busy, 2) if rate > 0 else None,
        "first_unet_call_s": round(gpu.calls[0][0] - started, 2) if gpu.calls else None,
        "longest_gpu_idle_s": round(max(gaps), 2) if gaps else 0.0,
        "after_last_call_s": round(started + wall - gpu.calls[-1][1], 2) if gpu.calls else None,
        "encoder_alone_after_last_s": round(floor, 2) if floor is not None else None,
        "wall_per_output_s": round(wall / output_seconds, 2),
        "cpu_s_per_output_s": {stage: round(seconds / output_seconds, 3) for stage, seconds in stages.items()},
        "cpu_s_per_output_s_total": round(sum(stages.values()) / output_seconds, 3),
        "report_timings": reports[0].timings,
        "output_md5": md5,
        "library": str(Path(latentsync.__file__).parent),
        "other_cpu_s": round(max(others, 0.0), 1),
    }


# ---- runs in processes of their own --------------------------------------------------------------------


def measure_in_subprocess(args, rate: float, library: Path | None = None, jobs: int = 1, at_once: bool = False) -> dict:
    """One measurement in a fresh process; `library`: a folder holding another `latentsync` to measure."""
    command = [sys.executable, "-m", "scripts.benchmark_simulated_gpu", "--one", str(rate), "--resolution", str(args.resolution),
               "--video", str(args.video), "--audio", str(args.audio), "--jobs", str(jobs)] + (["--at-once"] if at_once else [])
    if library is not None:
        command += ["--library", str(library)]
    result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"the measurement at rate {rate} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def looped(path: Path, seconds: float, folder: Path) -> Path:
    """`path` played over and over to `seconds` (streams copied)."""
    out = folder / f"{path.stem}_{seconds:g}s{path.suffix}"
    subprocess.run(["ffmpeg", "-v", "error", "-stream_loop", "-1", "-i", str(path), "-t", str(seconds), "-c", "copy", str(out)], check=True)
    return out


def code_of(commit: str, folder: Path) -> Path:
    """The library (latentsync/, configs/, the weights manifest) as of `commit`, extracted into `folder`."""
    folder.mkdir()
    archive = subprocess.run(["git", "-C", str(REPO_ROOT), "archive", commit, "latentsync", "configs", "weights_manifest.json"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def table(rows: list[dict], label: str = "") -> str:
    """The rows as a markdown table."""
    head = ["code"] if label else []
    lines = [
        "| " + " | ".join(head + ["GPU s per output s", "whole job", "GPU busy", "job / GPU", "first U-Net call", "longest GPU wait",
                                  "after the last call (encoder alone)",
                                  "CPU s per output s: decode / detect / align / paste / encode / audio / libs / Python = total", "others' CPU"]) + " |",
        "| " + " | ".join(["---"] * (len(head) + 9)) + " |",
    ]
    for row in rows:
        cpu = row["cpu_s_per_output_s"]
        split = " / ".join(f"{cpu[stage]:.2f}" for stage in STAGES)
        cells = ([row["code"]] if label else []) + [
            f"{row['rate']:g}", f"{row['wall_s']:.1f} s", f"{row['gpu_busy_s']:.1f} s",
            f"{row['job_over_gpu']:.2f}x" if row["job_over_gpu"] else "-",
            f"{row['first_unet_call_s']:.1f} s" if row["first_unet_call_s"] is not None else "-",
            f"{row['longest_gpu_idle_s']:.1f} s", _after_last_call(row), f"{split} = {row['cpu_s_per_output_s_total']:.2f}",
            f"{row['other_cpu_s']:.1f} s",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _after_last_call(row: dict) -> str:
    if row.get("after_last_call_s") is None:
        return "-"
    alone = row.get("encoder_alone_after_last_s")
    return f"{row['after_last_call_s']:.1f} s" + (f" ({alone:.1f} s)" if alone is not None else "")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--library" in argv:  # another commit's latentsync, ahead of this one's
        sys.path.insert(0, argv[argv.index("--library") + 1])
    from latentsync.config import shared_dir

    assets = shared_dir() / "assets"
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", type=float, nargs="*", default=list(DEFAULT_RATES), help="stand-in GPU seconds per output second")
    parser.add_argument("--resolution", type=int, default=512, help="the version's face size: 512 (1.6) or 256 (1.5)")
    parser.add_argument("--video", type=Path, default=assets / "demo1_video.mp4")
    parser.add_argument("--audio", type=Path, default=assets / "demo1_audio.wav")
    parser.add_argument("--seconds", type=float, default=None, help="loop the clip (video and audio) to this length")
    parser.add_argument("--repeats", type=int, default=1, help="runs per figure; the table shows the median run (by wall time)")
    parser.add_argument("--compare", metavar="COMMIT", help="also measure the library as of COMMIT, alternating with this code")
    parser.add_argument("--concurrency", type=int, default=0, help="measure N jobs at once against N back to back")
    parser.add_argument("--json", default=None)
    parser.add_argument("--one", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--jobs", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--at-once", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--library", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(measure(args.video, args.audio, args.one, args.resolution, args.jobs, args.at_once)))
        return 0

    def median(runs: list[dict]) -> dict:
        return sorted(runs, key=lambda row: row["wall_s"])[len(runs) // 2]

    results = {"resolution": args.resolution, "video": args.video.name, "audio": args.audio.name, "cpu_threads": os.cpu_count()}
    with tempfile.TemporaryDirectory() as folder:
        if args.seconds:
            args.video, args.audio = looped(args.video, args.seconds, Path(folder)), looped(args.audio, args.seconds, Path(folder))
            results["seconds"] = args.seconds
        before = code_of(args.compare, Path(folder) / "library") if args.compare else None
        rows = []
        for rate in args.rates:
            runs = {"this code": []} if before is None else {args.compare: [], "this code": []}
            for _ in range(args.repeats):
                for code in runs:  # back to back, so both see the same load
                    runs[code].append(measure_in_subprocess(args, rate, before if code != "this code" else None))
                    print(f"rate {rate:g}, {code}: {runs[code][-1]['wall_s']} s (others' CPU {runs[code][-1]['other_cpu_s']} s)", file=sys.stderr, flush=True)
            for code, measured in runs.items():
                rows.append({"code": code, **median(measured), "runs_wall_s": [row["wall_s"] for row in measured]})
        results["rows"] = rows
        if before is not None:
            results["same_output"] = {
                f"{rate:g}": len({row["output_md5"] for row in rows if row["rate"] == rate}) == 1 for rate in args.rates
            }
        if args.concurrency > 1:
            rate = max(args.rates)
            results["concurrency"] = {
                "back_to_back": measure_in_subprocess(args, rate, jobs=args.concurrency),
                "at_once": measure_in_subprocess(args, rate, jobs=args.concurrency, at_once=True),
            }
    print(table(rows, label="code" if args.compare else ""))
    if "concurrency" in results:
        for name, row in results["concurrency"].items():
            print(f"{args.concurrency} jobs {name.replace('_', ' ')} at rate {row['rate']:g}: {row['wall_s']} s, GPU busy {row['gpu_busy_s']} s, "
                  f"job / GPU {row['job_over_gpu']}x, longest GPU wait {row['longest_gpu_idle_s']} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
