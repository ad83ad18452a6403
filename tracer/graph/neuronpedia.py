"""The circuit-tracer / Neuronpedia graph JSON (schema_version 1): export and import.

File layout (what circuit-tracer's `create_graph_files` writes and Neuronpedia's graph viewer
reads; see docs/design.md §5)::

    <out>/<slug>.json           {metadata, qParams, nodes, links}
    <out>/graph-metadata.json   {"graphs": [metadata, ...]}   one entry per slug

Node ids and fields
-------------------
==========  =====================================  ===========  ===========================
kind        node_id                                layer        feature
==========  =====================================  ===========  ===========================
feature     ``{layer}_{feature_index}_{pos}``      ``"layer"``  cantor(layer, feature_index)
error       ``{layer}_-1_{pos}``                   ``"layer"``  -1
embedding   ``E_{token_id}_{pos}``                 ``"E"``      pos
logit       ``{n_layers+1}_{token_id}_{pos}``      n_layers+1   token_id
==========  =====================================  ===========  ===========================

As in circuit-tracer, the node id of a feature carries the raw feature index (what Neuronpedia
pins, e.g. ``27_22605_10``) and the ``feature`` field the Cantor pairing
``cantor(a, b) = (a+b)(a+b+1)/2 + b`` of (layer, feature index). Error nodes are written with
the collision-free id ``{layer}_-1_{pos}``; the older ``0_{layer}_{pos}`` form (which collides with
layer-0 features) is still read. ``influence`` is circuit-tracer's cumulative influence share
(the share of total influence held by the nodes at least as influential as this one, in
(0, 1]; smaller = more important; ``null`` for logits), ``activation`` the feature activation
(``null`` for other nodes). Link ``weight`` = A[target, source].

Our extensions (extra keys, which Neuronpedia and circuit-tracer ignore)
-----------------------------------------------------------------------
Nodes:
  * ``image_cell: [image, row, col]`` on embedding nodes at image soft-token positions, and
    ``token_id`` on every embedding node.
  * ``influence_raw``: the node's un-normalised influence on the logits.
  * ``value``, ``constant``, ``unexplored`` on feature and logit nodes: the sum-rule terms
    (only when the graph has them).
  * logits: ``target_label``, ``target_kind`` (``"token"`` or ``"direction"``), ``target_spec``.
Metadata ``vlm`` (an object): format and version, ``n_layers``, ``input_ids``, ``tokens``,
``prefix_length``, ``tokens_per_side`` (the side of a square grid all images share, else 0),
``image_grids`` ([rows, cols] per image), ``image_positions``, ``image_grid`` ([image, row, col] per
image position), ``images`` (PNG data URIs), ``targets``, ``model``, ``transcoders``, ``scores``,
``config``, ``pruned`` (whether nodes or edges were left out), ``edge_threshold``,
``virtual_token_offset``.

Custom direction targets
------------------------
A target that is a direction in the unembedding space (``token_id == -1``, e.g. "red" minus
"blue") has no vocabulary index. Following circuit-tracer's "virtual index" convention for
targets that are not single tokens, direction k (counting directions in target order) is written
with the virtual token id ``virtual_token_offset + k``, where the offset is the vocabulary size
when the graph records one (``config["vocab_size"]`` or ``info["vocab_size"]``) and ``2**24``
otherwise (larger than any real vocabulary). Its clerp is ``Output "red - blue" (p=0.000)``
and the node carries ``target_kind: "direction"`` and the ``target_spec``; the import maps it
back to a ``Target`` with ``token_id == -1``.

Import
------
`json_to_graph` rebuilds a Graph from what the JSON holds: the nodes present (an exported,
pruned graph has only some features and errors), and the links as adjacency entries. The
viewer state (``qParams.pinnedIds``, ``qParams.supernodes`` and the nodes' clerps) goes into
``graph.info["annotations"]`` by node index, from which the explorer restores its pins,
supernodes and labels. Target
values, constant terms and unexplored mass are restored only from our own unpruned exports;
otherwise they are NaN and ``graph.info["sum_rule_checkable"]`` is False.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from tracer import limits
from tracer.files import atomic_write_text
from tracer.graph.errors import GraphFormatError
from tracer.graph.graph import Graph, Target, square_side

SCHEMA_VERSION = 1
FORMAT = "vlm-circuits-neuronpedia-extension"
FORMAT_VERSION = 1
METADATA_FILE = "graph-metadata.json"
DEFAULT_VIRTUAL_OFFSET = 2**24

FEATURE_TYPE = "cross layer transcoder"
ERROR_TYPE = "mlp reconstruction error"
EMBEDDING_TYPE = "embedding"
LOGIT_TYPE = "logit"
FEATURE_TYPES = (FEATURE_TYPE, ERROR_TYPE, EMBEDDING_TYPE, LOGIT_TYPE)
# Other spellings seen in the wild for transcoder features (per-layer transcoders, SAEs).
_FEATURE_ALIASES = {FEATURE_TYPE, "transcoder", "per layer transcoder", "feature", "sae"}


# ----------------------------------------------------------------------------------- ids
def cantor(a: int, b: int) -> int:
    """Cantor pairing of two non-negative integers."""
    a, b = int(a), int(b)
    return (a + b) * (a + b + 1) // 2 + b


def cantor_unpair(z: int) -> tuple[int, int]:
    """Inverse of `cantor`: (a, b)."""
    z = int(z)
    if z < 0:
        raise ValueError("cantor_unpair needs a non-negative integer")
    w = (math.isqrt(8 * z + 1) - 1) // 2
    b = z - w * (w + 1) // 2
    return w - b, b


def feature_node_id(layer: int, feature: int, pos: int) -> str:
    return f"{int(layer)}_{int(feature)}_{int(pos)}"


def error_node_id(layer: int, pos: int) -> str:
    return f"{int(layer)}_-1_{int(pos)}"


def embedding_node_id(token_id: int, pos: int) -> str:
    return f"E_{int(token_id)}_{int(pos)}"


def logit_node_id(n_layers: int, token_id: int, pos: int) -> str:
    return f"{int(n_layers) + 1}_{int(token_id)}_{int(pos)}"


def virtual_token_offset(graph: Graph) -> int:
    for source in (graph.config, graph.info):
        v = source.get("vocab_size") if isinstance(source, dict) else None
        if isinstance(v, (int, np.integer)) and v > 0:
            return int(v)
    return DEFAULT_VIRTUAL_OFFSET


def node_ids(graph: Graph) -> list[str]:
    """The JSON node id of every node of the graph, in graph node order."""
    ids = [feature_node_id(l, f, p) for l, p, f in graph.features.tolist()]
    ids += [error_node_id(l, p) for l, p in graph.errors.tolist()]
    ids += [embedding_node_id(t, p) for p, t in enumerate(graph.input_ids.tolist())]
    pos = graph.n_positions - 1
    ids += [logit_node_id(graph.n_layers, t, pos) for t in _target_token_ids(graph)]
    return ids


def _target_token_ids(graph: Graph) -> list[int]:
    offset = virtual_token_offset(graph)
    out, k = [], 0
    for t in graph.targets:
        if t.token_id is None or int(t.token_id) < 0:
            out.append(offset + k)
            k += 1
        else:
            out.append(int(t.token_id))
    return out


def cumulative_influence(influence: np.ndarray) -> np.ndarray:
    """circuit-tracer's node 'influence' field: for each node, the share of total influence held
    by the nodes at least as influential (sorted descending, cumulative sum / total)."""
    influence = np.asarray(influence, dtype=np.float64)
    out = np.zeros_like(influence)
    total = influence.sum()
    if influence.size == 0 or total <= 0:
        return out
    order = np.argsort(-influence, kind="stable")
    out[order] = np.cumsum(influence[order]) / total
    return out


# ----------------------------------------------------------------------------------- images
def image_to_data_uri(image: np.ndarray) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def data_uri_to_image(uri: str) -> np.ndarray:
    from tracer.images import ImageError, open_image

    m = re.match(r"data:image/[a-zA-Z0-9.+-]+;base64,(.*)$", uri if isinstance(uri, str) else "", re.S)
    if not m:
        raise GraphFormatError("an image in the graph JSON is not a base64 data URI")
    try:
        return np.asarray(open_image(base64.b64decode(m.group(1))), dtype=np.uint8)
    except ImageError as err:  # decode problems and decompression bombs
        raise GraphFormatError(f"an image in the graph JSON: {str(err).removeprefix('the uploaded image: ')}") from err
    except Exception as err:  # noqa: BLE001 - any decode problem is a format problem
        raise GraphFormatError(f"an image in the graph JSON cannot be decoded ({type(err).__name__})") from err


# ----------------------------------------------------------------------------------- export
def safe_slug(slug: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "-", str(slug)).strip("-.")
    return slug or "graph"


def _finite(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _resolve_masks(graph: Graph, pruned, node_mask, edge_mask):
    if pruned is not None:
        node_mask = pruned.node_mask if node_mask is None else node_mask
        edge_mask = pruned.edge_mask if edge_mask is None else edge_mask
    n_rows = graph.n_features + graph.n_logits
    node_mask = np.ones(graph.n_nodes, bool) if node_mask is None else np.asarray(node_mask, bool)
    edge_mask = np.ones((n_rows, graph.n_nodes), bool) if edge_mask is None else np.asarray(edge_mask, bool)
    if node_mask.shape != (graph.n_nodes,):
        raise ValueError(f"node_mask has shape {node_mask.shape}, expected ({graph.n_nodes},)")
    if edge_mask.shape != (n_rows, graph.n_nodes):
        raise ValueError(f"edge_mask has shape {edge_mask.shape}, expected {(n_rows, graph.n_nodes)}")
    return node_mask, edge_mask


def _kept_edges(graph: Graph, node_mask: np.ndarray, edge_mask: np.ndarray):
    """The edges to write, as (adjacency rows, source nodes, target nodes), and the nodes to write:
    features and errors that a kept non-zero edge touches, every embedding and logit."""
    from tracer.graph.pruning import row_nodes

    rows = row_nodes(graph)
    keep = edge_mask & (graph.adjacency != 0) & node_mask[None, :] & node_mask[rows][:, None]
    r_idx, src = np.nonzero(keep)
    dst = rows[r_idx]
    connected = np.zeros(graph.n_nodes, bool)
    connected[src] = True
    connected[dst] = True
    write = node_mask & connected
    write[graph.embedding_offset:] = True  # embeddings and logits always
    return r_idx, src, dst, write


def _label_lookup(labels, ids: list[str]) -> dict[int, str]:
    """Labels keyed by JSON node id or by graph node index -> {node index: label}."""
    if not labels:
        return {}
    index_of = {nid: i for i, nid in enumerate(ids)}
    out: dict[int, str] = {}
    for key, value in dict(labels).items():
        if value is None:
            continue
        if isinstance(key, (int, np.integer)) or (isinstance(key, str) and key.isdigit() and key not in index_of):
            k = int(key)
            if 0 <= k < len(ids):
                out[k] = str(value)
        elif key in index_of:
            out[index_of[key]] = str(value)
    return out


def graph_to_json(graph: Graph, pruned=None, *, node_mask=None, edge_mask=None, slug: str | None = None,
                  scan: str | list[str] | None = None, labels: dict | None = None,
                  supernodes: list[list[str]] | None = None, pinned_ids: list[str] | None = None,
                  clicked_id: str = "", link_type: str = "both", sg_pos: str = "",
                  node_threshold: float | None = None, edge_threshold: float | None = None,
                  include_images: bool = True, node_influence: np.ndarray | None = None) -> dict:
    """The viewer JSON of a graph (a dict ready for json.dump).

    `pruned` (a `tracer.graph.pruning.Pruned`) or explicit `node_mask` (n_nodes,) and
    `edge_mask` (rows as graph.adjacency) choose what goes in; with neither, every node and every
    non-zero edge. As in circuit-tracer, embedding and logit nodes are always written, and feature
    and error nodes only when a kept edge touches them. `labels` maps node ids (or graph node
    indices) to clerps (defaults to graph.info["clerps"]); `supernodes` are Neuronpedia's
    ``[[label, node_id, ...], ...]`` (or ``{"label", "members"}`` dicts) and `pinned_ids` a list;
    members and pinned ids may be JSON node ids or graph node indices.
    """
    from tracer.graph.pruning import node_influence as compute_influence

    graph.validate()
    node_mask, edge_mask = _resolve_masks(graph, pruned, node_mask, edge_mask)
    if node_influence is None:
        node_influence = pruned.node_influence if pruned is not None else compute_influence(graph)
    node_influence = np.asarray(node_influence, dtype=np.float64)
    cum = cumulative_influence(node_influence)
    ids = node_ids(graph)
    if len(set(ids)) != len(ids):
        raise GraphFormatError("two nodes of the graph map to the same JSON node id")
    if labels is None:
        labels = graph.info.get("clerps") if isinstance(graph.info.get("clerps"), dict) else None
    label_of = _label_lookup(labels, ids)
    if node_threshold is None:
        node_threshold = pruned.node_threshold if pruned is not None else graph.config.get("node_threshold")
    if edge_threshold is None:
        edge_threshold = pruned.edge_threshold if pruned is not None else graph.config.get("edge_threshold")

    # edges
    r_idx, src, dst, write = _kept_edges(graph, node_mask, edge_mask)
    weights = graph.adjacency[r_idx, src].astype(np.float64)
    kinds = graph.node_kinds()

    # nodes
    n_pos = graph.n_positions
    image_cell = {int(p): [int(i), int(r), int(c)] for p, (i, r, c) in zip(graph.image_positions.tolist(),
                                                                          graph.image_grid.tolist())}
    target_ids = _target_token_ids(graph)
    has_sum_terms = bool(np.isfinite(graph.values).all() and np.isfinite(graph.constants).all())
    nodes: list[dict[str, Any]] = []
    for i in np.flatnonzero(write).tolist():
        kind = kinds[i]
        influence = _finite(cum[i])
        if kind == "feature":
            layer, pos, feat = (int(x) for x in graph.features[i])
            node = _node(ids[i], cantor(layer, feat), str(layer), pos, FEATURE_TYPE, n_pos,
                         js=f"{layer}_{feat}-0", influence=influence,
                         activation=_finite(graph.activations[i]))
        elif kind == "error":
            layer, pos = (int(x) for x in graph.errors[i - graph.error_offset])
            node = _node(ids[i], -1, str(layer), pos, ERROR_TYPE, n_pos, js=f"{layer}_-1-{pos}", influence=influence)
        elif kind == "embedding":
            pos = i - graph.embedding_offset
            tok = int(graph.input_ids[pos])
            node = _node(ids[i], pos, "E", pos, EMBEDDING_TYPE, n_pos, js=f"E_{tok}-{pos}", influence=influence)
            node["token_id"] = tok
            if pos in image_cell:
                node["image_cell"] = image_cell[pos]
                img, r, c = image_cell[pos]
                node["clerp"] = f"image {img} cell ({r},{c})"
        else:
            k = i - graph.logit_offset
            t = graph.targets[k]
            tok = target_ids[k]
            p = float(max(t.probability, 0.0))
            node = _node(ids[i], tok, str(graph.n_layers + 1), n_pos - 1, LOGIT_TYPE, n_pos,
                         js=f"L_{tok}-{n_pos - 1}", influence=None)
            node.update(token_prob=p, is_target_logit=(k == 0), clerp=f'Output "{t.label}" (p={p:.3f})',
                        target_label=t.label, target_kind=t.kind if t.token_id >= 0 else "direction")
            if t.spec:
                node["target_spec"] = t.spec
        if i in label_of:
            node["clerp"] = label_of[i]
        raw = _finite(node_influence[i])
        if raw is not None and kind != "logit":
            node["influence_raw"] = raw
        row = graph.row_of_node(i)
        if row is not None and has_sum_terms:
            node["value"] = float(graph.values[row])
            node["constant"] = float(graph.constants[row])
            node["unexplored"] = float(graph.unexplored[row])
        nodes.append(node)

    links = [{"source": ids[s], "target": ids[d], "weight": float(w)}
             for s, d, w in zip(src.tolist(), dst.tolist(), weights.tolist())]

    if isinstance(scan, list):
        digest = hashlib.sha1("-".join(str(s) for s in scan).encode()).hexdigest()[:12]
        transcoder_list, scan_name = [str(s) for s in scan], f"custom-{digest}"
    else:
        transcoder_list, scan_name = [], str(scan or graph.scan or graph.transcoders or "unknown")
    slug = safe_slug(slug or graph.slug or "graph")
    pruned_flag = bool((~node_mask).any() or (~edge_mask[graph.adjacency != 0]).any())
    vlm: dict[str, Any] = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "n_layers": int(graph.n_layers),
        "input_ids": [int(x) for x in graph.input_ids.tolist()],
        "tokens": list(graph.tokens),
        "prefix_length": int(graph.prefix_length),
        "tokens_per_side": int(graph.tokens_per_side or square_side(graph.grids())),
        "image_grids": [[int(r), int(c)] for r, c in graph.grids()],
        "image_positions": [int(x) for x in graph.image_positions.tolist()],
        "image_grid": [[int(v) for v in row] for row in graph.image_grid.tolist()],
        "n_images": len(graph.images),
        "targets": [t.to_dict() for t in graph.targets],
        "virtual_token_offset": virtual_token_offset(graph),
        "model": graph.model,
        "transcoders": graph.transcoders,
        "scores": {k: _finite(v) for k, v in graph.scores.items()},
        "config": _jsonable(graph.config),
        "pruned": pruned_flag,
        "edge_threshold": _finite(edge_threshold),
        "n_nodes_total": int(graph.n_nodes),
        "n_features_total": int(graph.n_features),
    }
    if include_images and graph.images:
        vlm["images"] = [image_to_data_uri(im) for im in graph.images]
    metadata = {
        "slug": slug,
        "scan": scan_name,
        "transcoder_list": transcoder_list,
        "prompt_tokens": list(graph.tokens),
        "prompt": graph.prompt,
        "node_threshold": _finite(node_threshold),
        "schema_version": SCHEMA_VERSION,
        "vlm": vlm,
    }
    def as_id(x) -> str:
        return ids[int(x)] if isinstance(x, (int, np.integer)) and 0 <= int(x) < len(ids) else str(x)

    groups = []
    for group in supernodes or []:
        if isinstance(group, dict):  # {"label": ..., "members": [...]}
            group = [group.get("label", "")] + list(group.get("members", []))
        group = list(group)
        groups.append([str(group[0])] + [as_id(x) for x in group[1:]] if group else [])
    qparams = {
        "pinnedIds": [as_id(x) for x in (pinned_ids or [])],
        "supernodes": groups,
        "linkType": link_type,
        "clickedId": str(clicked_id or ""),
        "sg_pos": str(sg_pos or ""),
    }
    return {"metadata": metadata, "qParams": qparams, "nodes": nodes, "links": links}


def _node(node_id: str, feature: int, layer: str, ctx_idx: int, feature_type: str, n_pos: int, *, js: str,
          influence: float | None = None, activation: float | None = None) -> dict[str, Any]:
    return {
        "node_id": node_id,
        "feature": int(feature),
        "layer": layer,
        "ctx_idx": int(ctx_idx),
        "feature_type": feature_type,
        "token_prob": 0.0,
        "is_target_logit": False,
        "run_idx": 0,
        "reverse_ctx_idx": 0,  # what circuit-tracer writes (its jsNodeIds use it too)
        "jsNodeId": js,
        "clerp": "",
        "influence": influence,
        "activation": activation,
    }


def _jsonable(obj):
    """A JSON-safe copy (numpy scalars and arrays to Python, non-finite floats to None)."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        return _finite(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def update_graph_metadata(out_dir: str | Path, metadata: dict) -> Path:
    """Add or replace (by slug) one graph's metadata in `<out_dir>/graph-metadata.json`, atomically.

    The entry written is the graph's metadata without our bulky ``vlm`` extension."""
    out_dir = Path(out_dir)
    path = out_dir / METADATA_FILE
    entry = {k: v for k, v in metadata.items() if k != "vlm"}
    graphs: list[dict] = []
    if path.exists():
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise GraphFormatError(f"{path}: exists but is not valid JSON ({err}); not overwriting it") from err
        if not isinstance(existing, dict) or not isinstance(existing.get("graphs", []), list):
            raise GraphFormatError(f"{path}: expected {{'graphs': [...]}}; not overwriting it")
        graphs = [g for g in existing.get("graphs", []) if isinstance(g, dict)]
    graphs = [g for g in graphs if g.get("slug") != entry.get("slug")] + [entry]
    atomic_write_text(path, json.dumps({"graphs": graphs}, indent=2))
    return path


