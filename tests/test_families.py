"""Every supported family is exact: the float64 identities of docs/design.md §3 (perturbation of
text, image, feature and error sources; sum rule; logit reconstruction against the real HF
forward) on a tiny random-weight model of each family, written to disk and loaded like any model
(tracer.toy.families). Also: the family is picked from the config, an unsupported one is refused
in one line, and verify, steering, region ablation and graph files work for each family."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_attribution_exactness import TIGHT, perturbation_errors, random_set
from tracer.attribution.attribute import AttributionConfig, attribute_full
from tracer.attribution.frozen import frozen_forward
from tracer.attribution.verify import sample_sources
from tracer.models import get_adapter, load_vlm
from tracer.models.base import format_prompt
from tracer.models.loading import ModelLoadError
from tracer.toy import world
from tracer.toy.families import TINY_FAMILIES, write_tiny_model

D_MODEL, N_LAYERS = 64, 2


@pytest.fixture(scope="module", params=TINY_FAMILIES)
def tiny(request, tmp_path_factory):
    folder = write_tiny_model(request.param, tmp_path_factory.mktemp(request.param))
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    return request.param, folder, model, processor


def _attribute(tiny, question, image, tset, **settings):
    _, _, model, processor = tiny
    config = AttributionConfig(progress=False, max_feature_nodes=None, batch_size=64, **settings)
    return attribute_full(model, processor, tset, question, image, config)


@pytest.fixture(scope="module")
def image_graph(tiny):
    tset = random_set("topk", d_tc=96, seed=5, n_layers=N_LAYERS, d_model=D_MODEL)
    ex = world.make_example("heldout", 2, question_type="color")
    return _attribute(tiny, ex.question, ex.image(), tset), tset


def test_family_is_picked_from_the_config(tiny):
    family, folder, model, _ = tiny
    adapter = get_adapter(model)
    assert adapter.family == family
    assert json.loads((folder / "config.json").read_text())["model_type"] == adapter.architecture.model_types[0]


def test_graph_records_its_family(tiny, image_graph):
    assert image_graph[0].graph.config["family"] == tiny[0]


def test_image_prompt_identities_hold_in_float64(tiny, image_graph):
    result, tset = image_graph
    g = result.graph
    assert len(g.image_positions) == 64
    assert {tuple(c[1:]) for c in g.image_grid.tolist()} == {(r, c) for r in range(8) for c in range(8)}
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    sources = sample_sources(g, 20, np.random.default_rng(0))
    kinds = {g.node_kind(s) for s in sources}
    assert kinds == {"feature", "error", "embedding"}
    is_img = g.is_image_position()
    embedded = [s - g.embedding_offset for s in sources if g.node_kind(s) == "embedding"]
    assert any(is_img[p] for p in embedded) and any(not is_img[p] for p in embedded)
    assert perturbation_errors(result, tset, sources) < TIGHT


def test_replacement_reproduces_the_real_model_logits(tiny, image_graph):
    _, _, model, _ = tiny
    rep = image_graph[0].replacement
    out = frozen_forward(rep)
    logits = out.final_hidden @ get_adapter(model).unembedding.T.to(out.final_hidden.dtype)
    assert torch.allclose(logits, rep.record.logits, atol=TIGHT, rtol=0)


def test_text_only_prompt(tiny):
    tset = random_set("jumprelu", d_tc=96, seed=6, skip=False, n_layers=N_LAYERS, d_model=D_MODEL)
    result = _attribute(tiny, "What color is grass?", None, tset)
    g = result.graph
    assert len(g.image_positions) == 0
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    assert perturbation_errors(result, tset, sample_sources(g, 9, np.random.default_rng(1))) < TIGHT


def test_chat_prefix_is_excluded_from_feature_nodes(tiny, image_graph):
    family = tiny[0]
    g = image_graph[0].graph
    expected = {"gemma3": 4, "llava": 2, "qwen2_5_vl": 3}[family]  # <bos><start_of_turn>user\n | <s>USER: | <|im_start|>user\n
    assert g.prefix_length == expected
    assert g.features[:, 1].min() >= expected


def test_unsupported_family_is_refused_in_one_line(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "blip-2", "architectures": ["Blip2Model"]}))
    (folder / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(ModelLoadError) as err:
        load_vlm(str(folder))
    message = str(err.value)
    assert "\n" not in message and "blip-2" in message
    assert all(f in message for f in ("gemma3", "llava", "qwen2_5_vl"))


def test_declared_norm_gain_matches_the_stock_model(tiny):
    """The float64 code path re-implements each family's RMSNorm from its declared gain rule; the
    stock HF code (float32 inside) must agree to float32 precision, or the declaration is wrong."""
    from tracer.models.base import prepare_prompt
    from tracer.models.precision import float64_compute

    _, _, model, processor = tiny
    adapter = get_adapter(model)
    ex = world.make_example("heldout", 2, question_type="color")
    prompt = prepare_prompt(processor, ex.question, ex.image(), image_token_id=adapter.image_token_id,
                            tokens_per_image=adapter.tokens_per_image, adapter=adapter)
    inputs = adapter.model_inputs(prompt.inputs)
    with torch.no_grad():
        stock = model(**inputs, use_cache=False).logits[0, -1]
        with float64_compute():
            exact = model(**inputs, use_cache=False).logits[0, -1]
    assert torch.allclose(exact, stock, atol=1e-5 * float(stock.abs().max()), rtol=0)
    assert not torch.equal(exact, stock)  # the float64 path did run


@pytest.mark.slow
@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_cli_story_on_every_family(family, tmp_path):
    """The README's story on a new family: write a tiny model, train transcoders for it, trace with
    --verify, steer, ablate a region, export, and build the explorer's view of the graph."""
    import subprocess
    import sys

    from app.annotations import Annotations
    from app.view.build import build_view
    from app.view.session import GraphSession
    from tracer.graph import load_graph

    def cli(*args):
        done = subprocess.run([sys.executable, "-m", "tracer", *map(str, args)], capture_output=True, text=True,
                              env={**__import__("os").environ, "HF_HUB_OFFLINE": "1"}, timeout=600)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    model, plt = tmp_path / "model", tmp_path / "plt"
    cli("toy", "tiny", "--family", family, "--out", model)
    cli("train-plt", "--model", model, "--out", plt, "--width", 128, "--k", 8, "--tokens", 4096,
        "--eval-examples", 6, "--no-progress")
    scene = world.make_example("heldout", 1, question_type="color")
    scene.image().save(tmp_path / "scene.png")
    common = ["--model", model, "--transcoders", plt, "--image", tmp_path / "scene.png", "--prompt", scene.question]
    out = cli("attribute", *common, "--out", tmp_path / "g", "--verify", "--dtype", "float64")
    assert "PASS" in out
    graph_file = next(tmp_path.glob("g*.graph.safetensors"))
    steer = cli("steer", *common, "--feature", "1:0:scale:0", "--top-k", 3)
    assert "answer:" in steer
    region = cli("steer", *common, "--ablate-region", "2,3;2,4", "--top-k", 3)
    assert "region ablation (zero) of 2 soft tokens" in region
    cli("export", graph_file, "--out", tmp_path / "np")
    assert list((tmp_path / "np").glob("*.json"))
    graph = load_graph(graph_file)
    view = build_view(GraphSession(graph, graph_file.name, None), Annotations(), 0.8, 0.98)
    assert view is not None and len(graph.image_positions) == 64


