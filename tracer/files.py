"""Writing files so that a crash mid-write loses nothing: write a temporary file next to the
target, flush it to disk, then rename it over the target (atomic on POSIX file systems).

A process killed mid-write (SIGKILL, power loss) leaves its temporary file behind. Temporary
names carry a marker and the writer's process id (`.<name>.vlmc-<pid>.<random>.tmp`), so the next
writer of the same target, or `remove_stale_temporaries` on a folder, deletes those whose writer
is gone (and never another program's files)."""

from __future__ import annotations

import os
import re
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_TEMP = re.compile(r"^\.(?P<target>.+)\.vlmc-(?P<pid>\d+)\.[a-z0-9_]+\.tmp$")
# names written before the marker was added, for the files this project writes; removed after an hour
_OLD_TEMP = re.compile(r"^\.(?P<target>.+\.(?:annotations\.json|graph\.safetensors|json|graphml))\.[a-z0-9_]{8}\.tmp$")
_OLD_AGE_S = 3600.0


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _is_stale(path: Path, target: str | None = None) -> bool:
    m = _TEMP.match(path.name)
    if m and (target is None or m.group("target") == target):
        return not _alive(int(m.group("pid")))
    m = _OLD_TEMP.match(path.name)
    if m and (target is None or m.group("target") == target):
        try:
            return time.time() - path.stat().st_mtime > _OLD_AGE_S
        except OSError:
            return False
    return False


def remove_stale_temporaries(folder: str | Path, target: str | None = None) -> list[Path]:
    """Delete the temporary files in `folder` (of `target`'s writes only, if given) whose
    writing process no longer exists. Returns what was deleted."""
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except OSError:
        return removed
    for p in entries:
        if p.name.startswith(".") and p.name.endswith(".tmp") and _is_stale(p, target):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yields a temporary path in the target's folder; on success it replaces `path`.

    The file gets the usual permissions for new files (mkstemp would leave it 0600), and is
    fsynced before the rename. On an exception the temporary file is removed and `path` is
    untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.vlmc-{os.getpid()}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


# ---------------------------------------------------------------------- safetensors headers
_ST_ITEMSIZE = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
                "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8, "C64": 8}
_ST_MAX_HEADER = 100_000_000  # what the safetensors library itself accepts


def read_safetensors_header(path: str | Path) -> tuple[dict[str, tuple[str, tuple[int, ...], int]], dict]:
    """({tensor name: (dtype, shape, bytes)}, metadata) of a safetensors file, from its header alone,
    after checking every declared size against the bytes the file really holds. InputError (one line)
    for a truncated, padded or inconsistent file, so nothing is allocated from a lying header."""
    import json
    import math

    from tracer.errors import InputError

    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(8)
            n = int.from_bytes(head, "little") if len(head) == 8 else -1
            if n < 0 or n > min(_ST_MAX_HEADER, size - 8):
                raise InputError(f"{path}: not a complete safetensors file (header of {max(n, 0):,} bytes in a "
                                 f"{size:,}-byte file)")
            raw = f.read(n)
    except OSError as err:
        raise InputError(f"{path}: cannot be read ({err.strerror or err})") from err
    try:
        header = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise InputError(f"{path}: the safetensors header is not valid JSON") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: the safetensors header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{path}: the safetensors metadata must map names to strings")
    data_bytes = size - 8 - n
    tensors: dict[str, tuple[str, tuple[int, ...], int]] = {}
    end = 0
    for name, entry in header.items():
        ok = isinstance(entry, dict) and entry.get("dtype") in _ST_ITEMSIZE
        shape, offsets = (entry.get("shape"), entry.get("data_offsets")) if ok else (None, None)
        ok = ok and isinstance(shape, list) and all(isinstance(s, int) and s >= 0 for s in shape)
        ok = ok and isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
        if not ok:
            raise InputError(f"{path}: tensor {name[:80]!r} has a malformed header entry")
        nbytes = math.prod(shape) * _ST_ITEMSIZE[entry["dtype"]]
        start, stop = offsets
        if not 0 <= start <= stop or stop - start != nbytes:
            raise InputError(f"{path}: tensor {name[:80]!r} declares shape {shape} ({nbytes:,} bytes) but "
                             f"{stop - start:,} bytes of data")
        if stop > data_bytes:
            raise InputError(f"{path}: truncated: tensor {name[:80]!r} needs bytes up to {stop:,}, the file holds "
                             f"{data_bytes:,} bytes of data")
        tensors[name] = (entry["dtype"], tuple(shape), nbytes)
        end = max(end, stop)
    if end != data_bytes:
        raise InputError(f"{path}: {data_bytes - end:,} bytes after the last tensor: not a valid safetensors file")
    return tensors, metadata