def export_neuronpedia(graph: Graph, out_dir: str | Path, *, slug: str | None = None, prune: bool = True,
                       node_threshold: float = 0.8, edge_threshold: float = 0.98, pruned=None,
                       node_mask=None, edge_mask=None, validate: bool = True, **kwargs) -> Path:
    """Write `<out_dir>/<slug>.json` and update `<out_dir>/graph-metadata.json`; returns the JSON path.

    With `prune` (the default) and no masks given, the graph is pruned with
    `tracer.graph.pruning.prune(graph, node_threshold, edge_threshold)` first, as
    circuit-tracer's `create_graph_files` does. Other keyword arguments go to `graph_to_json`.
    """
    from tracer.graph.pruning import prune as prune_graph

    if pruned is None and node_mask is None and edge_mask is None and prune:
        pruned = prune_graph(graph, node_threshold, edge_threshold)
    data = graph_to_json(graph, pruned, node_mask=node_mask, edge_mask=edge_mask, slug=slug, **kwargs)
    if validate:
        validate_graph_json(data)
    out_dir = Path(out_dir)
    path = out_dir / f"{data['metadata']['slug']}.json"
    atomic_write_text(path, json.dumps(data, allow_nan=False))
    update_graph_metadata(out_dir, data["metadata"])
    return path


