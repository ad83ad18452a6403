"""User annotations of one graph: labels (clerps), pinned and hidden nodes, supernodes.

They live next to the graph file as `<graph file name>.annotations.json`, e.g.
`color.graph.safetensors.annotations.json`, and are written atomically: the new content goes to
a temporary file in the same folder, is flushed to disk, and replaces the old file with
`os.replace`, so a crash mid-save leaves either the old or the new file, never a torn one.

    {"format": "vlm-circuits-annotations", "version": 1, "graph": "color.graph.safetensors",
     "labels": {"F_2_17_40": "red-ness"}, "pinned": ["F_2_17_40", "L_0"], "hidden": [],
     "supernodes": [{"id": "S_1", "label": "colour", "members": ["F_2_17_40", "F_3_5_84"]}]}

Node keys are the ones of app.view.keys. No Dash in here.
"""

from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracer import limits
from tracer.files import atomic_write_text

from app.view.keys import is_supernode_key

FORMAT = "vlm-circuits-annotations"
VERSION = 1
SUFFIX = ".annotations.json"
MAX_LABEL = 500
MAX_KEY = limits.MAX_KEY

_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()


class AnnotationsError(ValueError):
    """An annotations file that cannot be read, or an edit naming something that is not a node."""


def is_key(key) -> bool:
    """A plausible node key: a non-empty string of bounded length (keys come from the browser)."""
    return isinstance(key, str) and 0 < len(key) <= MAX_KEY


@dataclass
class Annotations:
    labels: dict[str, str] = field(default_factory=dict)
    pinned: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    supernodes: list[dict] = field(default_factory=list)  # {"id", "label", "members"}

    def to_dict(self, graph_name: str = "") -> dict:
        return {"format": FORMAT, "version": VERSION, "graph": graph_name, "labels": dict(self.labels),
                "pinned": list(self.pinned), "hidden": list(self.hidden),
                "supernodes": [dict(s) for s in self.supernodes]}

    @classmethod
    def from_dict(cls, d: dict) -> "Annotations":
        if not isinstance(d, dict) or d.get("format", FORMAT) != FORMAT:
            raise AnnotationsError("not a vlm-circuits annotations file")

        def strings(value, what):
            if not isinstance(value, list) or not all(is_key(v) for v in value):
                raise AnnotationsError(f"{what} must be a list of node ids")
            return list(dict.fromkeys(value))

        labels = d.get("labels", {})
        if not isinstance(labels, dict) or not all(is_key(k) and isinstance(v, str) for k, v in labels.items()):
            raise AnnotationsError("labels must map node ids to strings")
        supernodes = []
        for s in d.get("supernodes", []):
            if not isinstance(s, dict) or not isinstance(s.get("id"), str):
                raise AnnotationsError("each supernode needs an id")
            supernodes.append({"id": s["id"], "label": str(s.get("label", "")),
                               "members": strings(s.get("members", []), "supernode members")})
        return cls(dict(labels), strings(d.get("pinned", []), "pinned"), strings(d.get("hidden", []), "hidden"),
                   supernodes)

    # ------------------------------------------------------------------ queries
    def supernode_of(self) -> dict[str, str]:
        """member key -> supernode id"""
        return {m: s["id"] for s in self.supernodes for m in s["members"]}

    def supernode(self, sid: str) -> dict | None:
        return next((s for s in self.supernodes if s["id"] == sid), None)

    def expand(self, keys) -> list[str]:
        """Supernode ids replaced by their members; what is not a key (wrong type, too long) dropped."""
        out: list[str] = []
        for k in keys:
            if not is_key(k):
                continue
            s = self.supernode(k)
            if s is None and is_supernode_key(k):
                continue  # a group that does not exist (any more)
            out.extend(s["members"] if s else [k])
        return list(dict.fromkeys(out))

    # ------------------------------------------------------------------ edits (in place)
    def set_label(self, key: str, text: str, known=None) -> None:
        """Label a node, or rename a supernode. With `known` (the open graph's node keys), any other
        key is refused, so that the browser cannot grow the file with made-up keys."""
        if not is_key(key):
            raise AnnotationsError("a label needs a node of the graph")
        text = " ".join(_label_text(text).split())[:MAX_LABEL]
        s = self.supernode(key)
        if s is None and known is not None and key not in known:
            raise AnnotationsError(f"{key[:60]!r} is not a node of the open graph")
        if s is not None:
            s["label"] = text
        elif text:
            self.labels[key] = text
        else:
            self.labels.pop(key, None)

    def toggle_pins(self, keys) -> bool:
        """Pin all of `keys` unless all are pinned already, then unpin them. Returns pinned?"""
        keys = self.expand(keys)
        if keys and all(k in self.pinned for k in keys):
            self.pinned = [k for k in self.pinned if k not in keys]
            return False
        self.pinned += [k for k in keys if k not in self.pinned]
        return True

    def hide(self, keys) -> None:
        self.hidden += [k for k in self.expand(keys) if k not in self.hidden]

    def group(self, keys, label: str) -> str:
        label = " ".join(_label_text(label).split())[:MAX_LABEL]  # refused before anything changes
        members = self.expand(keys)
        if len(members) < 2:
            raise ValueError("select at least two nodes to group")
        for s in self.supernodes:
            s["members"] = [m for m in s["members"] if m not in members]
        self.supernodes = [s for s in self.supernodes if len(s["members"]) >= 2]
        used = [int(s["id"][2:]) for s in self.supernodes if s["id"][2:].isdigit()]
        sid = f"S_{max(used, default=0) + 1}"
        self.supernodes.append({"id": sid, "label": label or sid, "members": members})
        return sid

    def ungroup(self, sid: str) -> None:
        self.supernodes = [s for s in self.supernodes if s["id"] != sid]


