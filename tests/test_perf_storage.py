"""Graph files with a sparse adjacency (runs of columns, version 3): lossless for float32/float64
graphs, float16 scaled per row for graphs of half-precision models, smaller; every older dense
(version 1) and compressed-row (version 2) file still opens. `verify` is run on files in the new
format, including a bfloat16 graph stored at half precision."""

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
ROWS = SAMPLES / "toy-llava-color-heldout2-what-color-is-the-cross.graph.safetensors"  # version 2, sparse rows
RUNS = ("adjacency_shape", "adjacency_row_runs", "adjacency_runs", "adjacency_data")


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
    assert meta["version"] == 3 and "adjacency" not in names and "adjacency_row_scale" not in names
    assert set(RUNS) <= names
    assert new.stat().st_size < 0.6 * OLD.stat().st_size
    t = load_file(str(new))
    # a few runs per row: the column indices cost almost nothing beside the values
    assert len(t["adjacency_runs"]) < 0.02 * len(t["adjacency_data"])
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


def test_compressed_row_files_still_open(tmp_path):
    g = load_graph(ROWS)
    assert _file(ROWS)[0]["version"] == 2 and "adjacency_indptr" in _file(ROWS)[1]
    t = load_file(str(ROWS))  # the rows decoded by hand
    A = np.zeros_like(g.adjacency)
    rows = np.repeat(np.arange(len(t["adjacency_indptr"]) - 1), np.diff(t["adjacency_indptr"]))
    A[rows, t["adjacency_indices"]] = t["adjacency_data"]
    assert np.array_equal(g.adjacency, A) and np.count_nonzero(A) > 1000
    again = load_graph(save_graph(g, tmp_path / "v3"))
    assert _file(tmp_path / "v3.graph.safetensors")[0]["version"] == 3
    assert np.array_equal(again.adjacency, A)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_encoding_of_awkward_matrices(dtype):
    rng = np.random.default_rng(0)
    A = rng.normal(size=(37, 70000)).astype(dtype) * (rng.random((37, 70000)) < 0.01)
    A[5] = 0  # an empty row
    A[:, -1] = 1.5  # the last column
    A[7, :500] = 2.0  # a run from the first column
    A[8] = -3.0  # a full row
    A[9, 1::2] = 4.0  # many runs of one
    for block in (1 << 22, 1000):  # several blocks of rows too
        t = encode_adjacency(A, dtype, sparse=True, block=block)
        assert t["adjacency_runs"].dtype == np.int32 and t["adjacency_data"].dtype == dtype
        back = decode_adjacency(t, Path("x"), block=block)
        assert back.dtype == dtype and np.array_equal(back, A)
    assert set(encode_adjacency(A[:, :300], dtype)) == {"adjacency"}  # small: stays dense by default
    assert set(encode_adjacency(A, dtype, sparse=False)) == {"adjacency"}
    empty = np.zeros((3, 0), dtype)
    assert decode_adjacency(encode_adjacency(empty, dtype, sparse=True), Path("x")).shape == (3, 0)


def test_half_precision_values_stay_within_their_bound():
    rng = np.random.default_rng(1)
    A = (rng.normal(size=(50, 4000)) * 10.0 ** rng.integers(-6, 4, size=(50, 1))).astype(np.float32)
    A *= rng.random(A.shape) < 0.3
    A[3] = 0
    A[4, 10] = 7e4  # beyond float16's range: the row's scale takes it
    t = encode_adjacency(A, np.float32, half=True)
    assert t["adjacency_data"].dtype == np.float16 and t["adjacency_row_scale"].dtype == np.float32
    back = decode_adjacency(t, Path("x"))
    assert back.dtype == np.float32
    peak = np.abs(A).max(axis=1, keepdims=True)
    assert (np.abs(back - A) <= 2.0 ** -12 * peak * (1 + 1e-6)).all()
    assert back[4, 10] == np.float32(7e4) and not back[3].any()
    assert np.abs(back - A).max() > 0  # it is rounded: not silently full precision


def _rewrite(path: Path, edit) -> None:
    with safe_open(str(path), framework="numpy") as f:
        raw = f.metadata()
    t = load_file(str(path))
    edit(t)
    save_file(t, str(path), metadata=raw)


