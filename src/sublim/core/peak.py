"""Peak resident memory of a piece of work (a stage), and of the whole process.

On Linux the kernel's high-water mark (``VmHWM``) can be reset (``/proc/self/clear_refs``), so each stage can
report its own peak instead of the process's running maximum. A reset also lowers what ``getrusage`` reports,
so the process peak is kept here, across resets. Elsewhere a stage's peak is None and the process peak is
``getrusage``'s."""

from __future__ import annotations

import contextlib
import ctypes
import re
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

resource: ModuleType | None
try:
    import resource
except ImportError:  # Windows
    resource = None

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")
_LOCK = threading.Lock()
_OPEN: list[list[float]] = []  # the peak seen so far by each open measurement (innermost last)
_SEEN = [0.0]  # the process's peak before the last reset


def _hwm_mb() -> float | None:
    """The kernel's high-water mark of this process's resident memory (MB), or None off Linux."""
    try:
        found = re.search(r"^VmHWM:\s+(\d+)\s+kB", _STATUS.read_text(), re.M)
    except OSError:
        return None
    return int(found.group(1)) / 1024 if found else None


def _reset() -> bool:
    """Fold the current high-water mark into every open measurement, then reset it. False when it cannot."""
    now = _hwm_mb()
    if now is None:
        return False
    for seen in _OPEN:
        seen[0] = max(seen[0], now)
    _SEEN[0] = max(_SEEN[0], now)
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    return True


def release_freed_memory() -> None:
    """Hand memory that is free inside the process back to the system (glibc's malloc_trim): after a model is
    loaded (its dequantization's float32 copies) or freed, and before each stage, so that a stage's peak is
    its own work's and not what earlier stages left in the heap. A no-op off glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def maxrss_mb(children: bool = False) -> float | None:
    """``getrusage``'s peak resident memory (MB) of this process, or of its largest waited-for child; None where
    there is no ``resource`` module."""
    if resource is None:
        return None
    scale = 1 / 1024 if sys.platform != "darwin" else 1 / (1 << 20)  # ru_maxrss: KB on Linux, bytes on macOS
    return round(resource.getrusage(resource.RUSAGE_CHILDREN if children else resource.RUSAGE_SELF).ru_maxrss
                 * scale, 1)


def process_peak_mb() -> float | None:
    """The peak resident memory of this process so far (MB), resets included."""
    found = [v for v in (_hwm_mb(), maxrss_mb(), _SEEN[0] or None) if v is not None]
    return round(max(found), 1) if found else None


@contextlib.contextmanager
def measured_peak() -> Iterator[dict[str, float | None]]:
    """Measure the peak resident memory of the work inside; after it, ``box["peak_rss_mb"]`` holds it (MB, None
    where the high-water mark cannot be reset). Nested measurements each get their own peak, and the outer one
    includes the inner's."""
    box: dict[str, float | None] = {"peak_rss_mb": None}
    with _LOCK:
        seen = [0.0]
        ok = _reset()
        _OPEN.append(seen)
    try:
        yield box
    finally:
        with _LOCK:
            _OPEN.remove(seen)
            now = _hwm_mb()
            if ok and now is not None:
                box["peak_rss_mb"] = round(max(seen[0], now), 1)
                for outer in _OPEN:
                    outer[0] = max(outer[0], now)
            _SEEN[0] = max(_SEEN[0], now or 0.0)
