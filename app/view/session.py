"""A loaded graph with what the explorer computes once per graph (and a few cached views)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from functools import cached_property
from pathlib import Path

import numpy as np

from tracer.graph import Graph
from tracer.graph.pruning import graph_scores, influence_from, row_nodes

from app.view.budget import MAX_EDGES, MAX_NODES, BudgetView, Pruner
from app.view.keys import node_keys


class GraphSession:
    def __init__(self, graph: Graph, name: str, path: Path | None = None,
                 max_nodes: int = MAX_NODES, max_edges: int = MAX_EDGES):
        self.graph = graph
        self.name = name
        self.path = path
        self.max_nodes = max_nodes
        self.max_edges = max_edges
        self.keys = node_keys(graph)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.kinds = graph.node_kinds()
        self.layers = graph.node_layers()
        self.positions = graph.node_positions()
        self.rows = row_nodes(graph)
        self.image_mask = graph.is_image_position()
        self._budgets: OrderedDict = OrderedDict()
        self._flows: OrderedDict = OrderedDict()  # source nodes -> influence_from over the full graph
        self._lock = threading.Lock()
        self._init_lock = threading.Lock()
        self._pruner: Pruner | None = None

    # ------------------------------------------------------------------ once per graph
    @property
    def pruner(self) -> Pruner:
        """Computed once (influence of every node: the slow part of opening a big graph)."""
        if self._pruner is None:
            with self._init_lock:
                if self._pruner is None:
                    self._pruner = Pruner(self.graph)
        return self._pruner

    @property
    def influence(self) -> np.ndarray:
        return self.pruner.influence

    @cached_property
    def scores(self) -> dict[str, float]:
        stored = self.graph.scores or {}
        if all(isinstance(stored.get(k), (int, float)) and np.isfinite(stored[k]) for k in ("replacement", "completeness")):
            return {"replacement": float(stored["replacement"]), "completeness": float(stored["completeness"])}
        return graph_scores(self.graph)

    @cached_property
    def cell_of_position(self) -> dict[int, tuple[int, int, int]]:
        g = self.graph
        return {int(p): (int(i), int(r), int(c)) for p, (i, r, c) in zip(g.image_positions, g.image_grid)}

    @cached_property
    def position_of_cell(self) -> dict[tuple[int, int, int], int]:
        return {cell: pos for pos, cell in self.cell_of_position.items()}

    @cached_property
    def grids(self) -> list[tuple[int, int]]:
        return self.graph.grids()

    def grid_shape(self, image: int) -> tuple[int, int]:
        """(rows, cols) of one image's soft-token grid ((0, 0) for an image the graph lacks)."""
        return self.grids[image] if 0 <= image < len(self.grids) else (0, 0)

    def patches(self):
        """(position, pixels) of the input image under each image soft token."""
        for pos, (image, row, col) in self.cell_of_position.items():
            if image >= len(self.graph.images):
                continue
            img = np.asarray(self.graph.images[image])
            rows, cols = self.grid_shape(image)
            h, w = img.shape[0] / rows, img.shape[1] / cols
            patch = img[int(row * h): int((row + 1) * h) or None, int(col * w): int((col + 1) * w) or None]
            if patch.size:
                yield pos, patch

    @cached_property
    def patch_colours(self) -> dict[int, str]:
        """Mean colour of the image pixels under each image soft token (position -> '#rrggbb')."""
        out: dict[int, str] = {}
        for pos, patch in self.patches():
            rgb = patch.reshape(-1, patch.shape[-1])[:, :3].mean(0) if patch.ndim == 3 else np.repeat(patch.mean(), 3)
            out[pos] = "#%02x%02x%02x" % tuple(int(v) for v in np.clip(rgb, 0, 255))
        return out

    @cached_property
    def ground_truth(self) -> dict | None:
        """Toy graphs record what the answer depends on (graph.info["toy"], see
        tracer.toy.samples): the question, the answer and the evidence cells of image 0."""
        toy = (self.graph.info or {}).get("toy")
        if not isinstance(toy, dict):
            return None
        cells = []
        positions = toy.get("evidence_positions") or []
        for pos in positions:
            cell = self.cell_of_position.get(int(pos))
            if cell is not None:
                cells.append((cell[1], cell[2]))
        if not positions:
            cols = self.grid_shape(0)[1]
            cells = [divmod(int(t), cols) for t in toy.get("evidence_tokens") or []] if cols else []
        return {"question": str(toy.get("question", "")), "answer": str(toy.get("answer", "")),
                "evidence": [str(e) for e in toy.get("evidence") or []], "cells": sorted(set(cells))}

    # ------------------------------------------------------------------ one scale for every view
    @cached_property
    def reference(self) -> dict:
        """Node sizes are relative to the most influential feature (without features, to all
        non-logit nodes), feature colours to the strongest activation: the same in every view
        of this graph."""
        g = self.graph
        scale_nodes = np.arange(g.n_features) if g.n_features else np.flatnonzero(self.kinds != "logit")
        inf = self.influence[scale_nodes]
        act = np.abs(np.asarray(g.activations, np.float64))
        return {"max_influence": float(inf.max()) if inf.size and inf.max() > 0 else 1.0,
                "max_activation": float(act.max()) if act.size and act.max() > 0 else 1.0}

    @cached_property
    def patch_thumbnails(self) -> dict[int, str]:
        """A small PNG data URI of the input image under each image soft token (position -> URI),
        drawn on the view's position axis."""
        from PIL import Image

        from tracer.graph.neuronpedia import image_to_data_uri

        out: dict[int, str] = {}
        for pos, patch in self.patches():
            thumb = Image.fromarray(np.ascontiguousarray(patch).astype(np.uint8)).convert("RGB")
            out[pos] = image_to_data_uri(np.asarray(thumb.resize((24, 24), Image.NEAREST)))
        return out

    # ------------------------------------------------------------------ labels
    def default_label(self, index: int) -> str:
        return self.graph.node_label(index)

    def token_text(self, pos: int) -> str:
        return self.graph.position_text(pos)

    def token_string(self, token_id: int) -> str:
        vocab = self.graph.vocab or {}
        return vocab.get(int(token_id), f"#{int(token_id)}")

    # ------------------------------------------------------------------ image cells
    def cell_nodes(self, image: int, cells) -> np.ndarray:
        """Embedding node indices of grid cells (row, col) of one image."""
        out = []
        for row, col in cells:
            pos = self.position_of_cell.get((int(image), int(row), int(col)))
            if pos is not None:
                out.append(self.graph.embedding_offset + pos)
        return np.array(sorted(set(out)), dtype=np.int64)

    def full_influence_from(self, sources: np.ndarray) -> dict:
        """tracer.graph.pruning.influence_from along every edge of the graph: it does not depend
        on the pruned view, so a slider step with a region selected reuses it (cached)."""
        key = tuple(np.asarray(sources, dtype=np.int64).tolist())
        with self._lock:
            if key in self._flows:
                self._flows.move_to_end(key)
                return self._flows[key]
        flow = influence_from(self.graph, sources, None)
        with self._lock:
            self._flows[key] = flow
            while len(self._flows) > 8:
                self._flows.popitem(last=False)
        return flow

    # ------------------------------------------------------------------ pruning (cached)
    def budget(self, node_threshold: float, edge_threshold: float, max_features: int | None = None) -> BudgetView:
        """max_features: at most this many feature nodes (the most influential), else only the
        display budget."""
        key = (round(float(node_threshold), 4), round(float(edge_threshold), 4),
               None if max_features is None else int(max_features))
        with self._lock:
            if key in self._budgets:
                self._budgets.move_to_end(key)
                return self._budgets[key]
        nt, et = (float(np.clip(v, 0.0, 1.0)) for v in key[:2])
        view = self.pruner.prune(nt, et, self.max_nodes, self.max_edges, max_feature_nodes=key[2])
        with self._lock:
            self._budgets[key] = view
            while len(self._budgets) > 12:  # a view uses two: with and without the feature budget
                self._budgets.popitem(last=False)
        return view

