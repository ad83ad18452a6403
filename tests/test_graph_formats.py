"""Other tools' graph formats: Neuronpedia / circuit-tracer JSON, reference .pt, GraphML, and the
`open_any_graph` / `list_graph_files` front door."""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import sys
import types
import xml.etree.ElementTree as ET
from typing import NamedTuple

import jsonschema
import numpy as np
import pytest
import torch

from graph_factory import make_graph
from tracer.graph import GraphFormatError, Target, load_graph, save_graph
from tracer.graph.formats import detect_format, list_graph_files, open_any_graph
from tracer.graph.graphml import export_graphml, graph_to_graphml
from tracer.graph.neuronpedia import (
    cantor, cantor_unpair, export_neuronpedia, graph_to_json, json_to_graph, load_neuronpedia_json, load_schema,
    node_ids, update_graph_metadata, validate_graph_json,
)
from tracer.graph.pruning import node_influence, prune
from tracer.graph.reference_pt import load_reference_pt, read_reference_pt


def edges_by_id(graph) -> dict[tuple[str, str], float]:
    ids = node_ids(graph)
    rows = np.concatenate([np.arange(graph.n_features), graph.logit_offset + np.arange(graph.n_logits)])
    out = {}
    for r, c in zip(*np.nonzero(graph.adjacency)):
        out[(ids[c], ids[rows[r]])] = float(graph.adjacency[r, c])
    return out


# ------------------------------------------------------------------------------ ids
def test_cantor_pairing_and_node_ids():
    for a, b in [(0, 0), (2, 7), (33, 163_839), (5, 0)]:
        assert cantor(a, b) == (a + b) * (a + b + 1) // 2 + b
        assert cantor_unpair(cantor(a, b)) == (a, b)
    g = make_graph()
    ids = node_ids(g)
    assert len(set(ids)) == g.n_nodes
    layer, pos, feat = g.features[0]
    assert ids[0] == f"{layer}_{feat}_{pos}"
    el, ep = g.errors[0]
    assert ids[g.error_offset] == f"{el}_-1_{ep}"
    assert ids[g.embedding_offset + 3] == f"E_{g.input_ids[3]}_3"
    assert ids[g.logit_offset] == f"{g.n_layers + 1}_{g.targets[0].token_id}_{g.n_positions - 1}"


# ------------------------------------------------------------------------------ Neuronpedia JSON
def test_unpruned_export_passes_schema_and_round_trips():
    g = make_graph(seed=1)
    data = graph_to_json(g)
    jsonschema.validate(data, load_schema())  # the schema file itself, with the real validator
    validate_graph_json(data)
    text = json.dumps(data, allow_nan=False)  # strict JSON: no NaN / Infinity
    back = json_to_graph(json.loads(text))

    # every edge survives with its weight, keyed by node id
    assert edges_by_id(back) == pytest.approx(edges_by_id(g), rel=0, abs=0)
    # features and activations
    src = {i: (tuple(f), a) for i, f, a in zip(node_ids(g), g.features.tolist(), g.activations.tolist())}
    for i, f, a in zip(node_ids(back), back.features.tolist(), back.activations.tolist()):
        assert src[i] == (tuple(f), pytest.approx(a))
    assert back.n_features == g.n_features  # all features of the synthetic graph are connected
    np.testing.assert_array_equal(back.input_ids, g.input_ids)
    assert back.tokens == g.tokens and back.prompt == g.prompt and back.n_layers == g.n_layers
    assert [t.to_dict() for t in back.targets] == [t.to_dict() for t in g.targets]
    np.testing.assert_array_equal(back.image_positions, g.image_positions)
    np.testing.assert_array_equal(back.image_grid, g.image_grid)
    assert back.tokens_per_side == g.tokens_per_side and back.prefix_length == g.prefix_length
    assert len(back.images) == 1 and np.array_equal(back.images[0], g.images[0])
    # unpruned export of our own graph: the sum rule is restored and closes
    assert back.info["sum_rule_checkable"] is True
    assert np.abs(back.sum_rule_residual()).max() < 1e-5
    # our file format accepts the imported graph
    assert back.slug == g.slug and back.scan == g.scan


