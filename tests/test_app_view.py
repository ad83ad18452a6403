"""The explorer's computations (no browser): layout, pruning to a display budget, region
circuits, the displayed view, selection highlights, node details."""

from __future__ import annotations

import numpy as np
import pytest

from graph_factory import make_graph

from tracer.graph import Graph, Target
from tracer.graph.pruning import influence_from

from app.annotations import Annotations
from app.view.budget import prune_to_budget
from app.view.build import PINNED, build_view, drawn_elements, edges_payload
from app.view.details import feature_position_activations, image_heat, node_details
from app.view.keys import node_keys
from app.view.positions import AXIS, LOGITS, SLOT, SLOT_ERROR, PITCH, compute_positions
from app.view.region import region_circuit
from app.view.session import GraphSession


@pytest.fixture(scope="module")
def image_graph():
    return make_graph(seed=3, n_layers=4, n_pos=81, n_features=260, n_logits=3, image_side=8)


@pytest.fixture(scope="module")
def session(image_graph):
    return GraphSession(image_graph, "img.graph.safetensors", None)


# ---------------------------------------------------------------------------------- layout
def place(g, indices):
    """compute_positions for graph nodes: embeddings on the axis, layers, logits on top."""
    kinds, layers = g.node_kinds()[indices], g.node_layers()[indices]
    levels = np.where(kinds == "embedding", AXIS, np.where(kinds == "logit", LOGITS, layers))
    return compute_positions(g, levels, np.maximum(g.node_positions()[indices], 0), -np.arange(len(indices)),
                             np.where(kinds == "error", SLOT_ERROR, SLOT))


def test_layout_levels_and_columns(image_graph):
    g = image_graph
    idx = np.arange(g.n_nodes)
    xy = place(g, idx).xy
    y = xy[:, 1]
    layers = g.node_layers()
    # embeddings on the axis at the bottom (largest y: cytoscape's y grows downwards), logits on top
    assert y[g.embedding_offset: g.logit_offset].min() > y[: g.logit_offset][layers[: g.logit_offset] >= 0].max()
    assert y[g.logit_offset:].max() < y[: g.logit_offset].min()
    # each layer in its own band, bands ordered by layer
    bands = [y[: g.embedding_offset][layers[: g.embedding_offset] == l] for l in range(g.n_layers)]
    for lower, upper in zip(bands, bands[1:]):
        assert lower.min() > upper.max()
    # text tokens along the axis in prompt order; every node of a text position sits in that
    # position's column, between its neighbours' columns
    image = g.is_image_position()
    text = np.flatnonzero(~image)
    emb_x = xy[g.embedding_offset: g.logit_offset, 0]
    assert np.all(np.diff(emb_x[text]) > 0) and np.all(y[g.embedding_offset + text] == 0)
    pos = g.node_positions()
    for k in range(g.n_errors):
        i = g.error_offset + k
        p = pos[i]
        if image[p]:
            continue
        left = emb_x[p - 1] if p > 0 else -np.inf
        right = emb_x[p + 1] if p + 1 < g.n_positions else np.inf
        assert left < xy[i, 0] < right


def test_layout_image_block_is_its_grid(image_graph):
    """The soft tokens fold into the image's grid below the axis; nodes at image positions sit
    above the block, between the text before and after it."""
    g = image_graph
    placement = place(g, np.arange(g.n_nodes))
    xy = placement.xy
    first, last = int(g.image_positions[0]), int(g.image_positions[-1])
    for p, (_, row, col) in zip(g.image_positions.tolist(), g.image_grid.tolist()):
        x, y = xy[g.embedding_offset + p]
        assert y == pytest.approx(row * PITCH) and x == pytest.approx(xy[g.embedding_offset + first, 0] + col * PITCH)
    assert len(placement.image_blocks) == 1
    image, x0, x1, bottom = placement.image_blocks[0]
    assert image == 0 and bottom == pytest.approx(8 * PITCH)
    before, after = xy[g.embedding_offset + first - 1, 0], xy[g.embedding_offset + last + 1, 0]
    assert before < x0 < x1 < after
    at_image = np.flatnonzero(g.is_image_position()[np.maximum(g.node_positions()[: g.embedding_offset], 0)])
    assert len(at_image) and np.all((xy[at_image, 0] > before) & (xy[at_image, 0] < after))


