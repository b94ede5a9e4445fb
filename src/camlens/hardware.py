"""What the machine offers the fast paths, and how the process should use its memory.

Score-CAM's ``approximate=True`` runs its masked passes in bfloat16.  That is faster only where the CPU has
bfloat16 dot-product or matrix instructions (x86: AVX512-BF16 or AMX-BF16; Arm: the BF16 extension); without
them oneDNN emulates bfloat16 through float32 conversions, measured 7x slower than the exact float32 mode.
:func:`usable_approximation` then falls back to the exact mode, with a one-line warning saying why.

PyTorch's CPU tensors come from the C library's ``malloc``.  glibc serves every block above its mmap threshold
(at most 32 MiB) with a fresh ``mmap`` and unmaps it on free, so each forward pass at 224 px faults in and zeroes
its activations' pages anew; :func:`retain_freed_memory` stops that.
"""

from __future__ import annotations

import ctypes
import os
import platform
import warnings
from functools import lru_cache

import torch

BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")  # x86 AVX512-BF16, x86 AMX-BF16, Arm BF16 (/proc/cpuinfo names)
UNITS = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")  # the units that decide PyTorch's CPU speed, as described
CPUINFO = "/proc/cpuinfo"


def _torch_capabilities() -> dict:
    """torch's own CPU query (a private function, torch >= 2.3, so read defensively): flag -> bool, ``cpu_name``."""
    try:
        return dict(torch._C._cpu._get_cpu_capability())
    except (AttributeError, RuntimeError, TypeError):
        return {}


def _cpuinfo() -> tuple[str | None, set[str]]:
    """The model name and the feature flags of :data:`CPUINFO` (Linux); (None, empty) where there is none."""
    name, flags = None, set()
    try:
        with open(CPUINFO, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and name is None:
                    name = value.strip()
                elif key.strip() in ("flags", "Features"):
                    flags.update(value.split())
    except OSError:
        pass
    return name, flags


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags, from torch's own CPU query where it has one and from /proc/cpuinfo (Linux)."""
    flags = {name for name, value in _torch_capabilities().items() if value is True} | _cpuinfo()[1]
    if "avx512_f" in flags:  # torch spells it avx512_f, Linux avx512f
        flags.add("avx512f")
    return frozenset(flags)


def cpu_has_bf16() -> bool:
    """Whether the CPU has bfloat16 arithmetic units (one of :data:`BF16_FLAGS`)."""
    return any(flag in cpu_flags() for flag in BF16_FLAGS)


def cpu_description() -> str:
    """The CPU model, core count and the vector/matrix units that decide PyTorch's CPU speed (AVX-512 for float32,
    AVX512_BF16 / AMX for bfloat16): the machine line of the demo's report and of the benchmarks.

    Returns:
        ``"<model>, <n> cores, torch <t> threads; <units>"``, with `` (no AVX-512)`` appended without AVX-512.
    """
    name = _cpuinfo()[0] or str(_torch_capabilities().get("cpu_name") or platform.processor() or platform.machine())
    flags = cpu_flags()
    units = [f for f in UNITS if f in flags]
    return (
        f"{name}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads; "
        f"{' '.join(units) or 'no AVX2/AVX-512/AMX'}{'' if 'avx512f' in flags else ' (no AVX-512)'}"
    )


def usable_approximation(approximate: bool | torch.dtype, device: torch.device) -> bool | torch.dtype:
    """``approximate`` as given, except bfloat16 on a CPU without bfloat16 units: ``False`` (the exact mode,
    faster there), with a warning naming the reason."""
    if approximate in (True, torch.bfloat16) and device.type == "cpu" and not cpu_has_bf16():
        warnings.warn(
            "approximate=True (bfloat16) needs a CPU with bfloat16 units (avx512_bf16, amx_bf16 or Arm "
            "bf16), which this one lacks: running the exact float32 mode, which is faster here",
            RuntimeWarning,
            stacklevel=3,
        )
        return False
    return approximate


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_GLIBC_ENV = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")


def retain_freed_memory() -> bool:
    """Make glibc's ``malloc`` keep freed memory for reuse: no ``mmap`` per large block (``M_MMAP_MAX`` 0) and no
    trimming of the heap below 2 GiB of free space (``M_TRIM_THRESHOLD``), so a pass reuses the pages of the one
    before instead of faulting in fresh zeroed ones (``benchmarks/bench_allocator.py`` measures the page faults,
    kernel CPU time and wall time it saves; the figures are on the documentation's benchmark pages).  The process
    keeps its peak memory until it exits, so the command line calls this for its batch commands and not for
    ``serve``.  Does nothing, and returns False, where the C library is not glibc or where the user set
    ``MALLOC_MMAP_MAX_`` or ``MALLOC_TRIM_THRESHOLD_`` (their choice stands)."""
    if platform.libc_ver()[0] != "glibc" or any(name in os.environ for name in _GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL(None)
        return bool(libc.mallopt(_M_MMAP_MAX, 0)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))
    except (OSError, AttributeError):
        return False


def check_device(spec: str | torch.device) -> torch.device:
    """``spec`` as a torch device that exists on this machine, or a one-line :class:`camlens.CamlensError` saying
    what is missing and what to use instead (torch's own errors for a missing GPU are multi-line tracebacks).

    Args:
        spec: ``cpu``, ``cuda``, ``cuda:1``, ``mps`` or a ``torch.device``.

    Returns:
        The device.
    """
    from .errors import CamlensError

    try:
        device = torch.device(spec)
    except (RuntimeError, ValueError) as err:
        raise CamlensError(f"--device {spec!r} is not a device name; use cpu, cuda, cuda:N or mps") from err
    if device.type == "cuda":
        if not torch.cuda.is_available():
            build = f"built for CUDA {torch.version.cuda}" if torch.version.cuda else "a CPU-only build"
            raise CamlensError(
                f"--device {spec}: no CUDA GPU is usable here (torch {torch.__version__}, {build}); use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise CamlensError(
                f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                f"cuda:0 to cuda:{torch.cuda.device_count() - 1}"
            )
    elif device.type == "mps" and not torch.backends.mps.is_available():
        raise CamlensError(f"--device {spec}: Apple's MPS is not available here; use --device cpu")
    return device
