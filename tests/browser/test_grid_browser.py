"""Two images with non-square grids (4x6 and 3x5 soft tokens) in the explorer, in headless Chromium:
each image's patch thumbnails on the graph's token axis laid out as its own grid, the image figure
per image, and a region clicked on image 1 traced from image 1's cells."""

from __future__ import annotations

import pytest

from app import ids

from browser_helpers import CY, cell_center, click_node, dash_prop, figure_data, open_app, text_of, wait_idle
from conftest import Server

pytestmark = pytest.mark.browser

GRIDS = [(4, 6), (3, 5)]
NAME = "two-images-grid.graph.safetensors"


@pytest.fixture(scope="module")
def grid_server(tmp_path_factory):
    from graph_factory import make_graph

    from app.factory import create_app
    from tracer.graph import save_graph

    folder = tmp_path_factory.mktemp("grid")
    graph = make_graph(seed=21, n_layers=3, n_pos=70, n_features=80, grids=GRIDS)
    save_graph(graph, folder / NAME)
    srv = Server(create_app(folder))
    yield srv, graph
    srv.close()


def cell_key(graph, image: int, row: int, col: int) -> str:
    pos = next(int(p) for p, cell in zip(graph.image_positions, graph.image_grid.tolist()) if cell == [image, row, col])
    return f"E_{pos}"


def pick_image(page, label: str) -> None:
    page.locator(f"#{ids.IMAGE_SELECT}").click()
    page.get_by_role("option", name=label, exact=True).click()


def test_each_image_has_its_own_grid_on_the_axis_and_in_the_figure(page, grid_server):
    srv, graph = grid_server
    open_app(page, srv.url, NAME)
    # the graph's token axis: one block per image, captioned with its grid, thumbnails in rows x cols
    labels = page.evaluate(f"() => {CY}.nodes('[kind = \"block\"]').map(n => n.data('label')).sort()")
    assert labels == ["image 0: 4x6", "image 1: 3x5"]
    for image, (rows, cols) in enumerate(GRIDS):
        keys = [cell_key(graph, image, r, c) for r in range(rows) for c in range(cols)]
        drawn = page.evaluate(f"""(keys) => keys.map(k => {{
            const n = {CY}.getElementById(k);
            return n.empty() ? null : [n.position('x'), n.position('y'), !!n.data('thumb')];
        }})""", keys)
        assert all(d is not None and d[2] for d in drawn), "every soft token is drawn with its patch thumbnail"
        xs = [[drawn[r * cols + c][0] for c in range(cols)] for r in range(rows)]
        ys = [[drawn[r * cols + c][1] for c in range(cols)] for r in range(rows)]
        assert all(line == sorted(line) and len(set(line)) == cols for line in xs)  # columns left to right
        assert all(len({ys[r][c] for c in range(cols)}) == 1 for r in range(rows))  # one y per grid row
        assert [ys[r][0] for r in range(rows)] == sorted({ys[r][0] for r in range(rows)})
    # the image figure: a dropdown for the two images, image 0 first with its 4x6 grid
    page.wait_for_selector(f"#{ids.IMAGE_SELECT}", state="visible")
    keys = figure_data(page, ids.IMAGE_FIGURE, "gd.data[1].customdata")
    assert len(keys) == 4 and all(len(line) == 6 for line in keys) and keys[0][0] == cell_key(graph, 0, 0, 0)
    pick_image(page, "image 1")
    page.wait_for_function(f"""() => {{
        const gd = document.getElementById('{ids.IMAGE_FIGURE}').querySelector('.js-plotly-plot');
        return gd && gd.data[1].customdata.length === 3; }}""")
    keys = figure_data(page, ids.IMAGE_FIGURE, "gd.data[1].customdata")
    assert all(len(line) == 5 for line in keys) and keys[2][4] == cell_key(graph, 1, 2, 4)
    # image 1's own pixels (24 x 40) under its own grid lines: 5 + 1 vertical, 3 + 1 horizontal
    assert figure_data(page, ids.IMAGE_FIGURE, "gd.layout.xaxis.range") == [-0.5, 39.5]
    lines = figure_data(page, ids.IMAGE_FIGURE, "gd.layout.shapes.filter(s => s.type === 'line')"
                                                ".map(s => s.x0 === s.x1 ? 'v' : 'h')")
    assert lines.count("v") == 6 and lines.count("h") == 4


def test_a_cell_of_image_1_traces_from_image_1(page, grid_server):
    srv, graph = grid_server
    open_app(page, srv.url, NAME)
    pick_image(page, "image 1")
    page.wait_for_function(f"""() => {{
        const gd = document.getElementById('{ids.IMAGE_FIGURE}').querySelector('.js-plotly-plot');
        return gd && gd.data[1].customdata.length === 3; }}""")
    wait_idle(page)
    p = cell_center(page, 2, 3)
    page.mouse.click(p["x"], p["y"])
    page.wait_for_function(f"() => document.getElementById('{ids.REGION_INFO}').innerText.includes('image 1, cell (2,3)')")
    wait_idle(page)
    assert dash_prop(page, ids.STORE_REGION, "data") == {"image": 1, "cells": [[2, 3]]}
    lit = dash_prop(page, ids.STORE_HL_REGION, "data")["nodes"]
    assert cell_key(graph, 1, 2, 3) in lit and cell_key(graph, 0, 2, 3) not in lit
    # selecting an image-0 soft token's node in the graph shows image 0 in the figure
    click_node(page, cell_key(graph, 0, 1, 1))
    page.wait_for_function(f"""() => {{
        const gd = document.getElementById('{ids.IMAGE_FIGURE}').querySelector('.js-plotly-plot');
        return gd && gd.data[1].customdata.length === 4; }}""")
    wait_idle(page)
    assert text_of(page, ids.IMAGE_SELECT).strip() == "image 0"