def _label_text(text) -> str:
    """Labels are strings ("" / None: no label). Anything else comes from a forged request and
    is refused rather than stored as its Python repr ("{'a': 1}")."""
    if text is None:
        return ""
    if not isinstance(text, str):
        raise AnnotationsError(f"a label must be text, not {type(text).__name__}")
    return text


def annotations_path(graph_path: str | Path) -> Path:
    graph_path = Path(graph_path)
    return graph_path.with_name(graph_path.name + SUFFIX)


def _lock_for(path: Path) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(str(path), threading.Lock())


def load_annotations(graph_path: str | Path) -> Annotations:
    """Empty annotations if there is no file; AnnotationsError if there is a broken one."""
    path = annotations_path(graph_path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Annotations()
    except OSError as err:
        raise AnnotationsError(f"{path.name}: cannot read ({err})") from err
    try:
        return Annotations.from_dict(json.loads(raw))
    except (json.JSONDecodeError, AnnotationsError) as err:
        raise AnnotationsError(f"{path.name}: {err}") from err


def save_annotations(graph_path: str | Path, annotations: Annotations) -> Path:
    path = annotations_path(graph_path)
    atomic_write_text(path, json.dumps(annotations.to_dict(Path(graph_path).name), indent=1, ensure_ascii=False) + "\n")
    return path


def update_annotations(graph_path: str | Path, edit) -> tuple[Annotations, object]:
    """Read, apply `edit(annotations)` (which may return a value), write; one writer at a time.

    A broken file is kept aside as `<name>.broken-<time>` rather than silently overwritten."""
    path = annotations_path(graph_path)
    with _lock_for(path):
        try:
            annotations = load_annotations(graph_path)
        except AnnotationsError:
            os.replace(path, path.with_name(f"{path.name}.broken-{time.strftime('%Y%m%d-%H%M%S')}"))
            annotations = Annotations()
        result = edit(annotations)
        save_annotations(graph_path, annotations)
    return annotations, result
