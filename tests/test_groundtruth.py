"""The ground-truth scoreboard on a small sample: every number it reports is recomputed here by
other means (a hand-built forward pass with the soft tokens replaced, a closed-form influence)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from tracer.toy import world
from tracer.toy.groundtruth import (
    IMAGE_TYPES, counterfactual, failures, format_table, run_groundtruth, summarize,
)


@pytest.fixture(scope="module")
def session():
    from tracer.session import TracingSession

    return TracingSession(device="cpu")


@pytest.fixture(scope="module")
def result(session):
    return run_groundtruth(session, n=3, types=("color", "exists"), max_feature_nodes=60, seed=0, progress=False)


@torch.no_grad()
def direct_answer(session, example: world.Example, tokens: list[int] | None = None, mode: str = "zero") -> str:
    """Greedy answer from a forward pass built by hand: text embeddings, the vision tower's soft
    tokens written at the image positions, the chosen cells replaced (zeros / the image's mean)."""
    from tracer.interventions.common import prompt_inputs
    from tracer.interventions import as_bundle

    bundle = as_bundle(session)
    model, ad = bundle.model, bundle.adapter
    pi = prompt_inputs(bundle, example.question, example.image())
    inputs = ad.model_inputs(pi.inputs)
    soft = model.model.get_image_features(pixel_values=inputs["pixel_values"])
    soft = getattr(soft, "pooler_output", soft).reshape(-1, ad.d_model).clone()
    if tokens:
        soft[tokens] = 0 if mode == "zero" else soft.mean(0)
    emb = ad.embed_tokens(inputs["input_ids"]).clone()
    emb[0, torch.tensor(pi.image_positions)] = soft.to(emb.dtype)
    logits = model(inputs_embeds=emb, attention_mask=inputs["attention_mask"],
                   token_type_ids=inputs["token_type_ids"], use_cache=False).logits[0, -1]
    return bundle.tokenizer.convert_ids_to_tokens(int(logits.argmax()))


def closed_form_share(session, example: world.Example, max_feature_nodes: int) -> float:
    """Influence as w^T ((I - N)^-1 - I) on the dense matrix, summed over evidence / all image cells."""
    graph = session.attribute(example.question, example.image(), max_feature_nodes=max_feature_nodes,
                              progress=False, feature_position_activations=False)
    a = np.abs(graph.full_adjacency().astype(np.float64))
    n = a / np.maximum(a.sum(1, keepdims=True), 1e-300)
    p = np.array([t.probability for t in graph.targets])
    w = np.zeros(graph.n_nodes)
    w[graph.logit_offset:] = p / p.sum()
    influence = w @ (np.linalg.inv(np.eye(graph.n_nodes) - n) - np.eye(graph.n_nodes))
    image = influence[graph.embedding_offset + graph.image_positions]
    return float(image[example.evidence_tokens].sum() / image.sum())


def test_flips_equal_a_hand_built_rerun_and_the_rates_are_their_means(session, result):
    rows = result["rows"]
    assert len(rows) == 6 and {r["question_type"] for r in rows} == {"color", "exists"}
    for row in rows:
        ex = world.make_example("heldout", row["index"], 0, row["question_type"])
        before = direct_answer(session, ex)
        assert before == row["predicted"]
        assert row["correct"] == (before == ex.answer)
        control = row["control_tokens"]
        assert len(control) == len(row["evidence_tokens"]) and not set(control) & set(ex.evidence_tokens)
        for name, tokens in (("evidence", ex.evidence_tokens), ("control", control)):
            for mode in ("zero", "mean"):
                after = direct_answer(session, ex, tokens, mode)
                assert row[f"{name}_{mode}_answer"] == after
                assert row[f"{name}_{mode}_flip"] == (after != before)
    for qtype in ("color", "exists"):
        mine = [r for r in rows if r["question_type"] == qtype]
        s = result["summary"]["types"][qtype]
        assert s["n"] == 3
        assert s["evidence_zero_flip"] == pytest.approx(np.mean([r["evidence_zero_flip"] for r in mine]))
        assert s["control_mean_flip"] == pytest.approx(np.mean([r["control_mean_flip"] for r in mine]))
        assert s["share_median"] == pytest.approx(np.median([r["share"] for r in mine]))
    for key, s in result["summary"]["answers"].items():
        qtype, answer = key.split("/")
        mine = [r for r in rows if r["question_type"] == qtype and r["answer"] == answer]
        assert s["n"] == len(mine) and s["evidence_mean_flip"] == pytest.approx(
            np.mean([r["evidence_mean_flip"] for r in mine]))


def test_share_equals_a_closed_form_influence(session, result):
    for row in result["rows"][:2] + result["rows"][3:4]:
        ex = world.make_example("heldout", row["index"], 0, row["question_type"])
        assert row["share"] == pytest.approx(closed_form_share(session, ex, 60), rel=1e-4)


def test_counterfactual_top_nodes_are_recomputed(session, result):
    from tracer.toy.groundtruth import image_influence

    row = next(r for r in result["rows"] if r["cf"] is not None)
    ex = world.make_example("heldout", row["index"], 0, row["question_type"])
    cf = counterfactual(ex, random.Random(f"groundtruth/cf/0/{ex.question_type}/{ex.index}"))
    assert [o.__dict__ for o in cf.scene.objects] == row["cf"]["objects"]
    graph = session.attribute(cf.question, cf.image(), max_feature_nodes=60, progress=False)
    top = int(np.argmax(image_influence(graph)))
    assert row["cf"]["top_tokens"][0] == top
    assert row["cf"]["top1_on_object"] == (top in cf.evidence_tokens)
    assert row["cf"]["follows"] == (direct_answer(session, cf) == cf.answer)


def _answer_from_scene(ex: world.Example) -> str:
    """The right answer worked out from the edited scene alone."""
    scene, words = ex.scene, ex.question.rstrip("?").split()
    if ex.question_type == "color":
        return scene.by_shape(words[-1]).color
    if ex.question_type == "shape":
        return scene.by_color(words[-1]).shape
    if ex.question_type == "position":
        obj = scene.by_color(words[2])
        if words[-1] == "right":
            return "left" if obj.col < world.GRID // 2 else "right"
        return "top" if obj.row < world.GRID // 2 else "bottom"
    if ex.question_type == "count":
        return world.COUNT_WORDS[len(scene.objects)]
    color, shape = words[-2], words[-1]
    return "yes" if any(o.color == color and o.shape == shape for o in scene.objects) else "no"


@pytest.mark.parametrize("qtype", IMAGE_TYPES)
def test_counterfactual_edits_change_the_answer_and_keep_the_world_valid(qtype):
    made = 0
    for i in range(40):
        ex = world.make_example("heldout", i, 0, qtype)
        cf = counterfactual(ex, random.Random(i))
        if cf is None:
            continue
        made += 1
        objs = cf.scene.objects
        assert len({o.color for o in objs}) == len(objs) and len({o.shape for o in objs}) == len(objs)
        assert len({(o.row, o.col) for o in objs}) == len(objs)
        assert cf.answer == _answer_from_scene(cf) != ex.answer
        assert cf.question == ex.question and cf.evidence_tokens
        assert set(cf.evidence) <= set(objs)
    assert made >= 30


def test_failures_name_every_missed_target():
    rows = [
        {"question_type": "color", "answer": a, "correct": True, "share": s, "cf": None,
         "evidence_zero_flip": f, "evidence_mean_flip": f, "control_zero_flip": c, "control_mean_flip": False,
         "evidence_zero_answer": "red"}
        for a, s, f, c in [("red", 0.7, False, False), ("blue", 0.8, True, False), ("blue", 0.9, True, True)]
    ]
    summary = summarize(rows)
    assert summary["types"]["color"]["zero_ablated_answers"] == {"red": 1.0}
    assert summary["answers"]["color/red"]["evidence_zero_flip"] == 0.0
    assert summary["types"]["color"]["control_zero_flip"] == pytest.approx(1 / 3)
    fails = failures(summary)
    assert fails == ["color/red: zero-ablation flip 0% < 95%", "color/red: mean-ablation flip 0% < 95%",
                     "color: zero control flip 33% > 2%"]
    table = format_table({"summary": summary})
    assert "| color/red | 1 |" in table and "3 FAIL" in table


def test_cli_writes_json_and_refuses_bad_types(tmp_path, capsys):
    from tracer.cli import main

    out = tmp_path / "gt.json"
    assert main(["toy", "groundtruth", "--n", "1", "--types", "shape", "--max-feature-nodes", "20",
                 "--no-progress", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    saved = json.loads(out.read_text())
    assert printed["summary"] == saved["summary"] and len(saved["rows"]) == 1
    assert main(["toy", "groundtruth", "--types", "fact"]) == 2
    assert "--types" in capsys.readouterr().err


def test_a_scene_without_ground_truth_cells_has_no_flips_and_is_not_counted(session):
    from tracer.toy.groundtruth import score_example

    example = world.make_example("heldout", 19, 0, "exists")  # a yellow square; the scene has neither
    assert example.evidence_tokens == [] and example.answer == "no"
    row = score_example(session, example, max_feature_nodes=20)
    assert row["share"] is None and row["control_tokens"] == []
    assert all(row[f"{n}_{m}_flip"] is None for n in ("evidence", "control") for m in ("zero", "mean"))
    other = dict(row, share=0.7, evidence_zero_flip=True, evidence_mean_flip=False, control_zero_flip=False,
                 control_mean_flip=False)
    s = summarize([row, other])["types"]["exists"]
    assert s["n"] == 2 and s["n_ablated"] == 1 and s["share_median"] == 0.7
    assert s["evidence_zero_flip"] == 1.0 and s["evidence_mean_flip"] == 0.0
