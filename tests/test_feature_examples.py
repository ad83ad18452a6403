"""The feature-examples store: computed on the toy VLM with a small random transcoder set and
checked against a brute-force dense computation; the reader on the published Gemma3 layout."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tracer.features import ExampleStore, ExampleStoreError
from tracer.features.compute import DataSpecError, compute_feature_examples, parse_data_spec, toy_examples
from tracer.features.layout import SCHEMA
from tracer.models import get_adapter
from tracer.toy.data import make_batch
from tracer.transcoders import PerLayerTranscoder, TopK, TranscoderSet

N_INPUTS, PER_FEATURE, WIDTH = 12, 3, 64


def small_transcoders(d_model: int, n_layers: int, seed: int = 0) -> TranscoderSet:
    g = torch.Generator().manual_seed(seed)
    tcs = []
    for layer in range(n_layers):
        tc = PerLayerTranscoder.init_random(layer, d_model, WIDTH, TopK(6), generator=g)
        with torch.no_grad():
            tc.b_enc.copy_(torch.randn(WIDTH, generator=g) * 0.1)
        tcs.append(tc)
    return TranscoderSet(tcs)


@pytest.fixture(scope="module")
def computed(toy_vlm, tmp_path_factory):
    model, processor = toy_vlm
    adapter = get_adapter(model)
    tset = small_transcoders(adapter.d_model, adapter.n_layers)
    out = tmp_path_factory.mktemp("fe") / "store"
    compute_feature_examples(out, model, processor, tset, data="toy", n_inputs=N_INPUTS, n_per_feature=PER_FEATURE,
                             batch_size=5, progress=False, model_name="toy", transcoder_name="random")
    return out, model, processor, tset


def dense_reference(model, processor, tset):
    """Independent path: hook the pre-feedforward norm's output, dense encode, per-input maxima."""
    adapter = get_adapter(model)
    examples = toy_examples(parse_data_spec("toy"), N_INPUTS)
    batch = make_batch(processor, examples, with_answers=False)
    acts = {}
    handles = []
    for layer in range(adapter.n_layers):
        norm = adapter.layer(layer).pre_feedforward_layernorm
        handles.append(norm.register_forward_hook(
            lambda m, a, out, layer=layer: acts.__setitem__(layer, tset[layer].encode(out).detach())))
    with torch.no_grad():
        model(**batch.inputs)
    for h in handles:
        h.remove()
    ids = batch.inputs["input_ids"]
    am = batch.inputs["attention_mask"].bool()
    retained = torch.zeros_like(am)
    for b in range(len(examples)):
        valid = torch.nonzero(am[b], as_tuple=True)[0]
        prefix = adapter.chat_prefix_length(ids[b, valid].tolist(), processor.tokenizer)
        retained[b, valid[prefix:]] = True
    return {layer: a * retained[..., None] for layer, a in acts.items()}, retained, examples


def test_store_matches_dense_computation(computed):
    out, model, processor, tset = computed
    dense, retained, examples = dense_reference(model, processor, tset)
    store = ExampleStore(out)
    assert store.layers == [0, 1, 2, 3]
    assert store.processor_tokens == int(retained.sum())
    assert store.manifest["schema"] == SCHEMA and store.manifest["num_inputs"] == N_INPUTS
    for layer in store.layers:
        a = dense[layer]  # (B, T, W)
        firing = (a > 0).sum((0, 1))
        per_input_max = a.amax(1)  # (B, W)
        expected_features = torch.nonzero(firing, as_tuple=True)[0].tolist()
        assert store.features(layer).tolist() == expected_features
        for f in range(WIDTH):
            assert store.firing_count(layer, f) == int(firing[f])
            exs = store.top_examples(layer, f, k=10)
            col = per_input_max[:, f]
            n = int((col > 0).sum())
            assert len(exs) == min(n, PER_FEATURE)
            top = torch.sort(col, descending=True).values[: len(exs)]
            np.testing.assert_allclose([e.value for e in exs], top.numpy(), rtol=1e-5, atol=1e-6)
            for e in exs:
                # the slot's input and position really hold that value
                assert float(a[e.input_id, e.token_position, f]) == pytest.approx(e.value, rel=1e-5, abs=1e-6)
                assert bool(retained[e.input_id, e.token_position])
                # per-position activations equal the dense ones over the whole input
                length = len(e.tokens)
                np.testing.assert_allclose(e.activations_per_position, a[e.input_id, :length, f].numpy(),
                                           rtol=2e-3, atol=2e-3)  # stored as float16
        assert store.top_examples(layer, WIDTH + 5) == [] and store.firing_count(layer, WIDTH + 5) == 0


