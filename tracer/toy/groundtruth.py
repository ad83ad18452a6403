"""The ground-truth scoreboard: does the toy VLM really answer from the cells the world says it does?

Per held-out scene (one question type at a time) it measures, on the shipped toy VLM:

* share: the share of the image influence on the answer that sits on the ground-truth cells
  (embedding-node influence of an attribution graph, tracer.batch.summary.graph_row);
* flips: whether the greedy answer changes when the ground-truth cells' image soft tokens are
  zero- or mean-ablated (tracer.interventions.ablate_region), and, as a control, when as many
  random cells elsewhere in the image are;
* a counterfactual edit of the scene (recolour / reshape / move / add / remove an object, keeping
  every shape and colour unique): the answer must follow the edit, and the top image nodes of the
  edited scene's graph must sit on the edited evidence's cells.

Rows aggregate per question type and per (question type, ground-truth answer) and are compared
with the targets of issue 13: flip >= 95% for every answer value, control <= 2%, median share >= 60%.
A flip is any change of the model's own greedy answer (not of correctness). Scenes with no
ground-truth cells ("exists" questions about a colour and a shape that nothing in the scene has)
have no share and no flips; `n_ablated` counts the scenes that do.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections import Counter, defaultdict

import numpy as np
from tqdm.auto import tqdm

from tracer.toy import world

IMAGE_TYPES = tuple(q for q in world.QUESTION_TYPES if q != "fact")
MODES = ("zero", "mean")
TARGETS = {"flip": 0.95, "control": 0.02, "share": 0.60}


# ---------------------------------------------------------------- counterfactual edits

def _unused(used, pool, rng: random.Random):
    free = [x for x in pool if x not in used]
    return rng.choice(free) if free else None


def _replace(scene: world.Scene, old: world.SceneObject | None, new: world.SceneObject | None) -> world.Scene:
    objects = [o for o in scene.objects if o is not old] + ([new] if new is not None else [])
    return world.Scene(tuple(sorted(objects, key=lambda o: (o.row, o.col))))


def _exists_evidence(scene: world.Scene, color: str, shape: str, answer: str) -> tuple:
    if answer == "yes":
        return tuple(o for o in scene.objects if o.color == color and o.shape == shape)
    return tuple(o for o in scene.objects if o.color == color or o.shape == shape)


def counterfactual(example: world.Example, rng: random.Random) -> world.Example | None:
    """The example with its scene edited so that the right answer changes (or, for a shape
    question, the object's shape changes), every shape and colour still unique; None when the
    scene allows no such edit."""
    scene, qtype = example.scene, example.question_type
    if scene is None:
        return None
    colors = {o.color for o in scene.objects}
    shapes = {o.shape for o in scene.objects}

    def edited(question, answer, new_scene, evidence):
        return dataclasses.replace(example, question=question, answer=answer, scene=new_scene,
                                   evidence=tuple(evidence))

    if qtype == "color":
        target = example.evidence[0]
        color = _unused(colors, list(world.COLORS), rng)
        if color is None:
            return None
        new = dataclasses.replace(target, color=color)
        return edited(example.question, color, _replace(scene, target, new), [new])
    if qtype == "shape":
        target = example.evidence[0]
        shape = _unused(shapes, world.SHAPES, rng)
        if shape is None:
            return None
        new = dataclasses.replace(target, shape=shape)
        return edited(example.question, shape, _replace(scene, target, new), [new])
    if qtype == "position":
        target = example.evidence[0]
        occupied = {(o.row, o.col) for o in scene.objects}
        horizontal = "left or right" in example.question
        half = world.GRID // 2
        if horizontal:
            other = range(half, world.GRID) if target.col < half else range(half)
            cells = [(target.row, c) for c in other]
        else:
            other = range(half, world.GRID) if target.row < half else range(half)
            cells = [(r, target.col) for r in other]
        cells = [c for c in cells if c not in occupied]
        if not cells:
            return None
        row, col = rng.choice(cells)
        new = dataclasses.replace(target, row=row, col=col)
        if horizontal:
            answer = "left" if col < half else "right"
        else:
            answer = "top" if row < half else "bottom"
        return edited(example.question, answer, _replace(scene, target, new), [new])
    if qtype == "count":
        n = len(scene.objects)
        if n < 3:
            free = [(r, c) for r in range(world.GRID) for c in range(world.GRID)
                    if (r, c) not in {(o.row, o.col) for o in scene.objects}]
            row, col = rng.choice(free)
            new = world.SceneObject(_unused(shapes, world.SHAPES, rng), _unused(colors, list(world.COLORS), rng),
                                    row, col, size=12)
            new_scene = _replace(scene, None, new)
        else:
            new_scene = _replace(scene, rng.choice(scene.objects), None)
        return edited(example.question, world.COUNT_WORDS[len(new_scene.objects)], new_scene, new_scene.objects)
    if qtype == "exists":
        words = example.question.rstrip("?").split()
        color, shape = words[-2], words[-1]
        if example.answer == "yes":  # recolour the object asked about: it is gone
            target = example.evidence[0]
            new_color = _unused(colors, list(world.COLORS), rng)
            if new_color is None:
                return None
            new_scene = _replace(scene, target, dataclasses.replace(target, color=new_color))
            answer = "no"
        else:  # make the asked (colour, shape) appear on the object of that shape (or colour, or any)
            by_shape, by_color = scene.by_shape(shape), scene.by_color(color)
            if by_shape is not None:
                new_scene = _replace(scene, by_shape, dataclasses.replace(by_shape, color=color))
                if by_color is not None:  # the colour moves over: give its old owner the freed colour
                    new_scene = _replace(new_scene, by_color, dataclasses.replace(by_color, color=by_shape.color))
            elif by_color is not None:
                new_scene = _replace(scene, by_color, dataclasses.replace(by_color, shape=shape))
            else:
                target = rng.choice(scene.objects)
                new_scene = _replace(scene, target, dataclasses.replace(target, color=color, shape=shape))
            answer = "yes"
        return edited(example.question, answer, new_scene, _exists_evidence(new_scene, color, shape, answer))
    return None


# ---------------------------------------------------------------- one scene

def control_tokens(example: world.Example, seed: int) -> list[int]:
    """As many random soft-token cells as the evidence has, all outside it (seeded per example)."""
    evidence = set(example.evidence_tokens)
    rest = [t for t in range(world.TOKEN_GRID ** 2) if t not in evidence]
    rng = random.Random(f"groundtruth/control/{seed}/{example.question_type}/{example.index}")
    return sorted(rng.sample(rest, min(len(evidence), len(rest))))


def cells_of(tokens: list[int]) -> list[tuple[int, int]]:
    return [(t // world.TOKEN_GRID, t % world.TOKEN_GRID) for t in tokens]


def image_influence(graph) -> np.ndarray:
    """Influence of each image soft token (row-major cells) on the graph's weighted logits."""
    from tracer.graph.pruning import node_influence

    return node_influence(graph)[graph.embedding_offset + graph.image_positions]


def score_example(session, example: world.Example, max_feature_nodes: int = 200, seed: int = 0) -> dict:
    """Everything the scoreboard measures on one example (a JSON-ready dict)."""
    from tracer.batch.summary import graph_row
    from tracer.interventions import ablate_region

    image = example.image()
    evidence = example.evidence_tokens
    graph = session.attribute(example.question, image, max_feature_nodes=max_feature_nodes, progress=False,
                              feature_position_activations=False)
    summary = graph_row(graph, evidence, example.answer)
    row = {
        "question_type": example.question_type, "index": example.index, "question": example.question,
        "answer": example.answer, "predicted": summary["top_target"], "correct": bool(summary["correct"]),
        "share": summary["evidence_share"], "ratio": summary["evidence_ratio"],
        "evidence_tokens": evidence, "control_tokens": control_tokens(example, seed),
    }
    for name, tokens in (("evidence", evidence), ("control", row["control_tokens"])):
        for mode in MODES:
            if not tokens:  # e.g. "Is there a green triangle?" with nothing green or triangular: no region
                row[f"{name}_{mode}_answer"] = row[f"{name}_{mode}_flip"] = None
                continue
            result = ablate_region(session, example.question, image, cells_of(tokens), mode, top_k=1)
            row[f"{name}_{mode}_answer"] = result.answer_after
            row[f"{name}_{mode}_flip"] = result.answer_after != result.answer_before
    cf = counterfactual(example, random.Random(f"groundtruth/cf/{seed}/{example.question_type}/{example.index}"))
    row["cf"] = None
    if cf is not None:
        cf_graph = session.attribute(cf.question, cf.image(), max_feature_nodes=max_feature_nodes, progress=False,
                                     feature_position_activations=False)
        influence = image_influence(cf_graph)
        cells = cf.evidence_tokens
        top = np.argsort(-influence)[: len(cells)]
        row["cf"] = {
            "objects": [o.__dict__ for o in cf.scene.objects], "answer": cf.answer,
            "predicted": cf_graph.targets[0].label, "follows": cf_graph.targets[0].label == cf.answer,
            "evidence_tokens": cells, "top_tokens": [int(t) for t in top],
            "top1_on_object": int(top[0]) in cells,
            "precision": float(np.isin(top, cells).mean()),
        }
    return row


# ---------------------------------------------------------------- the scoreboard

def heldout_examples(question_type: str, n: int, seed: int = 0) -> list[world.Example]:
    return [world.make_example("heldout", i, seed, question_type) for i in range(n)]


def run_groundtruth(session, n: int = 200, types=IMAGE_TYPES, max_feature_nodes: int = 200, seed: int = 0,
                    progress: bool = True) -> dict:
    """Score n held-out scenes of each question type; {"rows", "summary", "settings", "seconds"}."""
    bad = [t for t in types if t not in IMAGE_TYPES]
    if bad:
        raise ValueError(f"question types {bad} have no image; choose from {', '.join(IMAGE_TYPES)}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    examples = [e for t in types for e in heldout_examples(t, n, seed)]
    start = time.time()
    rows = [score_example(session, e, max_feature_nodes, seed)
            for e in tqdm(examples, desc="ground truth", disable=not progress, unit="scene")]
    return {"rows": rows, "summary": summarize(rows),
            "settings": {"n": n, "types": list(types), "max_feature_nodes": max_feature_nodes, "seed": seed},
            "seconds": round(time.time() - start, 1)}


def _stats(rows: list[dict]) -> dict:
    shares = [r["share"] for r in rows if r["share"] is not None]
    cfs = [r["cf"] for r in rows if r["cf"] is not None]
    out = {"n": len(rows), "accuracy": float(np.mean([r["correct"] for r in rows])),
           "share_median": float(np.median(shares)) if shares else None,
           "share_mean": float(np.mean(shares)) if shares else None}
    out["n_ablated"] = sum(r["evidence_zero_flip"] is not None for r in rows)
    for name in ("evidence", "control"):
        for mode in MODES:
            flips = [r[f"{name}_{mode}_flip"] for r in rows if r[f"{name}_{mode}_flip"] is not None]
            out[f"{name}_{mode}_flip"] = float(np.mean(flips)) if flips else None
    # what the answer becomes with the cells zeroed: one value everywhere is a fallback answer
    after = Counter(r["evidence_zero_answer"] for r in rows if r["evidence_zero_answer"] is not None)
    out["zero_ablated_answers"] = {a: c / sum(after.values()) for a, c in after.most_common(3)}
    out["cf_n"] = len(cfs)
    out["cf_follows"] = float(np.mean([c["follows"] for c in cfs])) if cfs else None
    out["cf_top1_on_object"] = float(np.mean([c["top1_on_object"] for c in cfs])) if cfs else None
    out["cf_precision"] = float(np.mean([c["precision"] for c in cfs])) if cfs else None
    return out


def summarize(rows: list[dict]) -> dict:
    """Per question type and per (type, ground-truth answer): the measured rates."""
    by_type: dict[str, list] = defaultdict(list)
    by_answer: dict[tuple, list] = defaultdict(list)
    for r in rows:
        by_type[r["question_type"]].append(r)
        by_answer[(r["question_type"], r["answer"])].append(r)
    return {"types": {t: _stats(rs) for t, rs in by_type.items()},
            "answers": {f"{t}/{a}": _stats(rs) for (t, a), rs in sorted(by_answer.items())}}


def failures(summary: dict) -> list[str]:
    """The targets each row misses, one line each (empty when all are met)."""
    out = []
    for key, s in summary["answers"].items():
        for mode in MODES:
            if s[f"evidence_{mode}_flip"] is not None and s[f"evidence_{mode}_flip"] < TARGETS["flip"]:
                out.append(f"{key}: {mode}-ablation flip {s[f'evidence_{mode}_flip']:.0%} < {TARGETS['flip']:.0%}")
    for key, s in summary["types"].items():
        for mode in MODES:
            if s[f"control_{mode}_flip"] is not None and s[f"control_{mode}_flip"] > TARGETS["control"]:
                out.append(f"{key}: {mode} control flip {s[f'control_{mode}_flip']:.0%} > {TARGETS['control']:.0%}")
        if s["share_median"] is None or s["share_median"] < TARGETS["share"]:
            share = "n/a" if s["share_median"] is None else f"{s['share_median']:.0%}"
            out.append(f"{key}: median influence share {share} < {TARGETS['share']:.0%}")
    return out


def _pct(x) -> str:
    return "    -" if x is None else f"{x * 100:5.1f}"


def format_table(result: dict) -> str:
    """Markdown table: per type, then per answer value; then the targets that fail."""
    head = ("| rows | n | n abl | acc % | share med % | flip zero % | flip mean % | ctrl zero % | ctrl mean % "
            "| cf follows % | cf top1 on obj % | answer when zeroed |")
    lines = [head, "|" + "---|" * 12]
    summary = result["summary"]
    for key, s in list(summary["types"].items()) + [("", None)] + list(summary["answers"].items()):
        if s is None:
            continue
        lines.append(f"| {key} | {s['n']} | {s['n_ablated']} | {_pct(s['accuracy'])} | {_pct(s['share_median'])} "
                     f"| {_pct(s['evidence_zero_flip'])} | {_pct(s['evidence_mean_flip'])} "
                     f"| {_pct(s['control_zero_flip'])} | {_pct(s['control_mean_flip'])} "
                     f"| {_pct(s['cf_follows'])} | {_pct(s['cf_top1_on_object'])} "
                     f"| {', '.join(f'{a} {p:.0%}' for a, p in s['zero_ablated_answers'].items())} |")
    fails = failures(summary)
    lines.append("")
    lines.append(f"targets: flip >= {TARGETS['flip']:.0%} per answer value, control <= {TARGETS['control']:.0%}, "
                 f"median share >= {TARGETS['share']:.0%}: " + (f"{len(fails)} FAIL" if fails else "all met"))
    lines += [f"  FAIL {f}" for f in fails]
    return "\n".join(lines)
