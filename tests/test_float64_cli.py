"""float64 means float64 end to end (issue 11, section 1).

Hugging Face computes Gemma3's RMSNorm and the eager attention softmax in float32 even in a
float64 run. The library switches both to float64 by itself whenever the model is float64, so
`python -m tracer attribute --dtype float64` followed by `python -m tracer verify` passes the
perturbation identity, the sum rule and the activation check at <= 1e-10 relative, on an image
prompt and on a text prompt; graph files keep float64 activations, values and constants. The
float32 path keeps its tolerance.
"""

from __future__ import annotations

import re
import threading

import numpy as np
import pytest
import torch

from tracer.cli import main
from tracer.graph import load_graph
from tracer.graph.storage import read_metadata
from tracer.models.precision import float64_compute, model_precision
from tracer.toy import world

BAR = 1e-10


def _report_numbers(text: str) -> dict[str, float]:
    """The relative errors `verify` prints."""
    pert = re.search(r"worst \|Δ - A\| = \S+ \((\S+) of the largest edge\)", text)
    sums = re.search(r"sum rule: worst residual \S+ \((\S+) relative\)", text)
    acts = re.search(r"feature activations: worst difference \S+ \((\S+) relative\)", text)
    assert pert and sums and acts, text
    return {"perturbation": float(pert.group(1)), "sum rule": float(sums.group(1)), "activations": float(acts.group(1))}


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    ex = world.make_example("heldout", 7, question_type="color")
    path = tmp_path_factory.mktemp("scene") / "scene.png"
    ex.image().save(path)
    return ex, path


@pytest.mark.parametrize("kind", ["image", "text"])
def test_attribute_float64_then_verify_passes_at_float64_precision(kind, scene, tmp_path, capsys):
    ex, image = scene
    out = tmp_path / f"{kind}.graph.safetensors"
    prompt = ["--prompt", ex.question, "--image", str(image)] if kind == "image" else \
        ["--prompt", "What color is grass?"]
    assert main(["attribute", *prompt, "--dtype", "float64", "--max_feature_nodes", "40", "--quiet", "--verify",
                 "-o", str(out)]) == 0
    first = capsys.readouterr().out
    assert "PASS (tolerance 1e-10 relative, float64 graph)" in first
    # a fresh process-level replay from the file alone, in the graph's own precision
    assert main(["verify", str(out), "--sources", "30"]) == 0
    text = capsys.readouterr().out
    numbers = _report_numbers(text)
    assert all(v <= BAR for v in numbers.values()), numbers
    assert "PASS" in text

    graph = load_graph(out)
    assert graph.precision == "float64" and read_metadata(out)["precision"] == "float64"
    assert graph.activations.dtype == np.float64 and graph.adjacency.dtype == np.float64
    assert graph.feature_position_activations.dtype == np.float64
    assert graph.values.dtype == np.float64 and graph.constants.dtype == np.float64
    # the activations are float64 values, not float32 ones widened: some differ from their float32 rounding
    assert (graph.activations != graph.activations.astype(np.float32).astype(np.float64)).any()
    assert bool(graph.is_image_position().any()) == (kind == "image")


def test_float32_keeps_its_tolerance_and_storage(scene, tmp_path, capsys):
    ex, image = scene
    out = tmp_path / "f32.graph.safetensors"
    assert main(["attribute", "--prompt", ex.question, "--image", str(image), "--max_feature_nodes", "40",
                 "--quiet", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "PASS (tolerance 0.002 relative, float32 graph)" in text
    graph = load_graph(out)
    assert graph.precision == "float32" and graph.activations.dtype == np.float32


def test_verifying_a_float64_graph_with_a_float32_model_uses_the_coarser_tolerance(scene, tmp_path, capsys):
    ex, image = scene
    out = tmp_path / "g.graph.safetensors"
    assert main(["attribute", "--prompt", "What color is fire?", "--dtype", "float64", "--max_feature_nodes", "20",
                 "--quiet", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out), "--dtype", "float32"]) == 0
    assert "PASS (tolerance 0.002 relative, float64 graph)" in capsys.readouterr().out


def _stock_and_exact(x: torch.Tensor, norm) -> tuple[torch.Tensor, torch.Tensor]:
    exact = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + norm.eps) * (1.0 + norm.weight.to(x.dtype))
    return norm(x), exact


