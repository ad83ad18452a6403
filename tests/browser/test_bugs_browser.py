"""Issue 10's bugs and header items in headless Chromium (each test failed before its fix)."""

from __future__ import annotations

import pytest

from app import ids

from browser_helpers import CY, cell_center, click_node, figure_data, open_app, text_of, wait_idle
from conftest import Server

pytestmark = pytest.mark.browser

CONTRAST = "zz-contrast-with-a-very-long-name-that-does-not-fit-the-header-of-the-explorer.graph.safetensors"
ATTENTION = "attention-zz-contrast.graph.safetensors"


@pytest.fixture(scope="module")
def header_server(tmp_path_factory):
    """A contrast graph (target 'red - blue') with a long name, and an attention graph whose name
    sorts first."""
    from graph_factory import make_graph

    from app.factory import create_app
    from tracer.graph import Target, save_graph
    from tracer.graph.graph import ATTENTION_GRAPH

    folder = tmp_path_factory.mktemp("header")
    g = make_graph(seed=7, n_logits=1)
    g.targets = [Target("red - blue", -1, 0.0, "direction", {"plus": [100], "minus": [101], "labels": ["red", "blue"],
                                                              "probabilities": [0.9312, 0.0405]})]
    save_graph(g, folder / CONTRAST)
    # an attention graph's nodes are (layer, position, -1): one per (layer, position)
    a = next(a for a in (make_graph(seed=k, n_logits=1, n_features=8) for k in range(100))
             if len({(int(l), int(p)) for l, p, _ in a.features}) == len(a.features))
    a.features[:, 2] = -1
    a.config, a.info = {"kind": ATTENTION_GRAPH}, {"kind": ATTENTION_GRAPH}
    save_graph(a, folder / ATTENTION)
    srv = Server(create_app(folder))
    yield srv
    srv.close()

N_SELECTIONS = "(gd.layout.selections || []).length"


def drag(page, a: dict, b: dict) -> None:
    page.mouse.move(a["x"], a["y"])
    page.mouse.down()
    page.mouse.move((a["x"] + b["x"]) / 2, (a["y"] + b["y"]) / 2, steps=4)
    page.mouse.move(b["x"], b["y"], steps=4)
    page.mouse.up()


def test_drag_box_goes_away_and_cells_under_it_stay_clickable(page, server, graphs):
    """Bug 1: the plotly selection box of a drag stayed drawn, swallowed clicks on the cells under
    it, and Clear region did not remove it."""
    _, names = graphs
    open_app(page, server.url, names["image"])
    drag(page, cell_center(page, 1, 1), cell_center(page, 4, 4))
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText.includes('16 cells')")
    wait_idle(page)
    # the region is drawn as cell outlines; the drag's own box is gone
    page.wait_for_function(f"() => {{ const gd = document.getElementById('{ids.IMAGE_FIGURE}')"
                           f".querySelector('.js-plotly-plot'); return {N_SELECTIONS} === 0; }}")
    assert figure_data(page, ids.IMAGE_FIGURE, "gd.querySelectorAll('.selectionlayer path').length") == 0
    # a click on a cell inside the old box selects that cell
    p = cell_center(page, 2, 3)
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText.includes('cell (2,3)')")
    wait_idle(page)
    # drag again, then Clear region: no box, no region
    drag(page, cell_center(page, 5, 5), cell_center(page, 6, 6))
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText.includes('4 cells')")
    wait_idle(page)
    page.locator(f"#{ids.CLEAR_REGION}").click()
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText === ''")
    wait_idle(page)
    assert figure_data(page, ids.IMAGE_FIGURE, N_SELECTIONS) == 0
    assert figure_data(page, ids.IMAGE_FIGURE, "gd.layout.shapes.filter(s => s.name === 'region').length") == 0
    p = cell_center(page, 5, 5)
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText.includes('cell (5,5)')")


def figure_pixels(page):
    """A screenshot of the image figure as an (H, W, 3) array and its page offset."""
    import io

    import numpy as np
    from PIL import Image

    box = page.locator(f"#{ids.IMAGE_FIGURE} .js-plotly-plot").bounding_box()
    png = page.screenshot(clip=box)
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=float), box