# ----------------------------------------------------------------------------------- schema
def schema_path() -> Path:
    return Path(__file__).resolve().parent / "schema" / "graph_schema.json"


def load_schema() -> dict:
    return json.loads(schema_path().read_text(encoding="utf-8"))


def validate_graph_json(data: dict) -> None:
    """Raise GraphFormatError if `data` does not follow the viewer JSON schema.

    Uses `jsonschema` (draft 2020-12) with tracer/graph/schema/graph_schema.json when it is
    installed; otherwise a built-in structural check of the required fields and types. Either way
    it also checks that every link's source and target is a node."""
    try:
        import jsonschema
    except ImportError:
        jsonschema = None
    if jsonschema is not None:
        validator = jsonschema.Draft202012Validator(load_schema())
        data_checked = data
        links = data.get("links") if isinstance(data, dict) else None
        if isinstance(links, list):
            # a link is three typed fields: checked here, since jsonschema takes ~0.1 ms per link
            # (100 s for the 800k links of a 4B-size graph); the schema still sees a few of them
            _check_links(links)
            data_checked = {**data_checked, "links": links[:_SCHEMA_LINKS]}
        nodes = data.get("nodes") if isinstance(data, dict) else None
        if isinstance(nodes, list) and len(nodes) > _SCHEMA_NODES:
            # our own writer's nodes (this validates what export_neuronpedia writes): the schema sees
            # an even sample and the first node of each kind; ids are checked for all below
            data_checked = {**data_checked, "nodes": _node_sample(nodes)}
        errors = sorted(validator.iter_errors(data_checked), key=lambda e: list(e.absolute_path))
        if errors:
            e = errors[0]
            where = "/".join(str(p) for p in e.absolute_path) or "(top level)"
            more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
            raise GraphFormatError(f"graph JSON does not match the schema at {where}: {e.message}{more}")
    else:
        _basic_check(data)
    ids = set()
    for n in data["nodes"]:
        if n["node_id"] in ids:
            raise GraphFormatError(f"graph JSON has the node id {n['node_id']!r} twice")
        ids.add(n["node_id"])
    for k, link in enumerate(data["links"]):
        for end in ("source", "target"):
            if link[end] not in ids:
                raise GraphFormatError(f"graph JSON link {k}: {end} {link[end]!r} is not a node")


