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
# GPU memory one window adds at half precision with guidance (activations, VAE), beyond the
# weights. An ESTIMATE scaled from the official footprints, not a measurement:
# `python -m scripts.benchmark --sections gpu` prints the measured peak per batch size.
WINDOW_BYTES_ESTIMATE = {256: 2 * GiB, 512: 7 * GiB}
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
    weights = sum(p.numel() * p.element_size() for p in unet.parameters())
    size = 256 if resolution <= 256 else 512
    budget = min(free, OFFICIAL_VRAM_BYTES[size] - weights)
    return max(1, min(MAX_WINDOWS_PER_BATCH, int(budget // WINDOW_BYTES_ESTIMATE[size])))


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
