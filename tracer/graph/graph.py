"""The attribution graph: nodes, edges, and everything needed to check and display them.

Node order (as in circuit-tracer's reference graphs): feature nodes, error nodes, embedding
nodes (one per position: text token or image soft token), logit nodes. Only feature and logit
nodes have incoming edges, so the adjacency matrix stores just those rows:

    adjacency[r, c] = A[target r, source c]     r < n_features: feature targets, then logits
                                                c indexes all nodes in the order above

Per target row we also keep the target's actual value, its constant term (biases, b_dec writes,
what excluded prefix positions contribute) and the summed edges from active features that were
not explored ("unexplored"), so that the sum rule closes on the stored graph:

    adjacency[r].sum() + unexplored[r] + constants[r] == values[r]

This module needs only numpy: reading a graph needs neither torch nor the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

FEATURE, ERROR, EMBEDDING, LOGIT = "feature", "error", "embedding", "logit"
# Graph kinds: attribution graphs (features at positions), attention graphs (tracer.attention:
# "feature" nodes are residual-stream positions, one per layer and position).
ATTRIBUTION_GRAPH, ATTENTION_GRAPH = "attribution", "attention"
MAX_EDGE = 1e30  # larger edges come from a broken file: sums over a row would overflow float32


@dataclass
class Target:
    """One logit node: a token's logit, or a custom direction in the unembedding space."""

    label: str  # e.g. "red" or "red - blue"
    token_id: int = -1  # -1 for a custom direction
    probability: float = 0.0  # softmax probability of the token (0 for directions)
    kind: str = "token"  # "token" or "direction"
    spec: dict[str, Any] = field(default_factory=dict)  # how the direction was built

    def to_dict(self) -> dict:
        return {"label": self.label, "token_id": self.token_id, "probability": self.probability,
                "kind": self.kind, "spec": self.spec}

    def probability_text(self) -> str:
        """'p=0.981' for a token; 'p(red)=0.981, p(blue)=0.012' for a contrast, whose own
        probability is 0 (a direction has none): both tokens' probabilities when recorded."""
        labels, probs = self.spec.get("labels") or [], self.spec.get("probabilities") or []
        if self.kind == "direction" and probs and len(labels) == len(probs):
            return ", ".join(f"p({lab})={float(p):.3f}" for lab, p in zip(labels, probs))
        if self.kind == "direction":
            return "a direction"
        return f"p={self.probability:.3f}"

    @classmethod
    def from_dict(cls, d: dict) -> "Target":
        return cls(d["label"], int(d.get("token_id", -1)), float(d.get("probability", 0.0)),
                   d.get("kind", "token"), dict(d.get("spec", {})))