def test_qwen_dynamic_grids_and_two_images(tmp_path):
    """Qwen2.5-VL's grid follows the image (dynamic resolution): a 64x64 and a 96x64 image in one
    prompt give 8x8 and 8x12 grids of soft tokens, and the identities hold with sources in both."""
    folder = write_tiny_model("qwen2_5_vl", tmp_path / "qwen")
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    square = world.make_example("heldout", 2, question_type="color").image()
    wide = world.make_example("heldout", 5, question_type="shape").image().resize((96, 64))
    tset = random_set("topk", d_tc=96, seed=7, n_layers=N_LAYERS, d_model=D_MODEL)
    result = _attribute((None, None, model, processor), "What color is the circle?", [square, wide], tset)
    g = result.graph
    assert [tuple(x) for x in g.image_grids] == [(8, 8), (8, 12)]
    cells = g.image_grid.tolist()
    assert sum(1 for c in cells if c[0] == 1) == 96 and max(c[2] for c in cells if c[0] == 1) == 11
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    sources = sample_sources(g, 24, np.random.default_rng(3))
    images_hit = {cells[list(g.image_positions).index(s - g.embedding_offset)][0] for s in sources
                  if g.node_kind(s) == "embedding" and (s - g.embedding_offset) in set(g.image_positions)}
    assert images_hit == {0, 1}
    assert perturbation_errors(result, tset, sources) < TIGHT