def test_layout_no_overlaps():
    """Nodes keep their slot apart (labelled nodes SLOT, errors SLOT_ERROR, sub-rows ROW): no
    node is drawn on another, however busy a cell is."""
    g = make_graph(seed=9, n_layers=2, n_pos=12, n_features=200, n_logits=2, image_side=2)
    idx = np.arange(g.embedding_offset)
    xy = place(g, idx).xy
    d = np.sqrt(((xy[:, None, :] - xy[None, :, :]) ** 2).sum(-1)) + np.eye(len(idx)) * 1e9
    assert d.min() >= SLOT_ERROR - 1e-9


def test_layout_of_a_subset_is_compact(image_graph):
    g = image_graph
    few = np.array([0, 1, g.embedding_offset + 5, g.logit_offset])
    full = place(g, few)
    levels = np.array([int(g.node_layers()[0]), int(g.node_layers()[1]), AXIS, LOGITS])
    compact = compute_positions(g, levels, np.maximum(g.node_positions()[few], 0), np.zeros(4), compact=True)
    assert full.xy.shape == (4, 2) and np.isfinite(full.xy).all()
    assert np.ptp(compact.xy[:, 0]) < np.ptp(full.xy[:, 0])  # no columns for positions without nodes


# ---------------------------------------------------------------------------------- pruning
def test_prune_to_budget_limits_nodes_and_edges():
    g = make_graph(seed=5, n_layers=4, n_pos=81, n_features=1500, n_logits=4, image_side=8)
    for max_nodes, max_edges in [(1000, 5000), (300, 1200), (60, 200)]:
        view = prune_to_budget(g, 1.0, 1.0, max_nodes, max_edges)
        assert view.n_nodes <= max_nodes and view.n_edges <= max_edges
        assert view.truncated
        assert view.node_mask[g.logit_offset:].all()  # logits always stay
        em = view.edge_mask
        rows = np.concatenate([np.arange(g.n_features), g.logit_offset + np.arange(g.n_logits)])
        assert not (em & ~view.node_mask[None, :]).any()  # no edge to or from a dropped node
        assert not (em & ~view.node_mask[rows][:, None]).any()
        # every kept feature has an input and an output, every kept error / embedding an output
        has_out = em.any(0)
        has_in = np.zeros(g.n_nodes, bool)
        has_in[rows] = em.any(1)
        kept = np.flatnonzero(view.node_mask)
        kinds = g.node_kinds()
        for i in kept:
            if kinds[i] == "feature":
                assert has_in[i] and has_out[i]
            elif kinds[i] in ("error", "embedding"):
                assert has_out[i]
    # the most influential features survive a tight budget
    small = prune_to_budget(g, 1.0, 1.0, 60, 200)
    big = prune_to_budget(g, 1.0, 1.0, 1000, 5000)
    assert small.n_nodes < big.n_nodes
    inf = small.node_influence[: g.n_features]
    kept_f = np.flatnonzero(small.node_mask[: g.n_features])
    assert inf[kept_f].mean() > inf[np.flatnonzero(big.node_mask[: g.n_features])].mean()


def test_lower_node_threshold_keeps_fewer_nodes(session):
    counts = [session.budget(t, 0.98).n_nodes for t in (0.2, 0.5, 0.8)]
    assert counts[0] < counts[1] <= counts[2]


# ---------------------------------------------------------------------------------- region circuit
def chain_graph() -> Graph:
    """2x1 image grid: cell (0,0) feeds feature a (layer 0), cell (0,1) feeds feature b; a and b
    feed the logit with weights 3 and 1. Positions: 0 <bos>, 1..2 image, 3 text."""
    tokens = ["<bos>", "<image_soft_token>", "<image_soft_token>", "?"]
    features = np.array([[0, 1, 7], [0, 2, 8]])
    errors = np.zeros((0, 2), np.int64)
    n_nodes = 2 + 0 + 4 + 1
    adjacency = np.zeros((3, n_nodes), np.float32)
    adjacency[0, 2 + 1] = 2.0  # E1 -> a
    adjacency[1, 2 + 2] = 5.0  # E2 -> b
    adjacency[2, 0] = 3.0  # a -> logit
    adjacency[2, 1] = 1.0  # b -> logit
    g = Graph(prompt="".join(tokens), input_ids=np.arange(4), tokens=tokens, n_layers=1, features=features,
              activations=np.array([1.0, 1.0], np.float32), errors=errors, targets=[Target("yes", 5, 0.9)],
              adjacency=adjacency, values=adjacency.sum(1).astype(np.float64), constants=np.zeros(3),
              unexplored=np.zeros(3), image_positions=np.array([1, 2]), image_grid=np.array([[0, 0, 0], [0, 0, 1]]),
              tokens_per_side=2, images=[np.zeros((8, 16, 3), np.uint8)])
    g.validate()
    return g


