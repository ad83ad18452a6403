"""Feature examples over a text corpus for a text-only model (`--data pydoc`, `--data text:FILE`),
the store round trip, and the explorer picking each graph's store by its transcoder set."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from app.examples import FeatureExampleStores, find_stores
from tests.test_real_gemma import write_tiny_text_gemma
from tracer.features.compute import DataSpecError, MLPInputs, compute_feature_examples, parse_data_spec
from tracer.features.store import ExampleStore

SAMPLES = Path(__file__).resolve().parents[1] / "app" / "sample_graphs"
GEMMA_GRAPH = "gemma-3-270m-the-capital-of-france-is.graph.safetensors"
TOY_GRAPH = "color-heldout2-what-color-is-the-cross.graph.safetensors"
GEMMA_STORE = "feature_examples-gemma-3-270m-plt"
TEXT = ("The river rises in the hills and runs to the sea. Boats carry grain down the river every autumn, "
        "and the town at its mouth grew rich on the trade. In winter the water freezes near the banks, "
        "so the boats wait in the harbour until spring. Children skate on the ice while their parents mend nets.")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny random text-only Gemma 3 (float64) and a random transcoder set saved as a folder."""
    from tracer.models.loading import load_vlm
    from tracer.transcoders import load_transcoder_set
    from tracer.transcoders.activations import TopK
    from tracer.transcoders.loading import save_transcoder_set
    from tracer.transcoders.per_layer import PerLayerTranscoder
    from tracer.transcoders.transcoder_set import TranscoderSet

    root = tmp_path_factory.mktemp("tiny-text")
    write_tiny_text_gemma(root / "model")
    model, tok = load_vlm(root / "model", dtype=torch.float64)
    g = torch.Generator().manual_seed(1)
    layers = {}
    for layer in range(3):
        tc = PerLayerTranscoder.init_random(layer, 64, 96, TopK(6), skip=False, generator=g, dtype=torch.float64)
        with torch.no_grad():
            tc.b_enc.normal_(0, 0.1, generator=g)
        layers[layer] = tc
    save_transcoder_set(TranscoderSet(layers, config={"feature_input_hook": "mlp.hook_in",
                                                      "feature_output_hook": "mlp.hook_out"}),
                        root / "tiny-text-plt", model_name=str(root / "model"))
    tset = load_transcoder_set(str(root / "tiny-text-plt"), dtype=torch.float64, model=model)
    corpus = root / "river.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    return root, model, tok, tset, corpus


def _alone(model, tset, ids: list[int]) -> dict[int, torch.Tensor]:
    """Each layer's dense feature activations (positions x features) of one input run alone."""
    from tracer.models import get_adapter

    with MLPInputs(get_adapter(model), list(tset.layers)) as hooks:
        captured = hooks.run(model, {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids),
                                                                                                     dtype=torch.long)})
    return {layer: tset[layer].encode(x[0]).detach() for layer, x in captured.items()}


def test_text_file_windows_give_a_store_whose_slots_are_the_true_maxima(tiny, tmp_path):
    root, model, tok, tset, corpus = tiny
    out = compute_feature_examples(tmp_path / "store", model, tok, tset, data=f"text:{corpus},window=12",
                                   n_inputs=100, n_per_feature=3, batch_size=3, progress=False,
                                   model_name="tiny", transcoder_name="tiny-text-plt")
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    windows = [ids[s: s + 12] for s in range(0, len(ids), 12)]
    store = ExampleStore(out)
    manifest = store.manifest
    assert manifest["num_inputs"] == len(windows) and manifest["dataset"]["name"] == "text"
    assert manifest["dataset"]["window"] == 12 and manifest["dataset"]["file"] == "river.txt"
    assert manifest["schema"] == "circuit-tracer-activation-stats-v1" and manifest["tokens_per_image"] == 0
    assert Path(manifest["transcoder"]["source"]).name == "tiny-text-plt"
    assert not any((out / "images").iterdir())  # text windows have no image
    # every window is <bos> + its tokens, <bos> excluded from the counts
    assert store.processor_tokens == len(ids)
    for i, window in enumerate(windows):
        record = store.input_record(i)
        assert list(record["token_ids"]) == [tok.bos_token_id] + window
        assert list(record["token_mask"]) == [False] + [True] * len(window)
        assert record["text"] == tok.decode([tok.bos_token_id] + window)
    # each slot is the feature's maximum over that input's retained positions, run alone (the
    # batch was right-padded, so a short last window must match too), and the top slot is the
    # maximum over the whole corpus
    alone = [_alone(model, tset, [tok.bos_token_id] + w) for w in windows]
    checked = 0
    for layer in tset.layers:
        for feature in store.features(layer)[:8]:
            examples = store.top_examples(layer, feature, k=3, load_images=False)
            best = max(float(a[layer][1:, feature].max()) for a in alone)
            assert examples[0].value == pytest.approx(best, rel=1e-5)
            for ex in examples:
                acts = alone[ex.input_id][layer][:, feature]
                assert ex.value == pytest.approx(float(acts[1:].max()), rel=1e-5)
                assert ex.token_position == 1 + int(torch.argmax(acts[1:]))
                assert ex.image is None and ex.tokens[0] == tok.bos_token
                per_position = ex.activations_per_position  # float16 in the store; <bos> is not counted
                assert per_position[0] == 0
                np.testing.assert_allclose(per_position[1:], acts[1:].numpy(), rtol=2e-3, atol=1e-3)
                checked += 1
    assert checked >= 10