def test_node_fields_follow_circuit_tracer():
    g = make_graph(seed=2)
    data = graph_to_json(g, slug="fields")
    by_id = {n["node_id"]: n for n in data["nodes"]}
    n_pos = g.n_positions
    layer, pos, feat = (int(x) for x in g.features[0])
    f = by_id[f"{layer}_{feat}_{pos}"]
    assert f["feature"] == cantor(layer, feat) and f["layer"] == str(layer) and f["ctx_idx"] == pos
    assert f["feature_type"] == "cross layer transcoder" and f["jsNodeId"] == f"{layer}_{feat}-0"
    assert f["activation"] == pytest.approx(float(g.activations[0]))
    assert f["reverse_ctx_idx"] == 0
    assert 0 < f["influence"] <= 1  # circuit-tracer's cumulative influence share
    errors = [n for n in data["nodes"] if n["feature_type"] == "mlp reconstruction error"]
    assert errors and all(n["node_id"].split("_")[1] == "-1" and n["feature"] == -1 for n in errors)
    embeds = [n for n in data["nodes"] if n["feature_type"] == "embedding"]
    assert len(embeds) == n_pos and all(n["layer"] == "E" for n in embeds)
    image = [n for n in embeds if "image_cell" in n]
    assert len(image) == len(g.image_positions)
    first = by_id[f"E_{g.input_ids[g.image_positions[0]]}_{g.image_positions[0]}"]
    assert first["image_cell"] == [int(v) for v in g.image_grid[0]]
    logits = [n for n in data["nodes"] if n["feature_type"] == "logit"]
    assert [n["is_target_logit"] for n in logits] == [True] + [False] * (len(logits) - 1)
    t = g.targets[0]
    assert logits[0]["node_id"] == f"{g.n_layers + 1}_{t.token_id}_{n_pos - 1}"
    assert logits[0]["clerp"] == f'Output "{t.label}" (p={t.probability:.3f})'
    assert logits[0]["layer"] == str(g.n_layers + 1) and logits[0]["token_prob"] == pytest.approx(t.probability)
    meta = data["metadata"]
    assert meta["schema_version"] == 1 and meta["slug"] == "fields" and meta["prompt_tokens"] == g.tokens
    assert meta["vlm"]["images"][0].startswith("data:image/png;base64,")
    assert set(data["qParams"]) == {"pinnedIds", "supernodes", "linkType", "clickedId", "sg_pos"}
    # link weight = A[target, source]
    ids = node_ids(g)
    r, c = map(int, np.argwhere(g.adjacency[: g.n_features] != 0)[0])
    link = next(x for x in data["links"] if x["source"] == ids[c] and x["target"] == ids[r])
    assert link["weight"] == pytest.approx(float(g.adjacency[r, c]))


def test_pruned_export_writes_files_and_metadata(tmp_path):
    g = make_graph(seed=3, n_features=40)
    pr = prune(g, 0.5, 0.8)
    path = export_neuronpedia(g, tmp_path, slug="pruned one", pruned=pr, labels={node_ids(g)[0]: "my label"},
                              supernodes=[["group", node_ids(g)[0], 1]], pinned_ids=[node_ids(g)[0]],
                              clicked_id=node_ids(g)[0])
    assert path.name == "pruned-one.json"
    data = json.loads(path.read_text())
    validate_graph_json(data)
    jsonschema.validate(data, load_schema())
    ids = node_ids(g)
    written = {n["node_id"] for n in data["nodes"]}
    kept = {ids[i] for i in np.flatnonzero(pr.node_mask)}
    always = {ids[i] for i in range(g.embedding_offset, g.n_nodes)}
    assert always <= written  # embeddings + logits always, as circuit-tracer writes them
    assert written - always <= kept
    rows = np.concatenate([np.arange(g.n_features), g.logit_offset + np.arange(g.n_logits)])
    expected = {(ids[c], ids[rows[r]]): float(g.adjacency[r, c])
                for r, c in zip(*np.nonzero(pr.edge_mask & (g.adjacency != 0)))}
    got = {(x["source"], x["target"]): x["weight"] for x in data["links"]}
    assert got == pytest.approx(expected)
    assert data["metadata"]["node_threshold"] == 0.5 and data["metadata"]["vlm"]["pruned"] is True
    if ids[0] in written:
        assert next(n for n in data["nodes"] if n["node_id"] == ids[0])["clerp"] == "my label"
    assert data["qParams"]["supernodes"] == [["group", ids[0], ids[1]]]
    assert data["qParams"]["pinnedIds"] == [ids[0]] and data["qParams"]["clickedId"] == ids[0]
    # pruned import: what the JSON has, the sum rule marked unavailable
    back = load_neuronpedia_json(path)
    assert back.info["sum_rule_checkable"] is False and np.isnan(back.values).all()
    assert back.n_features == sum(1 for n in data["nodes"] if n["feature_type"] == "cross layer transcoder")
    if ids[0] in written:
        assert back.info["clerps"][ids[0]] == "my label"

    # graph-metadata.json: one entry per slug, updated in place
    export_neuronpedia(g, tmp_path, slug="second")
    export_neuronpedia(g, tmp_path, slug="pruned one", node_threshold=0.9)
    meta = json.loads((tmp_path / "graph-metadata.json").read_text())
    slugs = [m["slug"] for m in meta["graphs"]]
    assert sorted(slugs) == ["pruned-one", "second"]
    entry = next(m for m in meta["graphs"] if m["slug"] == "pruned-one")
    assert entry["node_threshold"] == 0.9 and "vlm" not in entry
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".tmp")]


