"""Memory of the current process, read the same way by both benchmark workers (they run in
different virtualenvs, so this module imports nothing beyond the standard library)."""

from __future__ import annotations

import resource


def _status(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_mb() -> float:
    """Resident set size now (MB)."""
    return _status("VmRSS")


def peak_mb() -> float:
    """Peak resident set size of the process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def window_peak_mb() -> float:
    """Peak RSS since the last reset_window_peak() (MB): VmHWM, which Linux lets a process reset."""
    return _status("VmHWM")


def reset_window_peak() -> bool:
    """Start a new peak window (writing 5 to /proc/self/clear_refs resets VmHWM to the current RSS).
    False where that is not allowed: then window_peak_mb() is the peak since start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False
