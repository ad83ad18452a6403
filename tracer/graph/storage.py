"""Our graph file: one safetensors file (tensors + JSON metadata), no pickle.

    <name>.graph.safetensors
      tensors:  input_ids, features, activations, errors, adjacency (or its sparse form, below), values, constants,
                unexplored, image_positions, image_grid, image_<k> (uint8 H x W x 3),
                optional feature_position_activations, top/bottom_logit_ids/values
      metadata: {"vlm_circuits_graph": JSON}  with format version, prompt, tokens, targets,
                model and transcoder references, config, scores, info, vocab

Reading uses safetensors' numpy loader: no torch, no model, no code execution.

The edge matrix is mostly zeros (a feature reads only lower layers and earlier positions), and
its nonzeros come in a few long runs per row (columns are ordered by layer, then position). When
that is smaller it is stored as runs (format version 3): adjacency_shape (2,), adjacency_row_runs
(rows + 1, int64: where each row's runs start), adjacency_runs (runs, 2, int32: first column,
length) and adjacency_data (the nonzero values, row by row). Lossless. On request
(`save_graph(..., half=True)`, `attribute --half-edges`) the values are stored as float16 scaled
per row (adjacency_row_scale, float32: the row's largest magnitude): half the bytes again, each
edge off by at most 2^-12 (0.024%) of its row's largest edge, which the sum rule over thousands
of edges feels (up to ~5e-3 of a value on the toy); `verify` then uses its half-precision
tolerance (load_graph marks such graphs in graph.info["edges_stored_as"]).
Dense files (version 1, still written when runs would not be smaller) and compressed-sparse-row
files (version 2: adjacency_indptr, adjacency_indices) are read as before.
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
VERSION = 3  # the newest this reader understands; 2: sparse rows; 3: runs of columns
_DENSE_VERSION = 1  # files with a dense adjacency keep version 1, so older readers open them
SPARSE_FROM_BYTES = 1 << 20  # save_graph's default: a sparse adjacency from this dense size on, when smaller
_SPARSE = {2: ("adjacency_shape", "adjacency_indptr", "adjacency_indices", "adjacency_data"),
           3: ("adjacency_shape", "adjacency_row_runs", "adjacency_runs", "adjacency_data")}
EDGES_STORED_AS = "edges_stored_as"  # graph.info of a graph whose edges were read from float16: "float16"
_META_KEY = "vlm_circuits_graph"
_REQUIRED = ("input_ids", "features", "activations", "errors", "values", "constants", "unexplored")  # + adjacency
_OPTIONAL = ("feature_position_activations", "top_logit_ids", "top_logit_values", "bottom_logit_ids",
             "bottom_logit_values")


def save_graph(graph: Graph, path: str | Path, sparse: bool | None = None, half: bool = False) -> Path:
    """Write atomically (a crash mid-write leaves any previous file intact).

    sparse: store the edge matrix as runs of columns (True), dense (False), or (None) as runs
    when that is smaller and the dense matrix has at least SPARSE_FROM_BYTES.
    half: edge values as float16 scaled per row (see the module docstring): half the bytes, but no
    longer exact to float32 (verify then uses its half-precision tolerance). A float64 graph is
    never stored at half precision."""
    graph.validate()
    half = bool(half) and graph.precision == "float32"
    path = Path(path)
    if not path.name.endswith(SUFFIX):
        path = path.with_name(path.name + SUFFIX)
    tensors = {
        "input_ids": np.ascontiguousarray(graph.input_ids, np.int64),
        "features": np.ascontiguousarray(graph.features, np.int64).reshape(-1, 3),
        # float32 normally; float64 graphs (exactness runs) keep their precision
        "activations": np.ascontiguousarray(graph.activations, graph.stored_dtype),
        "errors": np.ascontiguousarray(graph.errors, np.int64).reshape(-1, 2),
        **encode_adjacency(graph.adjacency, graph.stored_dtype, sparse, half=half),
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
        "info": graph.info,  # a graph once read from float16 edges keeps saying so: its edges stay rounded
    }
    if "adjacency" in tensors:
        meta["version"] = _DENSE_VERSION
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={_META_KEY: json.dumps(meta)})
    return path


def encode_adjacency(adjacency: np.ndarray, dtype, sparse: bool | None = None, half: bool = False,
                     block: int = 1 << 22) -> dict:
    """The edge matrix's tensors as stored: {"adjacency": dense} or the runs (see the module
    docstring and save_graph). half: values as float16 scaled per row (runs only; sparse=None then
    means runs). Built a block of rows at a time."""
    A = np.asarray(adjacency)
    n_rows, n_cols = A.shape
    itemsize = 2 if half else np.dtype(dtype).itemsize
    nnz, n_runs = 0, 0
    step = max(1, block // max(1, n_cols))
    for s in range(0, n_rows, step):  # one pass to size the tensors
        mask = A[s:s + step] != 0
        nnz += int(mask.sum())
        n_runs += int(np.count_nonzero(mask[:, 1:] & ~mask[:, :-1]) + np.count_nonzero(mask[:, 0])) if n_cols else 0
    if sparse is None:  # small matrices stay dense: little to gain, and older readers open them
        dense = A.size * np.dtype(dtype).itemsize
        sparse = half or (dense >= SPARSE_FROM_BYTES and nnz * itemsize + 8 * n_runs + 8 * (n_rows + 1) < dense)
    if not sparse or n_cols >= 2 ** 31 - 1:
        return {"adjacency": np.ascontiguousarray(A, dtype)}  # dense: always in the graph's precision
    row_runs = np.zeros(n_rows + 1, np.int64)
    runs = np.empty((n_runs, 2), np.int32)
    data = np.empty(nnz, np.float16 if half else dtype)
    scale = np.zeros(n_rows, np.float32) if half else None
    at_run = at = 0
    for s in range(0, n_rows, step):
        part = A[s:s + step]
        mask = part != 0
        # a run starts where a nonzero follows a zero (or the row's start) and ends before the next zero
        edges = np.diff(mask.astype(np.int8), axis=1, prepend=0, append=0)
        r, first = np.nonzero(edges == 1)
        last = np.nonzero(edges == -1)[1]  # same rows, same order
        k = len(r)
        runs[at_run:at_run + k, 0] = first
        runs[at_run:at_run + k, 1] = last - first
        row_runs[s + 1:s + 1 + len(part)] = at_run + np.cumsum(np.bincount(r, minlength=len(part)))
        at_run += k
        values = part[mask]  # row-major: the runs' values in order
        if half:
            peak = np.abs(part).max(axis=1).astype(np.float32) if n_cols else np.zeros(len(part), np.float32)
            scale[s:s + len(part)] = peak
            rows = np.nonzero(mask)[0]
            values = values / np.where(peak > 0, peak, 1)[rows]
        data[at:at + len(values)] = values
        at += len(values)
    out = {"adjacency_shape": np.array([n_rows, n_cols], np.int64), "adjacency_row_runs": row_runs,
           "adjacency_runs": runs, "adjacency_data": data}
    if half:
        out["adjacency_row_scale"] = scale
    return out


def decode_adjacency(t: dict, path: Path, block: int = 1 << 22, shape: tuple[int, int] | None = None) -> np.ndarray:
    """The dense edge matrix from a file's tensors (any encoding), checked before it is filled.
    shape: the (rows, columns) the graph's nodes call for; a declared shape that differs is refused
    before anything is allocated."""
    if "adjacency" in t:
        return t["adjacency"]

    def need(cond: bool, what: str):
        if not cond:
            raise GraphFormatError(f"{path}: sparse adjacency: {what}")

    declared, data = t["adjacency_shape"], t["adjacency_data"]
    need(declared.shape == (2,) and bool((declared >= 0).all()),
         f"adjacency_shape must be two sizes, got {declared.tolist()[:4]}")
    n_rows, n_cols = int(declared[0]), int(declared[1])
    if shape is not None:
        need((n_rows, n_cols) == tuple(shape),
             f"adjacency_shape {n_rows:,} x {n_cols:,} does not fit the graph's nodes ({shape[0]:,} x {shape[1]:,})")
    need(n_rows * n_cols <= limits.MAX_EDGE_ENTRIES,
         f"adjacency_shape {n_rows:,} x {n_cols:,}: more than {limits.MAX_EDGE_ENTRIES:,} entries")
    need(data.ndim == 1, "adjacency_data must be one-dimensional")
    if "adjacency_runs" in t:
        pointer, runs = t["adjacency_row_runs"], t["adjacency_runs"]
        need(pointer.shape == (n_rows + 1,), f"adjacency_row_runs has {len(pointer)} entries, expected {n_rows + 1}")
        need(runs.ndim == 2 and runs.shape[1] == 2, f"adjacency_runs must be (runs, 2), got {list(runs.shape)}")
        need(pointer[0] == 0 and int(pointer[-1]) == len(runs) and bool((np.diff(pointer) >= 0).all()),
             "adjacency_row_runs and adjacency_runs do not agree")
        starts, lengths = runs[:, 0].astype(np.int64), runs[:, 1].astype(np.int64)
        ends = starts + lengths
        need(len(runs) == 0 or (int(starts.min()) >= 0 and int(lengths.min()) >= 1 and int(ends.max()) <= n_cols),
             f"a run of columns is empty or outside 0..{n_cols - 1}")
        # within a row, runs ascend and never overlap (a run starting a row may start anywhere)
        row_start = np.zeros(len(runs), bool)
        row_start[pointer[:-1][np.diff(pointer) > 0]] = True
        need(bool((row_start[1:] | (starts[1:] >= ends[:-1])).all()), "runs of a row overlap or are out of order")
        need(int(lengths.sum()) == len(data), "the runs do not cover adjacency_data")
        value_at = np.concatenate([[0], np.cumsum(lengths)])  # index in data of each run's first value
    else:
        pointer, indices = t["adjacency_indptr"], t["adjacency_indices"]
        need(pointer.shape == (n_rows + 1,), f"adjacency_indptr has {len(pointer)} entries, expected {n_rows + 1}")
        need(indices.ndim == 1 and len(indices) == len(data) == int(pointer[-1]) and pointer[0] == 0
             and bool((np.diff(pointer) >= 0).all()), "indptr, indices and data do not agree")
        need(len(indices) == 0 or (int(indices.min()) >= 0 and int(indices.max()) < n_cols),
             f"a column index is outside 0..{n_cols - 1}")
    scale = t.get("adjacency_row_scale")
    if scale is not None:
        need(scale.shape == (n_rows,) and bool(np.isfinite(scale).all()) and bool((scale >= 0).all()),
             f"adjacency_row_scale must be {n_rows} finite scales of at least 0")
    A = np.zeros((n_rows, n_cols), np.float32 if data.dtype == np.float16 else data.dtype)
    step = max(1, block // max(1, n_cols))
    for s in range(0, n_rows, step):
        e = min(n_rows, s + step)
        lo, hi = int(pointer[s]), int(pointer[e])
        if "adjacency_runs" in t:  # runs -> one column per value
            count = lengths[lo:hi]
            first = value_at[lo]
            columns = np.repeat(starts[lo:hi] - (value_at[lo:hi] - first), count) + np.arange(int(count.sum()))
            rows = np.repeat(np.repeat(np.arange(s, e), np.diff(pointer[s:e + 1])), count)
            lo, hi = int(first), int(value_at[hi])
        else:
            columns = indices[lo:hi]
            rows = np.repeat(np.arange(s, e), np.diff(pointer[s:e + 1]))
        values = data[lo:hi]
        if scale is not None:
            values = values.astype(np.float32) * scale[rows]
        A[rows, columns] = values
    return A


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


def _check_sizes(path: Path, tensors: dict, n_targets: int = 0) -> None:
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
    dense_bytes = 0
    pointer = shape("adjacency_row_runs") or shape("adjacency_indptr")
    if adj is None and pointer:
        # the dense matrix read back: rows from the row pointer, columns one per node (checked again once read)
        rows = pointer[0] - 1
        cols = sum((shape(name) or [0])[0] for name in ("features", "errors", "input_ids")) + n_targets
        need(rows * cols <= limits.MAX_EDGE_ENTRIES,
             f"sparse adjacency of {rows:,} rows x {cols:,} nodes: more than {limits.MAX_EDGE_ENTRIES:,} entries")
        dense_bytes = rows * cols * 8
    for name, (_, shp, _) in tensors.items():
        if name.startswith("image_") and name[6:].isdigit():
            need(len(shp) == 3 and shp[2] == 3 and shp[0] * shp[1] <= limits.MAX_PIXELS,
                 f"{name} of shape {list(shp)} is not an (height, width, 3) image within {limits.MAX_PIXELS:,} pixels")
    total = sum(nbytes for _, _, nbytes in tensors.values()) + dense_bytes
    try:
        limits.check_host_allocation(total, f"{path}: reading this graph")
    except InputError as err:
        raise GraphFormatError(str(err)) from None


_DTYPES = {"input_ids": "int", "features": "int", "errors": "int", "image_positions": "int", "image_grid": "int",
           "top_logit_ids": "int", "bottom_logit_ids": "int", "activations": "float", "adjacency": "float",
           "adjacency_shape": "int", "adjacency_indptr": "int", "adjacency_indices": "int", "adjacency_data": "float",
           "adjacency_row_runs": "int", "adjacency_runs": "int", "adjacency_row_scale": "float",
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
    if "adjacency" not in tensors:
        version = meta.get("version", 0)
        expected = _SPARSE[3 if "adjacency_runs" in tensors or version >= 3 else 2] if version >= 2 else ["adjacency"]
        missing += [name for name in expected if name not in tensors]
    if missing:
        raise GraphFormatError(f"{path}: missing tensors {missing}")
    _check_meta(path, meta, tensors)
    _check_dtypes(path, tensors)
    _check_sizes(path, tensors, len(meta["targets"]))
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
            adjacency=decode_adjacency(t, path, shape=(len(t["features"]) + len(meta["targets"]),
                                                        len(t["features"]) + len(t["errors"]) + len(t["input_ids"])
                                                        + len(meta["targets"]))),
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
            info={**meta.get("info", {}), **({EDGES_STORED_AS: "float16"} if "adjacency_row_scale" in t else {})},
            **{name: t.get(name) for name in _OPTIONAL},
        )
    except GraphFormatError:
        raise  # already names the file and what is wrong
    except (KeyError, TypeError, ValueError) as err:
        raise GraphFormatError(f"{path}: graph metadata lacks or mistypes {err}") from err
    try:
        graph.validate()
    except GraphFormatError as err:
        raise GraphFormatError(f"{path}: {err}") from err
    return graph
