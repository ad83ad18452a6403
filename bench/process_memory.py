"""Memory of the current process, read the same way by both benchmark workers (they run in
different virtualenvs, so this module imports nothing beyond the standard library)."""

from __future__ import annotations

import resource


def rss_mb() -> float:
    """Resident set size now (MB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    """Peak resident set size of the process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
