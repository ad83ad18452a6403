"""Graph files with a sparse (compressed-row) adjacency: lossless, smaller, and every older dense
file still opens. `verify` is run on a file in the new format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from tracer.cli import main
from tracer.graph.errors import GraphFormatError
from tracer.graph.storage import decode_adjacency, encode_adjacency, load_graph, save_graph

SAMPLES = Path(__file__).resolve().parent.parent / "app" / "sample_graphs"
OLD = SAMPLES / "color-heldout2-what-color-is-the-cross.graph.safetensors"  # written as version 1, dense


def _file(path: Path) -> tuple[dict, dict]:
    with safe_open(str(path), framework="numpy") as f:
        meta = json.loads(f.metadata()["vlm_circuits_graph"])
        names = set(f.keys())
    return meta, names


def test_shipped_dense_files_still_open():
    paths = sorted(SAMPLES.glob("*.graph.safetensors"))
    assert "adjacency" in _file(OLD)[1]  # written before the sparse encoding existed
    for path in paths:
        meta, names = _file(path)
        assert meta["version"] == (1 if "adjacency" in names else 2)
        g = load_graph(path)
        assert g.adjacency.shape == (g.n_features + g.n_logits, g.n_nodes)


def test_sparse_round_trip_is_lossless_and_smaller(tmp_path):
    g = load_graph(OLD)
    new = save_graph(g, tmp_path / "new")  # default: sparse, since it is >= 1 MiB dense and smaller
    meta, names = _file(new)
    assert meta["version"] == 2 and "adjacency" not in names
    assert {"adjacency_shape", "adjacency_indptr", "adjacency_indices", "adjacency_data"} <= names
    assert new.stat().st_size < 0.7 * OLD.stat().st_size
    h = load_graph(new)
    assert h.adjacency.dtype == g.adjacency.dtype
    assert np.array_equal(h.adjacency, g.adjacency)
    for name in ("values", "constants", "unexplored", "features", "activations", "errors"):
        assert np.array_equal(getattr(h, name), getattr(g, name)), name
    assert h.scores == g.scores and h.prompt == g.prompt
    # and back to a dense version-1 file when asked
    dense = save_graph(h, tmp_path / "dense", sparse=False)
    meta, names = _file(dense)
    assert meta["version"] == 1 and "adjacency" in names
    assert np.array_equal(load_graph(dense).adjacency, g.adjacency)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encoding_of_awkward_matrices(dtype):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(37, 70000)).astype(dtype) * (rng.random((37, 70000)) < 0.01)  # int32 columns
    A[5] = 0  # an empty row
    A[:, -1] = 1.5  # the last column
    for block in (1 << 22, 1000):  # several blocks of rows too
        t = encode_adjacency(A, dtype, sparse=True, block=block)
        assert t["adjacency_indices"].dtype == np.int32 and t["adjacency_data"].dtype == dtype
        assert np.array_equal(decode_adjacency(t, Path("x"), block=block), A)
    small = A[:, :300]
    t = encode_adjacency(small, dtype, sparse=True)
    assert t["adjacency_indices"].dtype == np.uint16
    assert np.array_equal(decode_adjacency(t, Path("x")), small)
    assert set(encode_adjacency(small, dtype)) == {"adjacency"}  # small: stays dense by default


def _rewrite(path: Path, edit) -> None:
    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata()
    t = load_file(str(path))
    edit(t)
    save_file(t, str(path), metadata=raw)


@pytest.mark.parametrize("edit, words", [
    (lambda t: t.__setitem__("adjacency_indices", t["adjacency_indices"].astype(np.int32) + 10**6), "column index"),
    (lambda t: t.__setitem__("adjacency_indptr", t["adjacency_indptr"][:-1]), "adjacency_indptr"),
    (lambda t: t.__setitem__("adjacency_data", t["adjacency_data"][:-1]), "do not agree"),
    (lambda t: t.pop("adjacency_data"), "adjacency_data"),
    (lambda t: t.__setitem__("adjacency_data", t["adjacency_data"].astype(np.int32)), "adjacency_data"),
])
def test_broken_sparse_files_are_refused(tmp_path, edit, words):
    path = save_graph(load_graph(OLD), tmp_path / "g", sparse=True)
    _rewrite(path, edit)
    with pytest.raises(GraphFormatError) as err:
        load_graph(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_verify_passes_on_a_sparse_file(tmp_path, capsys):
    path = save_graph(load_graph(OLD), tmp_path / "g", sparse=True)
    assert main(["verify", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out
