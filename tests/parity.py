"""Parity with the official implementation's reference vectors (../shared/reference): each parity
test records how far this machine's result is from the official one, next to the bound it
enforces, and pytest prints the records at the end of the run. These are the figures of the
README's Faithfulness section:

    python -m pytest -p no:cacheprovider -k official tests/test_unet.py tests/test_denoise.py tests/test_audio.py tests/test_face_align.py

Float32 kernels differ from CPU to CPU, so each bound is about twice the largest deviation measured
on an AVX-512 CPU with its own kernels, with them limited to AVX2 (prefix the command with
ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2 DNNL_MAX_CPU_ISA=AVX2, as on a CPU without
AVX-512) and on one thread (OMP_NUM_THREADS=1).
"""

MEASURED: dict[str, tuple[float, float, str]] = {}  # name -> (measured, bound, unit)


def within(name: str, measured: float, bound: float, unit: str = "max abs") -> None:
    """Record `measured` (how far from the official) and assert it is below `bound`."""
    MEASURED[name] = (float(measured), bound, unit)
    assert measured < bound, f"{name}: {measured:.3g} from the official reference, more than the bound {bound:.3g}"


def at_least(name: str, measured: float, bound: float, unit: str) -> None:
    """Record a share that must reach `bound` (e.g. of pixels within one grey level)."""
    MEASURED[name] = (float(measured), bound, unit)
    assert measured >= bound, f"{name}: {measured:.4g}, less than the required {bound:.4g}"


def summary_lines() -> list[str]:
    return [f"{name:<34} {measured:10.3g}   bound {bound:.3g}  ({unit})" for name, (measured, bound, unit) in MEASURED.items()]