def test_graph_metadata_refuses_to_clobber_a_broken_index(tmp_path):
    (tmp_path / "graph-metadata.json").write_text("{broken")
    with pytest.raises(GraphFormatError, match="not valid JSON"):
        update_graph_metadata(tmp_path, {"slug": "x"})
    assert (tmp_path / "graph-metadata.json").read_text() == "{broken"


def test_direction_targets_use_virtual_ids():
    g = make_graph(seed=4)
    g.targets[1] = Target("red - blue", -1, 0.0, "direction", {"plus": ["red"], "minus": ["blue"]})
    g.config["vocab_size"] = 1000
    data = graph_to_json(g)
    jsonschema.validate(data, load_schema())
    logit = [n for n in data["nodes"] if n["feature_type"] == "logit"][1]
    assert logit["node_id"] == f"{g.n_layers + 1}_1000_{g.n_positions - 1}"
    assert logit["target_kind"] == "direction" and logit["clerp"] == 'Output "red - blue" (p=0.000)'
    # with our metadata, and without it (a viewer that dropped unknown keys keeps node fields only)
    for d in (data, {**data, "metadata": {k: v for k, v in data["metadata"].items() if k != "vlm"}}):
        back = json_to_graph(json.loads(json.dumps(d)))
        assert back.targets[1].token_id == -1 and back.targets[1].kind == "direction"
        assert back.targets[1].label == "red - blue"
        assert back.targets[0].token_id == g.targets[0].token_id


def plain_circuit_tracer_json(error_ids: str = "new") -> dict:
    """A small graph JSON as circuit-tracer writes it (no vlm extension)."""
    def node(nid, feature, layer, ctx, ftype, **kw):
        return {"node_id": nid, "feature": feature, "layer": layer, "ctx_idx": ctx, "feature_type": ftype,
                "token_prob": 0.0, "is_target_logit": False, "run_idx": 0, "reverse_ctx_idx": 0,
                "jsNodeId": nid, "clerp": "", "influence": 0.5, "activation": None, **kw}

    err = "0_-1_1" if error_ids == "new" else "0_0_1"  # old form: 0_{layer}_{pos}
    nodes = [
        node("E_2_0", 0, "E", 0, "embedding"), node("E_651_1", 1, "E", 1, "embedding"),
        node("0_5_1", cantor(0, 5), "0", 1, "cross layer transcoder", activation=2.5),
        node("1_7_1", cantor(1, 7), "1", 1, "cross layer transcoder", activation=1.0),
        node(err, -1, "0", 1, "mlp reconstruction error"),
        node("3_42_1", 42, "3", 1, "logit", token_prob=0.7, is_target_logit=True, clerp='Output " Paris" (p=0.700)'),
    ]
    links = [
        {"source": "E_651_1", "target": "0_5_1", "weight": 0.5},
        {"source": "0_5_1", "target": "1_7_1", "weight": 1.5},
        {"source": err, "target": "1_7_1", "weight": -0.25},
        {"source": "1_7_1", "target": "3_42_1", "weight": 2.0},
    ]
    meta = {"slug": "ct", "scan": "gemma-2-2b", "transcoder_list": [], "prompt_tokens": ["<bos>", " France"],
            "prompt": "<bos> France", "node_threshold": 0.8, "schema_version": 1}
    qp = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": qp, "nodes": nodes, "links": links}


