"""The one place the app touches graph files: listing, safe name resolution, loading (cached),
exporting. The formats themselves live in tracer.graph (formats, neuronpedia, graphml).

Names come from the browser, so a name is accepted only if it is in the folder listing and it
resolves to a file directly inside the folder (no '..', no absolute paths, no symlinks out).
Nothing is ever unpickled unsafely: reference .pt graphs go through tracer's restricted
unpickler (tracer.graph.reference_pt).
"""

from __future__ import annotations

import json
import logging
import threading
import xml.etree.ElementTree as ET
from collections import OrderedDict
from pathlib import Path

from tracer.files import remove_stale_temporaries
from tracer.graph import GraphFormatError
from tracer.graph.formats import list_graph_files as _list_graph_files
from tracer.graph.formats import open_any_graph
from tracer.graph.graph import ATTENTION_GRAPH
from tracer.graph.graphml import graph_to_graphml
from tracer.graph.neuronpedia import graph_to_json
from tracer.graph.storage import read_metadata

from app.annotations import Annotations, AnnotationsError, annotations_path, save_annotations
from app.view.session import GraphSession


log = logging.getLogger(__name__)


class GraphNotFound(LookupError):
    """A name that is not one of the graphs in the folder."""


def list_graph_files(folder: str | Path) -> list[str]:
    """File names of the graphs directly in `folder` (ours, viewer JSON, reference .pt), sorted."""
    try:
        return sorted(f.path.name for f in _list_graph_files(folder))
    except GraphFormatError:
        return []


def resolve(folder: str | Path, name: str) -> Path:
    """The path of graph `name` in `folder`, or GraphNotFound."""
    folder = Path(folder).resolve()
    if not isinstance(name, str) or not name or name not in list_graph_files(folder):
        raise GraphNotFound(f"{name!r} is not a graph in {folder}")
    path = (folder / name).resolve()
    if path.parent != folder or not path.is_file():
        raise GraphNotFound(f"{name!r} is not a graph in {folder}")
    return path


class GraphStore:
    """Loaded graphs, kept while the file is unchanged (a few at a time)."""

    def __init__(self, folder: str | Path, max_nodes: int | None = None, max_edges: int | None = None, keep: int = 3):
        self.folder = Path(folder)
        self.max_nodes = max_nodes
        self.max_edges = max_edges
        self.keep = keep
        self._sessions: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self._kinds: dict[tuple, bool] = {}  # (name, mtime, size) -> is an attention graph
        # temporaries of writes killed mid-way (annotations, exports) would otherwise stay forever
        remove_stale_temporaries(self.folder)

    def names(self) -> list[str]:
        """The graphs of the folder, attribution graphs first: an attention graph made from one
        of them (named attention-...) neither sorts first nor becomes the default graph."""
        names = list_graph_files(self.folder)
        return sorted(names, key=lambda n: self._is_attention(n))  # stable: by name within each kind

    def _is_attention(self, name: str) -> bool:
        if not name.endswith(".graph.safetensors"):
            return False  # other tools' formats hold attribution graphs only
        try:
            st = (self.folder / name).stat()
        except OSError:
            return False
        key = (name, st.st_mtime_ns, st.st_size)
        if key not in self._kinds:
            try:
                meta = read_metadata(self.folder / name)
                kind = (meta.get("info") or {}).get("kind") or (meta.get("config") or {}).get("kind")
            except GraphFormatError:
                kind = None
            self._kinds[key] = kind == ATTENTION_GRAPH
        return self._kinds[key]

    def path(self, name: str) -> Path:
        return resolve(self.folder, name)

    def session(self, name: str) -> GraphSession:
        """GraphNotFound for unknown names, GraphFormatError for files that cannot be read."""
        path = self.path(name)
        stat = path.stat()
        key = (name, stat.st_mtime_ns, stat.st_size)
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key]
        try:
            graph = open_any_graph(path)
            graph.validate()
        except GraphFormatError as err:
            raise GraphFormatError(str(err).replace(str(path), name)) from err
        except Exception as err:  # any reader bug or odd file: a message, not a crash
            raise GraphFormatError(f"{name}: cannot read this graph ({type(err).__name__}: {err})") from err
        kwargs = {k: v for k, v in (("max_nodes", self.max_nodes), ("max_edges", self.max_edges)) if v}
        session = GraphSession(graph, name, path, **kwargs)
        seed_annotations(session)
        with self._lock:
            for old in [k for k in self._sessions if k[0] == name]:
                del self._sessions[old]
            self._sessions[key] = session
            while len(self._sessions) > self.keep:
                self._sessions.popitem(last=False)
        return session


def seed_annotations(session: GraphSession) -> None:
    """A viewer JSON file carries its pins, supernodes and labels (tracer puts them in
    graph.info["annotations"]): the first time it is opened they become its annotations file, so
    re-opening an export restores them and later edits start from them."""
    imported = (session.graph.info or {}).get("annotations")
    path = annotations_path(session.path)
    if not imported or path.exists():
        return
    keys = session.keys
    try:
        annotations = Annotations.from_dict({
            "labels": {keys[i]: text for i, text in imported.get("labels", [])},
            "pinned": [keys[i] for i in imported.get("pinned", [])],
            "supernodes": [{"id": f"S_{k}", "label": s["label"], "members": [keys[i] for i in s["members"]]}
                           for k, s in enumerate(imported.get("supernodes", []), 1)],
        })
        save_annotations(session.path, annotations)
    except (AnnotationsError, IndexError, KeyError, TypeError, OSError) as err:  # the graph still opens
        log.warning("%s: its pins, supernodes and labels were not restored (%s)", session.name, err)


# ---------------------------------------------------------------------- exports
def _annotation_args(session: GraphSession, annotations: Annotations) -> dict:
    index = session.index
    return {
        "labels": {index[k]: v for k, v in annotations.labels.items() if k in index},
        "pinned_ids": [index[k] for k in annotations.pinned if k in index],
        "supernodes": [{"label": s["label"], "members": [index[m] for m in s["members"] if m in index]}
                       for s in annotations.supernodes],
    }


def _masks(session: GraphSession, node_indices):
    import numpy as np

    node_mask = np.zeros(session.graph.n_nodes, bool)
    node_mask[np.asarray(node_indices, dtype=np.int64)] = True
    return node_mask


def export_neuronpedia(session: GraphSession, node_indices, edge_mask, annotations: Annotations,
                       slug: str | None = None) -> str:
    """circuit-tracer / Neuronpedia viewer JSON of the given nodes and edges, with the labels,
    pins and supernodes of the annotations."""
    data = graph_to_json(session.graph, node_mask=_masks(session, node_indices), edge_mask=edge_mask,
                         node_influence=session.influence, slug=slug, **_annotation_args(session, annotations))
    return json.dumps(data, ensure_ascii=False)


def export_graphml(session: GraphSession, node_indices, edge_mask, annotations: Annotations) -> str:
    labels = _annotation_args(session, annotations)["labels"]
    tree = graph_to_graphml(session.graph, node_mask=_masks(session, node_indices), edge_mask=edge_mask,
                            labels=labels, node_influence=session.influence)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(tree.getroot(), encoding="unicode") + "\n"
