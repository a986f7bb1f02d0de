"""Returning freed host memory to the operating system between phases of a step."""

import ctypes
import ctypes.util
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's ``malloc_trim``, or ``None`` where the C library has none (macOS, musl)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    trim = getattr(ctypes.CDLL(name), "malloc_trim", None)
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def release_freed_host_memory() -> None:
    """Give the pages of freed heap memory back to the OS (``malloc_trim(0)``).

    A generation on the CPU allocates and frees a few hundred MB (packed weights, the KV
    cache); glibc keeps freed blocks in its heap, fragmented, so the update that follows
    grows the process around them and the step's peak is their sum. Trimming once the engine
    sleeps makes the peak the larger phase's: 60-70 MB less in bf16 on the bench workload
    (docs/benchmarks.md). A few milliseconds; nothing where the C library lacks it.
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
