"""What the worker runs: each function here returns a job `run(ctx)` for app/jobs.py.

They call tracer's public API (TracingSession.attribute, tracer.interventions,
tracer.attention) with the live model, and return small JSON-ready dicts (big arrays stay on
the server, in LiveState's cache). torch and tracer's model code are imported when a job runs,
in the worker thread.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from app.live import LiveError, LiveState, graph_identity, save_unique, slugify, target_specs

TOP_K = 10


def _images(graph) -> list | None:
    from tracer.images import open_image

    return [open_image(np.asarray(a, dtype=np.uint8)) for a in graph.images] or None


def _chat(graph) -> bool:
    return bool((graph.config or {}).get("chat", True))


# ---------------------------------------------------------------------- trace
def trace_job(live: LiveState, image: bytes | None, prompt: str, targets: list[str] | None, settings: dict,
              stem: str):
    """Attribute prompt (+ image) with the live model, save into the graphs folder."""

    def run(ctx):
        from tracer.images import open_image

        picture = open_image(image) if image else None
        session = live.model.session(ctx)
        ctx.check()
        ctx.progress("forward", 0, 1)
        # plain closures, not bound methods: tracer's _assemble runs dataclasses.asdict over its
        # config, which deep-copies a bound method's object (and fails on the context's lock)
        def on_progress(phase, done, total):
            ctx.progress(phase, done, total)

        def should_stop():
            return ctx.should_stop()

        graph = session.attribute(prompt, picture, slug=slugify(stem), targets=targets or None, progress=False,
                                  on_progress=on_progress, should_stop=should_stop, **settings)
        ctx.check()
        ctx.progress("saving", 0, 1)
        graph.info["app"] = {"user_prompt": prompt, "targets": list(targets or [])}
        name = save_unique(graph, live.graphs_dir, stem)
        return {"name": name, "n_features": graph.n_features, "prompt": prompt,
                "targets": [t.label for t in graph.targets]}

    return run


# ---------------------------------------------------------------------- steering
def _comparison(result, top_k: int) -> dict:
    rows = result.changes()
    return {"answer_before": result.answer_before, "answer_after": result.answer_after,
            "top_before": [t.to_dict() for t in result.top_before[:top_k]],
            "top_after": [t.to_dict() for t in result.top_after[:top_k]],
            "changes": rows}


def steer_job(live: LiveState, graph, edits: list[dict], freeze_attention: bool, direct_only: bool, top_k: int,
              generate: int, name: str = ""):
    """intervene (+ steered_generate) on the graph's prompt and image with the given edits:
    dicts of FeatureIntervention's fields (plus an optional display "label"). name: the graph's,
    recorded in the result (which graph it belongs to)."""

    def run(ctx):
        from tracer.interventions import FeatureIntervention, intervene, steered_generate
        from tracer.interventions.common import as_bundle

        interventions = [FeatureIntervention(e["layer"], e["feature"], e["mode"], e.get("value"), e["positions"])
                         for e in edits]
        session = live.model.session(ctx)
        images = _images(graph)
        steps = 2 if generate else 1
        ctx.progress("next-token probabilities", 0, steps)
        r = intervene(session, graph.prompt, images, interventions, freeze_attention=freeze_attention,
                      direct_only=direct_only, top_k=top_k, chat=_chat(graph))
        out = _comparison(r, top_k)
        out.update({"kind": "steer", "graph": name,
                    "edits": [_edit_label(e, iv) for e, iv in zip(edits, interventions)],
                    "applied": len(r.applied), "freeze_attention": bool(freeze_attention or direct_only),
                    "direct_only": bool(direct_only),
                    # along the graph's own target directions: what its logit edges measure
                    "target_changes": r.target_changes(graph.targets, as_bundle(session).adapter.unembedding)})
        if generate:
            ctx.check()
            ctx.progress("generating", 1, steps)
            before, after = steered_generate(session, graph.prompt, images, interventions,
                                             max_new_tokens=int(generate), chat=_chat(graph))
            out["generation"] = {"before": before, "after": after, "max_new_tokens": int(generate)}
        return out

    return run


def _edit_label(edit: dict, iv) -> str:
    """'<node label>: scale 2 @active' (the node's label as the graph shows it, else L2:F17)."""
    what = iv.mode if iv.mode == "ablate" else f"{iv.mode} {iv.value:g}"
    name = edit.get("label") or f"L{iv.layer}:F{iv.feature}"
    return f"{name}: {what} @{_positions_label(iv.positions)}"


def _positions_label(positions) -> str:
    if isinstance(positions, str):
        return positions
    if positions and isinstance(positions[0], tuple):
        return f"{len(positions)} image cell(s)"
    return ",".join(str(p) for p in positions)


def region_job(live: LiveState, graph, cells: list[tuple[int, int, int]], mode: str, top_k: int, name: str = ""):
    def run(ctx):
        from tracer.interventions import ablate_region

        session = live.model.session(ctx)
        ctx.progress(f"{mode}-ablating {len(cells)} cell(s)", 0, 1)
        r = ablate_region(session, graph.prompt, _images(graph), cells, mode=mode, top_k=top_k, chat=_chat(graph))
        out = _comparison(r, top_k)
        out.update({"kind": "region", "graph": name, "mode": mode, "cells": [list(c) for c in cells],
                    "positions": [int(p) for p in r.positions]})
        return out

    return run


# ---------------------------------------------------------------------- attention
def attention_graph_name(name: str) -> str:
    stem = name[: -len(".graph.safetensors")] if name.endswith(".graph.safetensors") else Path(name).stem
    return f"attention-{slugify(stem, 64)}"


def attention_job(live: LiveState, session_view):
    """The attention graph of the graph's prompt (same targets), saved next to it."""
    graph, name = session_view.graph, session_view.name

    def run(ctx):
        from tracer.attention import attention_graph

        done = existing_attention_graph(live.graphs_dir, session_view)
        if done:
            return {"name": done, "source": name, "reused": True}
        session = live.model.session(ctx)
        ctx.progress("attention graph", 0, 2)
        ag = attention_graph(session, graph.prompt, _images(graph), targets=target_specs(graph), chat=_chat(graph),
                             exclude_prefix=bool((graph.config or {}).get("exclude_prefix", True)))
        ctx.check()
        ctx.progress("saving", 1, 2)
        g = ag.to_graph()
        g.slug = attention_graph_name(name)
        g.info["source_graph"] = name
        saved = save_unique(g, live.graphs_dir, attention_graph_name(name))
        return {"name": saved, "source": name}

    return run


def existing_attention_graph(folder: Path, session_view) -> str | None:
    """The attention graph made from this version of the graph earlier, if it is still there."""
    from tracer.graph import GraphFormatError, read_metadata

    try:
        source_mtime = session_view.path.stat().st_mtime_ns
    except (OSError, AttributeError):
        return None
    stem = attention_graph_name(session_view.name)
    for path in sorted(Path(folder).glob(f"{stem}*.graph.safetensors")):
        try:
            info = read_metadata(path).get("info") or {}
            if info.get("source_graph") == session_view.name and path.stat().st_mtime_ns >= source_mtime:
                return path.name
        except (GraphFormatError, OSError):
            continue
    return None


def vision_job(live: LiveState, session_view):
    """Vision attention maps (rollout and similarity) of the graph's images, cached on the server."""
    graph = session_view.graph
    key = ("vision", graph_identity(session_view))

    def run(ctx):
        from tracer.attention import vision_attention_maps

        if live.cached(key) is not None:
            return {"key": list(key[1])}
        session = live.model.session(ctx)
        ctx.progress("vision attention", 0, 1)
        maps = vision_attention_maps(session, _images(graph))
        live.remember(key, {"rollout": np.asarray(maps.rollout, np.float32),
                            "similarity": np.asarray(maps.similarity, np.float32),
                            "patch_grid": list(maps.patch_grid), "tokens_per_side": int(maps.tokens_per_side),
                            "token_grid": list(maps.grid)})
        return {"key": list(key[1])}

    return run


def replacement_for(live: LiveState, session_view, ctx):
    """An AttributionResult for a graph file of the live model: the graph as loaded, plus a fresh
    local replacement model of its prompt and its targets resolved again (cached per graph)."""
    key = ("replacement", graph_identity(session_view))
    cached = live.cached(key)
    if cached is not None:
        return cached
    from tracer.attribution.replay import ReplayError, replay
    from tracer.interventions.common import as_bundle

    bundle = as_bundle(live.model.session(ctx))
    ctx.progress("replacement model", 0, 1)
    try:
        result = replay(session_view.graph, bundle.model, bundle.processor, bundle.transcoders)
    except ReplayError as err:
        raise LiveError(str(err)) from err
    live.remember(key, result, keep=1)  # a replacement model of a big VLM is big
    return result


def heads_job(live: LiveState, session_view, target: int, source: int, top: int = 12):
    """Which attention heads carry the attribution edge source -> target (node indices)."""

    def run(ctx):
        from tracer.attention import heads_for_edge

        result = replacement_for(live, session_view, ctx)
        ctx.check()
        ctx.progress("heads", 0, 1)
        h = heads_for_edge(result, int(target), int(source))
        return {"target": int(target), "source": int(source), "edge": h.edge, "graph_edge":
                float(session_view.graph.adjacency[session_view.graph.row_of_node(int(target)), int(source)]),
                "without_attention": h.without_attention, "n_heads": len(h.heads),
                "heads": [e.to_dict() for e in h.heads[:top]]}

    return run
