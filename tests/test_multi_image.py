"""Several images in one prompt, and image grids of any shape (rows x cols per image).

The shipped toy VLM was trained on one image per prompt, but its processor takes several
<start_of_image> markers (64 soft tokens each) and its answer follows the image that shows the
object: with a blank first image and the object in the second, it names the second image's colour.
"""

from __future__ import annotations

import json
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch

from graph_factory import make_graph
from tracer.errors import InputError
from tracer.graph import GraphFormatError, load_graph, read_metadata, save_graph
from tracer.graph.graphml import NS, graph_to_graphml
from tracer.graph.neuronpedia import graph_to_json, json_to_graph, load_schema
from tracer.graph.pruning import node_influence
from tracer.interventions import ablate_region
from tracer.interventions.common import parse_region
from tracer.models.base import PromptError, get_adapter, prepare_prompt
from tracer.toy import world

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "What color is the circle?"
CIRCLE = (1, 2)  # the circle's object cell (row, col) on the world's 4x4 layout


def blank():
    return world.Scene(()).render()


def circle(color: str):
    return world.Scene((world.SceneObject("circle", color, *CIRCLE),)).render()


def circle_tokens() -> list[tuple[int, int]]:
    """(row, col) soft-token cells under the circle."""
    scene = world.Scene((world.SceneObject("circle", "red", *CIRCLE),))
    return [divmod(t, world.TOKEN_GRID) for t in scene.token_positions(scene.objects[0])]


def prompt_for(toy, images):
    model, processor = toy
    ad = get_adapter(model)
    return prepare_prompt(processor, QUESTION, images, image_token_id=ad.image_token_id,
                          tokens_per_image=ad.tokens_per_image, adapter=ad)


@torch.no_grad()
def answer(toy, images) -> str:
    model, processor = toy
    pi = prompt_for(toy, images)
    logits = model(**get_adapter(model).model_inputs(pi.inputs)).logits[0, -1]
    return processor.tokenizer.convert_ids_to_tokens(int(logits.argmax()))


# ---------------------------------------------------------------------- prompts with two images
def test_two_images_get_one_grid_each(toy_vlm):
    pi = prompt_for(toy_vlm, [blank(), circle("red")])
    assert pi.image_grids == [(8, 8), (8, 8)] and pi.tokens_per_side == 8
    assert len(pi.image_positions) == 128
    assert pi.image_grid == [(k, r, c) for k in range(2) for r in range(8) for c in range(8)]
    first, second = pi.image_positions[:64], pi.image_positions[64:]
    assert max(first) < min(second)  # image 1's soft tokens come after image 0's, each block contiguous
    assert second == list(range(second[0], second[0] + 64)) and first == list(range(first[0], first[0] + 64))


@pytest.mark.parametrize("color", ["red", "blue", "green"])
def test_toy_answer_follows_the_second_image(toy_vlm, color):
    assert answer(toy_vlm, [blank(), circle(color)]) == color


def test_an_adapter_that_says_the_grid_gets_it(toy_vlm):
    """Where the adapter has image_grids (a family whose grid depends on the image), the
    prompt's cells follow it; a grid that does not hold the prompt's soft tokens is refused."""
    model, processor = toy_vlm
    base = type(get_adapter(model))

    class Wide(base):  # the toy's 64 soft tokens per image, read as a 4 x 16 grid
        def image_grids(self, inputs, n_images):
            assert inputs["pixel_values"].shape[0] == n_images
            return [(4, 16)] * n_images

    class Wrong(base):
        def image_grids(self, inputs, n_images):
            return [(5, 5)] * n_images

    ad = Wide(model)
    pi = prepare_prompt(processor, QUESTION, [blank(), circle("red")], image_token_id=ad.image_token_id,
                        tokens_per_image=ad.tokens_per_image, adapter=ad)
    assert pi.image_grids == [(4, 16), (4, 16)] and pi.tokens_per_side == 0
    assert pi.image_grid[64 + 17] == (1, 1, 1) and max(c for _, _, c in pi.image_grid) == 15
    ad = Wrong(model)
    with pytest.raises(PromptError, match="hold 50 soft tokens, but the prompt has 128"):
        prepare_prompt(processor, QUESTION, [blank(), circle("red")], image_token_id=ad.image_token_id,
                       tokens_per_image=ad.tokens_per_image, adapter=ad)


