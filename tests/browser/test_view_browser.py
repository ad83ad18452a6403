"""The graph view in headless Chromium on the shipped sample graphs, in a 1366x768 window:
labels readable at the fitted zoom, the token axis with patch thumbnails, edges on demand, the
subgraph pane and its exports, slider values, gentle zoom; bugs 2, 4 and 6 of issue 10."""

from __future__ import annotations

import json
import shutil

import pytest

from app import ids
from app.annotations import annotations_path

from browser_helpers import CY, dash_prop, open_app, select_nodes, text_of, view_edges, wait_idle
from conftest import Server

pytestmark = pytest.mark.browser

COLOR = "color-heldout2-what-color-is-the-cross.graph.safetensors"
EXISTS = "exists-heldout4001-is-there-a-red-cross.graph.safetensors"


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """Two shipped sample graphs in a folder of their own (these tests write annotations)."""
    from app.factory import create_app, default_graphs_dir

    folder = tmp_path_factory.mktemp("samples")
    for name in (COLOR, EXISTS):
        if not (default_graphs_dir() / name).exists():
            pytest.skip(f"{name} is not in app/sample_graphs/")
        shutil.copy(default_graphs_dir() / name, folder / name)
    srv = Server(create_app(folder))
    yield folder, srv
    srv.close()


@pytest.fixture
def laptop(browser):
    """A page in a 1366x768 window that fails the test on any browser error or warning about
    the wheel sensitivity."""
    ctx = browser.new_context(viewport={"width": 1366, "height": 768}, accept_downloads=True)
    pg = ctx.new_page()
    problems: list[str] = []
    pg.on("pageerror", lambda err: problems.append(f"pageerror: {err}"))
    pg.on("console", lambda msg: problems.append(f"console.{msg.type}: {msg.text}")
          if msg.type == "error" or "wheel sensitivity" in msg.text else None)
    pg.set_default_timeout(20_000)
    yield pg
    ctx.close()
    assert not problems, "browser problems:\n" + "\n".join(problems)


@pytest.fixture
def clean(samples):
    yield
    for name in (COLOR, EXISTS):
        annotations_path(samples[0] / name).unlink(missing_ok=True)


def page_session(samples, name):
    return samples[1].app.state.store.session(name)


def node_point(page, key: str) -> dict:
    """Page coordinates of a node as drawn now (no zooming)."""
    return page.evaluate(f"""(key) => {{
        const cy = {CY}; cy.resize();
        const p = cy.getElementById(key).renderedPosition();
        const r = cy.container().getBoundingClientRect();
        return {{x: r.left + p.x, y: r.top + p.y}};
    }}""", key)


def features_by_influence(page) -> list[str]:
    return page.evaluate(f"""() => {CY}.nodes('[kind = "feature"]')
        .sort((a, b) => b.data('influence') - a.data('influence')).map(n => n.id())""")


def drawn_edges(page) -> set:
    return {tuple(e) for e in page.evaluate(f"() => {CY}.edges().map(e => [e.source().id(), e.target().id()])")}


def test_readable_at_fit_on_a_laptop_window(laptop, samples):
    folder, server = samples
    page = laptop
    open_app(page, server.url, COLOR)
    fit = page.evaluate(f"() => {CY}.zoom()")
    # every feature, logit and token label is drawn at >= 8 px and above cytoscape's cut-off
    sizes = page.evaluate(f"""() => {CY}.nodes().filter(n => ['feature', 'logit', 'text'].includes(n.data('kind')))
        .map(n => [n.data('kind'), n.data('display'), parseFloat(n.renderedStyle('font-size')),
                   parseFloat(n.style('min-zoomed-font-size'))])""")
    assert {k for k, *_ in sizes} == {"feature", "logit", "text"}
    for kind, display, rendered, cutoff in sizes:
        assert display and rendered >= 8 and rendered > cutoff, (kind, display, rendered, cutoff, fit)
    # the axis: every prompt token as text, each image soft token as its patch thumbnail
    g = page_session(samples, COLOR).graph
    image = set(g.image_positions.tolist())
    tokens = page.evaluate(f"() => {CY}.nodes('[kind = \"text\"]').map(n => [n.id(), n.data('display')])")
    assert {k: d for k, d in tokens} == {f"E_{p}": g.position_text(p) for p in range(g.n_positions) if p not in image}
    assert "\\n" in {d for _, d in tokens} and "<start_of_image>" in {d for _, d in tokens}  # whitespace, specials
    thumbs = page.evaluate(f"() => {CY}.nodes('[kind = \"image\"]').map(n => n.style('background-image'))")
    assert len(thumbs) == 64 and all("data:image/png;base64" in t for t in thumbs)
    levels = page.evaluate(f"() => {CY}.nodes('[kind = \"axis\"]').map(n => n.data('display'))")
    assert levels == ["L0", "L1", "L2", "L3", "logits"]
    # features at one position spread out, and no node is drawn on another
    boxes = page.evaluate(f"""() => {CY}.nodes().filter(n => !['axis', 'block'].includes(n.data('kind')))
        .map(n => {{ const b = n.renderedBoundingBox({{includeLabels: false}}); return [n.id(), b.x1, b.y1, b.x2, b.y2]; }})""")
    for i, (a, ax1, ay1, ax2, ay2) in enumerate(boxes):
        for b, bx1, by1, bx2, by2 in boxes[i + 1:]:
            assert ax2 <= bx1 + 0.5 or bx2 <= ax1 + 0.5 or ay2 <= by1 + 0.5 or by2 <= ay1 + 0.5, (a, b)
    last = page.evaluate(f"""() => {CY}.nodes('[kind = "feature"]').filter(n => n.id().endsWith('_{g.n_positions - 1}'))
        .map(n => n.position('x'))""")
    assert len(set(last)) >= 5
    # one wheel notch zooms gently (cytoscape's own jumped 2.5-3x)
    box = page.locator(f"#{ids.CYTO}").bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.mouse.wheel(0, -100)
    page.wait_for_function(f"(z) => {CY}.zoom() !== z", arg=fit)
    assert 1.0 < page.evaluate(f"() => {CY}.zoom()") / fit <= 1.25


