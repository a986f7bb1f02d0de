"""``dtype: auto`` on the three CPU kinds this project runs on, on CUDA, and when set by hand."""

from pathlib import Path

import pytest
import torch

from lit_rl.models import choose_dtype, load_model
from lit_rl.models.dtype import cpu_flags

COMMON = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2"
CPUS = {  # /proc/cpuinfo flags, trimmed to the ones that matter plus a common base
    "intel_amx": f"{COMMON} avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8",
    "amd_avx512_bf16": f"{COMMON} avx512f avx512bw avx512_vnni avx512_bf16",
    "amd_avx2_only": COMMON,
}


def _choose(requested="auto", cpu="amd_avx2_only", device="cpu", cuda_bf16=False, trains=False):
    flags = frozenset(CPUS[cpu].split())
    return choose_dtype(requested, device, flags, cuda_bf16, trains_weights=trains)


@pytest.mark.parametrize(
    ("cpu", "expected", "reason"),
    [
        ("intel_amx", "bfloat16", "amx_bf16 and avx512_bf16"),
        ("amd_avx512_bf16", "bfloat16", "avx512_bf16"),
        ("amd_avx2_only", "float32", "neither amx_bf16 nor avx512_bf16"),
    ],
)
def test_auto_follows_the_cpu_flags(cpu, expected, reason):
    choice = _choose(cpu=cpu)
    assert choice.name == expected and reason in choice.reason


def test_auto_on_cuda_follows_bf16_support():
    assert _choose(device="cuda", cuda_bf16=True).name == "bfloat16"
    assert _choose(device="cuda", cuda_bf16=False).name == "float32"


def test_full_finetuning_stays_float32_even_where_bf16_is_fast():
    choice = _choose(cpu="intel_amx", trains=True)
    assert choice.name == "float32" and "full fine-tuning" in choice.reason


@pytest.mark.parametrize("explicit", ["float32", "bfloat16", "float16"])
def test_an_explicit_dtype_always_wins(explicit):
    assert _choose(explicit, cpu="amd_avx2_only").name == explicit
    assert _choose(explicit, cpu="intel_amx", trains=True).name == explicit
    assert _choose(explicit).torch_dtype == getattr(torch, explicit)


def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512_bf16\nbugs\t: none\n")
    assert cpu_flags(cpuinfo) == {"fpu", "avx2", "avx512_bf16"}
    assert cpu_flags(tmp_path / "missing") == frozenset()


def test_load_model_auto_uses_this_machines_choice(tiny_model_dir):
    # Read from /proc/cpuinfo here, not through lit_rl's flag parser: bf16 exactly where the
    # CPU has a bf16 matrix unit or instructions.
    flags = (
        set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    )
    fast = {"amx_bf16", "avx512_bf16"} & flags
    expected = torch.bfloat16 if fast else torch.float32
    assert load_model(str(tiny_model_dir), dtype="auto").dtype == expected


@pytest.mark.parametrize(
    ("requested", "cpu", "device", "cuda_bf16", "warning"),
    [
        ("float16", "intel_amx", "cpu", False, "float16 on a CPU is emulated"),
        ("bfloat16", "amd_avx2_only", "cpu", False, "~60x slower than float32"),
        ("bfloat16", "amd_avx2_only", "cuda", False, "no bf16 support"),
        ("bfloat16", "amd_avx512_bf16", "cpu", False, None),
        ("float32", "amd_avx2_only", "cpu", False, None),
        ("bfloat16", "amd_avx2_only", "cuda", True, None),
    ],
)
def test_an_explicit_dtype_the_hardware_computes_badly_says_so(
    requested, cpu, device, cuda_bf16, warning
):
    choice = _choose(requested, cpu=cpu, device=device, cuda_bf16=cuda_bf16)
    assert choice.name == requested  # an explicit dtype still wins
    if warning is None:
        assert choice.warning is None
    else:
        assert warning in choice.warning