def test_import_restores_pins_supernodes_and_labels():
    """qParams.pinnedIds, qParams.supernodes and clerps come back by node index; ids of nodes that
    are not in the file are dropped (a one-node group is no group)."""
    g = make_graph(seed=2)
    ids = node_ids(g)
    data = graph_to_json(g, labels={3: "red-ness", ids[5]: "blue-ish"}, pinned_ids=[1, ids[2], "9_9_9"],
                         supernodes=[["colour", ids[4], 6], {"label": "lonely", "members": [7, "9_9_9"]}])
    back = json_to_graph(json.loads(json.dumps(data)))
    ann = back.info["annotations"]
    assert sorted(ann["labels"]) == [[3, "red-ness"], [5, "blue-ish"]]
    assert ann["pinned"] == [1, 2]
    assert ann["supernodes"] == [{"label": "colour", "members": [4, 6]}]
    assert node_ids(back)[4] == ids[4]  # the indices are the same nodes
    plain = json_to_graph(json.loads(json.dumps(graph_to_json(g))))
    assert "annotations" not in plain.info


@pytest.mark.parametrize("error_ids", ["new", "old"])
def test_import_circuit_tracer_json(error_ids):
    data = plain_circuit_tracer_json(error_ids)
    jsonschema.validate(data, load_schema())
    g = json_to_graph(data)
    assert g.n_layers == 2 and g.n_features == 2 and g.n_errors == 1 and g.n_logits == 1
    np.testing.assert_array_equal(g.features, [[0, 1, 5], [1, 1, 7]])
    np.testing.assert_array_equal(g.errors, [[0, 1]])
    np.testing.assert_array_equal(g.input_ids, [2, 651])
    assert g.targets[0].label == " Paris" and g.targets[0].token_id == 42
    assert g.targets[0].probability == pytest.approx(0.7)
    full = g.full_adjacency()
    assert full[1, 0] == 1.5 and full[1, g.error_offset] == -0.25
    assert full[0, g.embedding_offset + 1] == 0.5 and full[g.logit_offset, 1] == 2.0
    assert g.info["sum_rule_checkable"] is False


def test_schema_and_import_reject_broken_json(tmp_path):
    data = plain_circuit_tracer_json()
    bad = json.loads(json.dumps(data))
    del bad["nodes"][0]["node_id"]
    with pytest.raises(GraphFormatError, match="node_id"):
        validate_graph_json(bad)
    bad = json.loads(json.dumps(data))
    bad["nodes"][2]["feature_type"] = "mystery"
    with pytest.raises(GraphFormatError):
        validate_graph_json(bad)
    with pytest.raises(GraphFormatError, match="unknown feature_type"):
        json_to_graph(bad)
    bad = json.loads(json.dumps(data))
    bad["links"].append({"source": "nowhere", "target": "1_7_1", "weight": 1.0})
    with pytest.raises(GraphFormatError, match="nowhere"):
        validate_graph_json(bad)
    with pytest.raises(GraphFormatError, match="nowhere"):
        json_to_graph(bad)
    bad = json.loads(json.dumps(data))
    bad["links"].append({"source": "0_5_1", "target": "E_2_0", "weight": 1.0})
    with pytest.raises(GraphFormatError, match="only features and logits"):
        json_to_graph(bad)
    p = tmp_path / "trunc.json"
    p.write_text(json.dumps(data)[:100])
    with pytest.raises(GraphFormatError, match="not valid JSON"):
        open_any_graph(p)


# ------------------------------------------------------------------------------ reference .pt
N_LAYERS, D_MODEL = 2, 16