def test_examples_carry_tokens_images_and_cells(computed, toy_vlm):
    out, model, processor, tset = computed
    store = ExampleStore(out)
    tok = processor.tokenizer
    seen_image_cell = seen_text_only = False
    for layer in store.layers:
        for f in store.features(layer)[:40]:
            for e in store.top_examples(layer, int(f)):
                rec = store.input_record(e.input_id)
                assert e.tokens == [tok.decode([t]) for t in rec["token_ids"]]
                assert e.tokens[e.token_position] == tok.decode([e.token_ids[e.token_position]])
                meta = e.metadata
                assert e.example_id.endswith(f"{meta['index']:06d}")
                if meta["question_type"] == "fact":
                    assert e.image is None and e.image_cell is None and rec["image_references"] == []
                    seen_text_only = True
                    continue
                assert e.image is not None and e.image.size == (64, 64)
                assert e.tokens_per_side == 8 and e.grid == (8, 8) and rec["image_grids"] == [[8, 8]]
                if e.tokens[e.token_position] == "<image_soft_token>":
                    img, row, col = e.image_cell
                    first = e.tokens.index("<image_soft_token>")
                    assert img == 0 and row * 8 + col == e.token_position - first
                    seen_image_cell = True
                else:
                    assert e.image_cell is None
    assert seen_image_cell
    # the images are the toy scenes themselves
    ex = toy_examples(parse_data_spec("toy"), 1)[0]
    stored = store.top_examples(0, int(store.features(0)[0]))  # any example will do for the reader API
    assert stored
    first_record = store.input_record(0)
    assert first_record["image_references"] == ["images/000000.png"]
    assert np.array_equal(np.asarray(ex.image()), np.asarray(store._image("images/000000.png")[0]))
    assert isinstance(seen_text_only, bool)