def test_heatmap_blends_with_the_image_and_hover_line_clears(page, server, graphs):
    """Bug 9: the feature heatmap was nearly opaque (alpha 0.85) and hid the image under it.
    Bug 10: the hover line kept the last cell after the pointer left the image."""
    import numpy as np

    from tracer.graph import load_graph

    _, names = graphs
    open_app(page, server.url, names["image"])
    # a feature at an image soft token (positions 2-65 of the test graph): it has a heatmap
    heat_key = page.evaluate(f"""() => {CY}.nodes().map(n => n.id())
        .find(k => k.startsWith('F_') && Number(k.split('_').pop()) >= 2 && Number(k.split('_').pop()) < 66)""")
    assert heat_key
    click_node(page, heat_key)
    page.wait_for_function(f"() => document.getElementById('{ids.IMAGE_NOTE}').innerText.includes('Heatmap')")
    wait_idle(page)
    page.mouse.move(2, 2)
    page.wait_for_timeout(300)
    z = np.array(figure_data(page, ids.IMAGE_FIGURE, "gd.data[1].z"))
    row, col = np.unravel_index(np.argmax(z), z.shape)
    p = cell_center(page, int(row), int(col))
    after, box = figure_pixels(page)
    x, y = int(p["x"] - box["x"]), int(p["y"] - box["y"])
    heat = np.array([255.0, 60.0, 0.0])  # the colour scale's top
    # the cell's mean colour on screen against the mean of the image pixels under it (the
    # image is noise: compare means over the cell, inside its grid lines)
    folder, _ = graphs
    img = load_graph(folder / names["image"]).images[0].astype(float)
    side = img.shape[0] // z.shape[0]
    under = img[row * side:(row + 1) * side, col * side:(col + 1) * side].reshape(-1, 3).mean(0)
    q = cell_center(page, int(row) + 1, int(col))
    half = int((q["y"] - p["y"]) / 2) - 3
    shown = after[y - half:y + half + 1, x - half:x + half + 1].reshape(-1, 3).mean(0)
    alpha = float(np.dot(shown - under, heat - under) / np.dot(heat - under, heat - under))
    assert 0.2 < alpha <= 0.6, (under, shown, alpha)  # visible, and the image shows through

    # the hover line names the hovered cell, and forgets it when the pointer leaves the image
    q = cell_center(page, 1, 2)
    page.mouse.move(q["x"], q["y"])
    page.wait_for_function(f"() => document.getElementById('{ids.HOVER_INFO}').innerText.includes('cell (1,2)')")
    page.mouse.move(2, 2)
    page.wait_for_function(f"() => !document.getElementById('{ids.HOVER_INFO}').innerText.includes('cell (1,2)')")


def test_header_contrast_probabilities_tooltip_and_attention_graphs_last(page, header_server):
    """Header items: a contrast target shows both tokens' probabilities (not p = 0); the status
    line is cut to one line with the whole text as its tooltip. Bug 10: an attention graph
    (named attention-..., sorting first) is neither listed first nor the default graph, and its
    nodes read 'resid L3 @p', not 'L3 #-1'."""
    open_app(page, header_server.url)
    status = page.locator(f"#{ids.STATUS}")
    page.wait_for_function(f"() => document.getElementById('{ids.STATUS}').innerText.includes('features')")
    text = status.inner_text()
    assert text.startswith(CONTRAST), text  # the default graph is the attribution graph
    title = status.get_attribute("title")
    assert "red - blue (p(red)=0.931, p(blue)=0.041)" in title and "(0.00)" not in title, title
    assert title.startswith(CONTRAST) and title.endswith(text.split("targets: ")[-1])
    style = page.evaluate(f"""() => {{ const el = document.getElementById('{ids.STATUS}'); const cs = getComputedStyle(el);
        return {{overflow: cs.textOverflow, space: cs.whiteSpace, cut: el.scrollWidth > el.clientWidth,
                 lines: Math.round(el.getBoundingClientRect().height / parseFloat(cs.lineHeight || 16))}}; }}""")
    assert style["overflow"] == "ellipsis" and style["space"] == "nowrap" and style["cut"], style
    # the attention graph is listed after the attribution graph
    options = page.evaluate(f"""() => {{
        const find = (n) => {{
            if (!n || typeof n !== 'object') return null;
            if (n.props && n.props.id === '{ids.GRAPH_DROPDOWN}') return n.props;
            for (const k in n) {{ const r = find(n[k]); if (r) return r; }}
            return null;
        }};
        return find(window.store.getState().layout).options.map(o => o.value);
    }}""")
    assert options == [CONTRAST, ATTENTION]
    # the region table too
    p = cell_center(page, 0, 1)
    page.mouse.click(p["x"], p["y"])
    page.wait_for_selector(f"#{ids.REGION_INFO} table.shares")
    assert "p(red)=0.931, p(blue)=0.041" in page.locator(f"#{ids.REGION_INFO} tbody tr").first.inner_text()
    open_app(page, header_server.url, ATTENTION)
    labels = page.evaluate(f"() => {CY}.nodes().filter(n => n.data('kind') === 'feature').map(n => n.data('label'))")
    assert labels and all(lab.startswith("resid L") and "#-1" not in lab for lab in labels), labels[:3]


