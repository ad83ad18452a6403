"""Polling the live jobs of this tab: one request per tick for all kinds, only while one of them
is queued or running; each kind's status lands in its own store, so a result is rendered once
when its status changes, not on every tick."""

from __future__ import annotations

from urllib.parse import quote

from dash import Input, Output, State, html, no_update

from tracer.graph import GraphFormatError

from app import ids
from app.graph_store import GraphNotFound
from app.jobs import ACTIVE, DONE
from app.live import KINDS, LiveError, check_compatible, is_attention_graph
from app.panels.live_render import comparison_children, comparison_figure, job_line

LOST = {"state": "lost", "message": "The server no longer knows this job (was it restarted?)."}
HIDDEN, SHOWN = {"display": "none"}, {"display": "block"}


def open_session(state, graph):
    """The GraphSession of the open graph, or None."""
    name = (graph or {}).get("name")
    if not name:
        return None
    try:
        return state.store.session(name)
    except (GraphNotFound, GraphFormatError):
        return None


def live_session(state, graph, need_transcoders: bool = True, need_image: bool = False, allow_attention: bool = False):
    """(GraphSession, None) if the live model can work on the open graph, else (None, message)."""
    session = open_session(state, graph)
    if session is None:
        return None, "Open a graph first."
    g = session.graph
    if is_attention_graph(g) and not allow_attention:
        return None, "This is an attention graph: go back to its attribution graph for this."
    if need_image and not len(g.images):
        return None, "This graph has no image."
    try:
        check_compatible(state.live.config, g, need_transcoders=need_transcoders)
    except LiveError as err:
        return None, str(err)
    return session, None


def result_graph_url(live, status):
    """'?graph=<name>' for a finished job that saved a graph, the first time it is asked (so a
    reload does not open it again); no_update otherwise."""
    if not status or status.get("state") != DONE or not live.queue.mark_delivered(status["id"]):
        return no_update
    result = live.queue.result(status["id"]) or {}
    return f"?graph={quote(result['name'])}" if result.get("name") else no_update


def comparison_outputs(live, status, what: str, top_k: int, graph=None):
    """(status text, class, figure, figure style, table) of a before/after job (steering, region
    ablation); a result stays shown while the next job runs, and only with the graph it was
    computed on (graph: the STORE_GRAPH data of the open graph)."""
    text, cls = job_line(status, what)
    if not status:
        return "", "job-status", no_update, HIDDEN, []
    if status["state"] != DONE:  # queued, running, error, cancelled: keep the last result shown
        return text, cls, no_update, no_update, no_update
    result = live.queue.result(status["id"])
    if result is None:
        return "the result is no longer on the server", "job-status warning", no_update, HIDDEN, []
    source, shown = result.get("graph"), (graph or {}).get("name")
    if source and source != shown:
        return "", "job-status", no_update, HIDDEN, html.Div(
            [f"The last {what} result is for another graph, ", html.B(source), ": open it to see the result again."],
            className="note other-graph")
    return "", "job-status", comparison_figure(result, top_k), SHOWN, comparison_children(result, top_k)


def register(app, state) -> None:
    live = state.live
    outputs = [Output(ids.store_status(k), "data") for k in KINDS] + [Output(ids.LIVE_POLL, "disabled")]
    inputs = [Input(ids.LIVE_POLL, "n_intervals")] + [Input(ids.store_job(k), "data") for k in KINDS]
    states = [State(ids.store_status(k), "data") for k in KINDS]

    @app.callback(*outputs, *inputs, *states)
    def poll(_n, *args):
        jobs, previous = args[: len(KINDS)], args[len(KINDS):]
        out, active = [], False
        for job, prev in zip(jobs, previous):
            job_id = job.get("id") if isinstance(job, dict) else None
            status = None
            if job_id:
                status = live.queue.status(job_id) or dict(LOST, id=job_id)
                active = active or status["state"] in ACTIVE
            out.append(no_update if status == prev else status)
        return (*out, not active)