def test_region_circuit_on_a_hand_made_graph():
    g = chain_graph()
    s = GraphSession(g, "chain.graph.safetensors")
    view = build_view(s, Annotations(), 1.0, 1.0)
    assert set(view.display_of.values()) == {"F_0_7_1", "F_0_8_2", "E_1", "E_2", "L_0"}
    left = region_circuit(s, view, 0, [(0, 0)])
    assert set(left["nodes"]) == {"E_1", "F_0_7_1", "L_0"}
    assert left["logits"][0]["share_view"] == pytest.approx(0.75)  # 3 / (3 + 1)
    assert left["logits"][0]["share_full"] == pytest.approx(0.75)
    right = region_circuit(s, view, 0, [(0, 1)])
    assert set(right["nodes"]) == {"E_2", "F_0_8_2", "L_0"}
    assert right["logits"][0]["share_view"] == pytest.approx(0.25)
    both = region_circuit(s, view, 0, [(0, 0), (0, 1)])
    assert both["logits"][0]["share_view"] == pytest.approx(1.0)
    assert region_circuit(s, view, 0, [(5, 5)])["nodes"] == []  # outside the grid


def test_region_circuit_matches_influence_from(session):
    view = build_view(session, Annotations(), 0.8, 0.98)
    cells = [(2, 3), (2, 4), (3, 3)]
    got = region_circuit(session, view, 0, cells)
    sources = session.cell_nodes(0, cells)
    ref = influence_from(session.graph, sources, view.edge_mask)
    shown = np.zeros(session.graph.n_nodes, bool)
    shown[view.node_indices] = True
    assert set(got["nodes"]) == {session.keys[i] for i in np.flatnonzero(ref["reachable"] & shown)}
    assert [r["share_view"] for r in got["logits"]] == pytest.approx(list(ref["logit_share"]))
    assert all(0.0 <= r["share_view"] <= 1.0 + 1e-9 for r in got["logits"])


# ---------------------------------------------------------------------------------- the view
def test_view_elements(session):
    view = build_view(session, Annotations(), 0.8, 0.98)
    nodes = [e for e in view.elements if "source" not in e["data"] and e["data"]["kind"] not in ("axis", "block")]
    edges = [e for e in view.elements if "source" in e["data"]]
    assert len(nodes) == view.n_nodes and len(edges) == view.n_edges
    # the whole token axis is drawn; embeddings the pruning dropped are marked off-view
    emb = [e for e in nodes if e["data"]["kind"] in ("text", "image")]
    assert len(emb) == session.graph.n_embeddings
    assert {e["data"]["id"] for e in emb if not e["data"].get("offview")} == {
        session.keys[i] for i in view.node_indices if session.kinds[i] == "embedding"}
    ids = {e["data"]["id"] for e in nodes}
    assert all(e["data"]["source"] in ids and e["data"]["target"] in ids for e in edges)
    assert all("label" in e["data"] for e in view.elements if "source" not in e["data"])  # cytoscape warns otherwise
    kinds = {e["data"]["kind"] for e in nodes}
    assert {"feature", "error", "image", "text", "logit"} <= kinds
    colours = {e["data"]["color"] for e in edges}
    assert colours <= {"#2f6fbf", "#d0453a"} and len(colours) == 2  # by sign
    widths = [e["data"]["width"] for e in edges]
    assert min(widths) >= 0.8 and max(widths) <= 6.0
    # image patches take the mean colour of their pixels
    img = [e for e in nodes if e["data"]["kind"] == "image"]
    assert all(e["data"]["color"].startswith("#") and len(e["data"]["color"]) == 7 for e in img)
    # edges on demand: the browser gets nodes only (the edge list goes separately), unless
    # all edges are asked for
    assert drawn_elements(view, True) == view.nodes + view.edge_elements
    assert not [e for e in drawn_elements(view, False) if "source" in e["data"]]
    payload = edges_payload(view)
    assert {(s, t) for s, t, _, _ in payload} == {(e["data"]["source"], e["data"]["target"]) for e in edges}
    assert all(w == e["data"]["weight"] for (_, _, w, _), e in zip(payload, edges))


