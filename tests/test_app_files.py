"""The explorer's files: annotations (atomic writes), the graph folder (names from the browser
never escape it, broken files give messages), exports with labels, feature examples."""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from graph_factory import make_graph

from tracer.graph import GraphFormatError, save_graph
from tracer.graph.neuronpedia import validate_graph_json

from app import annotations as ann
from app.annotations import Annotations, AnnotationsError, annotations_path, load_annotations, update_annotations
from app.examples import FeatureExamples, thumbnail, token_window
from app.graph_store import GraphNotFound, GraphStore, export_graphml, export_neuronpedia, list_graph_files, resolve
from app.view.build import build_view


@pytest.fixture
def folder(tmp_path):
    save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    (tmp_path / "broken.graph.safetensors").write_bytes(b"not a safetensors file at all")
    (tmp_path / "notes.txt").write_text("not a graph")
    return tmp_path


# ---------------------------------------------------------------------------------- annotations
def test_annotations_round_trip(folder):
    graph = folder / "good.graph.safetensors"
    assert load_annotations(graph) == Annotations()
    update_annotations(graph, lambda a: a.set_label("F_0_1_5", "  red   detector "))
    update_annotations(graph, lambda a: a.toggle_pins(["F_0_1_5", "L_0"]))
    _, sid = update_annotations(graph, lambda a: a.group(["F_0_1_5", "E_3"], "colour"))
    update_annotations(graph, lambda a: a.hide(["R_1_6"]))
    a = load_annotations(graph)
    assert a.labels == {"F_0_1_5": "red detector"}
    assert a.pinned == ["F_0_1_5", "L_0"]
    assert a.supernodes == [{"id": sid, "label": "colour", "members": ["F_0_1_5", "E_3"]}]
    assert a.hidden == ["R_1_6"]
    assert annotations_path(graph).name == "good.graph.safetensors.annotations.json"
    raw = json.loads(annotations_path(graph).read_text())
    assert raw["format"] == "vlm-circuits-annotations" and raw["graph"] == "good.graph.safetensors"
    # toggling pins twice unpins; a supernode label is edited through set_label
    update_annotations(graph, lambda a: a.toggle_pins(["F_0_1_5", "L_0"]))
    update_annotations(graph, lambda a: a.set_label(sid, "color"))
    a = load_annotations(graph)
    assert a.pinned == [] and a.supernode(sid)["label"] == "color"
    update_annotations(graph, lambda a: a.ungroup(sid))
    assert load_annotations(graph).supernodes == []


def test_annotations_write_is_atomic(folder, monkeypatch):
    graph = folder / "good.graph.safetensors"
    update_annotations(graph, lambda a: a.set_label("L_0", "before"))
    before = annotations_path(graph).read_bytes()

    def crash(src, dst):
        raise OSError("simulated crash before the rename")

    monkeypatch.setattr(ann.os, "replace", crash)
    with pytest.raises(OSError):
        update_annotations(graph, lambda a: a.set_label("L_0", "after"))
    monkeypatch.undo()
    assert annotations_path(graph).read_bytes() == before  # the old file is intact
    assert load_annotations(graph).labels == {"L_0": "before"}
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []  # no temp file left


def test_broken_annotations_are_kept_aside(folder):
    graph = folder / "good.graph.safetensors"
    annotations_path(graph).write_text("{not json")
    with pytest.raises(AnnotationsError):
        load_annotations(graph)
    update_annotations(graph, lambda a: a.set_label("L_0", "fresh"))
    assert load_annotations(graph).labels == {"L_0": "fresh"}
    assert any(p.name.startswith("good.graph.safetensors.annotations.json.broken-") for p in folder.iterdir())


def test_group_needs_two_nodes():
    with pytest.raises(ValueError):
        Annotations().group(["F_0_1_5"], "x")


# ---------------------------------------------------------------------------------- the folder
def test_listing_skips_non_graphs(folder):
    update_annotations(folder / "good.graph.safetensors", lambda a: a.set_label("L_0", "x"))
    assert list_graph_files(folder) == ["broken.graph.safetensors", "good.graph.safetensors"]
    assert list_graph_files(folder / "missing") == []


@pytest.mark.parametrize("name", ["../good.graph.safetensors", "/etc/passwd", "sub/../good.graph.safetensors",
                                  "..", "", None, "good.graph.safetensors/..", "notes.txt",
                                  "%2e%2e/good.graph.safetensors", "GOOD.graph.safetensors"])