@pytest.fixture(scope="module")
def export_server(tmp_path_factory):
    from conftest import sparse_graph

    from app.factory import create_app
    from tracer.graph import save_graph

    folder = tmp_path_factory.mktemp("export")
    save_graph(sparse_graph(seed=11, n_features=200, n_logits=2, per_row=6), folder / "a.graph.safetensors")
    srv = Server(create_app(folder))
    srv.folder = folder
    yield srv
    srv.close()


def test_reopening_a_neuronpedia_export_restores_pins_supernodes_and_labels(page, export_server, tmp_path):
    """Header item: the app's own viewer-JSON export carries its pins and supernodes (qParams)
    and labels (clerps); opening that file again showed none of them."""
    from app.annotations import Annotations, load_annotations, save_annotations

    folder = export_server.folder
    open_app(page, export_server.url, "a.graph.safetensors")
    feats = page.evaluate(f"""() => {CY}.nodes().filter(n => n.data('kind') === 'feature')
        .sort((a, b) => b.data('influence') - a.data('influence')).slice(0, 5).map(n => n.id())""")
    save_annotations(folder / "a.graph.safetensors", Annotations(
        labels={feats[0]: "red-ness"}, pinned=[feats[0], feats[1]],
        supernodes=[{"id": "S_1", "label": "colour words", "members": feats[3:5]}]))
    page.locator(f"#{ids.REFRESH_BUTTON}").click()
    page.wait_for_function(f"() => {CY}.nodes().filter(n => n.data('kind') === 'supernode').length === 1")
    wait_idle(page)
    with page.expect_download() as info:
        page.locator(f"#{ids.EXPORT_JSON}").click()
    info.value.save_as(folder / "b-exported.json")

    # open the export as a graph of its own
    open_app(page, export_server.url, "b-exported.json")
    page.wait_for_function(f"() => {CY}.nodes().filter(n => n.data('kind') === 'supernode').length === 1")
    wait_idle(page)
    state = page.evaluate(f"""() => {{ const cy = {CY};
        return {{pinned: cy.nodes().filter(n => n.data('pinned')).map(n => n.id()).sort(),
                 labelled: cy.nodes().filter(n => n.data('labelled')).map(n => [n.id(), n.data('label')]),
                 supers: cy.nodes().filter(n => n.data('kind') === 'supernode').map(n => n.data('display'))}}; }}""")
    assert state["pinned"] == sorted(feats[:2]), state
    assert state["labelled"] == [[feats[0], "red-ness"]], state
    assert state["supers"] == ["colour words"], state
    restored = load_annotations(folder / "b-exported.json")
    assert restored.supernodes[0]["members"] == feats[3:5]


# ---------------------------------------------------------------------- the live features (toy VLM)
LIVE_COPY = "zz-copy-of-the-cross.graph.safetensors"
STRONG = "F_3_538_84"  # the sample graph's strongest feature into its logit (layer 3 = the last layer)


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    """The app with the live toy VLM on the sample graph and a copy of it (another graph of the
    same model); the sample's strongest feature carries a label."""
    import shutil

    from test_live_browser import SAMPLE

    from app.annotations import Annotations, save_annotations
    from app.factory import create_app, default_graphs_dir

    folder = tmp_path_factory.mktemp("live-bugs")
    src = default_graphs_dir() / SAMPLE
    if not src.exists():
        pytest.skip(f"{SAMPLE} is not in app/sample_graphs/")
    shutil.copy(src, folder / SAMPLE)
    shutil.copy(src, folder / LIVE_COPY)
    save_annotations(folder / SAMPLE, Annotations(labels={STRONG: "red detector"}))
    srv = Server(create_app(folder, live=True))
    srv.folder, srv.sample = folder, SAMPLE
    yield srv
    srv.app.state.live.queue.shutdown()
    srv.close()


