"""Small Playwright helpers for the explorer (cytoscape is reachable as the container's _cyreg.cy)."""

from __future__ import annotations

import time

from app import ids

CY = f"document.getElementById('{ids.CYTO}')._cyreg.cy"
IDLE_JS = """() => {
  const s = window.store && window.store.getState();
  if (!s) return false;
  const cb = s.callbacks || {};
  const pending = ['requested','prioritized','blocked','executing','watched','executed','stored']
    .reduce((n, k) => n + ((cb[k] || []).length), 0);
  return pending === 0 && (s.isLoading === undefined || !s.isLoading);
}"""


def wait_idle(page, timeout: float = 20.0) -> None:
    """Wait until Dash has no pending callbacks (twice in a row, 50 ms apart)."""
    end = time.time() + timeout
    calm = 0
    while time.time() < end:
        if page.evaluate(IDLE_JS):
            calm += 1
            if calm >= 2:
                return
        else:
            calm = 0
        time.sleep(0.05)
    raise TimeoutError("Dash callbacks still pending")


def open_app(page, url: str, graph: str | None = None) -> None:
    page.goto(url + (f"/?graph={graph}" if graph else "/"))
    page.wait_for_function(f"() => {{ const el = document.getElementById('{ids.CYTO}'); "
                           "return el && el._cyreg && el._cyreg.cy; }")
    wait_idle(page)


def node_count(page) -> int:
    return page.evaluate(f"() => {CY}.nodes().filter(n => n.data('kind') !== 'axis' && n.data('kind') !== 'block').length")


def edge_count(page) -> int:
    return page.evaluate(f"() => {CY}.edges().length")


def wait_nodes(page, predicate, timeout: float = 20.0) -> int:
    end = time.time() + timeout
    while time.time() < end:
        n = node_count(page)
        if predicate(n):
            return n
        time.sleep(0.05)
    raise TimeoutError(f"node count {node_count(page)} never satisfied the condition")


def click_node(page, key: str) -> None:
    """Click a node where it is drawn (cy.resize() first: cytoscape caches its page offset)."""
    box = page.evaluate(f"""(key) => {{
        const cy = {CY}; cy.resize();
        const n = cy.getElementById(key);
        if (n.empty()) return null;
        if (cy.zoom() < 1.5) cy.zoom(1.5);  // as a user would: small nodes are hard to hit
        cy.center(n);
        const p = n.renderedPosition();
        const r = cy.container().getBoundingClientRect();
        return {{x: r.left + p.x, y: r.top + p.y}};
    }}""", key)
    assert box is not None, f"node {key} is not drawn"
    page.mouse.click(box["x"], box["y"])


def style_of(page, key: str, prop: str) -> str:
    return page.evaluate(f"([k, p]) => {CY}.getElementById(k).style(p)", [key, prop])


def text_of(page, element_id: str) -> str:
    return page.locator(f"#{element_id}").inner_text()


def plot_point(page, figure_id: str, x: float, y: float) -> dict:
    """Page coordinates of data point (x, y) of a plotly figure."""
    return page.evaluate("""([id, x, y]) => {
        const gd = document.getElementById(id).querySelector('.js-plotly-plot');
        const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
        const r = gd.getBoundingClientRect();
        return {x: r.left + xa._offset + xa.l2p(x), y: r.top + ya._offset + ya.l2p(y)};
    }""", [figure_id, x, y])


def figure_data(page, figure_id: str, expr: str):
    """Evaluate `expr` with gd = the plotly graph div of figure_id."""
    return page.evaluate(f"""(id) => {{
        const gd = document.getElementById(id).querySelector('.js-plotly-plot');
        return {expr};
    }}""", figure_id)


def cell_center(page, row: int, col: int) -> dict:
    """Page coordinates of the centre of soft-token cell (row, col) of the image figure."""
    x0, dx, y0, dy = figure_data(page, ids.IMAGE_FIGURE, "[gd.data[1].x0, gd.data[1].dx, gd.data[1].y0, gd.data[1].dy]")
    return plot_point(page, ids.IMAGE_FIGURE, x0 + col * dx, y0 + row * dy)


def count_renders(page) -> None:
    """Count finished Dash requests that redraw the graph (window.__renders)."""
    page.evaluate("""() => {
        if (window.__renderCounting) return;
        window.__renderCounting = true; window.__renders = 0;
        const orig = window.fetch;
        window.fetch = async function (...args) {
            const response = await orig.apply(this, args);
            const body = args[1] && args[1].body;
            if (typeof body === 'string' && body.includes('attribution-graph.elements')) window.__renders += 1;
            return response;
        };
    }""")


def settle(page) -> None:
    """Dash idle, then two animation frames (cytoscape has drawn)."""
    page.wait_for_function(IDLE_JS, polling="raf")
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")


def dash_prop(page, component_id: str, prop: str):
    """A component's prop as the Dash renderer holds it (e.g. a dcc.Store's data)."""
    return page.evaluate("""([id, prop]) => {
        const find = (n) => {
            if (!n || typeof n !== 'object') return null;
            if (n.props && n.props.id === id) return n.props;
            for (const k in n) { const r = find(n[k]); if (r) return r; }
            return null;
        };
        const props = find(window.store.getState().layout);
        return props ? props[prop] : null;
    }""", [component_id, prop])


def view_edges(page) -> list:
    """The current view's edges the browser draws on demand: [source, target, weight, width]."""
    return (dash_prop(page, ids.STORE_VIEW_EDGES, "data") or {}).get("edges") or []


def set_budget(page, key: str = "End") -> None:
    """Move the feature-budget slider with a key (End: the largest budget)."""
    page.locator(f"#{ids.FEATURE_BUDGET} [role=slider]").focus()
    page.keyboard.press(key)
    wait_idle(page)


def select_nodes(page, keys: list[str]) -> None:
    """Select nodes in cytoscape (as shift+click would) and wait until Dash has the selection
    (dash-cytoscape reports selectedNodeData after a 100 ms debounce)."""
    page.evaluate(f"(keys) => {{ const cy = {CY}; cy.elements().unselect(); keys.forEach(k => cy.getElementById(k).select()); }}",
                  keys)
    page.wait_for_function("""(keys) => {
        const find = (n) => {
            if (!n || typeof n !== 'object') return null;
            if (n.props && n.props.id === '%s') return n.props;
            for (const k in n) { const r = find(n[k]); if (r) return r; }
            return null;
        };
        const props = find(window.store.getState().layout);
        const sel = ((props && props.selectedNodeData) || []).map(d => d.id).sort();
        return JSON.stringify(sel) === JSON.stringify(keys.slice().sort());
    }""" % ids.CYTO, arg=keys)
