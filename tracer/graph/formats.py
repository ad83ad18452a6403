"""Open any graph file the project knows, and list the graph files in a folder.

Formats (by name and content, not by name alone):

* ``vlm-circuits``: our own ``*.graph.safetensors`` (tracer.graph.storage)
* ``neuronpedia``: circuit-tracer / Neuronpedia viewer JSON (tracer.graph.neuronpedia)
* ``reference-pt``: circuit-tracer / seed-tool ``.pt`` graphs (tracer.graph.reference_pt)

GraphML is export-only. Every failure is a GraphFormatError with a message meant for the user.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tracer.graph.errors import GraphFormatError
from tracer.graph.graph import Graph

VLM_CIRCUITS, NEURONPEDIA, REFERENCE_PT = "vlm-circuits", "neuronpedia", "reference-pt"
FORMATS = (VLM_CIRCUITS, NEURONPEDIA, REFERENCE_PT)
_SUPPORTED = ("our graph files (*.graph.safetensors), circuit-tracer / Neuronpedia graph JSON (*.json) "
              "and reference graphs (*.pt)")
_NOT_GRAPHS = {"graph-metadata.json", "manifest.json"}
_NOT_GRAPH_SUFFIXES = (".annotations.json", ".labels.json")


def _head(path: Path, n: int = 8) -> bytes:
    with open(path, "rb") as f:
        return f.read(n)


def detect_format(path: str | Path) -> str:
    """One of FORMATS, from the file's name and first bytes; GraphFormatError otherwise."""
    path = Path(path)
    if not path.exists():
        raise GraphFormatError(f"{path}: no such file")
    if path.is_dir():
        raise GraphFormatError(f"{path}: is a folder, not a graph file")
    name = path.name.lower()
    try:
        head = _head(path)
    except OSError as err:
        raise GraphFormatError(f"{path}: cannot be read ({err})") from err
    if not head:
        raise GraphFormatError(f"{path}: the file is empty")
    if name.endswith(".graphml"):
        raise GraphFormatError(f"{path}: GraphML is an export format only; open the graph it was exported "
                               f"from ({_SUPPORTED})")
    if name.endswith(".safetensors"):
        return VLM_CIRCUITS
    if name.endswith(".json"):
        return NEURONPEDIA
    if name.endswith((".pt", ".pth")) or head[:2] == b"PK" or head[:1] == b"\x80":
        return REFERENCE_PT
    if head.lstrip()[:1] in (b"{", b"["):
        return NEURONPEDIA
    if len(head) == 8 and int.from_bytes(head, "little") < 100_000_000:
        # safetensors: an 8-byte little-endian header length, then JSON
        with open(path, "rb") as f:
            f.seek(8)
            if f.read(1) == b"{":
                return VLM_CIRCUITS
    raise GraphFormatError(f"{path}: not a graph file this tool can read (supported: {_SUPPORTED})")


def open_any_graph(path: str | Path, **kwargs) -> Graph:
    """Load a graph from any supported file (see the module docstring)."""
    path = Path(path)
    fmt = detect_format(path)
    try:
        if fmt == VLM_CIRCUITS:
            from tracer.graph.storage import load_graph

            return load_graph(path)
        if fmt == NEURONPEDIA:
            from tracer.graph.neuronpedia import load_neuronpedia_json

            return load_neuronpedia_json(path)
        from tracer.graph.reference_pt import load_reference_pt

        return load_reference_pt(path, **kwargs)
    except GraphFormatError:
        raise
    except MemoryError as err:  # a limit was not enough: still a message, not a traceback
        raise GraphFormatError(f"{path}: too large to load in the memory available") from err
    except Exception as err:  # noqa: BLE001 - a broken file must give a message, not a traceback
        raise GraphFormatError(f"{path}: cannot be read as a {fmt} graph ({type(err).__name__}: {err})") from err


@dataclass(frozen=True)
class GraphFile:
    """A graph file found in a folder. Usable wherever a path is (os.fspath)."""

    path: Path
    format: str
    name: str  # what to show: the slug / file name without the format suffix

    def __fspath__(self) -> str:
        return str(self.path)

    def open(self) -> Graph:
        return open_any_graph(self.path)


def _display_name(path: Path) -> str:
    name = path.name
    for suffix in (".graph.safetensors", ".safetensors", ".json", ".pt", ".pth"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _looks_like_graph_json(path: Path) -> bool:
    """Cheap check (first 64 KiB) that a JSON file is a viewer graph, not some other JSON."""
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
    except OSError:
        return False
    if not head.lstrip().startswith(b"{"):
        return False
    if len(head) < 65536:
        try:
            data = json.loads(head.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            return True  # broken JSON: list it, opening it gives the user the error message
        return isinstance(data, dict) and "nodes" in data and "graphs" not in data
    return b'"nodes"' in head or b'"metadata"' in head or b'"qParams"' in head


def list_graph_files(folder: str | Path, recursive: bool = False) -> list[GraphFile]:
    """The graph files in a folder, sorted by name (our files, viewer JSON, reference .pt).

    graph-metadata.json indexes, activation-store manifests, annotation files and JSON that is
    not a graph are skipped. Nothing is fully loaded."""
    folder = Path(folder)
    if not folder.is_dir():
        raise GraphFormatError(f"{folder}: not a folder")
    paths = folder.rglob("*") if recursive else folder.iterdir()
    found: list[GraphFile] = []
    for p in paths:
        if not p.is_file() or p.name.startswith("."):
            continue
        low = p.name.lower()
        if low in _NOT_GRAPHS or low.endswith(_NOT_GRAPH_SUFFIXES):
            continue
        if low.endswith(".graph.safetensors"):
            fmt = VLM_CIRCUITS
        elif low.endswith(".json"):
            if not _looks_like_graph_json(p):
                continue
            fmt = NEURONPEDIA
        elif low.endswith((".pt", ".pth")):
            fmt = REFERENCE_PT
        else:
            continue
        found.append(GraphFile(p, fmt, _display_name(p)))
    return sorted(found, key=lambda g: (str(g.path.parent), g.name.lower(), g.format))


__all__ = ["FORMATS", "GraphFile", "detect_format", "list_graph_files", "open_any_graph"]