def test_edges_on_demand(laptop, samples):
    _, server = samples
    page = laptop
    open_app(page, server.url, COLOR)
    payload = view_edges(page)
    assert drawn_edges(page) == set() and len(payload) > 1000
    key = features_by_influence(page)[0]
    mine = {(s, t) for s, t, *_ in payload if key in (s, t)}
    p = node_point(page, key)
    page.mouse.move(p["x"], p["y"])  # hover: the node's inputs and outputs, coloured by sign
    page.wait_for_function(f"() => {CY}.edges().length === {len(mine)}")
    assert drawn_edges(page) == mine
    colours = page.evaluate(f"() => {CY}.edges().map(e => [e.data('weight') >= 0, e.style('line-color')])")
    assert all(c == ("rgb(47,111,191)" if pos else "rgb(208,69,58)") for pos, c in colours)
    page.mouse.move(3, 300)
    page.wait_for_function(f"() => {CY}.edges().length === 0")
    page.mouse.click(p["x"], p["y"])  # click: they stay, and the details follow
    page.wait_for_function(f"() => document.getElementById('{ids.DETAILS_TITLE}').innerText.includes('feature')")
    page.mouse.move(3, 300)
    wait_idle(page)
    assert drawn_edges(page) == mine
    # all-edges mode draws the whole view
    page.locator(f"#{ids.VIEW_OPTIONS} input[value=all-edges]").check()
    page.wait_for_function(f"() => {CY}.edges().length === {len(payload)}")
    wait_idle(page)
    assert "edges: all drawn" in text_of(page, ids.BUDGET_NOTE)


