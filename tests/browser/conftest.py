"""Browser tests: the explorer served from this process, driven by headless Chromium (Playwright).

Debian's /usr/bin/chromium (apt-get install -y chromium), never `playwright install`; see docs/app.md.
Every test fails on a page error or a console error.
"""

from __future__ import annotations

import logging
import sys
import threading
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage"]

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ for graph_factory


def pytest_collection_modifyitems(config, items):
    if Path(CHROMIUM).exists():
        return
    skip = pytest.mark.skip(reason=f"{CHROMIUM} is missing: apt-get install -y chromium (CI installs it)")
    for item in items:
        if "browser" in item.keywords:
            item.add_marker(skip)


def write_graphs(folder: Path) -> dict[str, str]:
    """Synthetic graphs for the browser tests (never written into app/sample_graphs/)."""
    from graph_factory import make_graph

    from tracer.graph import save_graph

    folder.mkdir(parents=True, exist_ok=True)
    names = {}
    # The main test graph: an 8x8 image grid (64 soft tokens), 4 layers, a few hundred nodes.
    image_graph = sparse_graph(seed=3, n_features=260, n_logits=3, per_row=6)
    image_graph.info["toy"] = {"question": "What color is the circle?", "answer": "red", "evidence": ["red circle"],
                               "evidence_tokens": [18, 19, 26, 27],
                               "evidence_positions": [int(image_graph.image_positions[t]) for t in (18, 19, 26, 27)]}
    names["image"] = save_graph(image_graph, folder / "a_image.graph.safetensors").name
    names["text"] = save_graph(make_graph(seed=4, n_layers=3, n_features=40, with_image=False),
                               folder / "b_text.graph.safetensors").name
    (folder / "c_broken.graph.safetensors").write_bytes(b"\x00\x01 this is not a safetensors file" * 4)
    names["broken"] = "c_broken.graph.safetensors"
    # Big: thousands of features, pruned to a display of about 1,000 nodes.
    names["big"] = save_graph(sparse_graph(seed=5, n_features=3600, n_logits=5, per_row=8),
                              folder / "d_big.graph.safetensors").name
    write_example_store(folder / "feature_examples")
    return names


def write_example_store(out: Path, n_inputs: int = 4, n_layers: int = 4, width: int = 50) -> Path:
    """A small feature-examples store (tracer's writer): every feature of make_graph's range
    (layers 0-3, features 0-49) fires on a few inputs, at an image cell or a text token."""
    import numpy as np
    import torch
    from PIL import Image

    from tracer.features.writer import InputRecord, StoreWriter

    rng = np.random.default_rng(0)
    writer = StoreWriter(out, {layer: width for layer in range(n_layers)}, n_per_feature=3,
                         manifest_extra={"model_name": "toy", "tokens_per_side": 8})
    words = ["What", "color", "is", "the", "circle", "?"]
    for i in range(n_inputs):
        tokens = ["<bos>", "<start_of_image>"] + ["<image_soft_token>"] * 64 + ["<end_of_image>"] + words
        types = [0, 0] + [1] * 64 + [0] + [0] * len(words)
        img = Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
        writer.add_input(InputRecord(example_id=f"ex{i}", text=" ".join(tokens), token_ids=list(range(len(tokens))),
                                     token_mask=[True] * len(tokens), token_type_ids=types, tokens=tokens,
                                     images=[img]))
    for layer in range(n_layers):
        inputs = np.repeat(np.arange(n_inputs), width)
        features = np.tile(np.arange(width), n_inputs)
        positions = rng.integers(2, 2 + 64 + 1 + len(words), len(inputs))
        values = rng.random(len(inputs)).astype(np.float32) + 0.1
        writer.update(layer, torch.as_tensor(inputs), torch.as_tensor(positions), torch.as_tensor(features),
                      torch.as_tensor(values))
    return writer.finish()


def sparse_graph(seed: int, n_features: int, n_logits: int, per_row: int):
    """A graph shaped like the toy VLM's (4 layers, an 8x8 image grid, 81 positions) whose
    features have only a few inputs each (make_graph's rows are dense), like real graphs: with
    3,600 features, pruning at the usual thresholds keeps views of 700 to 1,000 nodes."""
    import numpy as np
    from graph_factory import make_graph

    g = make_graph(seed=seed, n_layers=4, n_pos=81, n_features=n_features, n_logits=n_logits, image_side=8)
    rng = np.random.default_rng(seed)
    sparse = np.zeros_like(g.adjacency)
    for r in range(g.adjacency.shape[0]):
        nz = np.flatnonzero(g.adjacency[r])
        keep = rng.choice(nz, min(len(nz), per_row if r < g.n_features else 200), replace=False) if len(nz) else nz
        sparse[r, keep] = g.adjacency[r, keep]
    g.adjacency = sparse
    g.values = sparse.astype(np.float64).sum(1) + g.constants + g.unexplored
    return g


class Server:
    def __init__(self, app):
        from werkzeug.serving import make_server

        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        self.app = app
        self.httpd = make_server("127.0.0.1", 0, app.server, threaded=True)
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()


@pytest.fixture(scope="session")
def graphs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("graphs")
    return folder, write_graphs(folder)


@pytest.fixture(scope="session")
def server(graphs):
    from app.factory import create_app

    folder, _ = graphs
    srv = Server(create_app(folder, max_nodes=1000, max_edges=5000))
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def sample_server():
    """The app on the shipped app/sample_graphs/ (read only: no test edits annotations there)."""
    from app.factory import create_app, default_graphs_dir

    if not any(default_graphs_dir().glob("*.graph.safetensors")):
        pytest.skip("no sample graphs in app/sample_graphs/")
    srv = Server(create_app())
    yield srv
    srv.close()


@pytest.fixture(scope="session")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield b
        b.close()


@pytest.fixture(scope="session")
def context(browser):
    """One browser context for all tests: its HTTP and code caches make page loads cheaper."""
    ctx = browser.new_context(viewport={"width": 1500, "height": 950}, accept_downloads=True)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
    pg.on("console", lambda msg: errors.append(f"console.{msg.type}: {msg.text}") if msg.type == "error" else None)
    pg.set_default_timeout(20_000)
    yield pg
    pg.close()
    assert not errors, "browser errors:\n" + "\n".join(errors)