def test_names_outside_the_listing_are_rejected(folder, name):
    with pytest.raises(GraphNotFound):
        resolve(folder, name)


def test_symlink_out_of_the_folder_is_rejected(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("outside")
    save_graph(make_graph(seed=1), outside / "secret.graph.safetensors")
    os.symlink(outside / "secret.graph.safetensors", folder / "link.graph.safetensors")
    assert "link.graph.safetensors" in list_graph_files(folder)
    with pytest.raises(GraphNotFound):
        resolve(folder, "link.graph.safetensors")


def test_store_loads_and_reports_broken_files(folder):
    store = GraphStore(folder)
    session = store.session("good.graph.safetensors")
    assert session.graph.n_features > 0
    assert store.session("good.graph.safetensors") is session  # cached
    with pytest.raises(GraphFormatError) as err:
        store.session("broken.graph.safetensors")
    assert "broken.graph.safetensors" in str(err.value) and str(folder) not in str(err.value)
    with pytest.raises(GraphNotFound):
        store.session("../good.graph.safetensors")
    # a graph rewritten on disk is read again
    save_graph(make_graph(seed=2), folder / "good.graph.safetensors")
    assert store.session("good.graph.safetensors") is not session


def test_pickle_is_never_executed(folder):
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch " + str(folder / "pwned"),))

    (folder / "evil.pt").write_bytes(pickle.dumps({"x": Boom()}))
    store = GraphStore(folder)
    with pytest.raises(GraphFormatError):
        store.session("evil.pt")
    assert not (folder / "pwned").exists()


# ---------------------------------------------------------------------------------- exports
def test_exports_carry_labels_pins_and_supernodes(folder):
    store = GraphStore(folder)
    session = store.session("good.graph.safetensors")
    view = build_view(session, Annotations(), 0.8, 0.98)
    feats = [session.keys[i] for i in view.node_indices if session.keys[i].startswith("F_")][:3]
    a = Annotations(labels={feats[0]: "labelled one"}, pinned=[feats[0]],
                    supernodes=[{"id": "S_1", "label": "pair", "members": feats[1:3]}])
    data = json.loads(export_neuronpedia(session, view.node_indices, view.edge_mask, a, slug="good-view"))
    validate_graph_json(data)
    layer, feat, pos = feats[0].split("_")[1:]
    node = next(n for n in data["nodes"] if n["node_id"] == f"{layer}_{feat}_{pos}")
    assert node["clerp"] == "labelled one"
    assert data["qParams"]["pinnedIds"] == [node["node_id"]]
    assert data["qParams"]["supernodes"][0][0] == "pair" and len(data["qParams"]["supernodes"][0]) == 3
    assert len(data["links"]) == int(view.edge_mask.sum())
    text = export_graphml(session, view.node_indices, view.edge_mask, a)
    root = ET.fromstring(text)
    ns = {"g": "http://graphml.graphdrawing.org/xmlns"}
    assert len(root.findall(".//g:edge", ns)) == len(data["links"])
    assert "labelled one" in text


# ---------------------------------------------------------------------------------- examples
class FakeStore:
    def top_examples(self, layer, feature, k):
        img = np.zeros((64, 64, 3), np.uint8)
        tokens = ["<bos>", "<start_of_image>"] + ["<image_soft_token>"] * 64 + ["What", "color", "?"]
        return [{"value": 2.5, "text": "...", "tokens": tokens, "token_position": 10, "image": img,
                 "image_cell": (0, 1, 0), "tokens_per_side": 8},
                {"value": 1.0, "text": "What color ?", "tokens": ["What", "color", "?"], "token_position": 1,
                 "image": None, "image_cell": None}][:k]

    def firing_count(self, layer, feature):
        return 42


def test_feature_examples_with_and_without_a_store():
    ex, note = FeatureExamples(None, store=FakeStore()).top(1, 2, k=2)
    assert [e["value"] for e in ex] == [2.5, 1.0]
    assert ex[0]["thumb"].startswith("data:image/png;base64,") and ex[1]["thumb"] is None
    assert ("[image]", True) in ex[0]["tokens"] and sum(t == "[image]" for t, _ in ex[0]["tokens"]) == 1
    assert ("color", True) in ex[1]["tokens"]
    assert "42" in note
    none, note = FeatureExamples(None).top(1, 2)
    assert none == [] and "No feature-examples store" in note


def test_thumbnail_marks_the_cell():
    from PIL import Image
    import base64
    import io

    uri = thumbnail(np.zeros((64, 64, 3), np.uint8), (0, 2, 3), 8, size=64)
    img = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",")[1]))))
    assert img[16, 28].tolist() == [255, 0, 255]  # the outline of cell (2, 3)
    assert img[0, 0].tolist() == [0, 0, 0]