def test_pydoc_inputs_are_the_corpus_chunks_the_set_was_trained_on(tiny, tmp_path):
    from tracer.transcoders.pydoc_corpus import chunks

    root, model, tok, tset, _ = tiny
    out = compute_feature_examples(tmp_path / "pydoc", model, tok, tset, data="pydoc,start=5", n_inputs=3,
                                   n_per_feature=2, batch_size=2, per_position=False, progress=False)
    store = ExampleStore(out)
    assert store.manifest["dataset"] == {"name": "pydoc", "chars": 400, "start": 5, "count": 3,
                                         "source": "pydoc_data.topics (tracer.transcoders.pydoc_corpus)"}
    for i, text in enumerate(chunks(400)[5:8]):
        record = store.input_record(i)
        assert list(record["token_ids"]) == tok(text)["input_ids"]  # <bos> + raw text, as training saw it
        assert json.loads(record["metadata_json"]) == {"index": 5 + i, "source": "pydoc"}
        assert record["example_id"] == f"pydoc/{5 + i:06d}"


def test_the_command_writes_a_text_store_and_rejects_bad_data_in_one_line(tiny, tmp_path, capsys):
    from tracer.cli import main

    root, _, _, _, corpus = tiny
    out = tmp_path / "cli-store"
    rc = main(["features", "--model", str(root / "model"), "--transcoders", str(root / "tiny-text-plt"),
               "--data", f"text:{corpus},window=20", "--n-examples", "2", "--per-feature", "2", "--out", str(out),
               "--dtype", "float64", "--no-progress"])
    assert rc == 0 and "2 inputs" in capsys.readouterr().out
    manifest = ExampleStore(out).manifest
    assert manifest["dataset"]["window"] == 20  # 57 tokens: the first 2 of 3 windows
    assert manifest["excluded_positions"].startswith("<bos>")
    binary = tmp_path / "blob.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    for data, extra, message in [(f"text:{tmp_path / 'missing.txt'}", [], "text file not found"),
                                 (f"text:{binary}", [], "is not UTF-8 text"),
                                 ("pydoc,window=3", [], "unknown option 'window' for pydoc"),
                                 (f"text:{corpus},window=0", [], "window=0 is out of range"),
                                 ("wiki", [], "unknown data set 'wiki'"),
                                 ("pydoc", ["--workers", "2"], "Ray workers compute over the toy data set only")]:
        rc = main(["features", "--model", str(root / "model"), "--transcoders", str(root / "tiny-text-plt"),
                   "--data", data, "--out", str(tmp_path / "never"), "--no-progress", *extra])
        err = capsys.readouterr().err.strip()
        assert rc == 2 and message in err and len(err.splitlines()) == 1, (data, err)
        assert not (tmp_path / "never").exists()


def test_parse_data_spec_kinds():
    assert parse_data_spec("pydoc").describe()["chars"] == 400
    assert parse_data_spec("pydoc,chars=200,start=3").start == 3
    assert parse_data_spec("toy:train,seed=2").seed == 2
    with pytest.raises(DataSpecError):
        parse_data_spec("text:")
    with pytest.raises(DataSpecError):
        parse_data_spec("pydoc:x")
    with pytest.raises(DataSpecError):
        parse_data_spec("pydoc,chars=ten")