def tap_edge(page, source: str, target: str) -> None:
    page.evaluate(f"""([s, t]) => {{ const e = {CY}.edges().filter(e => e.data('source') === s && e.data('target') === t);
        if (e.length !== 1) throw new Error('no edge ' + s + ' -> ' + t); e[0].emit('tap'); }}""", [source, target])


def test_vision_attention_is_opt_in_and_blends_and_heads_need_a_carrier(page, live):
    """Bug 8: a click on a cell started a vision-attention job (loading the model) by default.
    Bug 9: the overlay was nearly opaque. Bug 7: "Which heads carry it?" was enabled for edges
    no head can carry (a last-layer feature into the logit) and gave an empty table."""
    import base64
    import io

    from PIL import Image

    open_app(page, live.url, live.sample)
    p = cell_center(page, 2, 6)
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText.includes('cell (2,6)')")
    wait_idle(page)
    assert text_of(page, ids.VISION_NOTE).startswith("Off: choose rollout")
    assert not live.app.state.live.model.loaded  # nothing was queued, no model loaded
    page.locator(f"#{ids.VISION_KIND} label", has_text="rollout").click()
    page.wait_for_function(f"() => document.getElementById('{ids.VISION_NOTE}').innerText.startsWith('Purple')",
                           timeout=60_000)
    image = figure_data(page, ids.IMAGE_FIGURE, "gd.layout.images[0]")
    png = Image.open(io.BytesIO(base64.b64decode(image["source"].split(",", 1)[1])))
    strongest = png.getchannel("A").getextrema()[1] / 255 * image.get("opacity", 1)
    assert 0.3 < strongest <= 0.6, strongest  # visible, and the image shows through its strongest patch

    page.click(f"#{ids.ATTN_PANEL} > summary")
    tap_edge(page, STRONG, "L_0")
    page.wait_for_function(f"() => document.getElementById('{ids.EDGE_INFO}').innerText.startsWith('Edge')")
    wait_idle(page)
    assert "No attention head lies on this edge" in text_of(page, ids.EDGE_INFO)
    assert page.locator(f"#{ids.HEADS_BUTTON}").is_disabled()
    tap_edge(page, "F_2_188_84", "L_0")  # a layer-2 feature: layer 3's heads can carry it
    page.wait_for_function(f"() => !document.getElementById('{ids.EDGE_INFO}').innerText.includes('No attention head')")
    wait_idle(page)
    assert page.locator(f"#{ids.HEADS_BUTTON}").is_enabled()


def switch_graph(page, name: str) -> None:
    from test_live_browser import opened_graph, wait_for

    page.locator(f"#{ids.GRAPH_DROPDOWN}").click()
    page.get_by_role("option", name=name, exact=True).click()
    wait_for(lambda: opened_graph(page) == name, 30, name)
    wait_idle(page)