def test_the_precision_context_makes_norms_and_softmax_float64_and_leaves_float32_alone(toy_vlm):
    from transformers.models.gemma3 import modeling_gemma3
    from transformers.models.siglip import modeling_siglip

    model, _ = toy_vlm
    norm = model.model.language_model.layers[0].input_layernorm
    g = torch.Generator().manual_seed(0)
    x64 = torch.randn(3, norm.weight.shape[0], generator=g, dtype=torch.float64) * 7
    norm64 = type(norm)(norm.weight.shape[0], eps=norm.eps).to(torch.float64)
    with torch.no_grad():
        norm64.weight.copy_(norm.weight.double())
    stock, exact = _stock_and_exact(x64, norm64)
    assert (stock - exact).abs().max() > 1e-12  # HF's float32 norm in a float64 run
    attn = model.model.language_model.layers[0].self_attn  # grouped-query: fewer key/value heads
    n_q, n_kv, dh = attn.config.num_attention_heads, attn.config.num_key_value_heads, attn.head_dim
    q = torch.randn(1, n_q, 5, dh, generator=g, dtype=torch.float64) * 2
    k = torch.randn(1, n_kv, 5, dh, generator=g, dtype=torch.float64) * 2
    v = torch.randn(1, n_kv, 5, dh, generator=g, dtype=torch.float64)
    _, w_stock = modeling_gemma3.eager_attention_forward(attn, q, k, v, None, scaling=0.5)
    k_full = k.repeat_interleave(n_q // n_kv, dim=1)
    w_exact = torch.softmax(q @ k_full.transpose(-1, -2) * 0.5, -1)
    assert (w_stock - w_exact).abs().max() > 1e-12  # HF's float32 softmax
    original = (modeling_gemma3.Gemma3RMSNorm.forward, modeling_gemma3.eager_attention_forward,
                modeling_siglip.eager_attention_forward)
    x32 = x64.float()
    stock32 = norm(x32)
    with float64_compute():
        with float64_compute():  # re-entrant
            inside, exact = _stock_and_exact(x64, norm64)
            assert (inside - exact).abs().max() < 1e-15
            _, w = modeling_gemma3.eager_attention_forward(attn, q, k, v, None, scaling=0.5)
            assert (w - w_exact).abs().max() < 1e-15
            _, w = modeling_siglip.eager_attention_forward(attn, q, k_full, k_full, None, scaling=0.5)
            assert (w - w_exact).abs().max() < 1e-15
            assert torch.equal(norm(x32), stock32)  # float32 takes HF's own code path
        assert modeling_gemma3.Gemma3RMSNorm.forward is not original[0]
    assert (modeling_gemma3.Gemma3RMSNorm.forward, modeling_gemma3.eager_attention_forward,
            modeling_siglip.eager_attention_forward) == original


def test_the_precision_context_is_thread_safe():
    from transformers.models.gemma3 import modeling_gemma3

    original = modeling_gemma3.Gemma3RMSNorm.forward
    seen = []

    def worker():  # overlapping enters and exits: the patch stays while any thread is inside
        for _ in range(200):
            with float64_compute():
                seen.append(modeling_gemma3.Gemma3RMSNorm.forward is not original)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(seen) and len(seen) == 800
    assert modeling_gemma3.Gemma3RMSNorm.forward is original


def test_model_precision_applies_only_to_float64(toy_vlm):
    model, _ = toy_vlm
    assert type(model_precision(model)).__name__ == "nullcontext"
    assert type(model_precision(torch.float64)).__name__ != "nullcontext"


def test_a_float64_model_gets_float64_softmaxes_without_the_caller_asking(scene):
    """Rows of a float32 softmax widened to float64 sum to 1 only to ~1e-7; float64 ones to ~1e-15.
    Language-model patterns come from record_forward, vision patterns from the vision maps."""
    from tracer.attention.vision import vision_attention_maps
    from tracer.attribution.record import record_forward
    from tracer.interventions.common import Bundle, prompt_inputs
    from tracer.models import load_vlm

    ex, image = scene
    model, processor = load_vlm(None, dtype=torch.float64)
    bundle = Bundle(model, processor)
    pi = prompt_inputs(bundle, ex.question, image)
    record = record_forward(bundle.adapter, pi)
    for layer in record.layers:
        assert (layer.pattern.sum(-1) - 1).abs().max() < 1e-13
    tower = bundle.adapter.vision_tower
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out[1].detach()))
             for name, m in tower.named_modules() if name.endswith("self_attn")]
    try:
        vision_attention_maps(bundle, pi)
    finally:
        for h in hooks:
            h.remove()
    assert seen and all(w.dtype == torch.float64 and (w.sum(-1) - 1).abs().max() < 1e-13 for w in seen)


def test_a_float64_graph_with_float32_activations_verifies_at_their_precision(scene, tmp_path, capsys):
    """Files written before activations were kept in float64: edges and sums are still checked at
    1e-10, the activations at what float32 storage can hold."""
    from tracer.graph import save_graph
    from tracer.session import TracingSession

    session = TracingSession(dtype="float64")
    graph = session.attribute("What color is fire?", max_feature_nodes=20, progress=False)
    graph.activations = graph.activations.astype(np.float32)
    report = session.verify(graph)
    assert report.ok and report.perturbation_max_rel <= BAR and report.sum_rule_max_rel <= BAR
    assert 0 < report.activation_max_rel < 1e-6
    # written again, such a graph keeps float64 throughout
    assert load_graph(save_graph(graph, tmp_path / "old.graph.safetensors")).activations.dtype == np.float64
