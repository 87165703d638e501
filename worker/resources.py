"""What a stage cost (wall time, peak RSS, peak CUDA memory) and giving its memory back afterwards.

A stage loads its models itself and drops them when it returns; nothing in the worker caches a model between
stages or jobs. Dropping the last reference is not enough for the process's RSS to fall: reference cycles
(peft wrappers, exception tracebacks holding a stage's frames) wait for the cycle collector, PyTorch keeps freed
CUDA blocks in its cache, and glibc keeps freed heap pages mapped. `release_memory` does all three.

Peak RSS is the kernel's high-water mark (VmHWM), reset at the start of each stage through
`/proc/self/clear_refs`; it is per process, so with several stages running in one process's threads the figures
overlap (the Celery worker runs one stage per process at a time).
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
import time
from dataclasses import dataclass, field
from typing import Any

_STATUS = "/proc/self/status"


def _status_kb(key: str) -> int | None:
    try:
        with open(_STATUS, encoding="ascii") as handle:
            for line in handle:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def rss_mb() -> float | None:
    """The process's resident set size now (VmRSS), in MiB; None where /proc is unavailable."""
    kb = _status_kb("VmRSS")
    return None if kb is None else round(kb / 1024, 1)


def _reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def _cuda() -> Any | None:
    """torch.cuda when this process has already initialised CUDA (never initialises it here)."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda


def release_memory() -> None:
    """Collect reference cycles, empty PyTorch's CUDA cache, and hand glibc's free heap pages back to the OS."""
    gc.collect()
    cuda = _cuda()
    if cuda is not None:
        cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):  # not glibc (musl, macOS): nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@dataclass
class StageResources:
    """`with StageResources() as used: ...`; then `used.figures`: {wall_s, peak_rss_mb, rss_before_mb,
    rss_after_mb (after `release_memory`), cuda_peak_mb (when CUDA was used), peak_scope}."""

    figures: dict[str, Any] = field(default_factory=dict)
    _start: float = 0.0
    _reset: bool = False
    _before: float | None = None

    def __enter__(self) -> StageResources:
        self._before = rss_mb()
        self._reset = _reset_peak_rss()
        cuda = _cuda()
        if cuda is not None:
            cuda.reset_peak_memory_stats()
        self._start = time.monotonic()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc: object) -> None:
        wall = time.monotonic() - self._start
        peak_kb = _status_kb("VmHWM")
        cuda = _cuda()  # a stage may have initialised CUDA itself
        cuda_peak = None if cuda is None else round(cuda.max_memory_allocated() / 2**20, 1)
        if exc_type is None:  # on an exception its traceback still holds the stage's frames: the caller releases
            release_memory()  # once it has handled it (one full collection, not two, on a cancel)
        self.figures = {"wall_s": round(wall, 2), "rss_before_mb": self._before,
                        "peak_rss_mb": None if peak_kb is None else round(peak_kb / 1024, 1),
                        "rss_after_mb": rss_mb(), "peak_scope": "stage" if self._reset else "process"}
        if cuda_peak is not None:
            self.figures["cuda_peak_mb"] = cuda_peak
