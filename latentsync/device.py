"""Where the models run: the device and dtype, how many 16-frame windows share one U-Net call,
and how much memory the process has taken.

The official runs float16 on CUDA GPUs of compute capability 8 or newer and float32 elsewhere;
bfloat16 can be chosen instead of float16. On the CPU one window goes at a time (batching buys
nothing there); on CUDA as many as fit in free memory and in the footprint the official publishes
for that model (8 GB for 1.5, 18 GB for 1.6), so that the default never needs a bigger GPU.
"""

import re
import resource

import torch

GiB = 1024**3
OFFICIAL_VRAM_BYTES = {256: 8 * GiB, 512: 18 * GiB}  # published for LatentSync 1.5 / 1.6
# Peak GPU memory of a U-Net call of one window (weights included), and what each further window
# adds, measured with torch.cuda.max_memory_allocated on an NVIDIA H200 (2026-12-04,
# `python -m scripts.benchmark_gpu --quick`: float16, guidance, 20 steps, VAE included): 1.6 at
# 512 px peaked at 15.87 GB with one window and 24.68 GB with two, 1.5 at 256 px at 6.04 and 8.25.
ONE_WINDOW_PEAK_BYTES = {256: 6.04e9, 512: 15.87e9}
EXTRA_WINDOW_BYTES = {256: 8.25e9 - 6.04e9, 512: 24.68e9 - 15.87e9}
MAX_WINDOWS_PER_BATCH = 8


def model_dtype(device, precision: str | None = None) -> torch.dtype:
    """The dtype the models run in: `precision` ("float32", "float16", "bfloat16") when given, else
    float16 on CUDA GPUs of compute capability 8 or newer and float32 elsewhere (as the official)."""
    if precision is not None:
        return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[precision]
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.get_device_capability(device)[0] >= 8:
        return torch.float16
    return torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def use_cpu_for_frames(device) -> None:
    """When the models run on a GPU, what torch still does on the CPU is per-frame work on a job's
    own threads (pasting faces back, on several at once): one intra-op thread each, so that
    OpenMP's spinning workers do not fight ffmpeg and face detection for the cores (measured on 2
    cores: 4x the CPU time of a paste-back). On the CPU the models keep every thread."""
    if torch.device(device).type == "cuda":
        torch.set_num_threads(1)


def describe_device(device, dtype: torch.dtype) -> str:
    """"cuda:0 (NVIDIA H100 80GB HBM3, compute capability 9.0, float16, 78.1 of 79.2 GiB free)" or "cpu (float32)"."""
    device = torch.device(device)
    precision = str(dtype).removeprefix("torch.")
    if device.type != "cuda":
        return f"{device.type} ({precision})"
    index = device.index if device.index is not None else torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(index)
    free, total = torch.cuda.mem_get_info(index)
    return f"cuda:{index} ({torch.cuda.get_device_name(index)}, compute capability {major}.{minor}, {precision}, {free / GiB:.1f} of {total / GiB:.1f} GiB free)"


def device_works(device) -> bool:
    """Whether `device` still runs work: some CUDA errors (an illegal memory access) leave the
    process's CUDA context unusable, and every later call on it fails too."""
    device = torch.device(device)
    if device.type != "cuda":
        return True
    try:
        torch.ones(1, device=device).add_(1).item()
        torch.cuda.synchronize(device)
        return True
    except Exception:
        return False


def require_gpu_unless_allowed(device, allow_cpu: bool) -> None:
    """A CUDA build of PyTorch (the GPU image) that finds no usable GPU fails loudly (a host driver
    too old for its CUDA, no GPU passed to the container), unless running on the CPU is intended."""
    if torch.version.cuda is not None and torch.device(device).type != "cuda" and not allow_cpu:
        raise RuntimeError(
            f"No usable CUDA GPU was found, though this PyTorch is built for CUDA {torch.version.cuda} (is the host's NVIDIA driver "
            "new enough, and was the GPU passed to the container?); set LATENTSYNC_ALLOW_CPU=1 to run on the CPU on purpose."
        )


def auto_windows_per_batch(unet: torch.nn.Module, resolution: int) -> int:
    """1 on the CPU; on CUDA, the windows that fit in free memory and in the official's footprint."""
    device = next(unet.parameters()).device
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return windows_that_fit(resolution, free, weights=sum(p.numel() * p.element_size() for p in unet.parameters()))


def windows_that_fit(resolution: int, free: int, weights: int) -> int:
    """Windows per U-Net call whose measured peak stays within the official footprint and within
    the `free` GPU memory left beside the `weights` already loaded; at least 1."""
    size = 256 if resolution <= 256 else 512
    budget = min(OFFICIAL_VRAM_BYTES[size], free + weights)
    return max(1, min(MAX_WINDOWS_PER_BATCH, 1 + int((budget - ONE_WINDOW_PEAK_BYTES[size]) // EXTRA_WINDOW_BYTES[size])))


def with_fast_layout(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with its convolution weights channels-last on CUDA, where cuDNN's tensor-core kernels
    work in that layout (the same arithmetic); unchanged elsewhere."""
    if next(model.parameters()).device.type == "cuda":
        model.to(memory_format=torch.channels_last)
    return model


def to_device(tensor: torch.Tensor, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """`tensor` on `device`; to CUDA through pinned memory without blocking the calling thread."""
    device = torch.device(device)
    if device.type == "cuda" and tensor.device.type == "cpu":
        tensor = tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device, dtype) if dtype is not None else tensor.to(device)


def peak_rss_gb() -> float:
    """This process's peak resident memory so far, in GB.

    Read from VmHWM: Linux starts a child's ru_maxrss at its parent's resident size at the fork,
    so a subprocess of a big process would report the parent's memory instead of its own.
    """
    try:
        with open("/proc/self/status") as status:
            return int(re.search(r"VmHWM:\s+(\d+) kB", status.read()).group(1)) / 1024**2
    except (OSError, AttributeError):  # not Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
