"""Hostile inputs, by class: graph files of each format, model folders, images and uploads, app
forms and HTTP callbacks, command-line flags. Each must be refused with a clear one-line message,
within bounded memory and time, losing nothing; the app never answers HTTP 500.

Hostile files are tiny and crafted here. Loads that would exhaust memory if a check were missing
run in a subprocess under an address-space limit (RLIMIT_AS) and a timeout."""

from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import time
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file

from graph_factory import make_graph, rewrite_graph_file
from test_app_server import OPEN, call

from tracer.graph import GraphFormatError, save_graph
from tracer.graph.formats import open_any_graph
from tracer.graph.neuronpedia import graph_to_json
from tracer.images import ImageError, open_image

from app import ids
from app.annotations import annotations_path, load_annotations
from app.factory import create_app

ROOT = Path(__file__).resolve().parents[1]
PY = sys.executable


def bounded(code: str, mem_gb: float = 4.0, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter with at most mem_gb of address space."""
    prelude = (f"import resource; resource.setrlimit(resource.RLIMIT_AS, ({int(mem_gb * 2**30)}, "
               f"{int(mem_gb * 2**30)}))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([PY, "-c", prelude + textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=ROOT)


def refusal_in_bounded_memory(path: Path, words: str, mem_gb: float = 2.0) -> str:
    """open_any_graph(path) in a memory-limited subprocess: it must refuse with a GraphFormatError."""
    out = bounded(f"""
        from tracer.graph.formats import open_any_graph
        from tracer.graph import GraphFormatError
        try:
            open_any_graph({str(path)!r})
        except GraphFormatError as err:
            print("REFUSED", err)
        """, mem_gb=mem_gb)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("REFUSED") and words in out.stdout, out.stdout
    assert len(out.stdout.strip().splitlines()) == 1
    return out.stdout


# ====================================================================== our graph files
def rewrite(path: Path, meta=None, tensors=None) -> Path:
    """Re-save a graph file with its metadata / tensors edited (as a hostile writer would)."""
    return rewrite_graph_file(path, meta, tensors)


@pytest.fixture
def good(tmp_path) -> Path:
    return save_graph(make_graph(seed=0), tmp_path / "g.graph.safetensors")


def _set(key, value):
    return lambda m: m.__setitem__(key, value)


def _tensor(key, fn):
    return lambda t: t.__setitem__(key, fn(t[key]))


def _shift_grid(t):
    grid = t["image_grid"].copy()
    grid[:, 1] += 10**6
    t["image_grid"] = grid


def _add_image(shape, dtype=np.uint8):
    def edit(t):
        t["image_0"] = np.zeros(shape, dtype)
    return edit


OUR_FILE_CASES = {
    # sizes beyond any real graph (each made the app grow without bound before)
    "n_layers 10**12": (_set("n_layers", 10**12), None, "n_layers"),
    "image_grid rows shifted by 10**6": (None, _shift_grid, "image_grid"),
    "image index 10**9": (None, _tensor("image_grid", lambda g: g + np.array([10**9, 0, 0])), "image_grid"),
    "tokens_per_side 10**9": (_set("tokens_per_side", 10**9), None, "tokens_per_side"),
    "n_images 10**9": (_set("n_images", 10**9), None, "images"),
    "image_grids side 10**9": (_set("image_grids", [[10**9, 2]]), None, "image_grids"),
    "image_grids 1000 grids": (_set("image_grids", [[2, 2]] * 1000), None, "image_grids"),
    "image_grids a string": (_set("image_grids", "8x8"), None, "image_grids"),
    "image_grids not pairs": (_set("image_grids", [[2]]), None, "image_grids"),
    # wrong types in the metadata
    "n_layers a string": (_set("n_layers", "4"), None, "n_layers"),
    "n_layers a float": (_set("n_layers", 3.5), None, "n_layers"),
    "n_layers a bool": (_set("n_layers", True), None, "n_layers"),
    "tokens a number": (_set("tokens", 5), None, "tokens"),
    "tokens not strings": (lambda m: m.__setitem__("tokens", [1] * len(m["tokens"])), None, "tokens"),
    "prompt a list": (_set("prompt", ["x"]), None, "prompt"),
    "targets an object": (_set("targets", {"a": 1}), None, "targets"),
    "target token_id a string": (lambda m: m["targets"][0].__setitem__("token_id", "x"), None, "token_id"),
    "vocab a list": (_set("vocab", [1, 2]), None, "vocab"),
    "vocab keys not ids": (_set("vocab", {"abc": "x"}), None, "vocab"),
    "config a string": (_set("config", "x"), None, "config"),
    "version a string": (_set("version", "1"), None, "version"),
    "prefix_length negative": (_set("prefix_length", -5), None, "prefix_length"),
    "prefix_length beyond the prompt": (_set("prefix_length", 10**6), None, "prefix_length"),
    # wrong dtypes and shapes of the arrays
    "int64 adjacency": (None, _tensor("adjacency", lambda a: a.astype(np.int64)), "adjacency"),
    "float input_ids": (None, _tensor("input_ids", lambda a: a.astype(np.float32)), "input_ids"),
    "float features": (None, _tensor("features", lambda a: a.astype(np.float64)), "features"),
    "image_0 without channels": (None, _add_image((8, 8)), "image_0"),
    "image_0 with 4 channels": (None, _add_image((8, 8, 4)), "image_0"),
    "image_0 of floats": (None, _add_image((8, 8, 3), np.float32), "image_0"),
    "error layer 10**9": (None, _tensor("errors", lambda e: e + np.array([10**9, 0])), "error layer"),
    "negative feature position": (None, _tensor("features", lambda f: f - np.array([0, 100, 0])), "position"),
    "image position twice": (None, _tensor("image_positions", lambda p: np.full_like(p, p[0])), "twice"),
}


@pytest.mark.parametrize("case", list(OUR_FILE_CASES))
def test_our_graph_file_hostile_fields(good, case):
    meta, tensors, words = OUR_FILE_CASES[case]
    if case.startswith("image_0"):
        meta = _set("n_images", 1)
    rewrite(good, meta, tensors)
    with pytest.raises(GraphFormatError, match=words) as err:
        open_any_graph(good)
    assert "\n" not in str(err.value) and len(str(err.value)) < 600


def test_our_graph_file_huge_metadata_in_bounded_memory(tmp_path):
    layers = rewrite(save_graph(make_graph(seed=0), tmp_path / "layers.graph.safetensors"), _set("n_layers", 10**12))
    refusal_in_bounded_memory(layers, "n_layers")
    grid = rewrite(save_graph(make_graph(seed=0), tmp_path / "grid.graph.safetensors"), None, _shift_grid)
    refusal_in_bounded_memory(grid, "image_grid")


def _raw_safetensors(path: Path, header: dict, data: bytes = b"", header_len: int | None = None) -> Path:
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h) if header_len is None else header_len) + h + data)
    return path


def test_safetensors_header_declaring_14_gb(tmp_path, good):
    """A complete graph file whose adjacency is declared 60,000 x 60,000 float32 (14.4 GB)."""
    from safetensors import safe_open

    with safe_open(str(good), framework="numpy") as f:
        meta = f.metadata()
    small = {k: v for k, v in load_file(str(good)).items() if k != "adjacency"}
    header, blobs, at = {"__metadata__": meta}, [], 0
    for name, arr in small.items():
        raw = np.ascontiguousarray(arr).tobytes()
        header[name] = {"dtype": {"int64": "I64", "float32": "F32", "float64": "F64", "uint8": "U8"}[arr.dtype.name],
                        "shape": list(arr.shape), "data_offsets": [at, at + len(raw)]}
        blobs.append(raw)
        at += len(raw)
    header["adjacency"] = {"dtype": "F32", "shape": [60000, 60000], "data_offsets": [at, at + 14_400_000_000]}
    # the header alone (a tiny file): truncated
    tiny = _raw_safetensors(tmp_path / "tiny.graph.safetensors", header, b"".join(blobs))
    with pytest.raises(GraphFormatError, match="truncated"):
        open_any_graph(tiny)
    # a sparse file that really is that long: refused by the limits before anything is read
    big = _raw_safetensors(tmp_path / "big.graph.safetensors", header, b"".join(blobs))
    os.truncate(big, big.stat().st_size + 14_400_000_000)
    try:
        refusal_in_bounded_memory(big, "adjacency of shape [60000, 60000]")
    finally:
        big.unlink()


@pytest.mark.parametrize("header, data, header_len, words", [
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 8, None, "truncated"),
    ({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8]}}, b"\0" * 8, None, "declares shape"),
    ({"x": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "malformed"),
    ({"x": {"dtype": "NOPE", "shape": [4], "data_offsets": [0, 16]}}, b"\0" * 16, None, "malformed"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 4096, None, "after the last tensor"),
    ({}, b"", 10**12, "not a complete safetensors file"),
    ([1, 2], b"", None, "not an object"),
])
def test_safetensors_headers_that_lie(tmp_path, header, data, header_len, words):
    path = _raw_safetensors(tmp_path / "x.graph.safetensors", header, data, header_len)
    with pytest.raises(GraphFormatError, match=words):
        open_any_graph(path)


def test_truncated_graph_file(good):
    size = good.stat().st_size
    os.truncate(good, size - 100)
    with pytest.raises(GraphFormatError, match="truncated"):
        open_any_graph(good)


# ====================================================================== viewer JSON graphs
@pytest.fixture
def graph_json():
    return graph_to_json(make_graph(seed=1), include_images=True)


def _write_json(tmp_path, data) -> Path:
    path = tmp_path / "g.json"
    path.write_text(json.dumps(data))
    return path


def _grid_shift(d):
    d["metadata"]["vlm"]["image_grid"] = [[i, r + 10**6, c] for i, r, c in d["metadata"]["vlm"]["image_grid"]]


def _far_position(d):
    d["metadata"]["prompt_tokens"] = []
    d["metadata"]["vlm"].pop("tokens")
    d["nodes"][0]["ctx_idx"] = 10**12


def _bomb_uri(d):
    import base64

    d["metadata"]["vlm"]["images"] = ["data:image/png;base64," + base64.b64encode(_png_header(12000, 12000)).decode()]


JSON_CASES = {
    "n_layers 10**12": (lambda d: d["metadata"]["vlm"].__setitem__("n_layers", 10**12), "n_layers"),
    "n_layers a string": (lambda d: d["metadata"]["vlm"].__setitem__("n_layers", "many"), "n_layers"),
    "image_grid rows shifted by 10**6": (_grid_shift, "image_grid"),
    "a node at position 10**12": (_far_position, "positions"),
    "image_positions a string": (lambda d: d["metadata"]["vlm"].__setitem__("image_positions", "abc"), "wrong type"),
    "an activation that is a word": (lambda d: d["nodes"][0].__setitem__("activation", "high"), "wrong type"),
    "targets of the wrong shape": (lambda d: d["metadata"]["vlm"].__setitem__(
        "targets", [{"label": 1, "token_id": "x"}] * len(d["metadata"]["vlm"]["targets"])), "wrong type"),
    "tokens_per_side 10**9": (lambda d: d["metadata"]["vlm"].__setitem__("tokens_per_side", 10**9), "tokens_per_side"),
    "image_grids side 10**9": (lambda d: d["metadata"]["vlm"].__setitem__("image_grids", [[2, 10**9]]), "image_grids"),
    "image_grids a string": (lambda d: d["metadata"]["vlm"].__setitem__("image_grids", "8x8"), "image_grids"),
    "a decompression-bomb image": (_bomb_uri, "too large"),
    "an image that is not one": (lambda d: d["metadata"]["vlm"].__setitem__("images", ["data:image/png;base64,AAAA"]),
                                 "image"),
}


@pytest.mark.parametrize("case", list(JSON_CASES))
def test_viewer_json_hostile_fields(tmp_path, graph_json, case):
    edit, words = JSON_CASES[case]
    edit(graph_json)
    path = _write_json(tmp_path, graph_json)
    with pytest.raises(GraphFormatError, match=words) as err:
        open_any_graph(path)
    assert "\n" not in str(err.value)


def test_viewer_json_huge_metadata_in_bounded_memory(tmp_path, graph_json):
    graph_json["metadata"]["vlm"]["n_layers"] = 10**12
    refusal_in_bounded_memory(_write_json(tmp_path, graph_json), "n_layers")


def test_viewer_json_whose_edge_matrix_would_be_huge(tmp_path):
    """50,000 features and 50,000 logits: a 9 MB file asking for a 2.5 * 10**9-entry edge matrix."""
    n = 50_000
    nodes = [{"node_id": f"0_{k}_0", "feature": k, "layer": "0", "ctx_idx": 0, "feature_type": "cross layer transcoder"}
             for k in range(n)]
    nodes += [{"node_id": "E_2_0", "feature": 0, "layer": "E", "ctx_idx": 0, "feature_type": "embedding"}]
    nodes += [{"node_id": f"2_{k}_0", "feature": k, "layer": "2", "ctx_idx": 0, "feature_type": "logit"}
              for k in range(n)]
    data = {"metadata": {"slug": "x", "scan": "x", "prompt_tokens": ["<bos>"], "prompt": "x"}, "nodes": nodes,
            "links": []}
    refusal_in_bounded_memory(_write_json(tmp_path, data), "edge matrix")


# ====================================================================== reference .pt graphs
def _pt_dict(torch, adjacency, n_pos=5, n_layers=None):
    d = {"input_tokens": torch.arange(n_pos), "adjacency_matrix": adjacency,
         "active_features": torch.zeros(0, 3, dtype=torch.long), "selected_features": torch.zeros(0, dtype=torch.long),
         "activation_values": torch.zeros(0), "logit_tokens": torch.tensor([3]), "logit_probabilities": torch.ones(1)}
    if n_layers is not None:
        d["cfg"] = {"n_layers": n_layers}
    return d


@pytest.mark.slow
def test_reference_pt_shared_rows_and_expanded_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    n = 40_000  # 6.4 GB once dense
    row = torch.zeros(n)
    torch.save(_pt_dict(torch, [row] * n), tmp_path / "shared.pt")
    torch.save(_pt_dict(torch, torch.zeros(n).expand(n, n)), tmp_path / "expanded.pt")
    sparse = torch.sparse_coo_tensor(torch.zeros(2, 1, dtype=torch.long), torch.ones(1), (n, n), check_invariants=False)
    torch.save(_pt_dict(torch, sparse), tmp_path / "sparse.pt")
    for name in ("shared.pt", "expanded.pt", "sparse.pt"):
        assert (tmp_path / name).stat().st_size < 1_000_000
        refusal_in_bounded_memory(tmp_path / name, "adjacency_matrix", mem_gb=3.0)


def test_reference_pt_more_values_than_any_limit(tmp_path):
    torch = pytest.importorskip("torch")
    row = torch.zeros(60_000)
    torch.save(_pt_dict(torch, [row] * 60_000), tmp_path / "big.pt")
    with pytest.raises(GraphFormatError, match="declares more than"):
        open_any_graph(tmp_path / "big.pt")


@pytest.mark.parametrize("n_layers, words", [(10**12, "n_layers"), ("34", "n_layers"), (-1, "n_layers")])
def test_reference_pt_hostile_layer_counts(tmp_path, n_layers, words):
    torch = pytest.importorskip("torch")
    # no positions: 10**12 layers x 0 positions would "match" the 1 x 1 matrix and loop forever
    torch.save(_pt_dict(torch, torch.zeros(1, 1), n_pos=0, n_layers=n_layers), tmp_path / "layers.pt")
    with pytest.raises(GraphFormatError, match=words):
        open_any_graph(tmp_path / "layers.pt")


def test_reference_pt_legacy_format_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save({"a": torch.arange(7, dtype=torch.float32)}, buf, _use_new_zipfile_serialization=False)
    raw = buf.getvalue()
    at = raw.rfind(struct.pack("<q", 7))  # the storage's element count: make it claim 12 GB
    (tmp_path / "legacy.pt").write_bytes(raw[:at] + struct.pack("<q", 3 * 10**9) + raw[at + 8:])
    with pytest.raises(GraphFormatError, match="legacy"):
        open_any_graph(tmp_path / "legacy.pt")


# ====================================================================== model folders
@pytest.fixture
def toy_copy(tmp_path):
    import shutil

    from tracer.toy.shipped import default_model_dir

    dst = tmp_path / "model"
    shutil.copytree(default_model_dir(), dst)
    return dst


def _truncate(path: Path, keep: float = 0.5):
    os.truncate(path, int(path.stat().st_size * keep))


@pytest.mark.parametrize("damage, words", [
    (lambda m: [p.unlink() for p in m.iterdir()], "is empty"),
    (lambda m: (m / "config.json").unlink(), "no config.json"),
    (lambda m: (m / "model.safetensors").unlink(), "no weights"),
    (lambda m: _truncate(m / "model.safetensors"), "truncated"),
    (lambda m: _truncate(m / "model.safetensors", 0.0001), "not a complete safetensors file"),
    (lambda m: (m / "config.json").write_text("{not json"), "config.json is not readable JSON"),
    (lambda m: (m / "config.json").write_text('{"model_type": "gemma3", "text_config": 5}'), "cannot load model"),
])
def test_broken_model_folders(toy_copy, damage, words):
    from tracer.models.loading import ModelLoadError, load_vlm

    damage(toy_copy)
    with pytest.raises(ModelLoadError, match=words) as err:
        load_vlm(toy_copy)
    assert "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_broken_model_folder_is_one_line(toy_copy):
    _truncate(toy_copy / "model.safetensors")
    out = subprocess.run([PY, "-m", "tracer", "attribute", "--prompt", "hi", "--model", str(toy_copy), "--quiet"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2
    assert "truncated" in one_error_line(out.stderr)


# ====================================================================== images and uploads
def _png_header(width: int, height: int) -> bytes:
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("width, height", [(10_000, 10_000), (20_000, 20_000), (100_000, 100_000), (7_000, 7_000)])
def test_image_bombs_are_refused_without_warnings(width, height):
    # 10^8 pixels: above PIL's warning threshold (8.9e7), below its error (1.8e8): the warning used to leak
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(ImageError, match="too large"):
            open_image(_png_header(width, height))
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]


@pytest.mark.parametrize("source", [io.BytesIO(b"plain text, not an image"), b"plain text", io.BytesIO(b"")])
def test_image_errors_name_no_python_objects(source):
    with pytest.raises(ImageError) as err:
        open_image(source)
    assert "<_io" not in str(err.value) and "object at 0x" not in str(err.value)
    assert "not a readable image" in str(err.value)


# ====================================================================== the app over HTTP
@pytest.fixture
def hostile_folder(tmp_path):
    torch = pytest.importorskip("torch")
    folder = tmp_path / "graphs"
    folder.mkdir()
    save_graph(make_graph(seed=0), folder / "good.graph.safetensors")
    for name, meta, tensors in [("layers", _set("n_layers", 10**12), None), ("grid", None, _shift_grid),
                                ("intadj", None, _tensor("adjacency", lambda a: a.astype(np.int64))),
                                ("wrongtype", _set("tokens", 5), None),
                                ("image", _set("n_images", 1), _add_image((8, 8)))]:
        rewrite(save_graph(make_graph(seed=0), folder / f"{name}.graph.safetensors"), meta, tensors)
    row = torch.zeros(20_000)
    torch.save(_pt_dict(torch, [row] * 20_000), folder / "shared.pt")
    data = graph_to_json(make_graph(seed=1))
    data["metadata"]["vlm"]["n_layers"] = 10**12
    (folder / "layers.json").write_text(json.dumps(data))
    return folder


HOSTILE_GRAPHS = ["layers.graph.safetensors", "grid.graph.safetensors", "intadj.graph.safetensors",
                  "wrongtype.graph.safetensors", "image.graph.safetensors", "shared.pt", "layers.json"]


def test_app_answers_hostile_graph_files_with_a_message(hostile_folder):
    client = create_app(hostile_folder).server.test_client()
    for name in HOSTILE_GRAPHS:
        t0 = time.perf_counter()
        status, data = call(client, OPEN, [{"id": ids.GRAPH_DROPDOWN, "property": "value", "value": name}])
        assert status == 200, name
        assert data["response"][ids.STATUS]["className"] == "status error", name
        assert "Cannot open this graph" in json.dumps(data["response"][ids.STATUS]["children"]), name
        assert time.perf_counter() - t0 < 30, name
    status, data = call(client, OPEN, [{"id": ids.GRAPH_DROPDOWN, "property": "value",
                                        "value": "good.graph.safetensors"}])
    assert status == 200 and data["response"][ids.STORE_GRAPH]["data"] == {"name": "good.graph.safetensors"}


EDIT = (f"..{ids.STORE_ANNOT_REV}.data...{ids.ACTION_MESSAGE}.children...{ids.LABEL_MESSAGE}.children..")
EDIT_INPUTS = [ids.LABEL_SAVE, ids.LABEL_INPUT, ids.PIN_BUTTON, ids.UNPIN_ALL_BUTTON, ids.HIDE_BUTTON,
               ids.UNHIDE_ALL_BUTTON, ids.GROUP_BUTTON, ids.UNGROUP_BUTTON]


def _edit(client, trigger, label="x", selected=None, selected_nodes=None, group_label=""):
    inputs = [{"id": i, "property": "n_submit" if i == ids.LABEL_INPUT else "n_clicks",
               "value": 1 if i == trigger else None} for i in EDIT_INPUTS]
    state = [{"id": ids.LABEL_INPUT, "property": "value", "value": label},
             {"id": ids.GROUP_LABEL, "property": "value", "value": group_label},
             {"id": ids.STORE_SELECTED, "property": "data", "value": selected},
             {"id": ids.CYTO, "property": "selectedNodeData", "value": selected_nodes},
             {"id": ids.STORE_GRAPH, "property": "data", "value": {"name": "good.graph.safetensors"}},
             {"id": ids.STORE_ANNOT_REV, "property": "data", "value": 0}]
    return call_with_trigger(client, EDIT, inputs, state, trigger)


def call_with_trigger(client, output, inputs, state, trigger):
    body = {"output": output,
            "outputs": [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in output.strip(".").split("...")],
            "inputs": inputs, "state": state,
            "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs if i["id"] == trigger]}
    r = client.post("/_dash-update-component", json=body)
    return r.status_code, (r.get_json() if r.status_code == 200 else None)


@pytest.mark.parametrize("selected", ["F_" + "9" * 5_000_000, {"id": "F_0_1_5"}, ["F_0_1_5"], 12, "F_999_999_999",
                                      "S_" + "1" * 300])
def test_label_keys_must_be_node_ids_of_the_open_graph(tmp_path, selected):
    graph = save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    client = create_app(tmp_path).server.test_client()
    status, data = _edit(client, ids.LABEL_SAVE, label="hostile", selected=selected)
    assert status == 200
    message = json.dumps(data["response"][ids.LABEL_MESSAGE])
    # a key of the wrong shape never reaches the callback (app.browser_values); an unknown one is refused
    assert ("not a node of the open graph" if selected == "F_999_999_999" else "Select a node first") in message
    assert load_annotations(graph).labels == {}
    path = annotations_path(graph)
    assert not path.exists() or path.stat().st_size < 2000


@pytest.mark.parametrize("nodes", [["F_0_1_5", "E_3"], [{"id": {"x": 1}}, {"id": "E_" + "3" * 100_000}], "E_3",
                                   [{"id": "S_77"}, {"id": "S_78"}], {"id": "E_3"}])
def test_pin_hide_group_ignore_what_is_not_a_node(tmp_path, nodes):
    graph = save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    client = create_app(tmp_path).server.test_client()
    for trigger in (ids.PIN_BUTTON, ids.HIDE_BUTTON, ids.GROUP_BUTTON):
        status, _ = _edit(client, trigger, selected_nodes=nodes, group_label={"not": "a string"})
        assert status == 200
    a = load_annotations(graph)
    assert all(len(k) < 100 for k in a.pinned + a.hidden)
    assert not any(k.startswith("S_7") for k in a.pinned + a.hidden)


def _upload(client, contents, filename):
    out = (f"..{ids.STORE_UPLOAD}.data...{ids.TRACE_PREVIEW}.src...{ids.TRACE_PREVIEW}.style"
           f"...{ids.TRACE_UPLOAD_MESSAGE}.children...{ids.TRACE_UPLOAD_MESSAGE}.className..")
    inputs = [{"id": ids.TRACE_UPLOAD, "property": "contents", "value": contents},
              {"id": ids.TRACE_USE_CURRENT, "property": "n_clicks", "value": None}]
    state = [{"id": ids.TRACE_UPLOAD, "property": "filename", "value": filename},
             {"id": ids.STORE_GRAPH, "property": "data", "value": None}]
    return call_with_trigger(client, out, inputs, state, ids.TRACE_UPLOAD)


@pytest.mark.parametrize("payload, filename, words", [
    (b"just some notes\n", "notes.txt", "not a readable image"),
    (_png_header(10_000, 10_000), "bomb.png", "too large"),
    (_png_header(100_000, 100_000), "bomb2.png", "too large"),
    (b"", "empty.png", "empty"),
])
def test_uploads_get_a_message_in_the_page(tmp_path, payload, filename, words):
    import base64

    client = create_app(tmp_path, live=True).server.test_client()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status, data = _upload(client, "data:application/octet-stream;base64," + base64.b64encode(payload).decode(),
                               filename)
    assert status == 200
    message = data["response"][ids.TRACE_UPLOAD_MESSAGE]
    assert words in message["children"] and message["className"] == "upload-message error"
    assert "<_io" not in message["children"] and "object at 0x" not in message["children"]
    assert not [w for w in caught if "DecompressionBomb" in type(w.message).__name__]


def test_upload_accepts_any_file_so_a_wrong_one_gets_a_message(tmp_path):
    """A file type filter on dcc.Upload drops a .txt silently in the browser: there must be none."""
    app = create_app(tmp_path, live=True)
    found = []

    def walk(c):
        if getattr(c, "id", None) == ids.TRACE_UPLOAD:
            found.append(c)
        children = getattr(c, "children", None)
        for ch in children if isinstance(children, (list, tuple)) else [children]:
            if ch is not None and hasattr(ch, "to_plotly_json"):
                walk(ch)

    walk(app.layout())
    assert len(found) == 1 and getattr(found[0], "accept", None) is None


# ====================================================================== stale temporary files
def test_sigkill_mid_write_leaves_no_temporary_for_good(tmp_path):
    graph = save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    target = annotations_path(graph)
    child = subprocess.Popen([PY, "-c", textwrap.dedent(f"""
        import time
        from tracer.files import atomic_path
        with atomic_path({str(target)!r}) as tmp:
            tmp.write_text("half")
            print("writing", flush=True)
            time.sleep(60)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert child.stdout.readline().strip() == "writing"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    left = [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert len(left) == 1  # what SIGKILL leaves
    # a temporary of a live writer and an unrelated dot-file stay
    live = tmp_path / f".{target.name}.vlmc-{os.getpid()}.abcdefgh.tmp"
    live.write_text("in progress")
    others = [tmp_path / ".hidden.tmp", tmp_path / ".notes.2024.draft.tmp", tmp_path / ".notes.txt.abcdefgh.tmp"]
    for p in others:
        p.write_text("not ours")
        os.utime(p, (time.time() - 7200, time.time() - 7200))
    create_app(tmp_path)  # opening the folder cleans up
    assert not left[0].exists() and live.exists() and all(p.exists() for p in others)
    # the next write of the same file cleans up too
    old = tmp_path / f".{target.name}.x1y2z3w4.tmp"  # a name of the format before the pid was added
    old.write_text("old")
    os.utime(old, (time.time() - 7200, time.time() - 7200))
    from app.annotations import update_annotations

    update_annotations(graph, lambda a: a.set_label("L_0", "ok"))
    assert not old.exists() and load_annotations(graph).labels == {"L_0": "ok"}


# ====================================================================== attribution budget and CLI flags
def one_error_line(stderr: str) -> str:
    """The error line of a refused command (transformers' weight-loading bar may precede it)."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and sum(line.startswith("error") for line in stderr.splitlines()) == 1
    return last


@pytest.mark.slow
def test_cli_export_and_import_of_wrongly_typed_graphs(tmp_path, good, graph_json):
    rewrite(good, _set("n_layers", "four"))
    graph_json["metadata"]["vlm"]["image_grid"] = "not a grid"
    bad_json = _write_json(tmp_path, graph_json)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    for argv, words in [(["export", str(good), "--out", str(tmp_path / "out")], "n_layers"),
                        (["import", str(bad_json), "--out", str(tmp_path / "x.graph.safetensors")], "wrong type")]:
        out = subprocess.run([PY, "-m", "tracer", *argv], capture_output=True, text=True, timeout=300, cwd=ROOT,
                             env=env)
        assert out.returncode in (1, 2) and words in one_error_line(out.stderr), out.stderr[-2000:]
    assert not (tmp_path / "x.graph.safetensors").exists() and not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_prompt_longer_than_the_context(tmp_path):
    out = subprocess.run([PY, "-m", "tracer", "attribute", "--prompt", "word " * 5000, "--quiet",
                          "--out", str(tmp_path / "x.graph.safetensors")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr[-2000:]
    line = one_error_line(out.stderr)
    assert "more than the model's context of 512" in line and "shorten the prompt" in line
    assert not (tmp_path / "x.graph.safetensors").exists()


@pytest.mark.slow
def test_cli_setting_out_of_range(tmp_path):
    out = subprocess.run([PY, "-m", "tracer", "attribute", "--prompt", "What color is the circle?", "--quiet",
                          "--max-feature-nodes", "-5", "--out", str(tmp_path / "x.graph.safetensors")],
                         capture_output=True, text=True, timeout=300, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"})
    assert out.returncode == 2, out.stderr[-2000:]  # argparse: usage, then one error line
    assert "Traceback" not in out.stderr
    assert "--max_feature_nodes" in out.stderr and "must be at least 1" in out.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("setting, value", [
    ("max_feature_nodes", -5), ("max_feature_nodes", 2.5), ("batch_size", 0), ("batch_size", "256"),
    ("max_n_logits", 0), ("top_logit_k", -1), ("desired_logit_prob", 7), ("desired_logit_prob", 0.0),
    ("desired_logit_prob", float("nan")), ("offload", "disk"),
])
def test_attribution_settings_out_of_range(setting, value):
    from tracer.attribution.attribute import AttributionConfig, SettingError

    AttributionConfig().validate()
    with pytest.raises(SettingError, match=setting):
        AttributionConfig(**{setting: value}).validate()


@pytest.mark.slow
def test_attribution_refused_before_it_exhausts_memory():
    """The trace form's worst case: every feature of a long prompt explored. With 3 GiB of address
    space left, the run is refused with the estimate and the setting to turn, before the rows exist."""
    out = bounded("""
        import os, resource
        from tracer.session import TracingSession
        from tracer.attribution.budget import BudgetError
        s = TracingSession(device="cpu")
        used = int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
        resource.setrlimit(resource.RLIMIT_AS, (used + 3 * 2**30, used + 3 * 2**30))
        try:
            s.attribute("What color is the circle? " * 60, max_feature_nodes=100_000, progress=False)
            print("RAN")
        except BudgetError as err:
            print("REFUSED", err)
        """, mem_gb=64, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.startswith("REFUSED"), out.stdout
    assert "edge rows" in out.stdout and "lower max_feature_nodes (to about" in out.stdout


def test_budget_estimates_scale_as_documented():
    from tracer.attribution.budget import edge_estimate

    e = edge_estimate(n_logits=10, n_explore=100_000, n_columns=272_000, n_positions=1000, n_errors=34_000,
                      d_model=2560, batch_size=256, dtype_bytes=4, edge_bytes=4, offload=False)
    rows = [b for what, (_, b) in e.parts.items() if what.startswith("edge rows")][0]
    assert rows == 100_010 * 272_000 * 4  # ~109 GB: the trace form's worst case in issue 11
    assert e.total("host") == (100_000 + 10) * (100_000 + 34_000 + 1000 + 10) * 4


@pytest.mark.parametrize("target", [f"{ids.STORE_SELECTED}.data", f"{ids.CYTO}.selectedNodeData",
                                    f"{ids.STORE_GRAPH}.data"])
def test_no_callback_answers_500_to_forged_node_keys(tmp_path, target):
    """Every callback that reads a node key, the cytoscape selection or the open graph, sent
    values of the wrong shape as a forged request would: a dict, a list, a number, 5 MB."""
    save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    app = create_app(tmp_path, live=True)
    client = app.server.test_client()
    hostile = [{"x": 1}, ["F_0_1_5"], 12, "F_" + "9" * 5_000_000, [{"id": {"x": 1}}, 7], {"name": ["x"]}]
    n_callbacks = 0
    for output, cb in app.callback_map.items():
        if "callback" not in cb:  # a clientside callback: it runs in the browser, never on the server
            continue
        specs = cb["inputs"] + cb.get("state", [])
        names = [f"{i['id']}.{i['property']}" for i in specs]
        if target not in names:
            continue
        n_callbacks += 1
        for value in hostile:
            def val(name):
                if name == target:
                    return value
                if name == f"{ids.STORE_GRAPH}.data":
                    return {"name": "good.graph.safetensors"}
                return 1 if name.endswith(".n_clicks") else None
            inputs = [{"id": i["id"], "property": i["property"], "value": val(f"{i['id']}.{i['property']}")}
                      for i in cb["inputs"]]
            state = [{"id": i["id"], "property": i["property"], "value": val(f"{i['id']}.{i['property']}")}
                     for i in cb.get("state", [])]
            outs = [{"id": o.split(".")[0], "property": o.split(".")[1]} for o in output.strip(".").split("...")]
            body = {"output": output, "outputs": outs if output.startswith("..") else outs[0], "inputs": inputs,
                    "state": state, "changedPropIds": [target]}
            r = client.post("/_dash-update-component", json=body)
            assert r.status_code < 500, (output, repr(value)[:40])
    assert n_callbacks >= 1


@pytest.mark.parametrize("labels, out_is_file, words", [
    ({"labels": 5}, False, "labels must be an object"),
    ({"supernodes": [{"label": 5, "members": 7}]}, False, "supernodes must be a list"),
    ({"supernodes": "x"}, False, "supernodes must be a list"),
    ({"pinned": {"a": 1}}, False, "pinned must be a list"),
    ([1, 2], False, "expected a JSON object"),
    ({"labels": {}}, True, "is a file, not a folder"),
])
def test_cli_export_flags_of_the_wrong_shape(tmp_path, capsys, labels, out_is_file, words):
    from tracer.cli import main

    src = save_graph(make_graph(seed=0), tmp_path / "g.graph.safetensors")
    (tmp_path / "labels.json").write_text(json.dumps(labels))
    out = src if out_is_file else tmp_path / "out"
    assert main(["export", str(src), "--out", str(out), "--labels", str(tmp_path / "labels.json")]) in (1, 2)
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and words in err and len(err.splitlines()) == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_trace_form_refusal_reaches_the_page(tmp_path):
    """The trace form at its limits (100,000 feature nodes, a 4,000-character prompt): the job is
    refused before anything large is allocated and the status line says why and what to change."""
    app = create_app(tmp_path, live=True)
    client = app.server.test_client()
    prompt = ("What color is the circle? " * 200)[:4000]
    values = {ids.TRACE_SUBMIT: ("n_clicks", 1), ids.STORE_UPLOAD: ("data", None), ids.TRACE_PROMPT: ("value", prompt),
              ids.TRACE_TARGET_MODE: ("value", "auto"), ids.TRACE_TARGET_A: ("value", ""),
              ids.TRACE_TARGET_B: ("value", ""), ids.TRACE_MAX_FEATURES: ("value", 100_000),
              ids.TRACE_MAX_LOGITS: ("value", 10), ids.TRACE_DESIRED_PROB: ("value", 0.95),
              ids.TRACE_BATCH: ("value", 256), ids.TRACE_NAME: ("value", ""), ids.store_job("trace"): ("data", None)}
    output, spec = next((out, cb) for out, cb in app.callback_map.items()
                        if out.startswith(f"..{ids.store_job('trace')}.data"))
    args = {part: [{"id": i["id"], "property": i["property"], "value": values[i["id"]][1]} for i in spec[part]]
            for part in ("inputs", "state")}
    status, data = call_with_trigger(client, output, args["inputs"], args["state"], ids.TRACE_SUBMIT)
    assert status == 200
    job = data["response"][ids.store_job("trace")]["data"]["id"]
    st = app.state.live.queue.wait(job, 240)
    assert st["state"] == "error"
    assert st["message"].startswith("the prompt is") and "more than the model's context of 512" in st["message"]
    out = next(o for o in app.callback_map if o.startswith(f"..{ids.TRACE_STATUS}.children"))
    status, data = call_with_trigger(client, out, [{"id": ids.store_status("trace"), "property": "data", "value": st}],
                                     [], ids.store_status("trace"))
    assert status == 200 and "shorten the prompt" in data["response"][ids.TRACE_STATUS]["children"]
    app.state.live.queue.shutdown()


@pytest.mark.parametrize("damage, words", [
    (lambda m: _truncate(m / "model.safetensors"), "truncated"),
    (lambda m: [p.unlink() for p in m.iterdir()], "is empty"),
])
def test_app_live_model_folder_broken_gives_a_message(tmp_path, toy_copy, damage, words):
    from tracer.transcoders import default_transcoders_dir

    from app.live import LiveConfig, LiveState
    from app.tasks import trace_job

    damage(toy_copy)
    live = LiveState(LiveConfig(model=str(toy_copy), transcoders=str(default_transcoders_dir()), device="cpu"),
                     tmp_path)
    try:
        job = live.submit("trace", trace_job(live, None, "What color is the circle?", None, {}, "x"))
        st = live.queue.wait(job, 120)
    finally:
        live.queue.shutdown()
    assert st["state"] == "error" and words in st["message"] and "\n" not in st["message"]


def test_the_request_check_leaves_pattern_matching_callbacks_alone(tmp_path):
    """Pattern-matching ids are dicts (ALL wildcards send lists): the shape check must pass them by,
    and a forged body of odd shape must not turn the check itself into a 500."""
    save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    app = create_app(tmp_path, live=True)
    client = app.server.test_client()
    output, cb = next((o, c) for o, c in app.callback_map.items() if '["MATCH"]' in o)

    def concrete(component_id: str):
        if not component_id.startswith("{"):
            return component_id
        return {k: (0 if v == ["MATCH"] else v) for k, v in json.loads(component_id).items()}

    def props(specs):
        return [{"id": concrete(i["id"]), "property": i["property"], "value": None} for i in specs]

    outs = []
    for o in output.strip(".").split("..."):
        component_id, prop = o.rsplit(".", 1)
        outs.append({"id": concrete(component_id), "property": prop})
    inputs = props(cb["inputs"])
    changed = json.dumps(inputs[0]["id"], separators=(",", ":"), sort_keys=True) + "." + inputs[0]["property"]
    body = {"output": output, "outputs": outs, "inputs": inputs, "state": props(cb.get("state", [])),
            "changedPropIds": [changed]}
    r = client.post("/_dash-update-component", json=body)
    assert r.status_code < 500
    from app import browser_values

    for odd in ({"inputs": 5, "state": {"a": 1}}, {"inputs": [{"id": ids.STORE_SELECTED, "property": ["data"]}]},
                {"inputs": [{"id": ids.STORE_SELECTED, "property": "data", "value": {"x": 1}}]}, [1, 2], "text"):
        with app.server.test_request_context("/_dash-update-component", method="POST", json=odd):
            browser_values._clean_request()  # never raises, whatever the body
            from flask import request

            body = request.get_json()
        if isinstance(odd, dict) and isinstance(odd["inputs"], list) and "value" in odd["inputs"][0]:
            assert body["inputs"][0]["value"] is None