def test_token_window():
    toks = ["a"] * 30 + ["x"] + ["b"] * 30
    window = token_window(toks, 30, radius=3)
    assert window == [("a", False)] * 3 + [("x", True)] + [("b", False)] * 3
    assert token_window(["a", "\n"], 1) == [("a", False), ("\\n", True)]  # whitespace made visible


def test_viewer_json_graphs_open_in_the_explorer(folder):
    """A graph exported as Neuronpedia JSON is listed, opened and drawn like our own files."""
    store = GraphStore(folder)
    session = store.session("good.graph.safetensors")
    view = build_view(session, Annotations(), 0.8, 0.98)
    text = export_neuronpedia(session, view.node_indices, view.edge_mask, Annotations(), slug="good-view")
    (folder / "good-view.json").write_text(text)
    assert "good-view.json" in list_graph_files(folder)
    imported = store.session("good-view.json")
    again = build_view(imported, Annotations(), 0.8, 0.98)
    assert again.n_nodes > 0 and again.n_edges > 0
    assert np.isfinite(list(imported.scores.values())).all()
    assert len(imported.graph.images) == 1 and imported.graph.tokens_per_side == session.graph.tokens_per_side


def test_annotation_keys_are_bounded_node_ids(folder):
    graph = folder / "good.graph.safetensors"
    known = {"F_0_1_5": 0, "L_0": 1}
    with pytest.raises(AnnotationsError, match="not a node of the open graph"):
        update_annotations(graph, lambda a: a.set_label("F_9_9_9", "x", known))
    for key in ({"id": 1}, ["L_0"], 7, "", "F" * (ann.MAX_KEY + 1)):
        with pytest.raises(AnnotationsError, match="needs a node"):
            update_annotations(graph, lambda a: a.set_label(key, "x", known))
    update_annotations(graph, lambda a: a.set_label("F_0_1_5", "ok", known))
    # pins, hides and groups skip what is not a key, and groups that do not exist
    update_annotations(graph, lambda a: a.toggle_pins(["L_0", {"x": 1}, "S_99", "E" * 5000]))
    a = load_annotations(graph)
    assert a.labels == {"F_0_1_5": "ok"} and a.pinned == ["L_0"]
    # a file with an unbounded key is refused as broken (and kept aside by the next edit)
    raw = json.loads(annotations_path(graph).read_text())
    raw["labels"]["F" * 10_000] = "big"
    annotations_path(graph).write_text(json.dumps(raw))
    with pytest.raises(AnnotationsError, match="labels must map node ids"):
        load_annotations(graph)


def test_a_batch_folder_with_an_unreadable_summary_says_so_and_still_serves_its_graphs(tmp_path):
    """A batch folder (summary.parquet next to graphs/) whose summary is garbage: the batch panel
    shows why, the graphs in graphs/ are listed, and the page answers."""
    from graph_factory import make_graph

    from app.factory import create_app
    from tracer.graph import save_graph

    (tmp_path / "graphs").mkdir()
    save_graph(make_graph(seed=1), tmp_path / "graphs" / "one.graph.safetensors")
    (tmp_path / "summary.parquet").write_bytes(b"PAR1 not really parquet" * 10)
    app = create_app(tmp_path)
    assert app.state.store.names() == ["one.graph.safetensors"]
    client = app.server.test_client()
    layout = client.get("/_dash-layout")
    assert layout.status_code == 200
    assert "not a readable batch summary" in layout.get_data(as_text=True)


def test_a_store_of_another_transcoder_set_shows_no_examples_for_a_graph():
    """A folder may hold graphs of several models (the toy VLM's and Gemma 3 270M's): the store's
    examples belong to the transcoder set it was computed with, and only to graphs of that set."""
    store = FakeStore()
    store.manifest = {"transcoder": {"name": "toy-plt (shipped)", "source": "tracer/data/toy-plt"}}
    examples = FeatureExamples(None, store=store)
    assert examples.store_transcoders() == "toy-plt"
    same, _ = examples.top(1, 2, k=2, transcoders="toy-plt")
    assert len(same) == 2
    other, note = examples.top(1, 2, k=2, transcoders="tracer/data/gemma-3-270m-plt")
    assert other == [] and "computed with the transcoders toy-plt" in note and "gemma-3-270m-plt" in note