_SCHEMA_LINKS = 64  # links the schema validator sees as well
_SCHEMA_NODES = 2000  # nodes it sees at most


def _node_sample(nodes: list) -> list:
    step = -(-len(nodes) // _SCHEMA_NODES)
    first_of_kind = {}
    for k, node in enumerate(nodes):
        kind = node.get("feature_type") if isinstance(node, dict) else None
        first_of_kind.setdefault(str(kind), k)
    return [nodes[k] for k in sorted(set(range(0, len(nodes), step)) | set(first_of_kind.values()))]


def _check_links(links: list) -> None:
    """What the schema requires of every link ($defs/link): an object with a string source and
    target and a numeric weight."""
    number = (int, float)
    for k, link in enumerate(links):
        try:
            if (type(link["source"]) is str and type(link["target"]) is str and type(link["weight"]) in number
                    and type(link) is dict):
                continue
        except (KeyError, TypeError, IndexError):
            pass
        if not isinstance(link, dict):
            what = "is not an object"
        elif not all(key in link for key in ("source", "target", "weight")):
            missing = [key for key in ("source", "target", "weight") if key not in link]
            what = f"lacks {', '.join(repr(key) for key in missing)}"
        elif not (isinstance(link["source"], str) and isinstance(link["target"], str)):
            what = "needs string source and target"
        elif not isinstance(link["weight"], number) or isinstance(link["weight"], bool):
            what = f"weight {str(link['weight'])[:40]!r} is not a number"
        else:
            continue  # a subclass of str / float: what the schema accepts too
        raise GraphFormatError(f"graph JSON does not match the schema at links/{k}: the link {what}")


def _basic_check(data) -> None:
    def need(cond, what):
        if not cond:
            raise GraphFormatError(f"graph JSON: {what}")

    need(isinstance(data, dict), "the top level must be an object")
    for key in ("metadata", "nodes", "links"):
        need(key in data, f"missing {key!r}")
    meta = data["metadata"]
    need(isinstance(meta, dict), "metadata must be an object")
    for key, typ in (("slug", str), ("scan", str), ("prompt_tokens", list), ("prompt", str)):
        need(isinstance(meta.get(key), typ), f"metadata.{key} must be a {typ.__name__}")
    need(isinstance(data["nodes"], list) and isinstance(data["links"], list), "nodes and links must be lists")
    for k, n in enumerate(data["nodes"]):
        need(isinstance(n, dict), f"nodes[{k}] must be an object")
        for key, typ in (("node_id", str), ("feature", int), ("layer", str), ("ctx_idx", int),
                         ("feature_type", str)):
            need(isinstance(n.get(key), typ) and not isinstance(n.get(key), bool),
                 f"nodes[{k}].{key} must be a {typ.__name__}")
    _check_links(data["links"])


# ----------------------------------------------------------------------------------- import
def _parse_id(node_id: str) -> list[str]:
    return str(node_id).split("_")


def _list(x) -> list:
    """A JSON list field, or [] when absent; anything else is refused."""
    if x is None:
        return []
    if not isinstance(x, list) or len(x) > limits.MAX_IMAGES:
        raise GraphFormatError(f"image_grids must be a list of at most {limits.MAX_IMAGES} [rows, cols] pairs")
    return x


def _int(x, what: str) -> int:
    try:
        return int(x)
    except (TypeError, ValueError, OverflowError) as err:
        raise GraphFormatError(f"graph JSON: {what} is not an integer ({x!r:.60})") from err


def _classify(node: dict) -> str:
    ftype = str(node.get("feature_type", "")).strip().lower()
    if ftype in _FEATURE_ALIASES:
        return "feature"
    if ftype == ERROR_TYPE or "error" in ftype:
        return "error"
    if ftype == EMBEDDING_TYPE or str(node.get("layer")) == "E":
        return "embedding"
    if ftype == LOGIT_TYPE:
        return "logit"
    raise GraphFormatError(f"graph JSON: node {node.get('node_id')!r} has unknown feature_type {ftype!r}")


def json_to_graph(data: dict, source: str = "") -> Graph:
    """A Graph from viewer JSON (ours or circuit-tracer's / Neuronpedia's)."""
    try:
        return _json_to_graph(data, source)
    except (TypeError, ValueError, KeyError, AttributeError, OverflowError) as err:
        if isinstance(err, GraphFormatError):
            raise
        where = f"{source}: " if source else ""
        raise GraphFormatError(f"{where}a field of the graph JSON has the wrong type or value "
                               f"({type(err).__name__}: {str(err)[:160]})") from err


def _json_to_graph(data: dict, source: str) -> Graph:
    where = f"{source}: " if source else ""
    try:
        _basic_check(data)
    except GraphFormatError as err:
        raise GraphFormatError(f"{where}{err}") from None
    meta = data["metadata"]
    vlm = meta.get("vlm") if isinstance(meta.get("vlm"), dict) else {}
    tokens = [str(t) for t in (vlm.get("tokens") or meta["prompt_tokens"])]
    n_pos = len(tokens)

    feats, errors, embeds, logits = [], [], {}, []
    for node in data["nodes"]:
        kind = _classify(node)
        nid = str(node["node_id"])
        parts = _parse_id(nid)
        pos = _int(node.get("ctx_idx"), f"ctx_idx of {nid}")
        if kind == "feature":
            if len(parts) != 3:
                raise GraphFormatError(f"{where}feature node id {nid!r} is not layer_feature_pos")
            layer = _int(parts[0], f"layer in {nid}")
            feat = _int(parts[1], f"feature in {nid}")
            act = node.get("activation")
            feats.append((layer, pos, feat, float(act) if act is not None else 0.0, nid, node))
        elif kind == "error":
            layer = node.get("layer")
            if layer is None or not str(layer).lstrip("-").isdigit():
                # old ids "0_{layer}_{pos}", new "{layer}_-1_{pos}"
                layer = parts[0] if len(parts) == 3 and parts[1] == "-1" else parts[1]
            errors.append((_int(layer, f"layer of {nid}"), pos, nid, node))
        elif kind == "embedding":
            tok = node.get("token_id")
            if tok is None:
                tok = parts[1] if len(parts) == 3 else -1
            embeds[pos] = (_int(tok, f"token id of {nid}"), nid, node)
        else:
            logits.append((nid, node))

    if n_pos == 0:
        n_pos = 1 + max([p for p in embeds] + [f[1] for f in feats] + [e[1] for e in errors] + [0])
        if n_pos > limits.MAX_POSITIONS:
            raise GraphFormatError(f"{where}a node at position {n_pos - 1}: more than {limits.MAX_POSITIONS} positions")
        tokens = [f"<{embeds[p][0]}>" if p in embeds else "" for p in range(n_pos)]
    if n_pos > limits.MAX_POSITIONS:
        raise GraphFormatError(f"{where}{n_pos} prompt tokens: more than {limits.MAX_POSITIONS} positions")
    for p in embeds:
        if not 0 <= p < n_pos:
            raise GraphFormatError(f"{where}embedding node at position {p}, but the prompt has {n_pos} tokens")

    # layers
    n_layers = vlm.get("n_layers")
    if n_layers is None:
        logit_layers = {int(n["layer"]) for _, n in logits if str(n.get("layer", "")).lstrip("-").isdigit()}
        if logit_layers:
            n_layers = max(logit_layers) - 1
        else:
            n_layers = 1 + max([f[0] for f in feats] + [e[0] for e in errors] + [0])
    n_layers = _int(n_layers, "metadata.vlm.n_layers")
    if not 0 <= n_layers <= limits.MAX_LAYERS:
        raise GraphFormatError(f"{where}n_layers = {n_layers} is outside 0..{limits.MAX_LAYERS}")

    ids_vlm = vlm.get("input_ids")
    if isinstance(ids_vlm, list) and len(ids_vlm) == n_pos:
        input_ids = np.asarray(ids_vlm, dtype=np.int64)
    else:
        input_ids = np.full(n_pos, -1, dtype=np.int64)
        for p, (tok, _, _) in embeds.items():
            input_ids[p] = tok

    # targets
    virtual = int(vlm.get("virtual_token_offset") or DEFAULT_VIRTUAL_OFFSET)
    vlm_targets = vlm.get("targets") if isinstance(vlm.get("targets"), list) else None
    targets: list[Target] = []
    for k, (nid, node) in enumerate(logits):
        if vlm_targets is not None and len(vlm_targets) == len(logits):
            targets.append(Target.from_dict(vlm_targets[k]))
            continue
        parts = _parse_id(nid)
        tok = _int(node.get("feature", parts[1] if len(parts) == 3 else -1), f"token of {nid}")
        prob = float(node.get("token_prob") or 0.0)
        label = node.get("target_label")
        if label is None:
            m = re.match(r'^Output "(.*)" \(p=[^)]*\)$', str(node.get("clerp", "")), re.S)
            label = m.group(1) if m else str(node.get("clerp") or tok)
        if node.get("target_kind") == "direction" or tok >= virtual:
            targets.append(Target(str(label), -1, prob, "direction", dict(node.get("target_spec") or {})))
        else:
            targets.append(Target(str(label), tok, prob))

    # node order and adjacency
    features = np.array([(l, p, f) for l, p, f, *_ in feats], dtype=np.int64).reshape(-1, 3)
    activations = np.array([a for *_, a, _, _ in feats], dtype=np.float32)
    errs = np.array([(l, p) for l, p, *_ in errors], dtype=np.int64).reshape(-1, 2)
    index: dict[str, int] = {}
    for i, f in enumerate(feats):
        index[f[4]] = i
    for i, e in enumerate(errors):
        index[e[2]] = len(feats) + i
    emb_off = len(feats) + len(errors)
    for p, (_, nid, _) in embeds.items():
        index[nid] = emb_off + p
    logit_off = emb_off + n_pos
    for k, (nid, _) in enumerate(logits):
        index[nid] = logit_off + k
    n_nodes = logit_off + len(logits)
    n_rows = len(feats) + len(logits)
    if n_rows * n_nodes > limits.MAX_EDGE_ENTRIES:
        raise GraphFormatError(f"{where}{n_nodes:,} nodes would need an edge matrix of {n_rows * n_nodes:,} entries "
                               f"(limit {limits.MAX_EDGE_ENTRIES:,})")
    limits.check_host_allocation(n_rows * n_nodes * 4, f"{where}the edge matrix of this graph")

    def row_of(i: int) -> int | None:
        if i < len(feats):
            return i
        if i >= logit_off:
            return len(feats) + i - logit_off
        return None

    adjacency = np.zeros((n_rows, n_nodes), dtype=np.float32)
    for k, link in enumerate(data["links"]):
        s, t = index.get(str(link["source"])), index.get(str(link["target"]))
        if s is None or t is None:
            missing = link["source"] if s is None else link["target"]
            raise GraphFormatError(f"{where}link {k} refers to node {missing!r}, which is not in the graph")
        r = row_of(t)
        if r is None:
            raise GraphFormatError(f"{where}link {k} targets {link['target']!r}, an error or embedding node "
                                   "(only features and logits have inputs)")
        adjacency[r, s] = float(link["weight"])

    # sum-rule terms: only from our own unpruned exports
    row_nodes = [f[5] for f in feats] + [n for _, n in logits]
    have_terms = (not vlm.get("pruned", True)) and all(
        isinstance(n.get("value"), (int, float)) and isinstance(n.get("constant"), (int, float)) for n in row_nodes)
    if have_terms:
        values = np.array([n["value"] for n in row_nodes], dtype=np.float64)
        constants = np.array([n["constant"] for n in row_nodes], dtype=np.float64)
        unexplored = np.array([float(n.get("unexplored") or 0.0) for n in row_nodes], dtype=np.float64)
    else:
        values = np.full(n_rows, np.nan)
        constants = np.full(n_rows, np.nan)
        unexplored = np.zeros(n_rows)

    # images
    image_positions = np.asarray(vlm.get("image_positions") or [], dtype=np.int64)
    image_grid = np.asarray(vlm.get("image_grid") or [], dtype=np.int64).reshape(-1, 3)
    if not len(image_positions):
        cells = sorted((p, n["image_cell"]) for p, (_, _, n) in embeds.items() if isinstance(n.get("image_cell"), list))
        image_positions = np.array([p for p, _ in cells], dtype=np.int64)
        image_grid = np.array([c for _, c in cells], dtype=np.int64).reshape(-1, 3)
    images = [data_uri_to_image(u) for u in (vlm.get("images") or [])]

    clerps = {}
    for node in data["nodes"]:
        c = node.get("clerp")
        if c and _classify(node) != "logit" and not (node.get("image_cell") and str(c).startswith("image ")):
            clerps[str(node["node_id"])] = str(c)
    info: dict[str, Any] = {
        "imported_from": "neuronpedia-json",
        "source": str(source),
        "sum_rule_checkable": bool(have_terms),
        "qParams": data.get("qParams", {}),
        "node_threshold": meta.get("node_threshold"),
        "json_node_ids": [f[4] for f in feats] + [e[2] for e in errors],
    }
    if clerps:
        info["clerps"] = clerps
    annotations = _imported_annotations(data.get("qParams"), clerps, index)
    if annotations:
        info["annotations"] = annotations
    if not have_terms:
        info["sum_rule"] = ("not checkable: the viewer JSON holds only the kept edges, without target values "
                            "or constant terms")
    graph = Graph(
        prompt=str(meta.get("prompt", "")), input_ids=input_ids, tokens=tokens, n_layers=n_layers,
        features=features, activations=activations, errors=errs, targets=targets, adjacency=adjacency,
        values=values, constants=constants, unexplored=unexplored, image_positions=image_positions,
        image_grid=image_grid, tokens_per_side=int(vlm.get("tokens_per_side") or 0), images=images,
        image_grids=[tuple(g) if isinstance(g, list) else g for g in _list(vlm.get("image_grids"))],
        prefix_length=int(vlm.get("prefix_length") or 0), model=str(vlm.get("model") or ""),
        transcoders=str(vlm.get("transcoders") or ""), scan=str(meta.get("scan", "")), slug=str(meta.get("slug", "")),
        config=dict(vlm.get("config") or {}),
        scores={k: float(v) for k, v in (vlm.get("scores") or {}).items() if isinstance(v, (int, float))},
        info=info,
    )
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{where}{err}") from None
    return graph


def _imported_annotations(qparams, clerps: dict[str, str], index: dict[str, int]) -> dict:
    """The viewer state a file carries, by graph node index: ``{"labels": [[index, clerp], ...],
    "pinned": [index, ...], "supernodes": [{"label", "members": [index, ...]}, ...]}`` (what the
    explorer's annotations hold; ids of nodes that are not in the file are left out)."""
    qparams = qparams if isinstance(qparams, dict) else {}
    labels = [[index[nid], text] for nid, text in clerps.items() if nid in index]
    pins = qparams.get("pinnedIds")
    pinned = list(dict.fromkeys(index[str(x)] for x in pins if str(x) in index)) if isinstance(pins, list) else []
    supernodes = []
    for group in qparams.get("supernodes") if isinstance(qparams.get("supernodes"), list) else []:
        if not isinstance(group, list) or len(group) < 2:
            continue
        members = list(dict.fromkeys(index[str(x)] for x in group[1:] if str(x) in index))
        if len(members) >= 2:  # a group of one node is no group
            supernodes.append({"label": str(group[0]), "members": members})
    if not (labels or pinned or supernodes):
        return {}
    return {"labels": labels, "pinned": pinned, "supernodes": supernodes}


def load_neuronpedia_json(path: str | Path) -> Graph:
    path = Path(path)
    if not path.is_file():
        raise GraphFormatError(f"{path}: no such file")
    try:  # parsed JSON takes several times the file's size
        limits.check_host_allocation(8 * path.stat().st_size, f"{path}: reading this graph JSON")
    except limits.InputError as err:
        raise GraphFormatError(str(err)) from None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise GraphFormatError(f"{path}: not a text file ({err})") from err
    except json.JSONDecodeError as err:
        raise GraphFormatError(f"{path}: not valid JSON ({err})") from err
    if isinstance(data, dict) and "graphs" in data and "nodes" not in data:
        raise GraphFormatError(f"{path}: this is a graph-metadata.json index, not a graph; open one of the "
                               "graphs it lists")
    return json_to_graph(data, source=str(path))


__all__ = [
    "SCHEMA_VERSION", "cantor", "cantor_unpair", "cumulative_influence", "export_neuronpedia", "graph_to_json",
    "json_to_graph", "load_neuronpedia_json", "load_schema", "node_ids", "update_graph_metadata",
    "validate_graph_json",
]