@pytest.fixture
def circuit_tracer_classes():
    """Classes named like TransformerLens' and circuit-tracer's, importable only while saving."""
    names = ["transformer_lens", "transformer_lens.HookedTransformerConfig", "circuit_tracer",
             "circuit_tracer.attribution", "circuit_tracer.attribution.targets"]
    # the real packages (transformer-lens may be installed as a test extra) are set aside meanwhile
    saved = {n: m for n, m in sys.modules.items() if n.split(".")[0] in ("transformer_lens", "circuit_tracer")}
    for n in saved:
        del sys.modules[n]
    cfg_mod = types.ModuleType("transformer_lens.HookedTransformerConfig")

    @dataclasses.dataclass
    class HookedTransformerConfig:
        n_layers: int
        d_model: int
        n_ctx: int = 1024
        d_vocab: int = 300
        model_name: str = "toy-gemma"
        tokenizer_name: str = "not/a-local-tokenizer"
        dtype: torch.dtype = torch.float32
        original_architecture: str = "Gemma3ForCausalLM"

    HookedTransformerConfig.__module__ = cfg_mod.__name__
    HookedTransformerConfig.__qualname__ = "HookedTransformerConfig"
    cfg_mod.HookedTransformerConfig = HookedTransformerConfig

    tgt_mod = types.ModuleType("circuit_tracer.attribution.targets")

    class LogitTarget(NamedTuple):
        token_str: str
        vocab_idx: int

    LogitTarget.__module__ = tgt_mod.__name__
    LogitTarget.__qualname__ = "LogitTarget"
    tgt_mod.LogitTarget = LogitTarget
    mods = {n: types.ModuleType(n) for n in names}
    mods[cfg_mod.__name__] = cfg_mod
    mods[tgt_mod.__name__] = tgt_mod
    sys.modules.update(mods)
    try:
        yield HookedTransformerConfig, LogitTarget
    finally:
        for n in [n for n in sys.modules if n.split(".")[0] in ("transformer_lens", "circuit_tracer")]:
            sys.modules.pop(n, None)
        sys.modules.update(saved)


def unimportable(monkeypatch, *names):
    """Make `import name` fail, as if the package were not installed."""
    for n in [m for m in sys.modules if m.split(".")[0] in names]:
        monkeypatch.delitem(sys.modules, n)
    for n in names:
        monkeypatch.setitem(sys.modules, n, None)


def reference_dict(cfg_cls, seed=0, n_pos=5, n_active=9, n_sel=6, n_logits=2):
    rng = np.random.default_rng(seed)
    active = np.stack([rng.integers(0, N_LAYERS, n_active), rng.integers(0, n_pos, n_active),
                       rng.integers(0, 100, n_active)], 1)
    selected = np.sort(rng.choice(n_active, n_sel, replace=False))
    n = n_sel + N_LAYERS * n_pos + n_pos + n_logits
    adj = rng.normal(size=(n, n)).astype(np.float32)
    adj[n_sel: n - n_logits] = 0  # errors and tokens have no inputs
    return {
        "input_string": "<bos>The capital of France",
        "input_tokens": torch.tensor([2, 10, 11, 12, 13]),
        "adjacency_matrix": torch.from_numpy(adj),
        "active_features": torch.from_numpy(active),
        "selected_features": torch.from_numpy(selected),
        "activation_values": torch.from_numpy(rng.random(n_active).astype(np.float32)),
        "logit_tokens": torch.tensor([42, 7]),
        "logit_probabilities": torch.tensor([0.6, 0.3]),
        "cfg": cfg_cls(n_layers=N_LAYERS, d_model=D_MODEL),
        "scan": "toy-scan",
    }


def check_reference_graph(g, d):
    n_pos, n_sel = len(d["input_tokens"]), len(d["selected_features"])
    adj = d["adjacency_matrix"].numpy()
    sel = d["selected_features"].numpy()
    assert g.n_layers == N_LAYERS and g.n_positions == n_pos and g.n_features == n_sel
    np.testing.assert_array_equal(g.features, d["active_features"].numpy()[sel])
    np.testing.assert_allclose(g.activations, d["activation_values"].numpy()[sel])
    np.testing.assert_array_equal(g.errors, [(l, p) for l in range(N_LAYERS) for p in range(n_pos)])
    np.testing.assert_array_equal(g.input_ids, d["input_tokens"].numpy())
    # every node: the full matrix equals the reference one exactly (node order preserved)
    full = g.full_adjacency()
    assert full.shape == adj.shape
    np.testing.assert_array_equal(full, adj)
    for k, p in enumerate([0.6, 0.3]):
        assert g.targets[k].probability == pytest.approx(p)
    assert g.prompt == d["input_string"] and g.scan == "toy-scan"
    assert g.info["sum_rule_checkable"] is False
    assert g.info["cfg"]["d_model"] == D_MODEL


def test_reference_pt_written_like_circuit_tracer(tmp_path, circuit_tracer_classes, monkeypatch):
    cfg_cls, _ = circuit_tracer_classes
    d = reference_dict(cfg_cls)
    path = tmp_path / "graph.pt"
    torch.save(d, path)
    unimportable(monkeypatch, "transformer_lens", "circuit_tracer")
    with pytest.raises(ImportError):
        __import__("transformer_lens.HookedTransformerConfig")
    raw = read_reference_pt(path)
    assert raw["cfg"].name == "HookedTransformerConfig" and raw["cfg"].get("n_layers") == N_LAYERS
    g = load_reference_pt(path)
    check_reference_graph(g, d)
    assert [t.token_id for t in g.targets] == [42, 7] and g.targets[0].label == "<42>"
    assert detect_format(path) == "reference-pt"
    g2 = open_any_graph(path)
    np.testing.assert_array_equal(g2.adjacency, g.adjacency)
    # our file format takes it
    save_graph(g, tmp_path / "g.graph.safetensors")
    np.testing.assert_array_equal(load_graph(tmp_path / "g.graph.safetensors").adjacency, g.adjacency)