def test_llava_vision_maps_follow_its_projector(tmp_path):
    """LLaVA's projector reads one tower token per patch (CLS dropped) from hidden_states[-2]:
    with the identity alone (identity_weight 1) each soft token's rollout is its own patch, and its
    similarity map is 1 at its own patch (it is compared with the very state the projector reads)."""
    from tracer.attention import vision_attention_maps
    from tracer.interventions.common import Bundle

    folder = write_tiny_model("llava", tmp_path / "llava")
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    image = world.make_example("heldout", 2, question_type="color").image()
    bundle = Bundle(model, processor)
    own = vision_attention_maps(bundle, image, identity_weight=1.0)
    assert own.patches_per_side == 8 and own.grid == (8, 8) and own.rollout_layers == [0]  # 2 layers, reads 1
    eye = np.eye(64).reshape(64, 8, 8)
    assert np.allclose(own.rollout[0], eye, atol=1e-6)
    maps = vision_attention_maps(bundle, image)
    assert np.allclose(maps.similarity[0].reshape(64, 64).diagonal(), 1.0, atol=1e-6)
    totals = maps.rollout[0].reshape(64, 64).sum(1)  # what is left after the CLS token's share
    assert np.all(totals <= 1 + 1e-6) and np.all(totals > 0.5)


def test_llava_with_a_siglip_tower_starts_from_a_trained_tower(tmp_path):
    """A LLaVA toy can carry a SigLIP tower (no CLS token, every token kept: the "full" strategy)
    and start from another VLM's trained tower (`toy train --init-vision-from`): the weights are
    copied exactly, the prompt gets one soft token per patch, the maps follow the projector, the
    float64 identities hold, and a tower of another kind is refused in one line."""
    from tracer.attention import vision_attention_maps
    from tracer.errors import InputError
    from tracer.interventions.common import Bundle
    from tracer.models.base import prepare_prompt
    from tracer.toy.families import build_family_model
    from tracer.toy.train import copy_vision_tower, source_tower_kind

    gemma, _ = build_family_model("gemma3", seed=3)
    assert source_tower_kind(gemma, "llava") == "siglip"
    llava, processor = build_family_model("llava", seed=0, vision_tower="siglip")
    copy_vision_tower(gemma, llava, "gemma")
    theirs, ours = get_adapter(gemma).vision_tower.state_dict(), get_adapter(llava).vision_tower.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    qwen, _ = build_family_model("qwen2_5_vl", seed=0)
    with pytest.raises(InputError, match="vision tower"):
        copy_vision_tower(gemma, qwen, "gemma")

    folder = tmp_path / "llava-siglip"
    llava.save_pretrained(folder)
    processor.save_pretrained(folder)
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    adapter = get_adapter(model)
    image = world.make_example("heldout", 2, question_type="color").image()
    prompt = prepare_prompt(processor, "What color is the circle?", [image], adapter=adapter,
                            image_token_id=adapter.image_token_id, tokens_per_image=adapter.tokens_per_image)
    assert adapter.tokens_per_image == 64 and prompt.image_grids == [(8, 8)] and len(prompt.image_positions) == 64
    own = vision_attention_maps(Bundle(model, processor), image, identity_weight=1.0)
    assert own.rollout_layers == [0, 1]  # the last layer is read: both tower layers roll out
    assert np.allclose(own.rollout[0], np.eye(64).reshape(64, 8, 8), atol=1e-9)
    tset = random_set("topk", d_tc=64, seed=1, n_layers=N_LAYERS, d_model=D_MODEL)
    result = _attribute(("llava", folder, model, processor), "What color is the circle?", image, tset)
    g = result.graph
    assert np.abs(g.sum_rule_residual()).max() < TIGHT
    assert perturbation_errors(result, tset, sample_sources(g, 12, np.random.default_rng(0))) < TIGHT