# ---------------------------------------------------------------------- attribution and ablation
@pytest.fixture(scope="module")
def two_image_graph():
    from tracer.session import TracingSession

    session = TracingSession(None, None)
    graph = session.attribute(QUESTION, [blank(), circle("red")], max_feature_nodes=300, progress=False)
    return session, graph


def test_the_second_images_cells_carry_the_image_influence(two_image_graph):
    _, g = two_image_graph
    assert g.targets[0].label == "red" and g.grids() == [(8, 8), (8, 8)] and len(g.images) == 2
    emb = node_influence(g)[g.embedding_offset: g.embedding_offset + g.n_positions]
    per_image = [emb[g.image_positions[g.image_grid[:, 0] == k]] for k in range(2)]
    assert per_image[1].sum() > 3 * per_image[0].sum()
    top = g.image_grid[g.image_grid[:, 0] == 1][np.argsort(-per_image[1])[:4], 1:]
    assert {tuple(int(x) for x in cell) for cell in top} == set(circle_tokens())
    # labels say which image a soft token belongs to
    pos = int(g.image_positions[64])
    assert g.node_label(g.embedding_offset + pos) == f"image1 patch (0,0) @{pos}"
    assert g.position_text(pos) == "[img1 0,0]"


def test_verify_replays_both_images_and_samples_sources_from_each(two_image_graph):
    from tracer.attribution.verify import sample_sources

    session, g = two_image_graph
    picked = [s - g.embedding_offset for s in sample_sources(g, 24, np.random.default_rng(0))
              if g.node_kind(s) == "embedding"]
    assert {g.image_cell(p)[0] for p in picked if g.image_cell(p)} == {0, 1}
    report = session.verify(g, n_sources=12, max_feature_targets=60)
    assert report.ok, report.format()


def test_vision_maps_for_each_image(two_image_graph):
    from tracer.attention.vision import vision_attention_maps

    session, _ = two_image_graph
    pi = prompt_for((session.model, session.processor), [blank(), circle("red")])
    maps = vision_attention_maps(session, pi)
    assert maps.n_images == 2 and maps.grid == (8, 8) and maps.rollout.shape[:2] == (2, 64)
    np.testing.assert_allclose(maps.rollout.sum((2, 3)), 1.0, atol=1e-5)
    # the blank image's maps are not the circle's
    assert not np.allclose(maps.similarity[0], maps.similarity[1], atol=1e-3)


def test_attention_graph_keeps_both_grids(two_image_graph, tmp_path):
    from tracer.attention.graph import AttentionGraph, attention_graph

    session, _ = two_image_graph
    pi = prompt_for((session.model, session.processor), [blank(), circle("red")])
    ag = AttentionGraph.load_npz(attention_graph(session, pi).save_npz(tmp_path / "a.heads.npz"))
    assert ag.image_grids == [(8, 8), (8, 8)] and len(ag.images) == 2
    assert ag.to_graph(max_feature_nodes=50).grids() == [(8, 8), (8, 8)]


def test_ablating_the_object_in_image_1_moves_the_answer_and_image_0_does_not(two_image_graph):
    """(A blue circle: with the object gone the toy falls back to 'red', its default colour.)"""
    session, _ = two_image_graph
    text = "img1:" + ";".join(f"{r},{c}" for r, c in circle_tokens())
    cells = parse_region(text, n_images=2)
    assert {c[0] for c in cells} == {1}
    images = [blank(), circle("blue")]
    hit = ablate_region(session, QUESTION, images, cells, mode="zero")
    assert hit.cells == cells and hit.top_before[0].token == "blue" and hit.top_after[0].token != "blue"
    assert sum(t.prob for t in hit.top_after if t.token == "blue") < 0.05
    miss = ablate_region(session, QUESTION, images, [(0, r, c) for _, r, c in cells], mode="zero")
    assert miss.top_after[0].token == "blue" and miss.top_after[0].prob > 0.9


def test_region_syntax_names_the_image():
    assert parse_region("2,3;2,4") == [(0, 2, 3), (0, 2, 4)]  # one image: unchanged
    assert parse_region("img1:2,3;2,4", n_images=2) == [(1, 2, 3), (1, 2, 4)]
    assert parse_region("img0:1,1; img1:2,2;3,3", n_images=2) == [(0, 1, 1), (1, 2, 2), (1, 3, 3)]
    assert parse_region("1,2,3;0,0,1", n_images=2) == [(1, 2, 3), (0, 0, 1)]
    for bad, why in [("2,3", "name the image"), ("img1:1,2,3", "not an image cell"), ("pic1:2,3", "does not name"),
                     ("img0:2,3;img0:2,3", "twice")]:
        with pytest.raises(InputError, match=why):
            parse_region(bad, n_images=2)