def test_reference_pt_newer_fields(tmp_path, circuit_tracer_classes, monkeypatch):
    """Newer circuit-tracer: logit_targets (LogitTarget records), scan_name, vocab_size."""
    cfg_cls, target_cls = circuit_tracer_classes
    d = reference_dict(cfg_cls, seed=1)
    del d["logit_tokens"]
    d["logit_targets"] = [target_cls(" Paris", 42), target_cls(" Lyon", 7)]
    d["scan_name"] = d.pop("scan")
    d["vocab_size"] = 300
    path = tmp_path / "newer.pt"
    torch.save(d, path)
    unimportable(monkeypatch, "transformer_lens", "circuit_tracer")
    g = load_reference_pt(path)
    check_reference_graph(g, {**d, "scan": d["scan_name"]})
    assert [(t.label, t.token_id) for t in g.targets] == [(" Paris", 42), (" Lyon", 7)]
    assert g.config["vocab_size"] == 300


def test_reference_pt_with_tokenizer_and_bad_shapes(tmp_path, circuit_tracer_classes):
    cfg_cls, _ = circuit_tracer_classes

    class Tok:
        def decode(self, ids):
            return f"t{ids[0]}"

    d = reference_dict(cfg_cls, seed=2)
    torch.save(d, tmp_path / "ok.pt")
    g = load_reference_pt(tmp_path / "ok.pt", tokenizer=Tok())
    assert g.tokens[1] == "t10" and g.targets[0].label == "t42"
    d["adjacency_matrix"] = d["adjacency_matrix"][:-1, :-1]
    torch.save(d, tmp_path / "bad.pt")
    with pytest.raises(GraphFormatError, match="nodes"):
        load_reference_pt(tmp_path / "bad.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(GraphFormatError, match="missing"):
        open_any_graph(tmp_path / "other.pt")


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pt_does_not_run(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"input_string": "x", "cfg": _Evil(marker)}, tmp_path / "evil.pt")  # zip format
    (tmp_path / "evil_raw.pt").write_bytes(pickle.dumps({"cfg": _Evil(marker)}, protocol=2))  # bare pickle
    (tmp_path / "evil_eval.pt").write_bytes(pickle.dumps({"cfg": _EvilEval()}, protocol=2))
    for name in ("evil.pt", "evil_raw.pt", "evil_eval.pt"):
        with pytest.raises(GraphFormatError):
            load_reference_pt(tmp_path / name)
        with pytest.raises(GraphFormatError):
            open_any_graph(tmp_path / name)
    assert not marker.exists()
    assert "PWNED_EVAL" not in os.environ


class _EvilEval:
    def __reduce__(self):
        return (eval, ("__import__('os').environ.__setitem__('PWNED_EVAL', '1')",))


# ------------------------------------------------------------------------------ GraphML
def test_graphml_export(tmp_path):
    g = make_graph(seed=5)
    g.info["clerps"] = {node_ids(g)[0]: "first feature"}
    path = export_graphml(g, tmp_path)
    assert path.name == f"{g.slug}.graphml"
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    root = ET.parse(path).getroot()
    keys = {k.get("id"): k.get("attr.name") for k in root.findall("g:key", ns)}
    assert {"kind", "layer", "position", "feature", "label", "influence", "activation", "weight"} <= set(keys.values())
    nodes = {n.get("id"): {keys[d.get("key")]: d.text for d in n.findall("g:data", ns)}
             for n in root.iter(f"{{{ns['g']}}}node")}
    edges = {(e.get("source"), e.get("target")): float(e.find("g:data", ns).text)
             for e in root.iter(f"{{{ns['g']}}}edge")}
    assert edges == pytest.approx(edges_by_id(g))
    ids = node_ids(g)
    first = nodes[ids[0]]
    assert first["kind"] == "feature" and first["label"] == "first feature"
    assert int(first["layer"]) == g.features[0, 0] and int(first["feature"]) == g.features[0, 2]
    assert float(first["activation"]) == pytest.approx(float(g.activations[0]))
    assert float(first["influence"]) == pytest.approx(node_influence(g)[0])
    img = nodes[ids[g.embedding_offset + int(g.image_positions[0])]]
    assert img["kind"] == "embedding" and img["is_image"] == "true" and int(img["row"]) == g.image_grid[0, 1]
    # pruned
    pr = prune(g, 0.5, 0.8)
    tree = graph_to_graphml(g, pr)
    n_edges = sum(1 for _ in tree.getroot().iter(f"{{{ns['g']}}}edge"))
    assert n_edges == int((pr.edge_mask & (g.adjacency != 0)).sum())