def _set(name, make):
    return lambda t: t.__setitem__(name, make(t[name]))


def _overlap(t):
    """The second run of a row with two runs starts where its first does."""
    pointer, runs = t["adjacency_row_runs"], t["adjacency_runs"].copy()
    first = pointer[:-1][np.diff(pointer) >= 2][0]
    runs[first + 1, 0] = runs[first, 0]
    t["adjacency_runs"] = runs


@pytest.mark.parametrize("edit, words", [
    (_set("adjacency_runs", lambda r: r + np.array([10**6, 0], np.int32)), "outside"),
    (_set("adjacency_runs", lambda r: r * np.array([1, 0], np.int32)), "empty"),
    (_overlap, "overlap"),
    (_set("adjacency_runs", lambda r: r[:, :1].copy()), "adjacency_runs"),
    (_set("adjacency_row_runs", lambda p: p[:-1]), "adjacency_row_runs"),
    (_set("adjacency_row_runs", lambda p: p[::-1].copy()), "do not agree"),
    (_set("adjacency_data", lambda d: d[:-1]), "do not cover"),
    (_set("adjacency_shape", lambda s: np.array([s[0], 10**12], np.int64)), "does not fit the graph"),
    (_set("adjacency_shape", lambda s: np.array([s[0], s[1] + 1], np.int64)), "does not fit the graph"),
    (lambda t: t.pop("adjacency_data"), "adjacency_data"),
    (lambda t: t.pop("adjacency_runs"), "adjacency_runs"),
    (_set("adjacency_data", lambda d: d.astype(np.int32)), "adjacency_data"),
    (lambda t: t.__setitem__("adjacency_row_scale", np.full(len(t["adjacency_row_runs"]) - 1, np.nan, np.float32)),
     "adjacency_row_scale"),
    (lambda t: t.__setitem__("adjacency_row_scale", np.ones(3, np.float32)), "adjacency_row_scale"),
])
def test_broken_sparse_files_are_refused(tmp_path, edit, words):
    path = save_graph(load_graph(OLD), tmp_path / "g", sparse=True)
    _rewrite(path, edit)
    with pytest.raises(GraphFormatError) as err:
        load_graph(path)
    assert words in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("edit, words", [
    (_set("adjacency_indices", lambda i: i.astype(np.int32) + 10**6), "column index"),
    (_set("adjacency_indptr", lambda p: p[:-1]), "adjacency_indptr"),
    (_set("adjacency_data", lambda d: d[:-1]), "do not agree"),
    (lambda t: t.pop("adjacency_indices"), "adjacency_indices"),
])
def test_broken_compressed_row_files_are_refused(tmp_path, edit, words):
    path = tmp_path / ROWS.name
    path.write_bytes(ROWS.read_bytes())
    _rewrite(path, edit)
    with pytest.raises(GraphFormatError) as err:
        load_graph(path)
    assert words in str(err.value) and "\n" not in str(err.value)


def test_verify_passes_on_a_sparse_file(tmp_path, capsys):
    path = save_graph(load_graph(OLD), tmp_path / "g", sparse=True)
    assert main(["verify", str(path)]) == 0
    assert "PASS" in capsys.readouterr().out


