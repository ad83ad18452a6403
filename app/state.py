"""Server-side state shared by the callbacks: the graph store, the examples store, and the
current view of a graph (recomputed only when its inputs change)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from app.annotations import Annotations, AnnotationsError, annotations_path, load_annotations
from app.examples import FeatureExampleStores, find_stores
from app.graph_store import GraphStore
from app.view.build import DEFAULT_FEATURE_BUDGET, PINNED, PRUNED, DisplayView, build_view
from app.view.session import GraphSession

DEFAULT_NODE_THRESHOLD = 0.8
DEFAULT_EDGE_THRESHOLD = 0.98


@dataclass
class Current:
    session: GraphSession
    annotations: Annotations
    annotations_error: str
    view: DisplayView


def _import_pandas() -> None:
    """pyarrow (store reads, in the warm-up thread) and plotly (figures, in request threads) both
    import pandas on first use; two threads importing it at once can get it half-initialised
    (seen as a 500 on the image figure), so it is imported once, up front, where stores exist."""
    try:
        import pandas  # noqa: F401
    except ImportError:
        pass


class AppState:
    def __init__(self, graphs_dir: str | Path, examples: str | Path | None = None,
                 max_nodes: int | None = None, max_edges: int | None = None):
        self.graphs_dir = Path(graphs_dir)
        self.batch = None  # an app.batch.BatchView when the app opened a batch folder
        self.store = GraphStore(self.graphs_dir, max_nodes=max_nodes, max_edges=max_edges)
        self._examples_path = examples
        if find_stores(self.graphs_dir, examples):
            _import_pandas()
        self._examples: FeatureExampleStores | None = None
        self._examples_lock = threading.Lock()
        self._warming = False
        self._views: OrderedDict = OrderedDict()
        self._building: dict = {}  # key -> lock held while that view is built
        self._lock = threading.Lock()

    @property
    def examples(self) -> FeatureExampleStores:
        with self._examples_lock:
            if self._examples is None:  # opened lazily: nothing heavy at import or start
                self._examples = FeatureExampleStores(find_stores(self.graphs_dir, self._examples_path))
        return self._examples

    def warm_examples(self) -> None:
        """Open the examples store and read it once in a background thread (once), so that the
        first click on a feature does not wait seconds for it (its first lookup loads its
        tables); called once a graph is drawn."""
        if self._examples is None and not self._warming:
            self._warming = True
            threading.Thread(target=lambda: self.examples.warm(), daemon=True, name="open-examples").start()

    def annotations(self, session: GraphSession) -> tuple[Annotations, str]:
        try:
            return load_annotations(session.path), ""
        except AnnotationsError as err:
            return Annotations(), f"Annotations ignored: {err}"

    def current(self, name: str, node_threshold=None, edge_threshold=None, mode: str | None = PRUNED,
                max_features=DEFAULT_FEATURE_BUDGET) -> Current:
        """The view for these inputs (GraphNotFound / GraphFormatError from the store);
        max_features None: only the display budget."""
        session = self.store.session(name)
        nt = DEFAULT_NODE_THRESHOLD if node_threshold is None else float(node_threshold)
        et = DEFAULT_EDGE_THRESHOLD if edge_threshold is None else float(edge_threshold)
        mode = PINNED if mode == PINNED else PRUNED
        path = annotations_path(session.path)
        try:
            st = path.stat()
            stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
        except OSError:
            stamp = 0
        max_features = None if max_features is None else int(max_features)
        key = (id(session), round(nt, 4), round(et, 4), mode, max_features, stamp)
        # One slider step fires several callbacks at once (graph, selection highlight, region
        # circuit), each asking for the same view: the first builds it, the others wait for it.
        with self._lock:
            if key in self._views:
                self._views.move_to_end(key)
                return self._views[key]
            building = self._building.setdefault(key, threading.Lock())
        with building:
            with self._lock:
                if key in self._views:
                    self._views.move_to_end(key)
                    return self._views[key]
            try:
                annotations, error = self.annotations(session)
                view = build_view(session, annotations, nt, et, mode, max_features)
                current = Current(session, annotations, error, view)
                with self._lock:
                    self._views[key] = current
                    while len(self._views) > 8:
                        self._views.popitem(last=False)
            finally:
                with self._lock:
                    self._building.pop(key, None)
        return current