def test_subgraph_pane_and_its_pictures(laptop, samples, clean, tmp_path):
    _, server = samples
    page = laptop
    open_app(page, server.url, COLOR)
    feats = features_by_influence(page)[:3]
    select_nodes(page, feats + ["L_0"])
    page.locator(f"#{ids.PIN_BUTTON}").click()
    page.wait_for_function(f"() => document.getElementById('{ids.ACTION_MESSAGE}').innerText.includes('4 pinned')")
    wait_idle(page)
    pinned = set(feats + ["L_0"])
    among = {(s, t) for s, t, *_ in view_edges(page) if s in pinned and t in pinned}
    # the main view draws the edges among pinned nodes
    page.evaluate(f"() => {CY}.elements().unselect()")
    page.mouse.move(3, 300)
    wait_idle(page)
    assert drawn_edges(page) == among and among
    # the pane: the pinned nodes by layer and position, with all their edges
    sub = f"document.getElementById('{ids.SUBGRAPH}')._cyreg.cy"
    assert page.locator(f"#{ids.SUBGRAPH_PANE}").bounding_box()["height"] < 5
    page.locator(f"#{ids.VIEW_OPTIONS} input[value=subgraph]").check()
    page.wait_for_function(f"() => {sub}.nodes().filter(n => n.data('kind') !== 'axis').length === 4")
    wait_idle(page)
    assert page.locator(f"#{ids.SUBGRAPH_PANE}").bounding_box()["height"] > 150
    edges = page.evaluate(f"() => {sub}.edges().map(e => [e.source().id(), e.target().id()])")
    assert {tuple(e) for e in edges} >= among
    ys = page.evaluate(f"() => Object.fromEntries({sub}.nodes().map(n => [n.id(), n.position('y')]))")
    assert ys["L_0"] < min(ys[k] for k in feats)  # logits on top
    assert "4 pinned nodes" in text_of(page, ids.SUBGRAPH_NOTE)
    # bug 4: pictures follow the export scope, and every export says what it wrote
    page.locator(f"#{ids.EXPORT_SCOPE} input[value=pinned]").check()
    with page.expect_download() as info:
        page.locator(f"#{ids.EXPORT_PNG}").click()
    assert info.value.suggested_filename == "color-heldout2-what-color-is-the-cross-pinned.png"
    info.value.save_as(tmp_path / "pinned.png")
    assert (tmp_path / "pinned.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page.wait_for_function(f"() => document.getElementById('{ids.EXPORT_MESSAGE}').innerText.includes('-pinned.png')")
    with page.expect_download() as info:
        page.locator(f"#{ids.EXPORT_JSON}").click()
    assert info.value.suggested_filename.endswith(".pinned.json")
    info.value.save_as(tmp_path / "pinned.json")
    assert {n["node_id"] for n in json.loads((tmp_path / "pinned.json").read_text())["nodes"]
            if n["feature_type"] == "cross layer transcoder"} == {"_".join(k.split("_")[1:]) for k in feats}
    page.wait_for_function(f"() => document.getElementById('{ids.EXPORT_MESSAGE}').innerText.includes('.pinned.json: 4 nodes')")
    page.locator(f"#{ids.EXPORT_SCOPE} input[value=view]").check()
    with page.expect_download() as info:
        page.locator(f"#{ids.EXPORT_SVG}").click()
    assert info.value.suggested_filename.endswith("-view.svg")
    page.wait_for_function(f"() => document.getElementById('{ids.EXPORT_MESSAGE}').innerText.includes('-view.svg')")
    wait_idle(page)


def test_a_new_supernode_takes_a_place_of_its_own(laptop, samples, clean):
    """Bug 2: on the exists graph, S_1 was placed on F_1_638_84 (the most influential feature),
    which then could not be clicked, and a label typed next went to S_1."""
    folder, server = samples
    page = laptop
    open_app(page, server.url, EXISTS)
    feats = features_by_influence(page)
    assert feats[0] == "F_1_638_84"
    select_nodes(page, feats[1:3])
    page.locator(f"#{ids.GROUP_LABEL}").fill("pair")
    page.locator(f"#{ids.GROUP_BUTTON}").click()
    page.wait_for_function(f"() => {CY}.getElementById('S_1').nonempty()")
    wait_idle(page)
    s = page.evaluate(f"() => {CY}.getElementById('S_1').renderedBoundingBox({{includeLabels: false}})")
    others = page.evaluate(f"""() => {CY}.nodes().filter(n => n.id() !== 'S_1' && !['axis', 'block'].includes(n.data('kind')))
        .map(n => n.renderedBoundingBox({{includeLabels: false}}))""")
    assert all(s["x2"] <= o["x1"] or o["x2"] <= s["x1"] or s["y2"] <= o["y1"] or o["y2"] <= s["y1"] for o in others)
    page.evaluate(f"() => {CY}.elements().unselect()")
    p = node_point(page, "F_1_638_84")
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(f"() => document.getElementById('{ids.DETAILS_TITLE}').innerText.includes('L1 #638')")
    wait_idle(page)
    page.locator(f"#{ids.LABEL_INPUT}").fill("red cross evidence")
    page.locator(f"#{ids.LABEL_INPUT}").press("Enter")
    page.wait_for_function(f"() => document.getElementById('{ids.LABEL_MESSAGE}').innerText.includes('saved')")
    wait_idle(page)
    saved = json.loads(annotations_path(folder / EXISTS).read_text())
    assert saved["labels"] == {"F_1_638_84": "red cross evidence"}


def test_selection_follows_the_graph_selection(laptop, samples):
    """Bug 6: after a box (or shift) selection the details and the highlight move to the new
    selection; a cleared selection leaves nothing selected (nothing for actions to pick up)."""
    _, server = samples
    page = laptop
    open_app(page, server.url, COLOR)
    feats = features_by_influence(page)
    p = node_point(page, feats[5])
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(f"() => {CY}.getElementById('{feats[5]}').hasClass('focus')")
    page.mouse.move(3, 300)  # not hovering it any more
    wait_idle(page)
    assert dash_prop(page, ids.STORE_SELECTED, "data") == feats[5]
    select_nodes(page, [feats[1], feats[2]])  # as a shift+drag box would
    page.wait_for_function(f"() => {CY}.getElementById('{feats[1]}').hasClass('focus')")
    wait_idle(page)
    assert dash_prop(page, ids.STORE_SELECTED, "data") == feats[1]  # the more influential one
    assert not page.evaluate(f"() => {CY}.getElementById('{feats[5]}').hasClass('focus')")
    layer, feat = feats[1].split("_")[1:3]
    assert f"L{layer} #{feat}" in text_of(page, ids.DETAILS_TITLE)
    page.evaluate(f"() => {CY}.elements().unselect()")
    page.wait_for_function(f"() => document.getElementById('{ids.DETAILS}').innerText.includes('Click a node')")
    wait_idle(page)
    assert dash_prop(page, ids.STORE_SELECTED, "data") is None
    assert page.evaluate(f"() => {CY}.nodes('.focus').length") == 0


def test_sliders_show_their_values(laptop, samples):
    _, server = samples
    page = laptop
    open_app(page, server.url, COLOR)
    assert text_of(page, ids.BUDGET_LABEL) == "Features shown ≤ 40"
    assert text_of(page, ids.COUNTS).startswith("40 of 400 features")
    page.locator(f"#{ids.FEATURE_BUDGET} [role=slider]").focus()
    page.keyboard.press("ArrowRight")
    page.wait_for_function(f"() => document.getElementById('{ids.COUNTS}').innerText.startsWith('60 of 400 features')")
    assert text_of(page, ids.BUDGET_LABEL) == "Features shown ≤ 60"
    page.locator(f"#{ids.NODE_SLIDER} [role=slider]").focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"() => document.getElementById('{ids.NODE_SLIDER_LABEL}').innerText === 'Node threshold: 0.75'")
    page.locator(f"#{ids.EDGE_SLIDER} [role=slider]").focus()
    page.keyboard.press("ArrowLeft")
    page.wait_for_function(f"() => document.getElementById('{ids.EDGE_SLIDER_LABEL}').innerText === 'Edge threshold: 0.97'")
    wait_idle(page)