def test_init_vision_from_a_tower_of_another_kind_is_refused_before_anything_is_written(tmp_path, capsys):
    from tracer.cli import main

    out = tmp_path / "qwen-toy"
    assert main(["toy", "train", "--family", "qwen2_5_vl", "--init-vision-from", "toy", "--out", str(out),
                 "--steps", "2", "--warmup", "1", "--no-progress"]) == 2
    assert "is not the kind this qwen2_5_vl toy uses" in capsys.readouterr().err
    assert not out.exists()


def test_qwen_vision_maps_follow_its_windows_and_merger(tmp_path):
    """Qwen2.5-VL's tower packs the images, reorders tokens into windows and returns no attention
    weights; the maps put its patterns back into patch order. Checked arithmetically on a 96x64
    image (an 8x12 grid of soft tokens, 16x24 patches): with the identity alone each soft token's
    rollout is 1/4 on each of its own 2x2 patches (the merger's block); the windowed block's
    pattern is row-stochastic and zero outside each patch's 4x4-patch window (a wrong reordering
    would scatter it); the full-attention block's pattern of an image does not change when a
    second image of the same size joins the prompt."""
    from tracer.attention import vision_attention_maps
    from tracer.interventions.common import Bundle

    folder = write_tiny_model("qwen2_5_vl", tmp_path / "qwen")
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    bundle = Bundle(model, processor)
    wide = world.make_example("heldout", 2, question_type="color").image().resize((96, 64))
    own = vision_attention_maps(bundle, wide, identity_weight=1.0)
    assert own.grid == (8, 12) and own.patch_grid == (16, 24) and own.kernel == 2
    expected = np.zeros((96, 16, 24))
    for t in range(96):
        r, c = divmod(t, 12)
        expected[t, 2 * r:2 * r + 2, 2 * c:2 * c + 2] = 0.25
    assert np.allclose(own.rollout[0], expected, atol=1e-12)

    adapter = bundle.adapter
    inputs = dict(processor.image_processor(images=[wide], return_tensors="pt"))
    states = adapter.vision_tower_states(inputs, [0, 1])
    readout = adapter.vision_readout((8, 12))
    windowed = states.patterns[0][0][:, readout.patch_tokens][:, :, readout.patch_tokens]  # heads, patch x patch
    assert torch.allclose(windowed.sum(-1), torch.ones((), dtype=windowed.dtype))
    rows, cols = np.divmod(np.arange(16 * 24), 24)
    window = (rows // 4) * 6 + cols // 4
    outside = torch.as_tensor(window[:, None] != window[None, :])
    assert windowed[:, outside].abs().max() == 0 and windowed[:, ~outside].min() > 0
    pair = adapter.vision_tower_states(dict(processor.image_processor(images=[wide, wide.rotate(180)],
                                                                      return_tensors="pt")), [1])
    assert torch.allclose(pair.patterns[1][0], states.patterns[1][0], atol=1e-12)
    assert not torch.allclose(pair.patterns[1][1], states.patterns[1][0], atol=1e-6)
    maps = vision_attention_maps(bundle, wide)
    assert np.allclose(maps.rollout[0].sum((-1, -2)), 1.0, atol=1e-9)
    own_block = maps.rollout[0][expected > 0].reshape(-1)
    assert own_block.mean() > maps.rollout[0][expected == 0].mean()


def test_qwen_attention_cli_writes_vision_maps_or_says_why(tmp_path, capsys):
    """`attention` on Qwen2.5-VL writes the vision maps; with two images of different grids it
    says in one line why there are none and still writes the attention graph."""
    from tracer.attention import VisionAttentionMaps
    from tracer.cli import main
    from tracer.transcoders.loading import save_transcoder_set

    folder = write_tiny_model("qwen2_5_vl", tmp_path / "qwen")
    square, wide = tmp_path / "scene.png", tmp_path / "wide.png"
    scene = world.make_example("heldout", 2, question_type="color").image()
    scene.save(square)
    scene.resize((96, 64)).save(wide)
    plt = tmp_path / "plt"
    save_transcoder_set(random_set("topk", d_tc=64, seed=1, n_layers=N_LAYERS, d_model=D_MODEL), plt)
    base = ["attention", "--model", str(folder), "--transcoders", str(plt), "--prompt", "What color is the circle?"]
    assert main(base + ["--image", str(square), "-o", str(tmp_path / "one")]) == 0
    maps = VisionAttentionMaps.load_npz(tmp_path / "one.vision.npz")
    assert maps.grid == (8, 8) and maps.rollout.shape == (1, 64, 16, 16)
    capsys.readouterr()
    assert main(base + ["--image", str(square), "--image", str(wide), "-o", str(tmp_path / "two")]) == 0
    err = capsys.readouterr().err
    assert "vision attention maps need images of one grid; these have 8x8 + 8x12" in err
    assert (tmp_path / "two.graph.safetensors").exists() and not (tmp_path / "two.vision.npz").exists()


@pytest.mark.parametrize("family", ["llava", "qwen2_5_vl"])
def test_toy_training_runs_for_every_family(family, tmp_path):
    """`toy train --family F` trains the toy sizes in that family's class and chat format: the
    auxiliary probe reads the soft tokens where they enter the language model, the answer loss
    falls over a few steps on a fixed batch, and the saved folder loads as that family."""
    from tracer.toy import data
    from tracer.toy.families import build_family_model
    from tracer.toy.model import ToyModelSpec
    from tracer.toy.train import TrainConfig, batch_for_step, probe_width, train, training_loss

    spec = ToyModelSpec(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                        head_dim=16, vision_hidden=32, vision_intermediate=64, vision_layers=2, vision_heads=2)
    cfg = TrainConfig(steps=2, batch_size=8, warmup=1, eval_every=2, eval_examples=4, family=family, spec=spec)
    model, processor = build_family_model(family, 0, spec)
    probe = torch.nn.Linear(spec.hidden_size, probe_width(cfg))
    assert probe_width(cfg) == len(data.SHAPE_CLASSES) + len(data.COLOR_CLASSES) + 4  # + the two halves
    opt = torch.optim.Adam(list(model.parameters()) + list(probe.parameters()), lr=3e-3)
    batch = batch_for_step(processor, cfg, 0)
    losses = []
    for _ in range(8):
        loss, stats = training_loss(model, probe, batch, cfg)
        assert stats["aux"] > 0  # the probe saw the image soft tokens
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(stats["answer_loss"])
    assert losses[-1] < 0.7 * losses[0]
    out = train(tmp_path / "toy", cfg, progress=False)
    loaded, _ = load_vlm(str(out))
    assert get_adapter(loaded).family == family


def test_qwen_image_tokens_get_m_rope_row_and_column_positions(tmp_path):
    """M-RoPE: the processor marks image soft tokens (mm_token_type_ids) so that the model gives
    each one (time, row, col) positions; without the marks HF falls back to 1-d positions, which
    a real Qwen2.5-VL was not trained with. The forward with our inputs equals the forward with
    the 3-d positions passed explicitly, and differs from the 1-d fallback."""
    folder = write_tiny_model("qwen2_5_vl", tmp_path / "qwen")
    model, processor = load_vlm(str(folder), dtype=torch.float64)
    adapter = get_adapter(model)
    ex = world.make_example("heldout", 2, question_type="color")
    wide = ex.image().resize((96, 64))  # an 8x12 grid, so rows and columns differ
    inputs = adapter.model_inputs(processor(text=format_prompt(processor, ex.question, n_images=1), images=[wide]))
    is_image = inputs["input_ids"][0] == adapter.image_token_id
    assert inputs["mm_token_type_ids"][0].bool().equal(is_image)
    positions, _ = model.model.get_rope_index(inputs["input_ids"], inputs["mm_token_type_ids"],
                                              image_grid_thw=inputs["image_grid_thw"],
                                              attention_mask=inputs["attention_mask"])
    t, row, col = (positions[k, 0, is_image] for k in range(3))
    start = int(t[0])
    assert (t == start).all()
    assert (row - start).tolist() == [r for r in range(8) for _ in range(12)]
    assert (col - start).tolist() == list(range(12)) * 8
    with torch.no_grad():
        ours = model(**inputs).logits
        explicit = model(**inputs, position_ids=positions).logits
        flat = model(**{k: v for k, v in inputs.items() if k != "mm_token_type_ids"}).logits
    assert torch.equal(ours, explicit)
    assert (ours - flat).abs().max() > 1e-6


def test_half_labels_mark_the_bottom_and_right_halves():
    from tracer.toy import data

    halves = data.half_labels()
    assert halves.shape == (64, 2)
    assert halves[0].tolist() == [0, 0] and halves[7].tolist() == [0, 1] and halves[56].tolist() == [1, 0]
    assert halves[63].tolist() == [1, 1] and halves[3 * 8 + 3].tolist() == [0, 0] and halves[4 * 8 + 4].tolist() == [1, 1]
    assert halves.sum(0).tolist() == [32, 32]


def test_language_model_copy_into_another_family_computes_what_the_source_did():
    """`toy train --init-language-from`: a Llama decoder (LLaVA) starts a Qwen2.5-VL toy's. Every
    decoder weight is copied, Qwen2's q/k/v biases start at zero, embedding and unembedding rows
    follow the token's text (end-of-turn and padding by role). On one token attention is the
    identity (no rotary effect), so both language models give the same logits on every shared
    token; a decoder of other sizes or layout is refused in one line."""
    from tracer.errors import InputError
    from tracer.toy.families import build_family_model
    from tracer.toy.model import ToyModelSpec
    from tracer.toy.train import copy_language_model

    llava, llava_processor = build_family_model("llava", seed=1)
    qwen, qwen_processor = build_family_model("qwen2_5_vl", seed=2)
    copy_language_model(llava, llava_processor.tokenizer, qwen, qwen_processor.tokenizer, "llava")
    layer = get_adapter(qwen).language_model.layers[1].self_attn
    assert torch.equal(layer.q_proj.weight, get_adapter(llava).language_model.layers[1].self_attn.q_proj.weight)
    assert not layer.q_proj.bias.any() and not layer.v_proj.bias.any()
    theirs, ours = llava_processor.tokenizer, qwen_processor.tokenizer
    shared = [w for w in ours.get_vocab() if w in theirs.get_vocab()]
    assert {"red", "circle", "left", "yes"} <= set(shared)
    for word in ("red", "circle"):
        with torch.no_grad():
            a = llava(input_ids=torch.tensor([[theirs.convert_tokens_to_ids(word)]])).logits[0, -1]
            b = qwen(input_ids=torch.tensor([[ours.convert_tokens_to_ids(word)]])).logits[0, -1]
        ia = torch.tensor([theirs.convert_tokens_to_ids(w) for w in shared])
        ib = torch.tensor([ours.convert_tokens_to_ids(w) for w in shared])
        assert torch.allclose(a[ia], b[ib], atol=1e-5)
        eos = (theirs.eos_token_id, ours.eos_token_id)
        assert torch.allclose(a[eos[0]], b[eos[1]], atol=1e-5)

    wider, _ = build_family_model("qwen2_5_vl", seed=0, spec=ToyModelSpec())
    with pytest.raises(InputError, match="does not fit this qwen2_5_vl toy"):
        copy_language_model(llava, theirs, wider, ours, "llava")
    gemma, gemma_processor = build_family_model("gemma3", seed=0)
    with pytest.raises(InputError, match="does not fit"):
        copy_language_model(gemma, gemma_processor.tokenizer, qwen, ours, "gemma")


def test_init_from_goes_on_training_a_toy_of_the_same_family(tmp_path, capsys):
    """`toy train --init-from` fine-tunes a trained toy: the run starts from its weights (its
    first loss is the trained model's, not a fresh one's), and a toy of another family is refused
    before anything is written."""
    from tracer.cli import main

    first, second = tmp_path / "first", tmp_path / "second"
    common = ["--family", "llava", "--steps", "3", "--warmup", "1", "--batch-size", "4", "--no-progress",
              "--eval-every", "3"]
    assert main(["toy", "train", "--out", str(first), *common]) == 0
    start, _ = load_vlm(str(first))
    assert main(["toy", "train", "--out", str(second), "--init-from", str(first), *common]) == 0
    log = json.loads((second / "training_log.json").read_text())
    assert log["config"]["init_from"] == str(first) and log["config"]["aux_position"] is True
    # the history of the run it started from comes along
    assert log["started_from"]["model"] == str(first)
    assert log["started_from"]["log"] == json.loads((first / "training_log.json").read_text())
    tuned, _ = load_vlm(str(second))
    settings = json.loads((second / "tokenizer_config.json").read_text())
    assert "local_files_only" not in settings and "is_local" not in settings  # no trace of how it was loaded
    a, b = start.state_dict(), tuned.state_dict()
    assert a.keys() == b.keys() and any(not torch.equal(a[k], b[k]) for k in a)
    drift = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert drift < 0.05  # three small steps from the trained weights, not a fresh start
    capsys.readouterr()
    other = tmp_path / "other"
    assert main(["toy", "train", "--out", str(other), "--family", "qwen2_5_vl", "--init-from", str(first),
                 "--steps", "2", "--warmup", "1", "--no-progress"]) == 2
    assert "is a llava model, not qwen2_5_vl" in capsys.readouterr().err
    assert not other.exists()


def test_question_mix_weights_the_types_a_run_draws(capsys):
    """`toy train --question-mix color=3,exists=2`: batches draw each type as often as its weight
    (types not named weigh 1); no mix keeps the one-of-each cycle; bad mixes are refused."""
    from collections import Counter

    from tracer.cli import main
    from tracer.errors import InputError
    from tracer.toy.families import build_family_model
    from tracer.toy.train import TrainConfig, batch_for_step, question_cycle

    _, processor = build_family_model("llava", seed=0)
    plain = batch_for_step(processor, TrainConfig(batch_size=12), 3)
    assert Counter(e.question_type for e in plain.examples) == {q: 2 for q in world.QUESTION_TYPES}
    assert [e.question for e in plain.examples] == [world.make_example("train", 36 + i).question for i in range(12)]
    mixed = batch_for_step(processor, TrainConfig(batch_size=18, question_mix={"color": 3, "exists": 2}), 0)
    assert Counter(e.question_type for e in mixed.examples) == {"color": 6, "shape": 2, "position": 2, "count": 2,
                                                                "exists": 4, "fact": 2}
    assert len({e.question + str(e.scene) for e in mixed.examples}) == 18  # every example its own
    with pytest.raises(InputError, match="unknown question type"):
        question_cycle({"colour": 2})
    with pytest.raises(SystemExit) as stop:
        main(["toy", "train", "--out", "unused", "--question-mix", "color=x"])
    assert stop.value.code == 2 and "expected TYPE=WEIGHT" in capsys.readouterr().err
