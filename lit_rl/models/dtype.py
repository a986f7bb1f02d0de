"""``dtype: auto``: bfloat16 only where the hardware computes it fast, float32 elsewhere.

A bf16 matmul on a CPU without bf16 units is emulated: measured on a 2-core AMD EPYC with AVX2
only, 1.2 GFLOP/s against 72 in float32 (60x slower), which turned a GRPO step of ~40 s into
~360 s. On CPUs with ``avx512_bf16`` or AMX, and on CUDA devices with bf16, it is the faster
choice. Weights that are trained directly (full fine-tuning) stay float32 either way: an AdamW
update is often smaller than the bf16 rounding step of the weight it is added to.
"""

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

DType = Literal["auto", "float32", "bfloat16", "float16"]
DeviceType = Literal["cpu", "cuda"]

# /proc/cpuinfo flags of CPUs with native bf16 matmul instructions.
FAST_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


@dataclass(frozen=True)
class DTypeChoice:
    name: Literal["float32", "bfloat16", "float16"]
    reason: str
    warning: str | None = None  # an explicit choice this hardware computes badly

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.name)


def choose_dtype(
    requested: DType,
    device_type: DeviceType,
    cpu_flags: frozenset[str],
    cuda_bf16: bool,
    trains_weights: bool,
) -> DTypeChoice:
    """The weights dtype for ``requested`` on this hardware (a pure function of its inputs).

    An explicit dtype always wins. ``auto`` is bfloat16 only where bf16 is fast (a CUDA device
    with bf16 support, a CPU with one of ``FAST_BF16_CPU_FLAGS``) and the weights themselves
    are not trained (LoRA trains float32 adapters beside frozen weights); float32 otherwise.
    """
    if requested != "auto":
        return DTypeChoice(
            requested, "set explicitly", _slow_here(requested, device_type, cpu_flags, cuda_bf16)
        )
    if trains_weights:
        return DTypeChoice(
            "float32", "full fine-tuning: bf16 weights would round away small AdamW updates"
        )
    if device_type == "cuda":
        if cuda_bf16:
            return DTypeChoice("bfloat16", "the CUDA device supports bf16")
        return DTypeChoice("float32", "the CUDA device has no bf16 support")
    fast = sorted(flag for flag in FAST_BF16_CPU_FLAGS if flag in cpu_flags)
    if fast:
        return DTypeChoice("bfloat16", f"the CPU has {' and '.join(fast)}")
    return DTypeChoice(
        "float32",
        "the CPU has neither amx_bf16 nor avx512_bf16 (bf16 would be emulated, ~60x slower)",
    )


def _slow_here(
    requested: DType, device_type: DeviceType, cpu_flags: frozenset[str], cuda_bf16: bool
) -> str | None:
    """Why an explicit ``requested`` computes badly on this hardware, or ``None``."""
    if device_type == "cpu" and requested == "float16":
        return (
            "float16 on a CPU is emulated (slow) and its narrow range can overflow logits: use "
            "dtype auto, float32, or bfloat16 on a CPU with amx_bf16/avx512_bf16"
        )
    if (
        device_type == "cpu"
        and requested == "bfloat16"
        and not cpu_flags & set(FAST_BF16_CPU_FLAGS)
    ):
        return (
            "bfloat16 on a CPU without amx_bf16/avx512_bf16 is emulated, ~60x slower than "
            "float32: use dtype auto or float32"
        )
    if device_type == "cuda" and requested == "bfloat16" and not cuda_bf16:
        return "this CUDA device has no bf16 support: use dtype auto or float32"
    return None


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """The CPU's feature flags (Linux); empty where ``/proc/cpuinfo`` cannot be read."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def resolve_dtype(requested: DType, trains_weights: bool = False) -> DTypeChoice:
    """``choose_dtype`` on this machine: CUDA when available (where Lightning's default
    accelerator trains), else the CPU."""
    on_cuda = torch.cuda.is_available()
    return choose_dtype(
        requested,
        device_type="cuda" if on_cuda else "cpu",
        cpu_flags=cpu_flags(),
        cuda_bf16=on_cuda and torch.cuda.is_bf16_supported(),
        trains_weights=trains_weights,
    )


def fast_bf16(device_type: str) -> bool:
    """Whether this machine's ``device_type`` ("cpu" or "cuda") computes bf16 matmuls fast."""
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return any(flag in cpu_flags() for flag in FAST_BF16_CPU_FLAGS)