def test_feature_budget(session):
    """At most max_features features, the most influential first; labels say the layer and
    feature index; feature colour deepens with activation."""
    full = build_view(session, Annotations(), 0.8, 0.98)
    small = build_view(session, Annotations(), 0.8, 0.98, max_features=12)
    assert small.n_features == 12 < full.n_features == small.n_features_threshold
    inf = session.influence
    kept = small.node_indices[session.kinds[small.node_indices] == "feature"]
    others = full.node_indices[(session.kinds[full.node_indices] == "feature") & ~np.isin(full.node_indices, kept)]
    assert inf[kept].min() >= inf[others].max()
    data = {n["data"]["id"]: n["data"] for n in small.nodes}
    g = session.graph
    acts = np.abs(g.activations[kept])
    strongest, weakest = session.keys[kept[np.argmax(acts)]], session.keys[kept[np.argmin(acts)]]
    layer, _, feat = g.features[kept[0]]
    assert data[session.keys[kept[0]]]["display"] == f"L{layer} #{feat}"
    deep = lambda c: int(c[3:5], 16)  # the green channel falls as the orange deepens
    assert deep(data[strongest]["color"]) < deep(data[weakest]["color"])


def test_patch_thumbnails(session):
    """Every image soft token is drawn as the patch of the input image it stands for."""
    import base64
    import io

    from PIL import Image

    g = session.graph
    view = build_view(session, Annotations(), 0.8, 0.98)
    data = {n["data"]["id"]: n["data"] for n in view.nodes}
    rows, cols = session.grid_shape(0)
    img = np.asarray(g.images[0])
    h, w = img.shape[0] // rows, img.shape[1] // cols
    for p, (_, row, col) in zip(g.image_positions.tolist(), g.image_grid.tolist()):
        uri = data[session.keys[g.embedding_offset + p]]["thumb"]
        thumb = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"))
        patch = img[row * h:(row + 1) * h, col * w:(col + 1) * w]
        assert thumb.shape == (24, 24, 3)
        assert np.array_equal(thumb[0, 0], patch[0, 0]) and np.array_equal(thumb[-1, -1], patch[-1, -1])


def test_view_hidden_pinned_supernodes(session):
    base = build_view(session, Annotations(), 0.8, 0.98)
    feats = [k for k in (session.keys[i] for i in base.node_indices) if k.startswith("F_")][:4]
    a = Annotations(labels={feats[0]: "my label"}, hidden=[feats[1]], pinned=[feats[0], feats[2]],
                    supernodes=[{"id": "S_1", "label": "group", "members": [feats[2], feats[3]]}])
    view = build_view(session, a, 0.8, 0.98)
    shown = {e["data"]["id"]: e["data"] for e in view.elements}
    assert feats[1] not in shown and view.n_hidden == 1
    assert shown[feats[0]]["label"] == "my label" and shown[feats[0]].get("pinned")
    assert feats[2] not in shown and feats[3] not in shown and shown["S_1"]["kind"] == "supernode"
    assert view.n_nodes == base.n_nodes - 1 - 1  # one hidden, two merged into one
    assert all(e[0] != e[1] for e in view.edges)  # no self loops from merging
    # the supernode has a place of its own (it used to sit on one of the nodes, hiding it)
    xy = {n["data"]["id"]: (n["position"]["x"], n["position"]["y"]) for n in view.nodes
          if n["data"]["kind"] not in ("axis", "block")}
    sx, sy = xy.pop("S_1")
    assert min(np.hypot(sx - x, sy - y) for x, y in xy.values()) >= 20
    # edges among pinned nodes are drawn in the pruned view too
    pinned_edges = [e for e in drawn_elements(view, False) if "source" in e["data"]]
    assert all(shown[e["data"]["source"]].get("pinned") and shown[e["data"]["target"]].get("pinned")
               for e in pinned_edges)
    pinned = build_view(session, a, 0.8, 0.98, PINNED)
    assert {e["data"]["id"] for e in pinned.elements if e["data"]["kind"] not in ("axis", "block")
            and "source" not in e["data"]} == {feats[0], "S_1"}
    assert build_view(session, Annotations(), 0.8, 0.98, PINNED).nodes == []  # nothing pinned: nothing drawn


def test_node_details(session):
    a = Annotations(labels={})
    view = build_view(session, a, 0.8, 0.98)
    key = next(session.keys[i] for i in view.node_indices if session.keys[i].startswith("F_"))
    d = node_details(session, key, a)
    g = session.graph
    i = session.index[key]
    assert d["kind"] == "feature" and d["activation"] == pytest.approx(float(g.activations[i]))
    assert len(d["promoted"]) == 5 and len(d["suppressed"]) == 5
    assert d["inputs"] and abs(d["inputs"][0]["weight"]) == pytest.approx(np.abs(g.adjacency[i]).max())
    acts = feature_position_activations(session, i)
    heat = image_heat(session, acts, 0)
    assert heat.shape == (8, 8)
    assert heat[0, 0] == pytest.approx(acts[int(g.image_positions[0])])
    logit = node_details(session, "L_0", a)
    assert logit["kind"] == "logit" and logit["probability"] == pytest.approx(g.targets[0].probability)
    assert node_details(session, "F_99_99_99", a) is None


