"""create_app(graphs_dir): the Dash app, with no model and nothing heavy loaded at import."""

from __future__ import annotations

from pathlib import Path

from dash import Dash

from tracer.batch.run import is_batch_folder

from app import browser_values
from app.callbacks import register_all
from app.panels.page import page
from app.state import AppState

ASSETS = Path(__file__).parent / "assets"


def default_graphs_dir() -> Path:
    """The sample graphs shipped inside the app package (a checkout, an editable install and an
    installed wheel all have them)."""
    return Path(__file__).resolve().parent / "sample_graphs"


def create_app(graphs_dir: str | Path | None = None, examples: str | Path | None = None,
               max_nodes: int | None = None, max_edges: int | None = None, live=None, live_factory=None) -> Dash:
    """live: None / False (explorer only), True (the toy VLM) or an app.live.LiveConfig: trace,
    steer and attention with that model, loaded by the first job that needs it (never here).
    live_factory(config) -> session replaces the model loader (tests)."""
    import dash_cytoscape

    dash_cytoscape.load_extra_layouts()  # the bundle with cytoscape-svg (SVG export); served locally
    graphs_dir = Path(graphs_dir) if graphs_dir else default_graphs_dir()
    batch = None
    if is_batch_folder(graphs_dir):  # python -m tracer batch --out DIR: its table, and its graphs/
        from app.batch import BatchView

        batch = BatchView.open(graphs_dir)
        graphs_dir = graphs_dir / "graphs"
    state = AppState(graphs_dir, examples=examples, max_nodes=max_nodes, max_edges=max_edges)
    state.batch = batch
    app = Dash(__name__, title="VLM circuits", assets_folder=str(ASSETS), serve_locally=True,
               update_title=None)
    app.state = state  # for tests and embedding
    live_config = None
    if live:
        from app.live import LiveConfig, LiveState

        live_config = LiveConfig() if live is True else live
        state.live = LiveState(live_config, graphs_dir, factory=live_factory)

    def layout():  # a function: every page load lists the folder afresh
        return page(state.store.names(), None, str(graphs_dir), live=live_config, batch=batch)

    app.layout = layout
    register_all(app, state)
    browser_values.install(app.server)
    return app