def test_every_sample_graph_is_readable_at_fit(laptop, sample_server):
    """The default view of each shipped sample graph, fitted in a 1366x768 window: every
    feature, logit and token label drawn at >= 8 px, above cytoscape's cut-off. A real model's
    graph (Gemma 3 270M: 18 layers, one band each) is taller than the window at readable sizes:
    fitted it is an overview, and its labels are readable at zoom 1."""
    page = laptop
    names = sample_server.app.state.store.names()
    assert len(names) >= 6
    smallest_label = f"""() => Math.min(...{CY}.nodes()
        .filter(n => ['feature', 'logit', 'text'].includes(n.data('kind')))
        .map(n => parseFloat(n.renderedStyle('font-size')) - Math.max(8, parseFloat(n.style('min-zoomed-font-size')))))"""
    for name in names:
        open_app(page, sample_server.url, name)
        if name.startswith("gemma-3-270m-"):
            page.evaluate(f"() => {CY}.zoom(1)")
        assert page.evaluate(smallest_label) >= 0, name


def test_suggested_groups_are_listed_with_their_reason_and_group_in_one_click(laptop, samples, clean):
    """Issue 13: the explorer offers tracer's supernode suggestions as one-click groups; on the
    colour sample the image-cell group reads the queried red cross's cells and says so."""
    from tracer.graph.supernodes import suggest_supernodes

    folder, server = samples
    page = laptop
    open_app(page, server.url, COLOR)
    expected = suggest_supernodes(page_session(samples, COLOR).graph, top=6)
    assert expected, "the sample graph has groups to suggest"
    page.locator(f"#{ids.SUGGEST_BUTTON}").click()
    page.wait_for_function(f"() => document.querySelectorAll('#{ids.SUGGESTIONS} .suggestion').length > 0")
    wait_idle(page)
    rows = page.eval_on_selector_all(f"#{ids.SUGGESTIONS} .suggestion", "rs => rs.map(r => r.innerText)")
    assert len(rows) == len(expected)
    assert all(s.label in row and s.reason in row for s, row in zip(expected, rows))
    page.locator(f"#{ids.SUGGESTIONS} .suggestion button").first.click()
    page.wait_for_function(f"() => {CY}.getElementById('S_1').nonempty()")
    wait_idle(page)
    saved = json.loads(annotations_path(folder / COLOR).read_text())
    keys = page_session(samples, COLOR).keys
    assert saved["supernodes"] == [{"id": "S_1", "label": expected[0].label,
                                    "members": [keys[m] for m in expected[0].members]}]
    assert "grouped" in text_of(page, ids.ACTION_MESSAGE)
