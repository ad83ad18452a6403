"""The image figure: go.Image (PNG data URI) with a go.Heatmap over the soft-token grid.

The heatmap is transparent at zero; it carries each cell's embedding-node key in customdata
(hover -> highlight that node in the graph) and shows a feature's activation when one is
selected. The grid and the selected region are layout shapes, updated with Patch().
"""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from tracer.graph.neuronpedia import image_to_data_uri

from app.view.session import GraphSession

# at most half opaque: the image, the grid and the region outlines stay visible under the heat
HEAT_COLOURS = [[0.0, "rgba(255,110,0,0)"], [0.02, "rgba(255,110,0,0.08)"], [1.0, "rgba(255,60,0,0.5)"]]
REGION_COLOUR = "#00c8ff"


def grid_geometry(session: GraphSession, image: int) -> tuple[int, int, float, float]:
    """rows, cols, cell height and width in pixels."""
    img = session.graph.images[image]
    rows, cols = session.grid_shape(image)
    return rows, cols, img.shape[0] / rows, img.shape[1] / cols


def cell_from_xy(session: GraphSession, image: int, x: float, y: float) -> tuple[int, int] | None:
    rows, cols, ch, cw = grid_geometry(session, image)
    row, col = int(np.floor((y + 0.5) / ch)), int(np.floor((x + 0.5) / cw))
    if 0 <= row < rows and 0 <= col < cols:
        return row, col
    return None


def cells_in_box(session: GraphSession, image: int, x_range, y_range) -> list[tuple[int, int]]:
    rows, cols, ch, cw = grid_geometry(session, image)
    x0, x1 = sorted(float(v) for v in x_range)
    y0, y1 = sorted(float(v) for v in y_range)
    r0, r1 = max(0, int(np.floor((y0 + 0.5) / ch))), min(rows - 1, int(np.floor((y1 + 0.5) / ch)))
    c0, c1 = max(0, int(np.floor((x0 + 0.5) / cw))), min(cols - 1, int(np.floor((x1 + 0.5) / cw)))
    return [(r, c) for r in range(r0, r1 + 1) for c in range(c0, c1 + 1)]


def grid_shapes(session: GraphSession, image: int) -> list[dict]:
    rows, cols, ch, cw = grid_geometry(session, image)
    h, w = rows * ch, cols * cw
    line = {"color": "rgba(255,255,255,0.45)", "width": 1}
    shapes = [{"type": "line", "x0": c * cw - 0.5, "x1": c * cw - 0.5, "y0": -0.5, "y1": h - 0.5, "line": line,
               "layer": "above"} for c in range(cols + 1)]
    shapes += [{"type": "line", "y0": r * ch - 0.5, "y1": r * ch - 0.5, "x0": -0.5, "x1": w - 0.5, "line": line,
                "layer": "above"} for r in range(rows + 1)]
    return shapes


def region_shapes(session: GraphSession, image: int, cells) -> list[dict]:
    _, _, ch, cw = grid_geometry(session, image)
    return [{"type": "rect", "x0": c * cw - 0.5, "x1": (c + 1) * cw - 0.5, "y0": r * ch - 0.5, "y1": (r + 1) * ch - 0.5,
             "line": {"color": REGION_COLOUR, "width": 3}, "layer": "above", "name": "region"} for r, c in cells]


def truth_shapes(session: GraphSession, image: int) -> list[dict]:
    """Dashed outlines of the toy ground-truth cells (image 0 only)."""
    truth = session.ground_truth
    if not truth or image != 0:
        return []
    _, _, ch, cw = grid_geometry(session, image)
    return [{"type": "rect", "x0": c * cw - 0.5 + 1, "x1": (c + 1) * cw - 1.5, "y0": r * ch - 0.5 + 1,
             "y1": (r + 1) * ch - 1.5, "line": {"color": "#ffffff", "width": 2, "dash": "dot"}, "layer": "above",
             "name": "truth"} for r, c in truth["cells"]]


def all_shapes(session: GraphSession, image: int, cells) -> list[dict]:
    return grid_shapes(session, image) + truth_shapes(session, image) + region_shapes(session, image, cells)


def cell_keys(session: GraphSession, image: int) -> list[list[str]]:
    rows, cols = session.grid_shape(image)
    keys = [["" for _ in range(cols)] for _ in range(rows)]
    for pos, (img, r, c) in session.cell_of_position.items():
        if img == image:
            keys[r][c] = f"E_{pos}"
    return keys


def heat_hover(session: GraphSession, image: int, heat: np.ndarray | None) -> list[list[str]]:
    rows, cols = session.grid_shape(image)
    position = {(r, c): p for p, (img, r, c) in session.cell_of_position.items() if img == image}
    text = []
    for r in range(rows):
        line = []
        for c in range(cols):
            s = f"cell ({r},{c}) · position {position.get((r, c), '?')}"
            if heat is not None:
                s += f"<br>activation {heat[r, c]:.4g}"
            line.append(s)
        text.append(line)
    return text


def base_figure(session: GraphSession, image: int, heat: np.ndarray | None = None, cells=()) -> go.Figure:
    img = np.asarray(session.graph.images[image])
    rows, cols, ch, cw = grid_geometry(session, image)
    z = np.zeros((rows, cols)) if heat is None else heat
    fig = go.Figure()
    fig.add_trace(go.Image(source=image_to_data_uri(img[..., :3] if img.ndim == 3 else img), hoverinfo="skip", name="image"))
    fig.add_trace(go.Heatmap(
        z=z.tolist(), x0=(cw - 1) / 2, dx=cw, y0=(ch - 1) / 2, dy=ch, colorscale=HEAT_COLOURS, zmin=0,
        zmax=float(max(np.abs(z).max(), 1e-9)), showscale=heat is not None, customdata=cell_keys(session, image),
        text=heat_hover(session, image, heat), hovertemplate="%{text}<extra></extra>", name="grid",
        colorbar={"thickness": 10, "len": 0.8, "title": {"text": "act.", "side": "right"}},
    ))
    fig.update_layout(
        margin={"l": 4, "r": 4, "t": 4, "b": 4}, height=330, dragmode="select", clickmode="event",
        xaxis={"visible": False, "range": [-0.5, img.shape[1] - 0.5], "constrain": "domain"},
        yaxis={"visible": False, "range": [img.shape[0] - 0.5, -0.5], "scaleanchor": "x", "constrain": "domain"},
        shapes=all_shapes(session, image, cells),
        plot_bgcolor="white", paper_bgcolor="white", uirevision=f"{session.name}:{image}",
        newselection={"line": {"color": REGION_COLOUR, "width": 2, "dash": "dot"}}, activeselection={"opacity": 0.1},
    )
    return fig


def empty_figure(message: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(height=60, margin={"l": 0, "r": 0, "t": 0, "b": 0}, xaxis={"visible": False},
                      yaxis={"visible": False}, annotations=[{"text": message, "showarrow": False, "x": 0.5, "y": 0.5,
                                                              "xref": "paper", "yref": "paper"}],
                      plot_bgcolor="white", paper_bgcolor="white")
    return fig