# ------------------------------------------------------------------------------ front door
def test_open_any_graph_and_list_graph_files(tmp_path):
    g = make_graph(seed=6)
    save_graph(g, tmp_path / "ours.graph.safetensors")
    export_neuronpedia(g, tmp_path, slug="viewer", prune=False)
    (tmp_path / "notes.json").write_text(json.dumps({"hello": 1}))
    (tmp_path / "ours.graph.safetensors.annotations.json").write_text("{}")
    (tmp_path / "readme.txt").write_text("x")
    (tmp_path / "broken.json").write_text("{not json")
    files = list_graph_files(tmp_path)
    assert [(f.name, f.format) for f in files] == [("broken", "neuronpedia"), ("ours", "vlm-circuits"),
                                                   ("viewer", "neuronpedia")]
    assert os.fspath(files[1]) == str(tmp_path / "ours.graph.safetensors")
    assert open_any_graph(files[1]).n_features == g.n_features
    assert open_any_graph(tmp_path / "viewer.json").n_logits == g.n_logits
    with pytest.raises(GraphFormatError, match="not valid JSON"):
        files[0].open()


@pytest.mark.parametrize("name,content,match", [
    ("missing.json", None, "no such file"),
    ("empty.pt", b"", "empty"),
    ("garbage.pt", b"\x00\x01garbage bytes", "not a readable reference graph"),
    ("garbage.graph.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}", "not a graph file"),
    ("image.png", b"\x89PNG\r\n\x1a\n....", "not a graph file"),
    ("x.graphml", b"<graphml/>", "export format only"),
    ("index.json", b'{"graphs": []}', "graph-metadata"),
    ("list.json", b"[1, 2]", "top level must be an object"),
])
def test_open_any_graph_clear_errors(tmp_path, name, content, match):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(GraphFormatError, match=match):
        open_any_graph(path)


def test_cli_export_and_import(tmp_path, capsys):
    from tracer.cli import main

    g = make_graph(seed=7)
    src = save_graph(g, tmp_path / "g.graph.safetensors")
    out = tmp_path / "out"
    assert main(["export", str(src), "--format", "neuronpedia", "--out", str(out),
                 "--node_threshold", "0.6", "--edge_threshold", "0.9"]) == 0
    data = json.loads((out / f"{g.slug}.json").read_text())
    validate_graph_json(data)
    assert data["metadata"]["node_threshold"] == 0.6
    assert main(["export", str(src), "--format", "graphml", "--out", str(out), "--node-threshold", "0.7",
                 "--edge-threshold", "0.95"]) == 0
    assert (out / f"{g.slug}.graphml").exists()
    labels = tmp_path / "labels.json"
    labels.write_text(json.dumps({"labels": {node_ids(g)[0]: "hello"}, "pinned": [node_ids(g)[0]]}))
    assert main(["export", str(src), "--out", str(out), "--no-prune", "--slug", "full", "--labels", str(labels)]) == 0
    full = json.loads((out / "full.json").read_text())
    assert next(n for n in full["nodes"] if n["node_id"] == node_ids(g)[0])["clerp"] == "hello"
    assert main(["import", str(out / "full.json"), "--out", str(tmp_path / "back.graph.safetensors")]) == 0
    back = load_graph(tmp_path / "back.graph.safetensors")
    assert edges_by_id(back) == pytest.approx(edges_by_id(g))
    assert main(["import", str(tmp_path / "labels.json"), "--out", str(tmp_path / "x.graph.safetensors")]) == 2
    assert "error:" in capsys.readouterr().err


