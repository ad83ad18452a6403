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

from tracer.files import atomic_path
from tracer.graph.errors import GraphFormatError
from tracer.graph.graph import Graph, Target

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
        "tokens_per_side": graph.tokens_per_side,
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


def read_metadata(path: str | Path) -> dict:
    """Only the JSON metadata (cheap: reads the file header, not the tensors)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            raw = (f.metadata() or {}).get(_META_KEY)
    except (SafetensorError, OSError, ValueError) as err:
        raise GraphFormatError(f"{path}: not a graph file ({err})") from err
    if raw is None:
        raise GraphFormatError(f"{path}: a safetensors file, but not a vlm-circuits graph (no {_META_KEY!r} metadata)")
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as err:
        raise GraphFormatError(f"{path}: graph metadata is not valid JSON ({err})") from err
    if meta.get("format") != FORMAT:
        raise GraphFormatError(f"{path}: unknown graph format {meta.get('format')!r}")
    if int(meta.get("version", 0)) > VERSION:
        raise GraphFormatError(f"{path}: graph format version {meta.get('version')} is newer than this tracer ({VERSION})")
    return meta


def load_graph(path: str | Path) -> Graph:
    path = Path(path)
    if not path.is_file():
        raise GraphFormatError(f"{path}: no such graph file")
    meta = read_metadata(path)
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise GraphFormatError(f"{path}: cannot read tensors ({err})") from err
    missing = [name for name in _REQUIRED if name not in t]
    if missing:
        raise GraphFormatError(f"{path}: missing tensors {missing}")
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
    except (KeyError, TypeError) as err:
        raise GraphFormatError(f"{path}: graph metadata lacks {err}") from err
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{path}: {err}") from err
    return graph
