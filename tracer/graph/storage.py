"""Our graph file: one safetensors file (tensors + JSON metadata), no pickle.

    <name>.graph.safetensors
      tensors:  input_ids, features, activations, errors, adjacency, values, constants,
                unexplored, image_positions, image_grid, image_<k> (uint8 H x W x 3),
                optional feature_position_activations, top/bottom_logit_ids/values
      metadata: {"vlm_circuits_graph": JSON}  with format version, prompt, tokens, targets,
                model and transcoder references, config, scores, info, vocab

Reading uses safetensors' numpy loader: no torch, no model, no code execution.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from tracer import limits
from tracer.errors import InputError
from tracer.files import atomic_path, read_safetensors_header
from tracer.graph.errors import GraphFormatError
from tracer.graph.graph import Graph, Target, square_side

SUFFIX = ".graph.safetensors"
FORMAT = "vlm-circuits-graph"
VERSION = 1
_META_KEY = "vlm_circuits_graph"
_REQUIRED = ("input_ids", "features", "activations", "errors", "adjacency", "values", "constants", "unexplored")
_OPTIONAL = ("feature_position_activations", "top_logit_ids", "top_logit_values", "bottom_logit_ids",
             "bottom_logit_values")


def save_graph(graph: Graph, path: str | Path) -> Path:
    """Write atomically (a crash mid-write leaves any previous file intact)."""
    graph.validate()
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        path = path.with_name(path.name + SUFFIX)
    tensors = {
        "input_ids": np.ascontiguousarray(graph.input_ids, np.int64),
        "features": np.ascontiguousarray(graph.features, np.int64).reshape(-1, 3),
        # float32 normally; float64 graphs (exactness runs) keep their precision
        "activations": np.ascontiguousarray(graph.activations, graph.stored_dtype),
        "errors": np.ascontiguousarray(graph.errors, np.int64).reshape(-1, 2),
        "adjacency": np.ascontiguousarray(graph.adjacency, graph.stored_dtype),
        "values": np.ascontiguousarray(graph.values, np.float64),
        "constants": np.ascontiguousarray(graph.constants, np.float64),
        "unexplored": np.ascontiguousarray(graph.unexplored, np.float64),
        "image_positions": np.ascontiguousarray(graph.image_positions, np.int64),
        "image_grid": np.ascontiguousarray(graph.image_grid, np.int64).reshape(-1, 3),
    }
    for name in _OPTIONAL:
        value = getattr(graph, name)
        if value is not None:  # activations in the graph's precision, the rest as they are
            dtype = graph.stored_dtype if name == "feature_position_activations" else None
            tensors[name] = np.ascontiguousarray(value, dtype)
    for k, image in enumerate(graph.images):
        tensors[f"image_{k}"] = np.ascontiguousarray(image, np.uint8)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "precision": graph.precision,
        "prompt": graph.prompt,
        "tokens": graph.tokens,
        "n_layers": graph.n_layers,
        "targets": [t.to_dict() for t in graph.targets],
        "tokens_per_side": graph.tokens_per_side or square_side(graph.grids()),  # for readers before image_grids
        "image_grids": [list(g) for g in graph.grids()],
        "prefix_length": graph.prefix_length,
        "n_images": len(graph.images),
        "vocab": {str(k): v for k, v in graph.vocab.items()},
        "model": graph.model,
        "transcoders": graph.transcoders,
        "scan": graph.scan,
        "slug": graph.slug,
        "config": graph.config,
        "scores": graph.scores,
        "info": graph.info,
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    return path


def _header(path: Path) -> tuple[dict, dict]:
    try:
        return read_safetensors_header(path)
    except InputError as err:
        raise GraphFormatError(f"{path}: not a graph file: {str(err).removeprefix(f'{path}: ')}") from None


def read_metadata(path: str | Path) -> dict:
    """Only the JSON metadata (cheap: reads the file header, not the tensors)."""
    path = Path(path)
    _, file_meta = _header(path)
    raw = file_meta.get(_META_KEY)
    if raw is None:
        raise GraphFormatError(f"{path}: a safetensors file, but not a vlm-circuits graph (no {_META_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise GraphFormatError(f"{path}: graph metadata is not valid JSON ({err})") from err
    if not isinstance(meta, dict):
        raise GraphFormatError(f"{path}: graph metadata must be a JSON object")
    if meta.get("format") != FORMAT:
        raise GraphFormatError(f"{path}: unknown graph format {str(meta.get('format'))[:80]!r}")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise GraphFormatError(f"{path}: graph format version must be an integer, not {version!r:.40}")
    if version > VERSION:
        raise GraphFormatError(f"{path}: graph format version {version} is newer than this tracer ({VERSION})")
    return meta


# metadata field -> the JSON types it may have (checked before anything is built from it)
_META_TYPES = {"prompt": str, "tokens": list, "n_layers": int, "targets": list, "tokens_per_side": int,
               "image_grids": list,
               "prefix_length": int, "n_images": int, "vocab": dict, "model": str, "transcoders": str, "scan": str,
               "slug": str, "config": dict, "scores": dict, "info": dict}
_TARGET_TYPES = {"label": str, "token_id": int, "probability": (int, float), "kind": str, "spec": dict}


def _check_meta(path: Path, meta: dict, tensors: dict) -> None:
    def need(cond: bool, what: str):
        if not cond:
            raise GraphFormatError(f"{path}: {what}")

    for key in ("prompt", "tokens", "n_layers", "targets"):
        need(key in meta, f"graph metadata lacks {key!r}")
    for key, typ in _META_TYPES.items():
        if key in meta:
            v = meta[key]
            need(isinstance(v, typ) and not isinstance(v, bool),
                 f"graph metadata field {key!r} must be {'an integer' if typ is int else 'a ' + typ.__name__}, "
                 f"not {type(v).__name__}")
    need(all(isinstance(t, str) for t in meta["tokens"]), "graph metadata 'tokens' must be strings")
    need(all(isinstance(k, str) and k.lstrip("-").isdigit() and isinstance(v, str)
             for k, v in meta.get("vocab", {}).items()), "graph metadata 'vocab' must map token ids to strings")
    for k, t in enumerate(meta["targets"]):
        need(isinstance(t, dict) and "label" in t, f"target {k} must be an object with a label")
        for key, typ in _TARGET_TYPES.items():
            need(key not in t or (isinstance(t[key], typ) and not isinstance(t[key], bool)),
                 f"target {k}: field {key!r} has the wrong type ({type(t.get(key)).__name__})")
    n_images = meta.get("n_images", 0)
    need(0 <= n_images <= limits.MAX_IMAGES and all(f"image_{k}" in tensors for k in range(n_images)),
         f"graph metadata declares {n_images} images, the file holds "
         f"{sum(1 for name in tensors if name.startswith('image_') and name[6:].isdigit())}")
    need(0 <= meta["n_layers"] <= limits.MAX_LAYERS, f"n_layers = {meta['n_layers']} is outside 0..{limits.MAX_LAYERS}")


def _check_sizes(path: Path, tensors: dict) -> None:
    """Refuse declared shapes beyond the limits before the tensors are read."""
    def need(cond: bool, what: str):
        if not cond:
            raise GraphFormatError(f"{path}: {what}")

    def shape(name):
        return tensors[name][1] if name in tensors else None

    ids = shape("input_ids")
    need(ids is None or (len(ids) == 1 and ids[0] <= limits.MAX_POSITIONS),
         f"input_ids of shape {list(ids or [])}: at most {limits.MAX_POSITIONS} positions")
    adj = shape("adjacency")
    need(adj is None or (len(adj) == 2 and adj[0] * adj[1] <= limits.MAX_EDGE_ENTRIES),
         f"adjacency of shape {list(adj or [])}: more than {limits.MAX_EDGE_ENTRIES:,} entries")
    for name, (_, shp, _) in tensors.items():
        if name.startswith("image_") and name[6:].isdigit():
            need(len(shp) == 3 and shp[2] == 3 and shp[0] * shp[1] <= limits.MAX_PIXELS,
                 f"{name} of shape {list(shp)} is not an (height, width, 3) image within {limits.MAX_PIXELS:,} pixels")
    total = sum(nbytes for _, _, nbytes in tensors.values())
    try:
        limits.check_host_allocation(total, f"{path}: reading this graph")
    except InputError as err:
        raise GraphFormatError(str(err)) from None


_DTYPES = {"input_ids": "int", "features": "int", "errors": "int", "image_positions": "int", "image_grid": "int",
           "top_logit_ids": "int", "bottom_logit_ids": "int", "activations": "float", "adjacency": "float",
           "values": "float", "constants": "float", "unexplored": "float", "feature_position_activations": "float",
           "top_logit_values": "float", "bottom_logit_values": "float"}


def _check_dtypes(path: Path, tensors: dict) -> None:
    for name, (dtype, _, _) in tensors.items():
        kind = "image" if name.startswith("image_") and name[6:].isdigit() else _DTYPES.get(name)
        ok = {"int": dtype in ("I8", "I16", "I32", "I64", "U8", "U16", "U32"), "float": dtype in ("F16", "F32", "F64"),
              "image": dtype == "U8", None: True}[kind]
        if not ok:
            want = {"int": "integers", "float": "float16/32/64", "image": "uint8 pixels"}[kind]
            raise GraphFormatError(f"{path}: tensor {name!r} is {dtype}, expected {want}")


def load_graph(path: str | Path) -> Graph:
    path = Path(path)
    if not path.is_file():
        raise GraphFormatError(f"{path}: no such graph file")
    tensors, _ = _header(path)
    meta = read_metadata(path)
    missing = [name for name in _REQUIRED if name not in tensors]
    if missing:
        raise GraphFormatError(f"{path}: missing tensors {missing}")
    _check_meta(path, meta, tensors)
    _check_dtypes(path, tensors)
    _check_sizes(path, tensors)
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise GraphFormatError(f"{path}: cannot read tensors ({err})") from err
    try:
        graph = Graph(
            prompt=meta["prompt"],
            input_ids=t["input_ids"],
            tokens=list(meta["tokens"]),
            n_layers=int(meta["n_layers"]),
            features=t["features"],
            activations=t["activations"],
            errors=t["errors"],
            targets=[Target.from_dict(d) for d in meta["targets"]],
            adjacency=t["adjacency"],
            values=t["values"],
            constants=t["constants"],
            unexplored=t["unexplored"],
            image_positions=t.get("image_positions", np.zeros(0, np.int64)),
            image_grid=t.get("image_grid", np.zeros((0, 3), np.int64)),
            tokens_per_side=int(meta.get("tokens_per_side", 0)),
            image_grids=[tuple(g) if isinstance(g, list) else g for g in meta.get("image_grids", [])],
            images=[t[f"image_{k}"] for k in range(int(meta.get("n_images", 0)))],
            prefix_length=int(meta.get("prefix_length", 0)),
            vocab={int(k): v for k, v in meta.get("vocab", {}).items()},
            model=meta.get("model", ""),
            transcoders=meta.get("transcoders", ""),
            scan=meta.get("scan", ""),
            slug=meta.get("slug", ""),
            config=meta.get("config", {}),
            scores=meta.get("scores", {}),
            info=meta.get("info", {}),
            **{name: t.get(name) for name in _OPTIONAL},
        )
    except (KeyError, TypeError, ValueError) as err:
        raise GraphFormatError(f"{path}: graph metadata lacks or mistypes {err}") from err
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{path}: {err}") from err
    return graph