def test_cli_takes_several_images_and_ablates_a_named_images_region(tmp_path):
    blank().save(tmp_path / "blank.png")
    circle("blue").save(tmp_path / "blue.png")
    base = [sys.executable, "-m", "tracer", "steer", "--prompt", QUESTION, "--image", str(tmp_path / "blank.png"),
            "--image", str(tmp_path / "blue.png")]
    env = {"HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"}
    region = "img1:" + ";".join(f"{r},{c}" for r, c in circle_tokens())
    run = subprocess.run(base + ["--ablate-region", region, "--json", str(tmp_path / "r.json")], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    report = json.loads((tmp_path / "r.json").read_text())["region"]
    assert {c[0] for c in report["cells"]} == {1} and report["top_before"][0]["token"] == "blue"
    assert report["top_after"][0]["token"] != "blue"
    run = subprocess.run(base + ["--ablate-region", "1,2"], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 2 and "the prompt has 2 images; name the image" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------------- exactness, float64
@pytest.fixture(scope="module")
def exact_two_images():
    from test_attribution_exactness import random_set, run

    from tracer.models import load_vlm

    toy64 = load_vlm(None, dtype=torch.float64)
    tset = random_set("topk")
    return run(toy64, tset, QUESTION, [circle("green"), circle("red")], max_feature_nodes=300), tset


def test_float64_sum_rule_and_perturbation_identity_with_sources_from_both_images(exact_two_images):
    from test_attribution_exactness import TIGHT, perturbation_errors

    from tracer.attribution.verify import sample_sources

    result, tset = exact_two_images
    g = result.graph
    assert g.precision == "float64" and g.grids() == [(8, 8), (8, 8)]
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    rng = np.random.default_rng(2)
    image_sources = [g.embedding_offset + int(p) for k in range(2)
                     for p in rng.choice(g.image_positions[g.image_grid[:, 0] == k], 3, replace=False)]
    sources = list(sample_sources(g, 8, rng)) + image_sources
    assert {g.node_kind(s) for s in sources} == {"feature", "error", "embedding"}
    assert perturbation_errors(result, tset, sources) < TIGHT


# ---------------------------------------------------------------------- formats
@pytest.mark.parametrize("grids", [[(4, 6), (4, 6)], [(4, 6), (3, 5)]])
def test_non_square_grids_round_trip_every_format(tmp_path, grids):
    g = make_graph(seed=11, n_pos=90, grids=grids)
    assert g.grids() == grids and g.n_images == 2 and g.tokens_per_side == 0
    # native graph file
    back = load_graph(save_graph(g, tmp_path / "g.graph.safetensors"))
    assert back.grids() == grids and back.image_grids == grids
    np.testing.assert_array_equal(back.image_grid, g.image_grid)
    assert all(np.array_equal(a, b) for a, b in zip(back.images, g.images)) and len(back.images) == 2
    assert read_metadata(tmp_path / "g.graph.safetensors")["image_grids"] == [list(x) for x in grids]
    # viewer JSON (Neuronpedia format + our extension), checked against the shipped schema
    data = graph_to_json(g)
    jsonschema.validate(data, load_schema())
    assert data["metadata"]["vlm"]["image_grids"] == [list(x) for x in grids]
    assert len(data["metadata"]["vlm"]["images"]) == 2
    back = json_to_graph(json.loads(json.dumps(data)))
    assert back.grids() == grids and all(np.array_equal(a, b) for a, b in zip(back.images, g.images))
    np.testing.assert_array_equal(back.image_grid, g.image_grid)
    # GraphML: the grids as a graph attribute, each image token's (image, row, col) on its node
    root = graph_to_graphml(g).getroot()
    graph_el = root.find(f"{{{NS}}}graph")
    assert json.loads(graph_el.find(f"{{{NS}}}data[@key='g_image_grids']").text) == [list(x) for x in grids]
    cells = set()
    for node in graph_el.findall(f"{{{NS}}}node"):
        d = {e.get("key"): e.text for e in node.findall(f"{{{NS}}}data")}
        if d["n_is_image"] == "true":
            cells.add((int(d["n_image"]), int(d["n_row"]), int(d["n_col"])))
    assert cells == {tuple(int(x) for x in c) for c in g.image_grid}


def test_diff_finds_the_changed_cell_of_the_second_image():
    from tracer.graph.diff import changed_cells, diff_graphs, image_panel

    a = make_graph(seed=13, n_pos=90, grids=[(4, 6), (3, 5)])
    b = make_graph(seed=13, n_pos=90, grids=[(4, 6), (3, 5)])
    b.images[1] = b.images[1].copy()
    b.images[1][8:16, 32:40] = 255 - b.images[1][8:16, 32:40]  # cell (1, 4) of image 1's 3x5 grid
    assert [(c["image"], c["row"], c["col"]) for c in changed_cells(a, b)] == [(1, 1, 4)]
    panel = image_panel(diff_graphs(a, b), a, b)
    scale = 256 // 48  # image 0 is 32 x 48 pixels, image 1 24 x 40
    assert panel.size == (2 * 48 * scale + 8, (32 + 24) * scale + 8)  # one row per image, A beside B
    top, left = 32 * scale + 8 + 1 * 8 * scale, 40 * scale + 8 + 4 * 8 * scale
    outline = np.asarray(panel)[top, left:left + 8 * scale]
    assert (outline == [255, 0, 255]).all(-1).all()  # the changed cell's top edge, on B's image 1


def test_a_cell_outside_its_images_grid_is_refused(tmp_path):
    g = make_graph(seed=12, n_pos=90, grids=[(4, 6), (3, 5)])
    g.image_grid = g.image_grid.copy()
    last = int(np.flatnonzero(g.image_grid[:, 0] == 1)[-1])
    g.image_grid[last] = (1, 3, 0)  # row 3 exists in image 0's 4x6 grid, not in image 1's 3x5
    with pytest.raises(GraphFormatError, match=r"cell \(3, 0\) of image 1 is outside its 3x5 grid"):
        g.validate()
    g = make_graph(seed=12, n_pos=90, grids=[(4, 6), (3, 5)])
    g.image_grids = [(4, 6)]
    with pytest.raises(GraphFormatError, match="1 image grids for 2 images"):
        g.validate()
    g.image_grids = [(4, 6), (0, 5)]
    with pytest.raises(GraphFormatError, match=r"image_grids\[1\] must be \(rows, cols\)"):
        g.validate()


def test_files_from_before_image_grids_still_open(tmp_path):
    """The Gemma3 toy's sample graphs were written with tokens_per_side only (the LLaVA toy's came
    later, with image_grids)."""
    samples = sorted((ROOT / "app" / "sample_graphs").glob("*.graph.safetensors"))
    with_image = [p for p in samples if read_metadata(p).get("n_images") and read_metadata(p).get("model") == "toy"]
    assert len(with_image) == 5  # every question type but the text-only fact
    for path in with_image:
        assert "image_grids" not in read_metadata(path)
        g = load_graph(path)
        assert g.image_grids == [] and g.grids() == [(8, 8)] and g.grid_text() == "8x8"
    # an older viewer JSON (no image_grids) opens likewise
    data = graph_to_json(load_graph(with_image[0]))
    del data["metadata"]["vlm"]["image_grids"]
    assert json_to_graph(data).grids() == [(8, 8)]
    # and an old file saved again now records its grid
    back = load_graph(save_graph(load_graph(with_image[0]), tmp_path / "again.graph.safetensors"))
    assert back.image_grids == [(8, 8)] and back.tokens_per_side == 8


def test_vision_maps_keep_their_token_grid(tmp_path):
    from tracer.attention.vision import VisionAttentionMaps

    maps = VisionAttentionMaps(rollout=np.zeros((2, 6, 4, 4), np.float32), similarity=np.zeros((2, 6, 4, 4), np.float32),
                               patches_per_side=4, tokens_per_side=0, kernel=1, input_size=(4, 4), token_grid=(2, 3))
    back = VisionAttentionMaps.load_npz(maps.save_npz(tmp_path / "m.npz"))
    assert back.grid == (2, 3) and back.token_index(1, 2) == 5
    with pytest.raises(IndexError, match="outside the 2x3 grid"):
        back.token_index(2, 0)
