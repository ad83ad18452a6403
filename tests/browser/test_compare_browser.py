"""Compare mode in the explorer: the same toy scene with its square repainted, diffed in the page
(tracer.graph.diff): the changed cells, the answer's logit vanishing and the new one appearing,
and the downloaded diff."""

from __future__ import annotations

import dataclasses
import json

import pytest

from app import ids

from browser_helpers import dash_prop, open_app, wait_idle
from conftest import Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def pair_server(tmp_path_factory):
    from tracer.graph import save_graph
    from tracer.session import TracingSession
    from tracer.toy.world import Scene, make_example

    from app.factory import create_app

    folder = tmp_path_factory.mktemp("compare")
    example = make_example("heldout", 0, question_type="color")
    square = example.evidence[0]
    blue = Scene(tuple(dataclasses.replace(o, color="blue") if o == square else o for o in example.scene.objects))
    session = TracingSession()
    for name, scene in (("a_yellow", example.scene), ("b_blue", blue)):
        graph = session.attribute(example.question, image=scene.render(), max_feature_nodes=150, progress=False)
        save_graph(graph, folder / f"{name}.graph.safetensors")
    cells = sorted(divmod(t, 8) for t in example.scene.token_positions(square))
    srv = Server(create_app(folder))
    yield srv, cells
    srv.close()


def test_compare_two_graphs_in_the_page_and_download_the_diff(page, pair_server):
    srv, cells = pair_server
    open_app(page, srv.url, "a_yellow.graph.safetensors")
    page.locator(f"#{ids.COMPARE_PANEL} > summary").click()
    page.click(f"#{ids.COMPARE_WITH}")
    page.click("text=b_blue.graph.safetensors >> nth=-1")
    page.wait_for_function(f"() => document.getElementById('{ids.COMPARE_SUMMARY}').innerText.includes('cells')")
    wait_idle(page)
    summary = page.inner_text(f"#{ids.COMPARE_SUMMARY}")
    assert f"image cells that changed: {len(cells)}" in summary
    assert all(f"({r},{c})" in summary for r, c in cells)
    assert "yellow" in summary and "blue" in summary
    assert page.get_attribute(f"#{ids.COMPARE_IMAGE}", "src").startswith("data:image/png;base64,")
    rows = dash_prop(page, ids.COMPARE_TABLE, "data")
    assert {"status": "vanishes", "label_a": "logit 'yellow' (p=1.000)"}.items() <= next(
        r for r in rows if r["kind"] == "logit" and r["status"] == "vanishes").items()
    assert any(r["kind"] == "logit" and r["status"] == "appears" and "blue" in r["label_b"] for r in rows)
    with page.expect_download() as download:
        page.click(f"#{ids.COMPARE_DOWNLOAD}")
    data = json.loads(open(download.value.path()).read())
    assert data["format"] == "vlm-circuits-graph-diff"
    assert sorted((c["row"], c["col"]) for c in data["changed_cells"]) == cells
    assert len(data["nodes"]) >= len(rows)