def _folder_with_both(tmp_path: Path) -> Path:
    for name in (GEMMA_GRAPH, TOY_GRAPH):
        shutil.copy(SAMPLES / name, tmp_path / name)
    shutil.copytree(SAMPLES / "feature_examples", tmp_path / "feature_examples")
    shutil.copytree(SAMPLES / GEMMA_STORE, tmp_path / GEMMA_STORE)
    return tmp_path


def test_the_shipped_folder_has_a_store_per_transcoder_set():
    stores = FeatureExampleStores(find_stores(SAMPLES))
    assert sorted(s.store_transcoders() for s in stores.stores) == ["gemma-3-270m-plt", "toy-plt", "toy-plt-llava",
                                                                    "toy-plt-qwen"]
    llava = stores.pick("toy-plt-llava")[0].store.manifest  # the LLaVA toy's sample graph gets its own store
    assert llava["model_name"] == "toy-llava" and llava["dataset"]["name"] == "toy"
    from tracer.features.compute import transcoder_fingerprint
    from tracer.transcoders import load_transcoder_set

    assert llava["transcoder"]["fingerprint"] == transcoder_fingerprint(load_transcoder_set("toy-plt-llava")), (
        "app/sample_graphs/feature_examples-toy-plt-llava is stale: recompute it (docs/adding_a_family.md)")
    manifest = stores.pick("tracer/data/gemma-3-270m-plt")[0].store.manifest
    assert manifest["dataset"]["name"] == "pydoc" and manifest["model_name"] == "gguf:gemma-3-270m"
    size = sum(p.stat().st_size for p in (SAMPLES / GEMMA_STORE).rglob("*") if p.is_file())
    assert size < 4_000_000
    root = Path(__file__).resolve().parents[1]
    assert manifest["transcoder"]["fingerprint"] == transcoder_fingerprint(
        load_transcoder_set(str(root / "tracer" / "data" / "gemma-3-270m-plt"))), (
        f"app/sample_graphs/{GEMMA_STORE} is stale: recompute it with the command in the README's real-model section")


def test_the_explorer_shows_each_graph_the_examples_of_its_own_transcoder_set(tmp_path):
    """Server side, as the details callback does it: the Gemma 3 270M sample graph's features get
    pydoc text from its store, the toy graph's features get toy images from the toy store."""
    from app.factory import create_app

    app = create_app(_folder_with_both(tmp_path))
    state = app.state
    assert len(state.examples.stores) == 2
    for name, chat, want_thumb in [(GEMMA_GRAPH, False, False), (TOY_GRAPH, True, True)]:
        graph = state.store.session(name).graph
        found = thumbs = 0
        layers, features = _some_features(graph)
        for layer, feature in zip(layers, features):
            examples, note = state.examples.top(layer, feature, k=3, transcoders=graph.transcoders)
            assert "computed with the transcoders" not in note and "No feature-examples store" not in note
            for ex in examples:
                assert ex["text"].startswith("<bos>") and ex["text"].startswith("<bos><start_of_turn>") == chat
                thumbs += ex["thumb"] is not None
                assert any(active for _, active in ex["tokens"])
                found += 1
        assert found >= 5, name
        assert (thumbs > 0) == want_thumb, name  # toy scenes have images (fact questions not), pydoc text none
    # without a store for its set, a graph's features say which store to compute
    shutil.rmtree(tmp_path / GEMMA_STORE)
    (tmp_path / "feature_examples-other").mkdir()
    stores = FeatureExampleStores(find_stores(tmp_path))
    empty, note = stores.top(0, 0, transcoders="tracer/data/gemma-3-270m-plt")
    assert empty == [] and "No feature-examples store for the transcoders gemma-3-270m-plt" in note
    assert "stores for: toy-plt" in note
    _, note = stores.top(0, 0, transcoders=None)
    assert "does not record its transcoder set" in note and "--examples" in note
    # --examples names one store, or a folder of them
    both = [tmp_path / "feature_examples", tmp_path / "feature_examples-other"]
    assert find_stores(tmp_path / "elsewhere", explicit=tmp_path) == both
    assert find_stores(tmp_path / "elsewhere", explicit=both[0]) == [both[0]]


def _some_features(graph) -> tuple[list[int], list[int]]:
    """(layers, features) of ten of the graph's feature nodes, spread over its layers."""
    active = graph.features[:: max(1, len(graph.features) // 10)][:10]
    return [int(r[0]) for r in active], [int(r[2]) for r in active]