def test_store_is_published_format(computed):
    """Field names, dtypes and shapes that circuit-tracer's activation-stats reader relies on."""
    import pyarrow.parquet as pq
    from safetensors import safe_open

    out = computed[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["schema"] == "circuit-tracer-activation-stats-v1"
    assert {"model_name", "processor_tokens", "transcoder", "layers", "inputs"} <= set(manifest)
    assert manifest["transcoder"]["fingerprint"]
    entry = manifest["layers"][1]
    assert entry["filename"] == "stats/layer_01.safetensors"
    with safe_open(str(out / entry["filename"]), framework="pt") as f:
        t = {k: f.get_tensor(k) for k in f.keys()}
    assert t["feature_ids"].dtype == torch.int32 and t["slot_counts"].dtype == torch.int32
    assert t["input_ids"].dtype == torch.int32 and t["token_positions"].dtype == torch.int32
    assert t["firing_counts"].dtype == torch.int64 and t["top_values"].is_floating_point()
    assert bool((t["feature_ids"][1:] > t["feature_ids"][:-1]).all())
    assert int(t["slot_counts"].sum()) == len(t["top_values"]) == len(t["input_ids"])
    table = pq.read_table(out / manifest["inputs"][0]["filename"])
    for col in ("input_id", "example_id", "text", "image_references", "metadata_json", "token_ids", "token_mask",
                "token_type_ids"):
        assert col in table.column_names
    assert manifest["inputs"][0] == {"filename": "inputs/part-00000.parquet", "start": 0, "end": N_INPUTS}
    row = table.slice(0, 1).to_pylist()[0]
    assert row["input_id"] == 0 and json.loads(row["metadata_json"])["split"] == "heldout"
    assert sum(row["token_mask"]) == len(row["token_ids"]) - 4  # the chat prefix is not retained


def write_published_store(root):
    """A tiny store laid out exactly like the published Gemma3 one (bf16 values, no token strings,
    hub image references), as circuit-tracer's own reader test builds it."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from safetensors.torch import save_file

    (root / "stats").mkdir(parents=True)
    (root / "inputs").mkdir()
    save_file({
        "feature_ids": torch.tensor([3, 9], dtype=torch.int32),
        "slot_counts": torch.tensor([2, 1], dtype=torch.int32),
        "top_values": torch.tensor([2.5, 1.25, 7.0], dtype=torch.bfloat16),
        "input_ids": torch.tensor([1, 0, 1], dtype=torch.int32),
        "token_positions": torch.tensor([3, 1, 5], dtype=torch.int32),
        "firing_counts": torch.tensor([4, 1], dtype=torch.int64),
    }, str(root / "stats/layer_02.safetensors"))
    rows = [
        {"input_id": 0, "example_id": "ex-0", "text": "hello", "image_references": [],
         "metadata_json": '{"source": "text"}', "token_ids": [2, 10, 11], "token_mask": [False, True, True],
         "token_type_ids": [0, 0, 0]},
        {"input_id": 1, "example_id": "ex-1", "text": "<image> what", "image_references": ["hf-dataset://org/ds/123"],
         "metadata_json": '{"source": "vqa"}', "token_ids": [2, 255999, 262144, 262144, 262144, 262144, 256000, 20],
         "token_mask": [False] + [True] * 7, "token_type_ids": [0, 0, 1, 1, 1, 1, 0, 0]},
    ]
    pq.write_table(pa.Table.from_pylist(rows), root / "inputs/part-00000.parquet")
    (root / "manifest.json").write_text(json.dumps({
        "schema": "circuit-tracer-activation-stats-v1", "model_name": "google/gemma-3-4b-it-not-cached",
        "processor_tokens": 8, "transcoder": {"fingerprint": "run"},
        "layers": [{"layer": 2, "filename": "stats/layer_02.safetensors"}],
        "inputs": [{"filename": "inputs/part-00000.parquet", "start": 0, "end": 2}],
    }))


def test_cells_follow_each_images_own_grid(tmp_path):
    """A record of two images with grids 2x3 and 3x2 (a dynamic-resolution family): each soft
    token gets (image, row, col) on its own image's grid, and the example says that grid."""
    from PIL import Image

    from tracer.features.writer import InputRecord, StoreWriter

    types = [0, 0] + [1] * 6 + [0] + [1] * 6 + [0]
    writer = StoreWriter(tmp_path / "store", {0: 4}, n_per_feature=4)
    writer.add_input(InputRecord(
        example_id="two", text="two images", token_ids=list(range(len(types))), token_mask=[True] * len(types),
        token_type_ids=types, tokens=[f"t{i}" for i in range(len(types))],
        images=[Image.new("RGB", (48, 32)), Image.new("RGB", (32, 48))], image_grids=[(2, 3), (3, 2)]))
    positions = [2, 7, 9, 14]  # first and last soft token of each image
    writer.update(0, torch.zeros(4, dtype=torch.long), torch.tensor(positions), torch.arange(4),
                  torch.ones(4))
    writer.finish()
    store = ExampleStore(tmp_path / "store")
    cells = {}
    for f in range(4):
        (e,) = store.top_examples(0, f)
        cells[e.token_position] = (e.image_cell, e.grid, e.image.size)
    assert cells == {2: ((0, 0, 0), (2, 3), (48, 32)), 7: ((0, 1, 2), (2, 3), (48, 32)),
                     9: ((1, 0, 0), (3, 2), (32, 48)), 14: ((1, 2, 1), (3, 2), (32, 48))}


def test_reader_opens_published_layout(tmp_path):
    write_published_store(tmp_path)
    store = ExampleStore(tmp_path)
    assert store.layers == [2]
    assert store.firing_count(2, 3) == 4 and store.firing_count(2, 4) == 0
    assert store.activation_frequency(2, 3) == 0.5
    exs = store.top_examples(2, 3)
    assert [e.value for e in exs] == [2.5, 1.25] and [e.input_id for e in exs] == [1, 0]
    e = exs[0]
    assert e.tokens[e.token_position] == "<262144>"  # no tokenizer available offline: ids
    assert e.image is None and e.image_reference == "hf-dataset://org/ds/123"
    assert e.image_cell == (0, 0, 1) and e.tokens_per_side == 2  # 4 image tokens: a 2x2 grid
    assert e.activations_per_position is None
    assert exs[1].image_cell is None and exs[1].text == "hello"
    assert store.top_examples(2, 9)[0].image_cell == (0, 1, 1)  # position 5 = 4th image token
    with pytest.raises(KeyError):
        store.top_examples(7, 0)

    class Tok:
        def decode(self, ids, **kw):
            return f"t{ids[0]}"

    assert ExampleStore(tmp_path, tokenizer=Tok()).top_examples(2, 9)[0].tokens[-1] == "t20"


def test_reader_errors(tmp_path):
    with pytest.raises(ExampleStoreError, match="manifest"):
        ExampleStore(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"schema": "something-else"}))
    with pytest.raises(ExampleStoreError, match="schema"):
        ExampleStore(tmp_path)
    write_published_store(tmp_path / "s")
    (tmp_path / "s" / "stats" / "layer_02.safetensors").write_bytes(b"garbage")
    with pytest.raises(ExampleStoreError, match="cannot read"):
        ExampleStore(tmp_path / "s").top_examples(2, 3)


