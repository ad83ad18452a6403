"""HTML and figures for the live features' results (no model code: dicts from app/tasks.py)."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go
from dash import html

from tracer.graph.neuronpedia import image_to_data_uri

from app.jobs import ACTIVE, CANCELLED, DONE, ERROR, status_text

BEFORE, AFTER = "#9aa5b1", "#f28e2b"
OVERLAY_RGB = (150, 0, 255)
OVERLAY_MAX_ALPHA = 140  # of 255: the strongest patch still shows the image (and the grid) under it

# share of a trace's progress bar per phase (tracer's on_progress phases + the app's own)
PHASES = [("loading", 0, 5), ("forward", 5, 5), ("encode", 10, 10), ("logit lanes", 20, 10), ("features", 30, 60),
          ("assemble", 90, 5), ("saving", 95, 5)]


def progress_percent(status: dict | None) -> float:
    if not status:
        return 0.0
    if status["state"] == DONE:
        return 100.0
    if status["state"] != "running":
        return 0.0
    phase = status.get("phase") or ""
    for name, start, span in PHASES:
        if phase.startswith(name):
            total = status.get("total") or 0
            frac = min(1.0, status.get("done", 0) / total) if total else 0.0
            return start + span * frac
    return 0.0


def job_line(status: dict | None, what: str = "") -> tuple[str, str]:
    """(text, css class) for a job status line."""
    if not status:
        return "", "job-status"
    if status["state"] == "lost":
        return status.get("message", ""), "job-status error"
    text = status_text(status)
    cls = "job-status"
    if status["state"] == ERROR:
        cls += " error"
    elif status["state"] in ACTIVE:
        cls += " busy"
        text = (what + ": " if what else "") + text
    elif status["state"] == CANCELLED:
        cls += " warning"
    return text, cls


def _tok(token: str) -> str:
    token = str(token)
    return repr(token)[1:-1] if token.strip() != token or not token else token


def comparison_figure(result: dict, k: int) -> go.Figure:
    """Grouped bars: probability of each token before and after, for the top tokens of either side."""
    rows = sorted(result["changes"], key=lambda r: -max(r["p_after"], r["p_before"]))[:k]
    # tokens that are likely before or after (at least the two most likely): a readable chart
    rows = [r for i, r in enumerate(rows) if i < 2 or max(r["p_after"], r["p_before"]) >= 0.005]
    labels = [_tok(r["token"]) for r in rows]
    # distinct x labels even if two ids decode alike
    seen: dict[str, int] = {}
    for i, lab in enumerate(labels):
        if lab in seen:
            labels[i] = f"{lab} (#{rows[i]['id']})"
        seen[lab] = i
    fig = go.Figure([
        go.Bar(name="before", x=labels, y=[r["p_before"] for r in rows], marker_color=BEFORE,
               hovertemplate="%{x}: p before %{y:.4f}<extra></extra>"),
        go.Bar(name="after", x=labels, y=[r["p_after"] for r in rows], marker_color=AFTER,
               hovertemplate="%{x}: p after %{y:.4f}<extra></extra>"),
    ])
    # the legend sits in the top margin, right-aligned, above the plot area (bars reach y = 1)
    fig.update_layout(barmode="group", height=220, margin={"l": 36, "r": 6, "t": 30, "b": 40},
                      legend={"orientation": "h", "x": 1, "xanchor": "right", "y": 1.02, "yanchor": "bottom"},
                      yaxis={"range": [0, 1], "title": None},
                      plot_bgcolor="white", paper_bgcolor="white", font={"size": 11})
    return fig


def comparison_children(result: dict, k: int = 6) -> list:
    before, after = _tok(result["answer_before"]), _tok(result["answer_after"])
    changed = before != after
    out: list = []
    if result.get("graph"):
        out.append(html.Div([html.Span("On graph "), html.B(result["graph"])], className="note result-graph"))
    out += [html.Div(className="answer-line", children=[
        html.B("Answer: "), html.Span(before, className="tok-chip"), " → ",
        html.Span(after, className="tok-chip" + (" changed" if changed else "")),
        html.Span("  (changed)" if changed else "  (unchanged)", className="note"),
    ])]
    rows = sorted(result["changes"], key=lambda r: -max(r["p_after"], r["p_before"]))[:k]
    out.append(html.Table(className="shares changes", children=[
        html.Thead(html.Tr([html.Th("token"), html.Th("p before"), html.Th("p after"),
                            html.Th("Δ raw logit", title="change of the token's logit itself")])),
        html.Tbody([html.Tr([html.Td(_tok(r["token"])), html.Td(f"{r['p_before']:.4f}"),
                             html.Td(f"{r['p_after']:.4f}"), html.Td(f"{r['logit_change']:+.3f}")],
                            **{"data-token": str(r["token"])})
                    for r in rows]),
    ]))
    if result.get("target_changes"):
        out.append(html.Table(className="shares target-changes", children=[
            html.Thead(html.Tr([html.Th("graph target"), html.Th(
                "Δ along the target", title="change along the graph's own target direction: W_U[t] − mean(W_U) "
                "for a token, W_U[a] − W_U[b] for a contrast (what the graph's logit edges measure)")])),
            html.Tbody([html.Tr([html.Td(t["label"]), html.Td(f"{t['change']:+.4f}")], **{"data-target": t["label"]})
                        for t in result["target_changes"]]),
        ]))
        if result.get("direct_only"):
            out.append(html.Div("Direct effects only: ablating one node moves its graph target by minus that node's "
                                "edge into the logit node (edges are along the target direction, not the raw logit).",
                                className="note"))
    gen = result.get("generation")
    if gen:
        out.append(html.Div(className="generations", children=[
            html.Div([html.B("Generation before: "), html.Span(gen["before"] or "(nothing)", className="gen-text")]),
            html.Div([html.B("Generation after: "), html.Span(gen["after"] or "(nothing)",
                                                              className="gen-text gen-after")]),
        ]))
    notes = []
    if result.get("kind") == "steer":
        notes.append(f"{result['applied']} activation(s) edited · " + "; ".join(result.get("edits", [])))
        if result.get("direct_only"):
            notes.append("direct effects only (attention, norms and other MLP outputs frozen)")
        elif result.get("freeze_attention"):
            notes.append("attention frozen to the clean run")
    if result.get("kind") == "region":
        notes.append(f"{result['mode']}-ablated {len(result['cells'])} image soft token(s)")
    if notes:
        out.append(html.Div(" · ".join(notes), className="note"))
    return out


def heads_children(result: dict, labels: tuple[str, str]) -> list:
    edge = result["edge"]
    rows = []
    for rank, h in enumerate(result["heads"], 1):
        share = h["carried"] / edge if abs(edge) > 1e-12 else float("nan")
        rows.append(html.Tr([html.Td(str(rank)), html.Td(f"L{h['layer']} H{h['head']}"), html.Td(f"{h['carried']:+.4g}"),
                             html.Td("–" if np.isnan(share) else f"{share * 100:.0f}%"),
                             html.Td(f"{h['edge_without']:+.4g}")]))
    return [
        html.Div([html.B(f"{labels[0]} → {labels[1]}"), f": edge {edge:+.4g}, without any of the "
                  f"{result['n_heads']} candidate heads {result['without_attention']:+.4g}"], className="note"),
        html.Table(className="shares heads-table", children=[
            html.Thead(html.Tr([html.Th("#"), html.Th("head"), html.Th("carries"), html.Th("of edge"),
                                html.Th("edge without it")])),
            html.Tbody(rows)]),
        html.Div("Removing one head from the frozen linear model; paths through several heads overlap, so the "
                 "parts need not add up to the edge.", className="note"),
    ]


def attention_split_children(split: dict, labels: tuple[str, str]) -> list:
    """The per-head split an attention graph stores for its strongest edges (no job needed)."""
    heads = np.asarray(split["heads"], dtype=float)
    order = np.argsort(-np.abs(heads))[:12]
    total = float(heads.sum() + split.get("residual", 0.0))
    rows = [html.Tr([html.Td(str(r + 1)), html.Td(f"H{int(h)}"), html.Td(f"{heads[h]:+.4g}"),
                     html.Td(f"{heads[h] / total * 100:.0f}%" if abs(total) > 1e-12 else "–")])
            for r, h in enumerate(order) if heads[h] != 0]
    out = [html.Div([html.B(f"{labels[0]} → {labels[1]}"), f": {total:+.4g} in all"
                     + (f", residual {split['residual']:+.4g}" if split.get("residual") else "")], className="note")]
    if rows:
        out.append(html.Table(className="shares heads-table", children=[
            html.Thead(html.Tr([html.Th("#"), html.Th("head"), html.Th("carries"), html.Th("share")])),
            html.Tbody(rows)]))
    return out


def overlay_uri(grid_map: np.ndarray, min_side: int = 256) -> str:
    """A (P, P) map as a transparent-to-purple PNG (nearest-neighbour upscaled, crisp cells)."""
    m = np.asarray(grid_map, dtype=np.float64)
    lo, hi = float(m.min()), float(m.max())
    v = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)  # the weakest patch fully transparent
    factor = max(1, int(np.ceil(min_side / max(1, max(m.shape)))))
    v = np.kron(v, np.ones((factor, factor)))
    rgba = np.zeros(v.shape + (4,), np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2] = OVERLAY_RGB
    rgba[..., 3] = np.round(np.clip(v, 0, 1) ** 0.8 * OVERLAY_MAX_ALPHA).astype(np.uint8)
    return image_to_data_uri(rgba)  # (H, W, 4) uint8: an RGBA PNG


def overlay_layout_image(grid_map: np.ndarray, width: int, height: int) -> dict:
    """A plotly layout image covering the whole input image (the axes are pixel coordinates,
    y pointing down, as the image panel draws them)."""
    return {"source": overlay_uri(grid_map), "xref": "x", "yref": "y", "x": -0.5, "y": -0.5,
            "sizex": width, "sizey": height, "sizing": "stretch", "xanchor": "left", "yanchor": "top",
            "layer": "above", "opacity": 0.9, "name": "vision-attention"}