def test_target_probability_text_attention_labels_and_carrier_layers():
    from tracer.graph.graph import ATTENTION_GRAPH, carrier_layers

    assert Target("red", 44, 0.98123).probability_text() == "p=0.981"
    contrast = Target("red - blue", -1, 0.0, "direction", {"plus": [44], "minus": [58], "labels": ["red", "blue"],
                                                         "probabilities": [0.93, 0.041]})
    assert contrast.probability_text() == "p(red)=0.930, p(blue)=0.041"
    assert Target("custom", -1, 0.0, "direction", {"plus": [1]}).probability_text() == "a direction"
    g = make_graph(seed=1, n_layers=3)
    g.targets[0] = contrast
    assert g.node_label(g.logit_offset) == "logit 'red - blue' (p(red)=0.930, p(blue)=0.041)"
    i = 0
    layer, pos, feat = (int(x) for x in g.features[i])
    assert g.node_label(i).startswith(f"L{layer} #{feat} @{pos}")
    g.info["kind"] = ATTENTION_GRAPH
    assert g.node_label(i).startswith(f"resid L{layer} @{pos}")
    # heads between a source and a target: after the source's layer, up to the target's
    top = next(k for k in range(g.n_features) if g.features[k, 0] == 2)
    low = next(k for k in range(g.n_features) if g.features[k, 0] == 0)
    assert carrier_layers(g, g.logit_offset, top) == range(3, 3)  # a last-layer feature into a logit: none
    assert carrier_layers(g, g.logit_offset, low) == range(1, 3)
    assert carrier_layers(g, top, low) == range(1, 3)
    assert carrier_layers(g, top, g.embedding_offset) == range(0, 3)
    assert carrier_layers(g, top, g.error_offset) == range(int(g.errors[0, 0]) + 1, 3)
    with pytest.raises(ValueError):
        carrier_layers(g, g.embedding_offset, low)


def test_safetensors_header_read_alone_matches_the_tensors(tmp_path):
    """The header checks (tracer.files.read_safetensors_header) agree with safetensors itself on a
    real graph file, and every graph we write passes the stricter Graph.validate on reading."""
    from safetensors.numpy import load_file

    from tracer.files import read_safetensors_header

    g = make_graph(seed=3)
    path = save_graph(g, tmp_path / "g.graph.safetensors")
    tensors, meta = read_safetensors_header(path)
    loaded = load_file(str(path))
    assert set(tensors) == set(loaded) and "vlm_circuits_graph" in meta
    for name, (dtype, shape, nbytes) in tensors.items():
        assert shape == loaded[name].shape and nbytes == loaded[name].nbytes
    back = load_graph(path)
    back.validate()
    assert back.n_layers == g.n_layers and len(back.images) == len(g.images)


@pytest.mark.parametrize("field, value, words", [
    ("n_layers", 10**12, "n_layers"), ("n_layers", "3", "n_layers"), ("tokens_per_side", -1, "tokens_per_side"),
    ("prefix_length", 10**6, "prefix_length"), ("images", [np.zeros((4, 4), np.uint8)], "image_0"),
    ("adjacency", None, "adjacency must hold floating-point"), ("config", [], "config"),
])
def test_graph_validate_refuses_bad_fields(tmp_path, field, value, words):
    g = make_graph(seed=0)
    if field == "adjacency":
        value = g.adjacency.astype(np.int64)
    setattr(g, field, value)
    with pytest.raises(GraphFormatError, match=words):
        g.validate()
    with pytest.raises(GraphFormatError, match=words):
        save_graph(g, tmp_path / "never-written.graph.safetensors")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("link, words", [
    ("a link", "not an object"),
    ({"source": "0_5_1", "target": "1_7_1"}, "lacks 'weight'"),
    ({"source": "0_5_1", "target": 7, "weight": 1.0}, "string source and target"),
    ({"source": "0_5_1", "target": "1_7_1", "weight": True}, "not a number"),
    ({"source": "0_5_1", "target": "1_7_1", "weight": "1.0"}, "not a number"),
])
def test_every_link_is_checked_however_many_there_are(link, words):
    """Links are checked by hand (the schema validator sees only the first few of a long list):
    a bad one far down the list is still found, named by its place."""
    data = plain_circuit_tracer_json()
    good = data["links"][0]
    data["links"] = [dict(good) for _ in range(5000)] + [link]
    with pytest.raises(GraphFormatError, match=f"links/5000: the link .*{words}"):
        validate_graph_json(data)
    data["links"][-1] = dict(good, weight=2)  # an integer weight is a number
    validate_graph_json(data)
