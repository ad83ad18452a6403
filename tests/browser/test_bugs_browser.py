"""Issue 10's bugs and header items in headless Chromium (each test failed before its fix)."""

from __future__ import annotations

import pytest

from app import ids

from browser_helpers import CY, cell_center, figure_data, open_app, text_of, wait_idle

pytestmark = pytest.mark.browser

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
