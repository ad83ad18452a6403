"""A batch folder in the explorer: the examples table (sortable, filterable), a row opens its
graph, and the aggregate plots. The folder is written the way `python -m tracer batch` writes it
(real toy graphs, rows from tracer.batch.summary), without starting Ray."""

from __future__ import annotations

import json

import pytest

from app import ids

from browser_helpers import dash_prop, figure_data, wait_idle
from conftest import Server

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def batch_folder(tmp_path_factory):
    from tracer.batch.run import write_summary
    from tracer.batch.summary import graph_row
    from tracer.files import atomic_write_text
    from tracer.graph import save_graph
    from tracer.session import TracingSession
    from tracer.toy import world

    folder = tmp_path_factory.mktemp("batch")
    (folder / "graphs").mkdir()
    (folder / "results").mkdir()
    session = TracingSession()
    examples = [world.make_example("heldout", i, question_type=t) for i, t in
                ((0, "color"), (1, "color"), (2, "shape"))]
    for k, ex in enumerate(examples):
        example_id = f"ex{k}"
        graph = session.attribute(ex.question, ex.image(), max_feature_nodes=120, progress=False)
        path = save_graph(graph, folder / "graphs" / f"{example_id}.graph.safetensors")
        row = {"id": example_id, "question_type": ex.question_type, "prompt": ex.question, "answer": ex.answer,
               "graph": f"graphs/{path.name}", "error": None, "time_s": 0.1 * (k + 1),
               **graph_row(graph, ex.evidence_tokens, ex.answer)}
        atomic_write_text(folder / "results" / f"{example_id}.json", json.dumps(row))
    write_summary(folder, ["ex0", "ex1", "ex2"])
    return folder


@pytest.fixture(scope="module")
def batch_server(batch_folder):
    from app.factory import create_app

    srv = Server(create_app(batch_folder))
    yield srv
    srv.close()


def _table_ids(page) -> list[str]:
    return page.eval_on_selector_all(f"#{ids.BATCH_TABLE} td[data-dash-column='id']",
                                     "cells => cells.map(c => c.innerText.trim())")


def test_the_table_lists_the_examples_and_a_row_opens_its_graph(page, batch_server):
    page.goto(batch_server.url)
    wait_idle(page)
    assert "Batch: 3 examples" in page.inner_text(f"#{ids.BATCH_HEADLINE}")
    assert _table_ids(page) == ["ex0", "ex1", "ex2"]
    assert dash_prop(page, ids.GRAPH_DROPDOWN, "value") == "ex0.graph.safetensors"  # only graphs/ is listed
    page.click(f"#{ids.BATCH_TABLE} td[data-dash-column='prompt'] >> nth=2")
    wait_idle(page)
    assert dash_prop(page, ids.GRAPH_DROPDOWN, "value") == "ex2.graph.safetensors"
    assert "ex2.graph.safetensors" in page.inner_text(f"#{ids.STATUS}")


def test_sorting_and_filtering_keep_rows_opening_their_own_graph(page, batch_server):
    page.goto(batch_server.url)
    wait_idle(page)
    # sort by time, descending (two clicks on the sort arrow): ex2 first
    sort = page.locator(f"#{ids.BATCH_TABLE} th[data-dash-column='time_s'] .column-header--sort")
    sort.click()
    wait_idle(page)
    sort.click()
    wait_idle(page)
    assert _table_ids(page) == ["ex2", "ex1", "ex0"]
    page.click(f"#{ids.BATCH_TABLE} td[data-dash-column='prompt'] >> nth=1")  # the row of ex1
    wait_idle(page)
    assert dash_prop(page, ids.GRAPH_DROPDOWN, "value") == "ex1.graph.safetensors"
    # filter on the type column
    flt = page.locator(f"#{ids.BATCH_TABLE} th.dash-filter[data-dash-column='question_type'] input[type=text]")
    flt.fill("shape")
    flt.press("Enter")
    wait_idle(page)
    assert _table_ids(page) == ["ex2"]


def test_the_aggregate_plots_show_recurring_features_and_the_influence_map(page, batch_server, batch_folder):
    import pandas as pd

    from tracer.batch.aggregate import recurring_features

    page.goto(batch_server.url)
    wait_idle(page)
    bars = figure_data(page, ids.BATCH_RECURRING, "gd.data[0].x")
    rows = pd.read_parquet(batch_folder / "summary.parquet").to_dict("records")
    assert list(bars)[::-1] == [r["examples"] for r in recurring_features(rows, top=15)]
    z_all = figure_data(page, ids.BATCH_INFLUENCE, "gd.data[0].z")
    assert len(z_all) == 8 and len(z_all[0]) == 8
    page.click(f"#{ids.BATCH_TYPE}")
    page.click("text=shape >> nth=-1")
    wait_idle(page)
    z_shape = figure_data(page, ids.BATCH_INFLUENCE, "gd.data[0].z")
    assert z_shape != z_all  # one example's map, not the mean of three
