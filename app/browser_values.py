"""Values the browser sends are checked against their shapes before any callback sees them.

A forged POST to /_dash-update-component can put anything in a store: a dict where a node key
belongs, a 5 MB string, a list. Rather than every callback guarding every store, this request
hook replaces a value of the wrong shape with what the store holds when empty (None, or only the
well-formed items of a list), so callbacks see only values the page itself could have sent.
"""

from __future__ import annotations

import math

from flask import request

from tracer import limits

from app import ids
from app.annotations import is_key
from app.live import KINDS


def _node_key(value):
    return value if is_key(value) else None


def _node_data(value):
    if not isinstance(value, list):
        return None
    return [d for d in value if isinstance(d, dict) and is_key(d.get("id"))]


def _graph_ref(value):
    name = value.get("name") if isinstance(value, dict) else None
    if isinstance(value, dict) and (name is None or (isinstance(name, str) and len(name) <= 4096)):
        return value
    return None


def _index(x, bound: int) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < bound


def _region(value):
    """{"image": k, "cells": [[row, col], ...]} as the image panel writes it, whole; else None
    (a string or a cell of text would break every callback that reads the region)."""
    if not isinstance(value, dict) or not isinstance(value.get("cells"), list):
        return None
    cells = value["cells"]
    if not _index(value.get("image", 0), limits.MAX_IMAGES) or not all(
            isinstance(c, list) and len(c) == 2 and all(_index(x, limits.MAX_GRID_SIDE) for x in c) for c in cells):
        return None
    return {"image": value.get("image", 0), "cells": cells}


def _real(x) -> bool:
    """A finite number (plotly sends some coordinates as numeric strings)."""
    if isinstance(x, bool) or not isinstance(x, (int, float, str)):
        return False
    try:
        return math.isfinite(float(x))
    except ValueError:
        return False


def _number(value):
    """A slider's value."""
    return value if not isinstance(value, str) and _real(value) else None


def _text(value):
    """A dropdown's value (a graph name)."""
    return value if isinstance(value, str) and len(value) <= 4096 else None


def _texts(value):
    """A checklist's values."""
    return [v for v in value if isinstance(v, str)] if isinstance(value, list) else None


def _image_index(value):
    return value if _index(value, limits.MAX_IMAGES) else None


def _edge(value):
    """A cytoscape edge's data, or the picked edge: its source and target are node keys."""
    ok = isinstance(value, dict) and is_key(value.get("source")) and is_key(value.get("target"))
    return value if ok else None


def _click(value):
    """plotly clickData: the points clicked, each at finite x, y."""
    points = value.get("points") if isinstance(value, dict) else None
    ok = isinstance(points, list) and all(isinstance(p, dict) and _real(p.get("x")) and _real(p.get("y"))
                                          for p in points)
    return value if ok else None


def _selection(value):
    """plotly selectedData: a box selection's range is two finite numbers per axis (a lasso has none)."""
    if not isinstance(value, dict):
        return None
    box = value.get("range")
    if box is None:
        return value
    ok = isinstance(box, dict) and all(isinstance(box.get(axis), list) and len(box[axis]) == 2
                                       and all(_real(v) for v in box[axis]) for axis in ("x", "y"))
    return value if ok else None


def _job_status(value):
    """A job status as app.jobs.JobQueue.status (or the poll's "lost") writes it."""
    if not isinstance(value, dict) or not isinstance(value.get("state"), str) or not isinstance(value.get("id"), str):
        return None
    counts = all(isinstance(value.get(k, 0), int) and not isinstance(value.get(k, 0), bool)
                 for k in ("position", "done", "total"))
    texts = all(value.get(k) is None or isinstance(value[k], str)
                for k in ("phase", "message", "error", "label", "kind", "device"))
    return value if counts and texts and isinstance(value.get("meta") or {}, dict) else None


# (component id, property) -> the function that keeps a well-formed value and replaces the rest
SHAPES = {
    (ids.STORE_SELECTED, "data"): _node_key,
    (ids.CYTO, "selectedNodeData"): _node_data,
    (ids.STORE_GRAPH, "data"): _graph_ref,
    (ids.STORE_REGION, "data"): _region,
    # widgets and stores that no user types into: a value of another type can only be forged
    (ids.GRAPH_DROPDOWN, "value"): _text,
    (ids.NODE_SLIDER, "value"): _number,
    (ids.EDGE_SLIDER, "value"): _number,
    (ids.FEATURE_BUDGET, "value"): _number,
    (ids.VIEW_OPTIONS, "value"): _texts,
    (ids.IMAGE_SELECT, "value"): _image_index,
    (ids.IMAGE_FIGURE, "clickData"): _click,
    (ids.IMAGE_FIGURE, "selectedData"): _selection,
    (ids.CYTO, "tapEdgeData"): _edge,
    (ids.STORE_EDGE, "data"): _edge,
    (ids.STORE_ATTN_BACK, "data"): _text,
    **{(ids.store_status(kind), "data"): _job_status for kind in KINDS},
}


def _clean_request() -> None:
    if not request.path.endswith("/_dash-update-component"):
        return
    body = request.get_json(silent=True)  # cached: dash reads this same object
    if not isinstance(body, dict):
        return
    for part in ("inputs", "state"):
        items = body.get(part)
        for item in items if isinstance(items, list) else []:
            # pattern-matching ids are dicts (and ALL wildcards lists): none of them is in SHAPES
            if isinstance(item, dict) and isinstance(item.get("id"), str) and isinstance(item.get("property"), str):
                shape = SHAPES.get((item["id"], item["property"]))
                if shape is not None and "value" in item:
                    item["value"] = shape(item["value"])


def install(server) -> None:
    server.before_request(_clean_request)
