"""Feature interventions (steering), steered generation and region ablation on the toy VLM.

The identity test runs in float64 under `float64_norms()` with a random TopK transcoder set that
has a linear skip: with attention and norms frozen and every other MLP output frozen (direct
effects only), ablating a feature node moves every logit target by exactly minus that node's
edge into the target in the attribution graph.

The red -> other colour steering test needs trained transcoders: the shipped toy set
(tracer/data/toy-plt), or any set named by the environment variable TRACER_TEST_TOY_PLT.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from test_attribution_exactness import random_set
from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.attribution.verify import target_directions
from tracer.interventions import (
    Bundle, FeatureIntervention, ablate_region, generate_ids, intervene, parse_positions, steered_generate,
    steering_hooks,
)
from tracer.interventions.common import prompt_inputs
from tracer.models import load_vlm
from tracer.models.precision import float64_norms
from tracer.toy import world
from tracer.toy.shipped import default_transcoder_dir

TIGHT = 1e-10


@pytest.fixture(scope="module")
def toy64():
    return load_vlm(None, dtype=torch.float64)


@pytest.fixture(scope="module")
def exact(toy64):
    """Full attribution graph (every feature explored) of a colour question, three logit targets."""
    model, processor = toy64
    tset = random_set("topk")
    ex = world.make_example("heldout", 3, question_type="color")
    other = "blue" if ex.answer != "blue" else "red"
    with float64_norms():
        res = attribute_full(model, processor, tset, ex.question, ex.image(),
                             AttributionConfig(progress=False, max_feature_nodes=None, batch_size=128,
                                               targets=[ex.answer, other, f"{ex.answer} - {other}"]))
    bundle = Bundle(model, processor, tset)
    directions = target_directions(res.graph, model.lm_head.weight, torch.float64)
    return res, bundle, ex, directions


def _changes(result, directions) -> np.ndarray:
    return np.array([result.target_change(d) for d in directions])


def _run64(bundle, ex, interventions, **kw):
    with float64_norms():
        return intervene(bundle, ex.question, ex.image(), interventions, **kw)


def test_direct_only_ablation_moves_each_logit_by_minus_the_edge(exact):
    res, bundle, ex, directions = exact
    g = res.graph
    logit_rows = g.adjacency[g.n_features:]
    img = set(g.image_positions.tolist())
    strongest = np.argsort(-np.abs(logit_rows[0, :g.n_features]))[:3].tolist()
    at_image = [i for i in np.argsort(-np.abs(logit_rows[0, :g.n_features])) if g.features[i, 1] in img][:2]
    assert at_image, "no image-position feature reaches the logit"
    for node in strongest + at_image:
        layer, pos, feat = (int(x) for x in g.features[node])
        r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "ablate", positions=[pos])], direct_only=True)
        assert [(a["position"], a["after"]) for a in r.applied] == [(pos, 0.0)]
        assert r.applied[0]["before"] == pytest.approx(float(g.activations[node]), rel=1e-6)
        assert np.abs(_changes(r, directions) + logit_rows[:, node]).max() < TIGHT


def test_target_changes_along_the_graphs_own_directions(exact):
    """What the explorer shows for "direct effects only": the change along each target of the
    graph (a token's W_U[t] - mean, the contrast's W_U[a] - W_U[b]) is minus the ablated node's
    edge into that logit node; the raw logit change of the token is not (it misses the mean)."""
    res, bundle, ex, _ = exact
    g = res.graph
    logit_rows = g.adjacency[g.n_features:]
    node = int(np.argmax(np.abs(logit_rows[0, :g.n_features])))
    layer, pos, feat = (int(x) for x in g.features[node])
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "ablate", positions=[pos])], direct_only=True)
    changes = r.target_changes(g.targets, bundle.model.lm_head.weight)
    assert [c["label"] for c in changes] == [t.label for t in g.targets]
    assert np.abs(np.array([c["change"] for c in changes]) + logit_rows[:, node]).max() < TIGHT
    assert g.targets[0].kind == "token"
    assert abs(float(r.logit_changes[g.targets[0].token_id]) + logit_rows[0, node]) > 1e-6


def test_direct_only_scale_set_and_every_active_position(exact):
    res, bundle, ex, directions = exact
    g = res.graph
    logit_rows = g.adjacency[g.n_features:]
    node = int(np.argmax(np.abs(logit_rows[0, :g.n_features])))
    layer, pos, feat = (int(x) for x in g.features[node])
    a = float(res.replacement.active_values()[
        [i for i, row in enumerate(res.replacement.active_table().tolist()) if row == [layer, pos, feat]][0]])
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "scale", 3.0, [pos])], direct_only=True)
    assert np.abs(_changes(r, directions) - 2.0 * logit_rows[:, node]).max() < TIGHT
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "set", 1.5 * a, [pos])], direct_only=True)
    assert np.abs(_changes(r, directions) - 0.5 * logit_rows[:, node]).max() < TIGHT
    # "active": every position where the feature fires, the sum of those nodes' edges
    nodes = np.flatnonzero((g.features[:, 0] == layer) & (g.features[:, 2] == feat))
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "ablate")], direct_only=True)
    assert sorted(x["position"] for x in r.applied) == sorted(g.features[nodes, 1].tolist())
    assert np.abs(_changes(r, directions) + logit_rows[:, nodes].sum(1)).max() < TIGHT
    # two features at once: their direct effects add
    other = int(np.argsort(-np.abs(logit_rows[0, :g.n_features]))[1])
    l2, p2, f2 = (int(x) for x in g.features[other])
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "ablate", positions=[pos]),
                            FeatureIntervention(l2, f2, "ablate", positions=[p2])], direct_only=True)
    assert np.abs(_changes(r, directions) + logit_rows[:, node] + logit_rows[:, other]).max() < TIGHT


def test_frozen_run_without_edits_reproduces_the_clean_run(exact):
    _, bundle, ex, directions = exact
    r = _run64(bundle, ex, [], direct_only=True)
    assert np.abs(_changes(r, directions)).max() < TIGHT
    assert torch.allclose(r.logits_after, r.logits_before, atol=1e-9, rtol=0)


def test_live_run_adds_indirect_effects(exact):
    """Without the freezes the ablation's effect also goes through later features: it differs
    from the direct effect, and freezing only attention is a third, different number."""
    res, bundle, ex, directions = exact
    g = res.graph
    logit_rows = g.adjacency[g.n_features:]
    early = [i for i in np.argsort(-np.abs(logit_rows[0, :g.n_features])) if g.features[i, 0] == 0][0]
    layer, pos, feat = (int(x) for x in g.features[early])
    iv = [FeatureIntervention(layer, feat, "ablate", positions=[pos])]
    live = _changes(_run64(bundle, ex, iv), directions)
    frozen_attn = _changes(_run64(bundle, ex, iv, freeze_attention=True), directions)
    direct = _changes(_run64(bundle, ex, iv, direct_only=True), directions)
    assert np.abs(direct + logit_rows[:, early]).max() < TIGHT
    assert np.abs(live - direct).max() > 1e-6 and np.abs(frozen_attn - live).max() > 1e-9


def test_activation_matches_attribution_and_image_cells_map_to_positions(exact):
    res, bundle, ex, _ = exact
    g = res.graph
    pi = res.replacement.record.prompt
    # a layer-0 feature at an image cell: the hook sees exactly attribution's activation (TopK included)
    k = [i for i in range(g.n_features) if g.features[i, 0] == 0 and g.features[i, 1] in set(pi.image_positions)][0]
    layer, pos, feat = (int(x) for x in g.features[k])
    cell = tuple(int(x) for x in pi.image_grid[pi.image_positions.index(pos)])
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "scale", 0.5, [cell])])
    assert [x["position"] for x in r.applied] == [pos]
    assert r.applied[0]["before"] == pytest.approx(float(g.activations[k]), rel=1e-6)
    assert r.applied[0]["after"] == pytest.approx(0.5 * float(g.activations[k]), rel=1e-6)
    assert r.clean_activations[f"L{layer}:F{feat}"][pos] == pytest.approx(float(g.activations[k]), rel=1e-6)
    # (row, col) means image 0; "last" is the last prompt position; "set" applies where inactive too
    r = _run64(bundle, ex, [FeatureIntervention(layer, feat, "set", 2.0, [cell[1:]]),
                            FeatureIntervention(layer, feat, "set", 2.0, "last")])
    assert sorted(x["position"] for x in r.applied) == sorted([pos, pi.n_positions - 1])


def test_bad_interventions_are_clear_errors(exact):
    _, bundle, ex, _ = exact
    with pytest.raises(ValueError, match="mode"):
        FeatureIntervention(0, 1, "boost")
    with pytest.raises(ValueError, match="needs a value"):
        FeatureIntervention(0, 1, "scale")
    with pytest.raises(ValueError, match="out of range"):
        _run64(bundle, ex, [FeatureIntervention(0, 10**6)])
    with pytest.raises(ValueError, match="not a layer"):
        _run64(bundle, ex, [FeatureIntervention(9, 1)])
    with pytest.raises(ValueError, match="beyond the prompt"):
        _run64(bundle, ex, [FeatureIntervention(0, 1, positions=[500])])
    with pytest.raises(ValueError, match="image cell"):
        _run64(bundle, ex, [FeatureIntervention(0, 1, positions=[(0, 9, 9)])])
    assert FeatureIntervention.parse("L2:F17:scale:3").to_dict() == {
        "layer": 2, "feature": 17, "mode": "scale", "value": 3.0, "positions": "active"}
    assert parse_positions("3,4,-1") == [3, 4, -1] and parse_positions("1,2;0,1,3") == [(1, 2), (0, 1, 3)]


def test_generation_uses_the_image_and_tracks_positions_under_the_kv_cache(exact):
    res, bundle, ex, _ = exact
    tok = bundle.tokenizer
    pi = prompt_inputs(bundle, ex.question, ex.image())
    n = pi.n_positions
    plain = generate_ids(bundle, pi, max_new_tokens=4)
    assert tok.convert_ids_to_tokens(plain[0]) == ex.answer  # the answer needs the image
    feat = int(res.graph.features[0, 2])
    for where, expect in (("generated", lambda steps: list(range(n - 1, n + steps))),
                          ("last", lambda steps: [n - 1]),
                          ([n], lambda steps: [n])):
        iv = FeatureIntervention(int(res.graph.features[0, 0]), feat, "set", 0.0, where)
        with steering_hooks(bundle, pi, [iv]) as state:
            out = generate_ids(bundle, pi, max_new_tokens=4)
        steps = len(out)  # tokens fed back: one per generated token but the last (or the stop token)
        positions = [a["position"] for a in state.applied]
        assert positions == expect(steps if len(out) < 4 else 3), (where, positions)
    before, after = steered_generate(bundle, ex.question, ex.image(),
                                     [FeatureIntervention(0, feat, "scale", 1.0, "all")], max_new_tokens=4)
    assert before == after == tok.decode(plain, skip_special_tokens=True).strip()


def test_region_ablation_moves_the_answer_only_when_the_region_holds_the_object(toy_vlm):
    model, processor = toy_vlm
    bundle = Bundle(model, processor)
    rng = np.random.default_rng(0)
    drops_evidence, drops_empty = [], []
    for qtype in ("color", "shape"):
        for i in range(5):
            ex = world.make_example("heldout", i, question_type=qtype)
            region = [divmod(t, world.TOKEN_GRID) for t in ex.evidence_tokens]
            occupied = np.zeros((world.TOKEN_GRID, world.TOKEN_GRID), bool)
            for obj in ex.scene.objects:  # objects and their neighbouring cells
                for t in ex.scene.token_positions(obj):
                    r, c = divmod(t, world.TOKEN_GRID)
                    occupied[max(0, r - 1):r + 2, max(0, c - 1):c + 2] = True
            free = np.flatnonzero(~occupied.ravel())
            empty = [divmod(int(t), world.TOKEN_GRID) for t in rng.choice(free, len(region), replace=False)]
            for mode in ("zero", "mean"):
                on = ablate_region(bundle, ex.question, ex.image(), region, mode=mode)
                off = ablate_region(bundle, ex.question, ex.image(), empty, mode=mode)
                assert on.prob_before(ex.answer) > 0.9
                drops_evidence.append(on.prob_before(ex.answer) - on.prob_after(ex.answer))
                drops_empty.append(off.prob_before(ex.answer) - off.prob_after(ex.answer))
    assert np.mean(drops_evidence) > 0.5, drops_evidence
    assert np.max(np.abs(drops_empty)) < 0.05, drops_empty
    with pytest.raises(ValueError, match="not image soft tokens"):
        ablate_region(bundle, ex.question, ex.image(), [0])


def test_region_ablation_replaces_exactly_the_chosen_soft_tokens(toy_vlm):
    model, processor = toy_vlm
    bundle = Bundle(model, processor)
    ex = world.make_example("heldout", 1, question_type="color")
    cells = [(2, 3), (0, 2, 4), (7, 7)]
    seen = []
    hook = bundle.adapter.layer(0).register_forward_pre_hook(lambda m, a: seen.append(a[0][0].clone()))
    try:
        for mode in ("zero", "mean"):
            r = ablate_region(bundle, ex.question, ex.image(), cells, mode=mode)
    finally:
        hook.remove()
    pi = r.prompt
    img = list(pi.image_positions)
    assert r.positions == [img[2 * 8 + 3], img[2 * 8 + 4], img[63]] and r.cells == [(0, 2, 3), (0, 2, 4), (0, 7, 7)]
    clean, zeroed, _, meaned = seen
    untouched = [p for p in range(pi.n_positions) if p not in r.positions]
    assert torch.equal(zeroed[untouched], clean[untouched]) and torch.equal(meaned[untouched], clean[untouched])
    assert torch.all(zeroed[r.positions] == 0)
    mean = clean[img].double().mean(0)
    assert torch.allclose(meaned[r.positions].double(), mean.expand(3, -1), atol=1e-6)


def _toy_transcoders():
    from tracer.transcoders import load_transcoder_set

    return load_transcoder_set(os.environ.get("TRACER_TEST_TOY_PLT") or None)


def _colour_example(answer: str) -> world.Example:
    return next(e for e in world.examples("heldout", question_type="color")
                if e.answer == answer and e.question == "What color is the circle?")


def _pushers(model, processor, tset, ex, target: str, last_only: bool) -> list[tuple[int, int, int, float]]:
    """(layer, position, feature, activation) of the graph's features with a positive edge into
    `target`, strongest first."""
    g = attribute_full(model, processor, tset, ex.question, ex.image(),
                       AttributionConfig(progress=False, max_feature_nodes=400, targets=[target])).graph
    edges = g.adjacency[g.n_features, :g.n_features]
    out = []
    for i in np.argsort(-edges):
        if edges[i] <= 0:
            break
        if not last_only or g.features[i, 1] == g.n_positions - 1:
            out.append((*(int(x) for x in g.features[i]), float(g.activations[i])))
    return out


@pytest.mark.skipif(not (os.environ.get("TRACER_TEST_TOY_PLT") or (default_transcoder_dir() / "config.yaml").exists()),
                    reason="the shipped toy transcoder set (tracer/data/toy-plt) is not there yet")
def test_steering_the_answer_from_red_to_another_colour(toy_vlm):
    """The issue's 'steer the answer from red to another colour by editing features', with the
    shipped transcoders: from the attribution graph of a red circle, ablate the features that push
    "red" over "blue" (wherever they fire); from the graph of a blue circle, take the features at
    the answer position that push "blue" over "red" and set them, at the answer position, to the
    activations they had there. The answer turns blue, and so does the greedy generation."""
    model, processor = toy_vlm
    tset = _toy_transcoders()
    bundle = Bundle(model, processor, tset)
    red, blue = _colour_example("red"), _colour_example("blue")
    red_push = _pushers(model, processor, tset, red, "red - blue", last_only=False)
    blue_push = _pushers(model, processor, tset, blue, "blue - red", last_only=True)
    assert red_push and blue_push
    flipped = None
    for n in (4, 8, 12, 16, 24, 32):
        edits = [FeatureIntervention(l, f, "ablate") for l, _, f, _ in red_push[:n]]
        edits += [FeatureIntervention(l, f, "set", a, "generated") for l, _, f, a in blue_push[:n]]
        r = intervene(bundle, red.question, red.image(), edits)
        assert r.answer_before == "red"
        if r.answer_after != "red":
            flipped = (n, edits, r)
            break
    assert flipped is not None, "no edit of up to 32 + 32 features moves the answer away from red"
    n, edits, r = flipped
    assert r.answer_after in world.COLORS and r.prob_after("red") < 0.5, r.format()
    # ablating the red pushers alone already lowers "red"; boosting alone raises "blue"
    alone = intervene(bundle, red.question, red.image(), edits[:len(edits) // 2])
    assert alone.logit_change("red") - alone.logit_change("blue") < 0
    before, after = steered_generate(bundle, red.question, red.image(), edits, max_new_tokens=3)
    assert before == "red" and after.split()[0] == r.answer_after


def test_steer_cli(tmp_path, capsys):
    from tracer.cli import main
    from tracer.transcoders import save_transcoder_set

    folder = save_transcoder_set(random_set("topk", seed=5).to(dtype=torch.float32), tmp_path / "tc", model_name="toy")
    ex = world.make_example("heldout", 3, question_type="color")
    image = tmp_path / "scene.png"
    ex.image().save(image)
    out = tmp_path / "steer.json"
    code = main(["steer", "--prompt", ex.question, "--image", str(image), "-t", str(folder), "--feature", "0:3",
                 "--feature", "1:5:set:4", "--positions", "last", "--generate", "3", "--json", str(out)])
    text = capsys.readouterr().out
    assert code == 0
    assert "p before" in text and "generation before" in text and ex.answer in text
    assert out.exists()
    code = main(["steer", "--prompt", ex.question, "--image", str(image), "--ablate-region", "4,0;5,0",
                 "--region-mode", "mean"])
    assert code == 0 and "region ablation (mean)" in capsys.readouterr().out
    assert main(["steer", "--prompt", ex.question, "-t", str(folder), "--feature", "x:y"]) == 2