def _verify_figures(path, capsys) -> tuple[float, float, float]:
    """`verify`'s worst perturbation error (of the largest edge), worst sum-rule residual (relative)
    and tolerance; it must pass."""
    import re

    capsys.readouterr()
    assert main(["verify", str(path), "--sources", "8"]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out
    number = r"([-+.e\d]+)"
    return (float(re.search(rf"\({number} of the largest edge\)", out).group(1)),
            float(re.search(rf"sum rule: worst residual {number} \({number} relative\)", out).group(2)),
            float(re.search(rf"PASS \(tolerance {number} relative", out).group(1)))


def test_a_bfloat16_graph_is_exact_and_can_be_stored_at_half_precision(tmp_path, capsys):
    """The toy traced in bfloat16 from the command line. Its language model computes in float32
    (bfloat16 weights), so the graph is exact to float32 and verifies at float32's tolerance.
    With --half-edges the file holds float16 edges scaled per row: about half the bytes, each edge
    within 2^-12 of its row's largest, and verify passes at the half-precision tolerance with
    figures close to the exact file's."""
    from tracer.toy import world

    ex = world.make_example("heldout", 3, question_type="color")
    image = tmp_path / "scene.png"
    ex.image().save(image)
    common = ["attribute", "--prompt", ex.question, "--image", str(image), "--dtype", "bfloat16",
              "--max_feature_nodes", "200", "--quiet"]
    exact, half = tmp_path / "exact.graph.safetensors", tmp_path / "half.graph.safetensors"
    assert main(common + ["-o", str(exact)]) == 0
    assert main(common + ["-o", str(half), "--half-edges"]) == 0
    meta, names = _file(half)
    assert meta["version"] == 3 and meta["config"]["dtype"] == "bfloat16"
    assert meta["config"]["compute_dtype"] == "float32"
    assert "adjacency_row_scale" in names and "adjacency_row_scale" not in _file(exact)[1]
    t = load_file(str(half))
    assert t["adjacency_data"].dtype == np.float16
    g, h = load_graph(exact), load_graph(half)
    assert h.info["edges_stored_as"] == "float16" and "edges_stored_as" not in g.info
    peak = np.abs(g.adjacency).max(axis=1, keepdims=True)
    assert (np.abs(h.adjacency - g.adjacency) <= 2.0 ** -12 * peak * (1 + 1e-6)).all()
    # half the edge bytes of the same runs in float32 (a value below 2^-25 of its row's largest rounds to a
    # stored zero, so the counts differ slightly)
    full = load_file(str(save_graph(g, tmp_path / "full", sparse=True)))
    assert t["adjacency_data"].nbytes < 0.51 * full["adjacency_data"].nbytes
    assert (np.abs(g.sum_rule_residual()) / np.maximum(1, np.abs(g.values))).max() < 1e-4
    exact_figures, half_figures = _verify_figures(exact, capsys), _verify_figures(half, capsys)
    assert exact_figures[2] == 2e-3 and half_figures[2] == 5e-2
    assert max(exact_figures[:2]) < 1e-4
    assert np.allclose(half_figures[:2], exact_figures[:2], rtol=0, atol=5e-3), (half_figures, exact_figures)
    # re-saved without --half-edges, its edges are still the rounded ones and still say so
    again = load_graph(save_graph(h, tmp_path / "again"))
    assert again.info["edges_stored_as"] == "float16"


def test_float32_compute_leaves_the_bfloat16_weights_as_they_were():
    """Inside language_model_in_float32 the layers run with float32 weights; afterwards (and after
    a forward that raised) every parameter is the same bfloat16 tensor as before, not a copy."""
    import torch

    from tracer.models.base import get_adapter, prepare_prompt
    from tracer.models.loading import load_vlm
    from tracer.models.precision import language_model_in_float32
    from tracer.toy import world

    model, processor = load_vlm(None, dtype=torch.bfloat16)
    adapter = get_adapter(model)
    before = {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()}
    ex = world.make_example("heldout", 3, question_type="color")
    prompt = prepare_prompt(processor, ex.question, ex.image(), image_token_id=adapter.image_token_id,
                            tokens_per_image=adapter.tokens_per_image, adapter=adapter)
    seen = []
    probe = adapter.mlp(1).register_forward_hook(lambda m, a, o: seen.append((a[0].dtype, o.dtype)))
    with torch.no_grad(), language_model_in_float32(adapter):
        out = model(**adapter.model_inputs(prompt.inputs), use_cache=False, logits_to_keep=1)
    probe.remove()
    assert seen == [(torch.float32, torch.float32)] and out.logits.dtype == torch.float32
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == before

    def fail(module, args, output):
        raise RuntimeError("stop")
    handle = adapter.mlp(2).register_forward_hook(fail)
    with pytest.raises(RuntimeError), torch.no_grad(), language_model_in_float32(adapter):
        model(**adapter.model_inputs(prompt.inputs), use_cache=False, logits_to_keep=1)
    handle.remove()
    assert {name: (p.data_ptr(), p.dtype) for name, p in model.named_parameters()} == before
    assert not adapter.layer(0)._forward_pre_hooks  # its hooks are gone too
