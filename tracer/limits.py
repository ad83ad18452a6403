"""Sane limits on what a file, a form or a flag may ask for, and how much host memory there is.

Every reader checks a declared size (a layer count, a shape, a position) against these limits and
against the arrays actually present *before* allocating anything, so that a tiny hostile file
cannot make the process grow without bound. The limits sit far above any real model or graph:
Gemma3-4B has 34 layers and a 131,072-token context; a 7,500-feature graph of it has ~10^8 edges.
No torch here: graph files are read without it.
"""

from __future__ import annotations

import os
import resource

from tracer.errors import InputError

MAX_LAYERS = 1024
MAX_POSITIONS = 1 << 18  # 262,144 positions
MAX_NODES = 1 << 22  # nodes of one graph
MAX_EDGE_ENTRIES = 1 << 31  # entries of a graph's stored edge matrix (8 GiB in float32)
MAX_GRID_SIDE = 4096  # image soft tokens per side of one image's grid
MAX_IMAGES = 256
MAX_PIXELS = 40_000_000  # one image: about 6300 x 6300, far above any VLM input size
MAX_SIDE = 16_384  # one image side
MAX_KEY = 200  # characters of a node id coming from a browser


def host_memory_available() -> int:
    """Bytes this process can still allocate: MemAvailable, capped by an address-space limit."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
                    break
    except (OSError, ValueError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 1 << 62
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        try:
            with open("/proc/self/statm", encoding="ascii") as f:
                used = int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            used = 0
        available = min(available, max(0, soft - used))
    return int(available)


def format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if abs(n) < 1024 or unit == "PiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} PiB"


def check_host_allocation(nbytes: int, what: str) -> None:
    """InputError unless `nbytes` fits in the host memory still available."""
    free = host_memory_available()
    if nbytes > free:
        raise InputError(f"{what} needs {format_bytes(nbytes)}, but only {format_bytes(free)} of memory is available")