def test_direct_steering_along_the_target_labels_and_results_per_graph(page, live):
    """Bug 5: direct effects showed the raw logit change (-1.255 for F_3_538_84) against an edge
    of 1.344 along W_U[t] - mean(W_U). Bug 10: rows read 'L3 #538 @84' instead of the node's
    label; the chart legend overlapped the bars. Bug 3: steering and region results of a graph
    stayed on screen under another graph."""
    from test_live_browser import choose, steer_table

    from browser_helpers import select_nodes
    from tracer.graph import load_graph

    g = load_graph(live.folder / live.sample)
    node = next(i for i in range(g.n_features) if tuple(int(x) for x in g.features[i]) == (3, 84, 538))
    edge = float(g.adjacency[g.n_features, node])

    open_app(page, live.url, live.sample)
    page.click(f"#{ids.STEER_PANEL} > summary")
    select_nodes(page, [STRONG])
    page.wait_for_function(f"() => document.getElementById('{ids.STEER_SELECTED}').innerText.startsWith('Add:')")
    page.click(f"#{ids.STEER_ADD}")
    page.wait_for_function("() => document.querySelectorAll('.steer-row').length === 1")
    assert page.locator(".steer-row .steer-label").inner_text() == "red detector"
    choose(page, {"type": ids.STEER_POSITIONS, "row": 1}, "this node's position")
    page.locator(f"#{ids.STEER_FREEZE} label", has_text="direct effects only").click()
    page.fill(f"#{ids.STEER_GENERATE}", "0")
    wait_idle(page)
    page.click(f"#{ids.STEER_RUN}")
    table = steer_table(page, ids.STEER_RESULT)
    assert "red" in table
    along = page.locator(f"#{ids.STEER_RESULT} table.target-changes tbody tr[data-target='red'] td").all_inner_texts()
    assert float(along[1]) == pytest.approx(-edge, abs=2e-3), (along, edge)  # minus the graph's edge
    raw = page.locator(f"#{ids.STEER_RESULT} table.changes tr[data-token='red'] td").all_inner_texts()
    assert abs(float(raw[3]) + edge) > 0.02  # the raw logit moves by another amount ...
    assert "Δ raw logit" in page.locator(f"#{ids.STEER_RESULT} table.changes thead").inner_text()  # ... labelled
    result = text_of(page, ids.STEER_RESULT)
    assert "red detector: ablate @84" in result and f"On graph {live.sample}" in result
    # the legend sits above the plot area, clear of the bars
    boxes = figure_data(page, ids.STEER_CHART, """(() => {
        const r = gd.querySelector('.legend').getBoundingClientRect();
        const top = gd.getBoundingClientRect().top;
        return [r.bottom, top + gd._fullLayout._size.t, r.top, top]; })()""")
    assert boxes[0] <= boxes[1] + 1 and boxes[2] >= boxes[3], boxes

    # a region ablation of this graph too
    page.click(f"#{ids.TRUTH_REGION}")
    wait_idle(page)
    page.click(f"#{ids.ATTN_PANEL} > summary")
    page.click(f"#{ids.REGION_ZERO}")
    steer_table(page, ids.REGION_RESULT)
    # another graph: neither result is shown as if it were that graph's
    switch_graph(page, LIVE_COPY)
    for result_id, chart_id in ((ids.STEER_RESULT, ids.STEER_CHART), (ids.REGION_RESULT, ids.REGION_CHART)):
        page.wait_for_function(f"() => document.getElementById('{result_id}').innerText.includes('for another graph')")
        assert live.sample in text_of(page, result_id)
        assert not page.locator(f"#{chart_id}").is_visible()
        assert page.locator(f"#{result_id} table.changes").count() == 0
    # back: the results are the open graph's again
    switch_graph(page, live.sample)
    page.wait_for_selector(f"#{ids.STEER_RESULT} table.changes")
    page.wait_for_selector(f"#{ids.REGION_RESULT} table.changes")
    assert page.locator(f"#{ids.STEER_CHART}").is_visible()


def test_a_reloaded_tab_shows_its_running_traces_prompt(page, live):
    """Bug 10: after a reload the trace form showed an empty prompt while its job ran."""
    import threading

    from test_live_browser import QUESTION, open_form

    open_app(page, live.url, live.sample)
    open_form(page)
    page.fill(f"#{ids.TRACE_PROMPT}", QUESTION)
    wait_idle(page)
    gate = threading.Event()
    queue = live.app.state.live
    blocker = queue.submit("trace", lambda ctx: gate.wait(60), label="blocker")
    try:
        page.click(f"#{ids.TRACE_SUBMIT}")
        page.wait_for_function(f"() => document.getElementById('{ids.TRACE_STATUS}').innerText.startsWith('queued')")
        page.reload()
        page.wait_for_function(f"() => {{ const el = document.getElementById('{ids.TRACE_OPEN}'); "
                               "return el && el.innerText === 'Trace queued'; }")
        open_form(page)
        page.wait_for_function(f"() => document.getElementById('{ids.TRACE_PROMPT}').value === {QUESTION!r}")
        page.click(f"#{ids.TRACE_CANCEL}")
        page.wait_for_function(f"() => document.getElementById('{ids.TRACE_STATUS}').innerText === 'cancelled'")
    finally:
        gate.set()
    queue.queue.wait(blocker, 10)