def test_data_spec():
    assert parse_data_spec("toy").split == "heldout"
    s = parse_data_spec("toy:train,type=color,seed=3")
    assert (s.split, s.question_type, s.seed) == ("train", "color", 3)
    with pytest.raises(DataSpecError):
        parse_data_spec("imagenet")
    with pytest.raises(DataSpecError):
        parse_data_spec("toy:test")


def test_cli_features(tmp_path, toy_vlm, monkeypatch, capsys):
    """The CLI end to end, with a saved random transcoder set (the shipped one is not needed)."""
    from tracer.cli import main
    from tracer.transcoders import save_transcoder_set

    model, _ = toy_vlm
    adapter = get_adapter(model)
    tset = small_transcoders(adapter.d_model, adapter.n_layers, seed=1)
    tdir = save_transcoder_set(tset, tmp_path / "tc", model_name="toy")
    out = tmp_path / "store"
    rc = main(["features", "--transcoders", str(tdir), "--data", "toy", "--n-examples", "8", "--per-feature", "2",
               "--batch-size", "8", "--out", str(out), "--no-progress", "--no-per-position"])
    assert rc == 0
    assert "wrote" in capsys.readouterr().out
    store = ExampleStore(out)
    f = int(store.features(3)[0])
    exs = store.top_examples(3, f)
    assert 1 <= len(exs) <= 2 and exs[0].activations_per_position is None
    assert store.manifest["dataset"]["count"] == 8
    assert main(["features", "--data", "nope", "--out", str(tmp_path / "x")]) == 2


def test_shipped_sample_store_matches_shipped_transcoders():
    """app/sample_graphs/feature_examples was computed with the shipped toy transcoders; if those are
    retrained, recompute it (command in docs/feature_examples.md)."""
    from pathlib import Path

    from tracer.features.compute import transcoder_fingerprint
    from tracer.transcoders import default_transcoders_dir, load_transcoder_set

    root = Path(__file__).resolve().parents[1] / "app" / "sample_graphs" / "feature_examples"
    if not root.exists():
        pytest.skip("no sample feature-examples store")
    store = ExampleStore(root)
    assert store.layers == [0, 1, 2, 3] and store.manifest["num_inputs"] == 600
    f = int(store.features(2)[0])
    ex = store.top_examples(2, f, k=8)
    assert 1 <= len(ex) <= 8 and ex[0].value == pytest.approx(store.max_activation(2, f))
    if not (Path(default_transcoders_dir()) / "config.yaml").exists():
        pytest.skip("the shipped toy transcoders are not there")
    assert store.manifest["transcoder"]["fingerprint"] == transcoder_fingerprint(load_transcoder_set(None)), (
        "app/sample_graphs/feature_examples is stale: recompute it with `python -m tracer features --data toy "
        "--n-examples 600 --per-feature 8 --out app/sample_graphs/feature_examples`")