@dataclass
class Graph:
    # --- the prompt
    prompt: str  # the text the model saw (chat template applied)
    input_ids: np.ndarray  # (n_pos,) int64
    tokens: list[str]  # display string per position
    n_layers: int
    # --- nodes
    features: np.ndarray  # (n_features, 3) int64: layer, position, feature index
    activations: np.ndarray  # (n_features,) float32 (float64 for float64 graphs)
    errors: np.ndarray  # (n_errors, 2) int64: layer, position
    targets: list[Target]
    # --- edges and the sum rule
    adjacency: np.ndarray  # (n_features + n_logits, n_nodes) float32 (float64 for exactness runs)
    values: np.ndarray  # (n_features + n_logits,) float64: actual pre-activation / logit value
    constants: np.ndarray  # (n_features + n_logits,) float64
    unexplored: np.ndarray  # (n_features + n_logits,) float64
    # --- images: positions of image soft tokens and their grid cells
    image_positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # (n_img,)
    image_grid: np.ndarray = field(default_factory=lambda: np.zeros((0, 3), np.int64))  # (n_img, 3): image, row, col
    tokens_per_side: int = 0  # side of a square grid all images share, else 0 (what files before image_grids hold)
    image_grids: list[tuple[int, int]] = field(default_factory=list)  # (rows, cols) of each image's soft-token grid
    images: list[np.ndarray] = field(default_factory=list)  # uint8 (H, W, 3) each, the input images
    prefix_length: int = 0  # leading chat-template positions with no feature nodes
    # --- per-feature extras for viewers (aligned with `features`; may be empty)
    feature_position_activations: np.ndarray | None = None  # (n_features, n_pos) float32
    top_logit_ids: np.ndarray | None = None  # (n_features, k) int64: tokens each feature's decoder promotes
    top_logit_values: np.ndarray | None = None  # (n_features, k) float32
    bottom_logit_ids: np.ndarray | None = None  # (n_features, k) suppressed tokens
    bottom_logit_values: np.ndarray | None = None
    vocab: dict[int, str] = field(default_factory=dict)  # token strings for the ids above
    # --- provenance
    model: str = ""
    transcoders: str = ""
    scan: str = ""
    slug: str = ""
    config: dict[str, Any] = field(default_factory=dict)  # attribution settings
    scores: dict[str, float] = field(default_factory=dict)  # replacement / completeness
    info: dict[str, Any] = field(default_factory=dict)  # anything else (timings, versions, clerps)

    @property
    def kind(self) -> str:
        return self.info.get("kind") or self.config.get("kind") or ATTRIBUTION_GRAPH

    @property
    def precision(self) -> str:
        """"float64" for graphs computed in float64 (edges, activations, values and constants are
        all kept in float64), else "float32" (edges and activations stored in float32)."""
        return "float64" if self.adjacency.dtype == np.float64 else "float32"

    @property
    def stored_dtype(self) -> type:
        """numpy dtype of this graph's edges and activations."""
        return np.float64 if self.precision == "float64" else np.float32

    # ------------------------------------------------------------------ sizes and indices
    @property
    def n_positions(self) -> int:
        return int(len(self.input_ids))

    @property
    def n_features(self) -> int:
        return int(len(self.features))

    @property
    def n_errors(self) -> int:
        return int(len(self.errors))

    @property
    def n_embeddings(self) -> int:
        return self.n_positions

    @property
    def n_logits(self) -> int:
        return len(self.targets)

    @property
    def n_nodes(self) -> int:
        return self.n_features + self.n_errors + self.n_embeddings + self.n_logits

    @property
    def error_offset(self) -> int:
        return self.n_features

    @property
    def embedding_offset(self) -> int:
        return self.n_features + self.n_errors

    @property
    def logit_offset(self) -> int:
        return self.n_features + self.n_errors + self.n_embeddings

    def node_kind(self, index: int) -> str:
        if index < self.error_offset:
            return FEATURE
        if index < self.embedding_offset:
            return ERROR
        if index < self.logit_offset:
            return EMBEDDING
        if index < self.n_nodes:
            return LOGIT
        raise IndexError(index)

    def node_kinds(self) -> np.ndarray:
        kinds = np.empty(self.n_nodes, dtype=object)
        kinds[: self.error_offset] = FEATURE
        kinds[self.error_offset: self.embedding_offset] = ERROR
        kinds[self.embedding_offset: self.logit_offset] = EMBEDDING
        kinds[self.logit_offset:] = LOGIT
        return kinds

    def node_layers(self) -> np.ndarray:
        """Layer of each node: embeddings -1, logits n_layers."""
        return np.concatenate([
            self.features[:, 0], self.errors[:, 0], np.full(self.n_embeddings, -1),
            np.full(self.n_logits, self.n_layers),
        ]).astype(np.int64)

    def node_positions(self) -> np.ndarray:
        return np.concatenate([
            self.features[:, 1], self.errors[:, 1], np.arange(self.n_embeddings),
            np.full(self.n_logits, self.n_positions - 1),
        ]).astype(np.int64)

    def row_of_node(self, index: int) -> int | None:
        """Row of the adjacency matrix for a node (None for errors and embeddings)."""
        kind = self.node_kind(index)
        if kind == FEATURE:
            return index
        if kind == LOGIT:
            return self.n_features + index - self.logit_offset
        return None

    def full_adjacency(self) -> np.ndarray:
        """Dense (n_nodes, n_nodes) matrix, rows = targets. For small graphs and exports."""
        full = np.zeros((self.n_nodes, self.n_nodes), dtype=self.adjacency.dtype)
        full[: self.n_features] = self.adjacency[: self.n_features]
        full[self.logit_offset:] = self.adjacency[self.n_features:]
        return full

    def is_image_position(self) -> np.ndarray:
        mask = np.zeros(self.n_positions, bool)
        mask[self.image_positions] = True
        return mask

    def sum_rule_residual(self) -> np.ndarray:
        """values - (sum of edges + unexplored + constant), per target row: ~0 for an exact graph."""
        return self.values - (self.adjacency.astype(np.float64).sum(1) + self.unexplored + self.constants)

    @property
    def n_images(self) -> int:
        """Images in the prompt (also when their pixels were not stored)."""
        cells = int(self.image_grid[:, 0].max()) + 1 if len(self.image_grid) else 0
        return max(len(self.images), len(self.image_grids), cells)

    def grids(self) -> list[tuple[int, int]]:
        """(rows, cols) of each image's soft-token grid: as recorded; for files from before grids
        were recorded, the square tokens_per_side grid, else the extent of the image's cells."""
        if self.image_grids:
            return [(int(r), int(c)) for r, c in self.image_grids]
        n = self.n_images
        if self.tokens_per_side:
            return [(int(self.tokens_per_side),) * 2] * n
        out = [(0, 0)] * n
        for image, row, col in self.image_grid.tolist():
            out[image] = (max(out[image][0], row + 1), max(out[image][1], col + 1))
        return out

    def grid_text(self) -> str:
        """'8x8' for one grid or several equal ones, else '8x8 + 4x6' (rows x cols per image)."""
        return grids_text(self.grids())

    def image_cell(self, pos: int) -> tuple[int, int, int] | None:
        """(image, row, column) of an image soft-token position, None for text positions."""
        hit = np.flatnonzero(self.image_positions == pos)
        return tuple(int(x) for x in self.image_grid[hit[0]]) if len(hit) else None

    def position_text(self, pos: int) -> str:
        """A short display string for a position: its token, or its image cell."""
        cell = self.image_cell(int(pos))
        if cell is not None:
            return f"[img{cell[0]} {cell[1]},{cell[2]}]" if self.n_images > 1 else f"[img {cell[1]},{cell[2]}]"
        tok = self.tokens[pos] if 0 <= pos < len(self.tokens) else "?"
        return repr(tok)[1:-1] if tok.strip() != tok or not tok else tok

    def node_label(self, index: int) -> str:
        kind = self.node_kind(index)
        if kind == FEATURE:
            layer, pos, feat = self.features[index]
            if self.kind == ATTENTION_GRAPH:  # a node is the residual stream there, not a feature
                return f"resid L{layer} @{pos} {self.position_text(pos)}"
            return f"L{layer} #{feat} @{pos} {self.position_text(pos)}"
        if kind == ERROR:
            layer, pos = self.errors[index - self.error_offset]
            return f"error L{layer} @{pos} {self.position_text(pos)}"
        if kind == EMBEDDING:
            pos = index - self.embedding_offset
            cell = self.image_cell(pos)
            if cell is not None:
                return f"image{cell[0]} patch ({cell[1]},{cell[2]}) @{pos}"
            return f"{self.position_text(pos)} @{pos}"
        target = self.targets[index - self.logit_offset]
        return f"logit {target.label!r} ({target.probability_text()})"

    def validate(self) -> None:
        """Raise GraphFormatError if the arrays do not fit together, or if a field has the wrong
        type or a size beyond tracer.limits (a hostile file must not make a reader allocate)."""
        from tracer.graph.errors import GraphFormatError
        from tracer import limits

        def need(cond: bool, what: str):
            if not cond:
                raise GraphFormatError(what)

        def integer(x) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))

        def array(name: str, kind: str) -> np.ndarray:
            a = getattr(self, name)
            need(isinstance(a, np.ndarray), f"{name} must be an array, not {type(a).__name__}")
            ok = np.issubdtype(a.dtype, np.integer) if kind == "int" else np.issubdtype(a.dtype, np.floating)
            need(ok, f"{name} must hold {'integers' if kind == 'int' else 'floating-point numbers'}, not {a.dtype}")
            return a

        for name in ("input_ids", "features", "errors", "image_positions", "image_grid"):
            array(name, "int")
        for name in ("activations", "adjacency", "values", "constants", "unexplored"):
            array(name, "float")
        need(isinstance(self.prompt, str), "prompt must be a string")
        need(isinstance(self.tokens, list) and all(isinstance(t, str) for t in self.tokens),
             "tokens must be a list of strings")
        for name in ("n_layers", "tokens_per_side", "prefix_length"):
            need(integer(getattr(self, name)), f"{name} must be an integer, not {getattr(self, name)!r:.40}")
        need(0 <= self.n_layers <= limits.MAX_LAYERS, f"n_layers = {self.n_layers} is outside 0..{limits.MAX_LAYERS}")
        need(self.input_ids.ndim == 1, "input_ids must be 1-D")
        need(self.n_positions <= limits.MAX_POSITIONS,
             f"{self.n_positions} positions is more than the limit of {limits.MAX_POSITIONS}")
        need(len(self.tokens) == self.n_positions, "tokens and input_ids differ in length")
        need(0 <= self.prefix_length <= self.n_positions, f"prefix_length {self.prefix_length} is outside the prompt")
        need(isinstance(self.targets, list) and all(isinstance(t, Target) for t in self.targets),
             "targets must be a list of targets")
        for t in self.targets:
            need(isinstance(t.label, str) and integer(t.token_id) and isinstance(t.probability, (int, float))
                 and isinstance(t.kind, str) and isinstance(t.spec, dict),
                 f"target {t.label!r:.40} has a field of the wrong type")
            need(-1 <= t.token_id < 2 ** 31, f"target {t.label!r:.40}: token id {t.token_id:.3g} is out of range")
            need(math.isfinite(t.probability), f"target {t.label!r:.40}: probability {t.probability} is not a number")
        need(self.features.ndim == 2 and self.features.shape[1] == 3, "features must be (n, 3): layer, position, feature")
        need(self.activations.shape == (self.n_features,), "activations must have one value per feature")
        need(self.errors.ndim == 2 and self.errors.shape[1] == 2, "errors must be (n, 2): layer, position")
        need(self.n_nodes <= limits.MAX_NODES, f"{self.n_nodes} nodes is more than the limit of {limits.MAX_NODES}")
        n_rows = self.n_features + self.n_logits
        need(self.adjacency.shape == (n_rows, self.n_nodes),
             f"adjacency has shape {self.adjacency.shape}, expected {(n_rows, self.n_nodes)}")
        for name in ("values", "constants", "unexplored"):
            need(getattr(self, name).shape == (n_rows,), f"{name} must have one value per target row")
        if self.n_features:
            need(int(self.features[:, 0].min()) >= 0 and int(self.features[:, 0].max()) < self.n_layers,
                 "feature layer out of range")
            need(int(self.features[:, 1].min()) >= 0 and int(self.features[:, 1].max()) < self.n_positions,
                 "feature position out of range")
        if self.n_errors:
            need(int(self.errors[:, 0].min()) >= 0 and int(self.errors[:, 0].max()) < self.n_layers,
                 "error layer out of range")
            need(int(self.errors[:, 1].min()) >= 0 and int(self.errors[:, 1].max()) < self.n_positions,
                 "error position out of range")
        self._validate_images(need)
        for name in ("feature_position_activations", "top_logit_ids", "top_logit_values", "bottom_logit_ids",
                     "bottom_logit_values"):
            a = getattr(self, name)
            if a is None:
                continue
            need(isinstance(a, np.ndarray) and a.ndim == 2 and a.shape[0] == self.n_features,
                 f"{name} must have one row per feature")
            if name == "feature_position_activations":
                need(a.shape[1] == self.n_positions, f"{name} must have one column per position")
        need(isinstance(self.vocab, dict), "vocab must map token ids to strings")
        for name in ("model", "transcoders", "scan", "slug"):
            need(isinstance(getattr(self, name), str), f"{name} must be a string")
        for name in ("config", "scores", "info"):
            need(isinstance(getattr(self, name), dict), f"{name} must be an object")
        need(all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                 for v in self.scores.values()), "scores must be finite numbers")
        if self.n_features:
            lowest = -1 if self.kind == ATTENTION_GRAPH else 0  # an attention graph's residual nodes are feature -1
            need(int(self.features[:, 2].min()) >= lowest and int(self.features[:, 2].max()) < 2 ** 31,
                 f"feature index out of range ({lowest} .. 2^31 - 1)")
        # one pass: NaN makes the maximum NaN; edges near float32's limit would overflow the row sums
        peak = float(np.abs(self.adjacency).max()) if self.adjacency.size else 0.0
        need(math.isfinite(peak), "adjacency holds NaN or infinite values")
        need(peak < MAX_EDGE, f"adjacency holds an edge of {peak:.3g}, beyond the limit of {MAX_EDGE:.0e}")
        need(bool(np.isfinite(self.activations).all()), "activations hold NaN or infinite values")
        # values and constants of an imported graph without sum-rule terms are NaN (info says so)
        if self.info.get("sum_rule_checkable", True) is not False:
            for name in ("values", "constants", "unexplored"):
                need(bool(np.isfinite(getattr(self, name)).all()), f"{name} hold NaN or infinite values")

    def _validate_images(self, need) -> None:
        from tracer import limits

        need(isinstance(self.images, list) and len(self.images) <= limits.MAX_IMAGES,
             f"images must be a list of at most {limits.MAX_IMAGES} images")
        for k, im in enumerate(self.images):
            need(isinstance(im, np.ndarray) and im.dtype == np.uint8 and im.ndim == 3 and im.shape[2] == 3,
                 f"image_{k} must be a uint8 (height, width, 3) array, not "
                 f"{getattr(im, 'dtype', type(im).__name__)} {list(getattr(im, 'shape', []))}")
            h, w = im.shape[:2]
            need(0 < h <= limits.MAX_SIDE and 0 < w <= limits.MAX_SIDE and h * w <= limits.MAX_PIXELS,
                 f"image_{k} is {w}x{h} pixels (limit {limits.MAX_SIDE} per side, {limits.MAX_PIXELS:,} in all)")
        need(self.image_positions.ndim == 1, "image_positions must be 1-D")
        need(self.image_grid.ndim == 2 and self.image_grid.shape[1] == 3,
             "image_grid must be (n, 3): image, row, column")
        need(len(self.image_positions) == len(self.image_grid), "image_positions and image_grid differ in length")
        need(0 <= self.tokens_per_side <= limits.MAX_GRID_SIDE,
             f"tokens_per_side = {self.tokens_per_side} is outside 0..{limits.MAX_GRID_SIDE}")
        need(isinstance(self.image_grids, list) and len(self.image_grids) <= limits.MAX_IMAGES,
             f"image_grids must be a list of at most {limits.MAX_IMAGES} (rows, cols) pairs")
        for k, g in enumerate(self.image_grids):
            need(isinstance(g, (list, tuple)) and len(g) == 2 and all(
                isinstance(x, (int, np.integer)) and not isinstance(x, bool) and 0 < x <= limits.MAX_GRID_SIDE
                for x in g), f"image_grids[{k}] must be (rows, cols), each 1..{limits.MAX_GRID_SIDE}, not {g!r:.40}")
        need(not self.images or not self.image_grids or len(self.image_grids) == len(self.images),
             f"{len(self.image_grids)} image grids for {len(self.images)} images")
        if not len(self.image_positions):
            return
        need(int(self.image_positions.min()) >= 0 and int(self.image_positions.max()) < self.n_positions,
             "image position out of range")
        need(len(np.unique(self.image_positions)) == len(self.image_positions), "an image position appears twice")
        n_images = len(self.images) or len(self.image_grids) or limits.MAX_IMAGES
        image, row, col = self.image_grid.T
        need(int(image.min()) >= 0 and int(image.max()) < n_images,
             f"image_grid names image {int(image.max())}, but the graph has {len(self.images)} images")
        need(int(min(row.min(), col.min())) >= 0, "image_grid holds a negative row or column")
        if self.image_grids:
            rows, cols = np.asarray(self.image_grids, np.int64).T[:, image]
        else:
            rows = cols = np.full(len(image), self.tokens_per_side or limits.MAX_GRID_SIDE)
        bad = np.flatnonzero((row >= rows) | (col >= cols))[:1]
        need(not len(bad), f"image_grid cell ({int(row[bad].sum())}, {int(col[bad].sum())}) of image "
                           f"{int(image[bad].sum())} is outside its {int(rows[bad].sum())}x{int(cols[bad].sum())} grid")