def test_keys_are_unique_and_selector_safe(image_graph):
    keys = node_keys(image_graph)
    assert len(set(keys)) == len(keys)
    assert all(k.replace("_", "").isalnum() for k in keys)


def test_image_figure_geometry():
    """Clicks map to grid cells exactly, also for a non-square image and grid."""
    from app.panels.image_figure import base_figure, cell_from_xy, cells_in_box

    g = chain_graph()  # one 8 x 16 pixel image, a 1 x 2 grid of 8 x 8 pixel cells
    g.image_grid, g.image_grids = np.array([[0, 0, 0], [0, 0, 1]]), [(1, 2)]
    s = GraphSession(g, "chain.graph.safetensors")
    assert s.grid_shape(0) == (1, 2)
    assert cell_from_xy(s, 0, 3.5, 3.5) == (0, 0)  # the centre of cell (0, 0)
    assert cell_from_xy(s, 0, 7.4, 0.0) == (0, 0) and cell_from_xy(s, 0, 7.6, 0.0) == (0, 1)
    assert cell_from_xy(s, 0, 20.0, 0.0) is None
    assert cells_in_box(s, 0, [0, 15], [0, 7]) == [(0, 0), (0, 1)]
    fig = base_figure(s, 0, heat=np.array([[0.0, 2.0]]), cells=[(0, 1)])
    heat = fig.data[1]
    assert heat.x0 == pytest.approx(3.5) and heat.dx == pytest.approx(8.0)
    assert list(map(list, heat.customdata)) == [["E_1", "E_2"]]
    rects = [sh for sh in fig.layout.shapes if sh.type == "rect"]
    assert len(rects) == 1 and rects[0].x0 == pytest.approx(7.5) and rects[0].x1 == pytest.approx(15.5)


def test_toy_ground_truth(image_graph):
    from app.panels.image_figure import truth_shapes

    g = make_graph(seed=3, n_layers=2, n_pos=81, n_features=30, n_logits=2, image_side=8)
    g.info["toy"] = {"question": "What color is the circle?", "answer": "red", "evidence": ["red circle"],
                     "evidence_tokens": [9, 10], "evidence_positions": [int(g.image_positions[9]), int(g.image_positions[10])]}
    s = GraphSession(g, "toy.graph.safetensors")
    assert s.ground_truth["cells"] == [(1, 1), (1, 2)] and s.ground_truth["answer"] == "red"
    assert len(truth_shapes(s, 0)) == 2
    del g.info["toy"]["evidence_positions"]
    assert GraphSession(g, "toy2").ground_truth["cells"] == [(1, 1), (1, 2)]  # from the grid indices
    assert GraphSession(image_graph, "x").ground_truth is None


def test_slider_steps_keep_node_data(session):
    """A node in two views (two threshold steps) has the same data in both: size, colour and
    label do not jump as a slider moves (positions may: the layout spreads the nodes shown)."""
    a = {e["data"]["id"]: e["data"] for e in build_view(session, Annotations(), 0.8, 0.98).nodes}
    b = {e["data"]["id"]: e["data"] for e in build_view(session, Annotations(), 0.4, 0.9).nodes}
    common = {k for k in set(a) & set(b) if not k.startswith(("axis_", "block_", "E_"))}
    assert len(common) > 20 and set(b) != set(a)
    for key in common:
        assert a[key] == b[key], key


def test_a_band_of_error_nodes_only_is_thin(image_graph):
    """Deep models' graphs have layers where only (unlabelled) error nodes are drawn: their band
    takes LEVEL_UNLABELLED, not the room a row of labels needs."""
    from app.view.positions import LEVEL_MIN, LEVEL_UNLABELLED, ROW

    g = image_graph
    levels = np.array([0, 1, 2, 3])
    slots = np.array([SLOT, SLOT_ERROR, SLOT_ERROR, SLOT])
    p = compute_positions(g, levels, np.full(4, g.n_positions - 1), np.zeros(4), slots)
    gaps = -np.diff([p.level_y[f"L{lv}"] for lv in range(4)])
    assert np.allclose(gaps[1], LEVEL_UNLABELLED)  # between the centres of two thin bands
    assert gaps[0] > LEVEL_UNLABELLED and gaps[2] > LEVEL_UNLABELLED
    labelled = max(LEVEL_MIN, ROW + 26.0)  # one row of labelled nodes
    assert np.allclose(gaps[0], (labelled + LEVEL_UNLABELLED) / 2)
