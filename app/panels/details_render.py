"""HTML for the details panel, from app.view.details data."""

from __future__ import annotations

import numpy as np
from dash import html

from app import ids


def _fmt(x: float) -> str:
    if x is None:
        return "–"
    return f"{x:.4g}"


def node_link(key: str, label: str, weight: float | None = None) -> html.Button:
    """A button that selects another node (pattern-matching id)."""
    children = [html.Span(label, className="link-label")]
    if weight is not None:
        children.append(html.Span(f"{weight:+.3g}", className="weight " + ("pos" if weight >= 0 else "neg")))
    return html.Button(children, id={"type": ids.GOTO_NODE, "key": key}, className="node-link", title=key)


def facts_table(rows: list[tuple[str, str]]) -> html.Table:
    return html.Table(className="facts", children=[html.Tbody([
        html.Tr([html.Th(k), html.Td(v)]) for k, v in rows])])


def token_list(title: str, tokens: list[tuple[str, float]], cls: str) -> html.Div:
    if not tokens:
        return html.Div()
    return html.Div(className="token-list", children=[
        html.Div(title, className="section-title"),
        html.Div([html.Span([t, html.Small(f" {v:+.2f}")], className=f"chip {cls}") for t, v in tokens]),
    ])


def edge_lists(d: dict) -> list:
    out = []
    for title, edges in (("Strongest inputs", d.get("inputs", [])), ("Strongest outputs", d.get("outputs", []))):
        if edges:
            out.append(html.Div(className="edge-list", children=[
                html.Div(title, className="section-title"),
                *[node_link(e["key"], e["label"], e["weight"]) for e in edges],
            ]))
    return out


def details_children(d: dict | None, selected_in_view: bool) -> list:
    if d is None:
        return [html.Div("Click a node in the graph to see its details.", className="note")]
    kind = d["kind"]
    out: list = []
    if not selected_in_view:
        out.append(html.Div("Not in the current view (pruned away or hidden).", className="note"))
    if kind == "supernode":
        out.append(facts_table([("kind", "supernode"), ("members", str(len(d["members"]))),
                                ("influence (sum)", _fmt(d["influence"]))]))
        out.append(html.Div(className="edge-list", children=[
            html.Div("Members", className="section-title"), *[node_link(m["key"], m["label"]) for m in d["members"]]]))
        return out
    rows = [("kind", kind), ("id", d["key"])]
    if kind == "feature":
        rows += [("layer", str(d["layer"])), ("position", f"{d['position']} {d['token']}"),
                 ("feature", str(d["feature"])), ("activation", _fmt(d["activation"])),
                 ("influence", _fmt(d["influence"]))]
    elif kind == "logit":
        rows += [("target", d["target"]), ("token id", str(d["token_id"])), ("probability", f"{d['probability']:.4f}"),
                 ("value", _fmt(d["value"]))]
    elif kind == "embedding":
        cell = d.get("cell")
        rows += [("position", f"{d['position']} {d['token']}"), ("token id", str(d["token_id"])),
                 ("influence", _fmt(d["influence"]))]
        if cell:
            rows.append(("image cell", f"image {cell[0]}, row {cell[1]}, col {cell[2]}"))
    elif kind == "error":
        rows += [("layer", str(d["layer"])), ("position", f"{d['position']} {d['token']}"),
                 ("influence", _fmt(d["influence"]))]
    if d.get("pinned"):
        rows.append(("pinned", "yes"))
    out.append(facts_table(rows))
    if kind == "feature":
        out.append(token_list("Promotes", d.get("promoted", []), "pos"))
        out.append(token_list("Suppresses", d.get("suppressed", []), "neg"))
    out += edge_lists(d)
    return out


def token_strip(session, activations: np.ndarray | None) -> list:
    """The prompt's tokens shaded by a feature's activation; the image's soft tokens as one chip."""
    if activations is None:
        return []
    g = session.graph
    acts = np.asarray(activations, dtype=np.float64)
    top = float(np.abs(acts).max()) or 1.0
    spans = []
    image_done = set()
    for pos, tok in enumerate(g.tokens):
        if pos in session.cell_of_position:
            image = session.cell_of_position[pos][0]
            if image in image_done:
                continue
            image_done.add(image)
            img_pos = [p for p, c in session.cell_of_position.items() if c[0] == image]
            peak = float(acts[img_pos].max()) if img_pos else 0.0
            spans.append(html.Span(f"[image {image}: max {peak:.3g}]", className="tok image-tok",
                                   style={"backgroundColor": f"rgba(255,120,0,{min(abs(peak) / top, 1):.2f})"},
                                   title="see the heatmap on the image"))
            continue
        a = float(acts[pos])
        spans.append(html.Span(tok if tok.strip() else repr(tok)[1:-1], className="tok",
                               title=f"@{pos}: {a:.4g}",
                               style={"backgroundColor": f"rgba(255,120,0,{min(abs(a) / top, 1):.2f})"}))
    return [html.Div("Activation over the prompt", className="section-title"), html.Div(spans, className="tokens")]


def examples_children(examples: list[dict], note: str) -> list:
    out = [html.Div("Top-activating examples", className="section-title")]
    if note:
        out.append(html.Div(note, className="note examples-note"))
    cards = []
    with_images = any(ex["thumb"] for ex in examples)  # text-only examples (a text model's store) get no image column
    for ex in examples:
        text = [html.Span(t, className="tok active" if active else "tok") for t, active in ex["tokens"]] or ex["text"]
        thumb = [html.Img(src=ex["thumb"], className="thumb") if ex["thumb"] else html.Div(className="thumb empty")]
        cards.append(html.Div(className="example", children=(thumb if with_images else []) + [
            html.Div([html.Div(f"{ex['value']:.3g}", className="example-value"), html.Div(text, className="example-text")]),
        ]))
    if cards:
        out.append(html.Div(cards, className="example-list"))
    return out