def grids_text(grids) -> str:
    """'8x8' for one grid or several equal ones, else '8x8 + 4x6' (rows x cols per image)."""
    texts = [f"{r}x{c}" for r, c in grids]
    return "none" if not texts else texts[0] if len(set(texts)) == 1 else " + ".join(texts)


def grid_cells(grids) -> list[tuple[int, int, int]]:
    """(image, row, col) of every soft token, image after image, each row-major: the order a
    VLM lays its images' soft tokens out in the sequence."""
    return [(k, r, c) for k, (rows, cols) in enumerate(grids) for r in range(rows) for c in range(cols)]


def square_side(grids) -> int:
    """The side shared by square grids (what tokens_per_side meant before grids were recorded),
    else 0."""
    sides = {(int(r), int(c)) for r, c in grids}
    return next(iter(sides))[0] if len(sides) == 1 and len(set(next(iter(sides)))) == 1 else 0


def carrier_layers(graph: "Graph", target_node: int, source_node: int) -> range:
    """The layers whose heads can lie on a path source -> target (node indices of graph): after
    a feature's or error's own layer (it writes after its layer's attention), from layer 0 for an
    embedding, up to a feature target's layer (it reads after its layer's attention) or the last
    layer for a logit. Empty, e.g., for a last-layer feature into a logit: no head carries that.
    (tracer.attention.heads_for_edge removes these layers' heads; here, without torch, so the
    explorer can tell before it asks.)"""
    kinds = graph.node_kind(source_node), graph.node_kind(target_node)
    if kinds[0] == LOGIT or kinds[1] not in (FEATURE, LOGIT):
        raise ValueError("an edge runs from a feature, error or embedding node into a feature or logit node")
    if kinds[0] == FEATURE:
        low = int(graph.features[source_node][0]) + 1
    elif kinds[0] == ERROR:
        low = int(graph.errors[source_node - graph.error_offset][0]) + 1
    else:
        low = 0
    high = graph.n_layers - 1 if kinds[1] == LOGIT else int(graph.features[target_node][0])
    return range(low, high + 1)
