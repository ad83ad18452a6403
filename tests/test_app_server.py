"""The app as a server (no browser): factory, command line, forged requests."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from graph_factory import make_graph

from tracer.graph import save_graph

from app import ids
from app.factory import create_app, default_graphs_dir

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def client(tmp_path):
    save_graph(make_graph(seed=0), tmp_path / "good.graph.safetensors")
    (tmp_path / "broken.graph.safetensors").write_bytes(b"\x00" * 64)
    (tmp_path.parent / "outside.graph.safetensors").write_bytes(b"")
    app = create_app(tmp_path)
    return app.server.test_client()


def call(client, output: str, inputs: list[dict], state: list[dict] | None = None):
    body = {"output": output, "outputs": [{"id": o.split(".")[0], "property": o.split(".")[1]}
                                          for o in output.strip(".").split("...")],
            "inputs": inputs, "state": state or [],
            "changedPropIds": [f"{i['id']}.{i['property']}" for i in inputs]}
    if not output.startswith(".."):
        body["outputs"] = body["outputs"][0]
    r = client.post("/_dash-update-component", json=body)
    return r.status_code, (r.get_json() if r.status_code == 200 else None)


OPEN = f"..{ids.STORE_GRAPH}.data...{ids.STATUS}.children...{ids.STATUS}.className...{ids.STATUS}.title.."


def test_open_graph_callback(client):
    status, data = call(client, OPEN, [{"id": ids.GRAPH_DROPDOWN, "property": "value",
                                        "value": "good.graph.safetensors"}])
    assert status == 200
    assert data["response"][ids.STORE_GRAPH]["data"] == {"name": "good.graph.safetensors"}


def test_broken_graph_gives_a_message(client):
    status, data = call(client, OPEN, [{"id": ids.GRAPH_DROPDOWN, "property": "value",
                                        "value": "broken.graph.safetensors"}])
    assert status == 200
    assert data["response"][ids.STATUS]["className"] == "status error"
    assert "Cannot open this graph" in json.dumps(data["response"][ids.STATUS]["children"])
    assert data["response"][ids.STATUS]["title"].startswith("Cannot open this graph")


@pytest.mark.parametrize("name", ["../outside.graph.safetensors", "/etc/passwd", "..%2Foutside.graph.safetensors"])
def test_forged_names_do_not_escape_the_folder(client, name):
    status, data = call(client, OPEN, [{"id": ids.GRAPH_DROPDOWN, "property": "value", "value": name}])
    assert status == 200
    assert data["response"][ids.STORE_GRAPH]["data"]["name"] is None
    assert "is not a graph in the graphs folder" in json.dumps(data["response"][ids.STATUS]["children"])
    # the render callback refuses it too
    out = (f"..{ids.CYTO}.elements...{ids.COUNTS}.children...{ids.SCORES}.children...{ids.BUDGET_NOTE}.children"
           f"...{ids.CYTO}.layout...{ids.STORE_VIEW_EDGES}.data..")
    status, data = call(client, out, [
        {"id": ids.STORE_GRAPH, "property": "data", "value": {"name": name}},
        {"id": ids.NODE_SLIDER, "property": "value", "value": 0.8},
        {"id": ids.EDGE_SLIDER, "property": "value", "value": 0.98},
        {"id": ids.VIEW_MODE, "property": "value", "value": "pruned"},
        {"id": ids.STORE_ANNOT_REV, "property": "data", "value": 0},
        {"id": ids.FEATURE_BUDGET, "property": "value", "value": 3},
        {"id": ids.VIEW_OPTIONS, "property": "value", "value": []},
    ])
    assert status == 200 and data["response"][ids.CYTO]["elements"] == []


def test_two_apps_in_one_process_both_have_callbacks(tmp_path):
    a, b = create_app(tmp_path), create_app(tmp_path)
    assert len(a.callback_map) > 10 and len(a.callback_map) == len(b.callback_map)


def test_page_serves_local_assets_only(client):
    html = client.get("/").get_data(as_text=True)
    assert "/assets/app.css" in html and "/assets/vlmc.js" in html
    assert "cdn" not in html.lower() and "unpkg" not in html.lower()
    layout = client.get("/_dash-layout").get_json()
    assert ids.CYTO in json.dumps(layout)


def test_default_graphs_dir_is_the_repository_sample_graphs():
    assert default_graphs_dir() == ROOT / "app" / "sample_graphs"


def test_command_line_help_and_no_model_at_import():
    out = subprocess.run([sys.executable, "-m", "app", "--help"], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0
    for word in ("--graphs", "--host", "--port", "--debug", "127.0.0.1", "8050", "sample_graphs"):
        assert word in out.stdout
    probe = ("import sys, app.factory, app.__main__; "
             "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_missing_graphs_folder_is_an_error(tmp_path):
    out = subprocess.run([sys.executable, "-m", "app", "--graphs", str(tmp_path / "nope")], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 2 and "does not exist" in out.stderr
