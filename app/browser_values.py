"""Values the browser sends are checked against their shapes before any callback sees them.

A forged POST to /_dash-update-component can put anything in a store: a dict where a node key
belongs, a 5 MB string, a list. Rather than every callback guarding every store, this request
hook replaces a value of the wrong shape with what the store holds when empty (None, or only the
well-formed items of a list), so callbacks see only values the page itself could have sent.
"""

from __future__ import annotations

from flask import request

from tracer import limits

from app import ids
from app.annotations import is_key


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


# (component id, property) -> the function that keeps a well-formed value and replaces the rest
SHAPES = {
    (ids.STORE_SELECTED, "data"): _node_key,
    (ids.CYTO, "selectedNodeData"): _node_data,
    (ids.STORE_GRAPH, "data"): _graph_ref,
    (ids.STORE_REGION, "data"): _region,
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
