"""Transcoder sets: activations, the published format, lazy loading, errors, hub references."""

import json
import math

import pytest
import torch
import yaml
from safetensors.torch import save_file

from tracer.transcoders import (
    JumpReLU, PerLayerTranscoder, ReLU, TopK, TranscoderFormatError, TranscoderMismatchError, TranscoderSet,
    load_transcoder_set, save_transcoder_set,
)
from tracer.transcoders.loading import parse_hub_ref, scrub_secrets

D_MODEL, WIDTH = 16, 96


def _random_tc(layer, activation, skip=False, d_model=D_MODEL, width=WIDTH, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed * 1000 + layer)
    return PerLayerTranscoder(
        layer,
        torch.randn(width, d_model, generator=g).to(dtype),
        (torch.randn(width, generator=g) * 0.5).to(dtype),
        torch.randn(width, d_model, generator=g).to(dtype),
        torch.randn(d_model, generator=g).to(dtype),
        activation,
        torch.randn(d_model, d_model, generator=g).to(dtype) if skip else None,
    )


def _random_set(n_layers=3, activation=lambda: TopK(8), skip=False, **kw):
    return TranscoderSet([_random_tc(i, activation(), skip, **kw) for i in range(n_layers)],
                         config={"model_name": "test/model"})


# -- activations ---------------------------------------------------------------------------------

def test_activations_match_their_definitions():
    pre = torch.tensor([[3.0, -1.0, 2.0, 0.5, 2.0], [-1.0, -2.0, 0.3, -0.1, -4.0]])
    assert torch.equal(ReLU()(pre), pre.clamp_min(0))
    thr = torch.tensor([1.0, 0.0, 2.0, 0.4, 1.9])
    assert torch.equal(JumpReLU(thr)(pre), pre * (pre > thr))
    top = TopK(2)(pre)
    # row 0: the two largest (3 and one of the tied 2s, as torch.topk picks it)
    _, idx = torch.topk(pre[0].clamp_min(0), 2)
    assert torch.equal(top[0], torch.zeros(5).scatter(0, idx, pre[0][idx]))
    # row 1: only one positive value, so only one active feature (ReLU first)
    assert torch.equal(top[1], torch.tensor([0.0, 0.0, 0.3, 0.0, 0.0]))


@pytest.mark.parametrize("act", [ReLU(), JumpReLU(torch.full((WIDTH,), 0.7)), TopK(5)], ids=["relu", "jump", "topk"])
def test_sparse_equals_dense_nonzeros(act):
    tc = _random_tc(0, act)
    x = torch.randn(4, 7, D_MODEL)
    dense = tc.encode(x).reshape(-1, WIDTH)
    rows, feats, vals = tc.encode_sparse(x, block_elements=3 * WIDTH)  # forces several row chunks
    r2, f2 = torch.nonzero(dense, as_tuple=True)
    assert torch.equal(rows, r2) and torch.equal(feats, f2)
    torch.testing.assert_close(vals, dense[r2, f2], rtol=1e-5, atol=1e-5)  # row chunks: BLAS rounding only
    recon = tc.decode_sparse(rows, feats, vals, dense.shape[0])
    torch.testing.assert_close(recon, tc.decode(dense), rtol=1e-5, atol=1e-5)


def test_skip_convention_is_x_times_W_skip_transposed():
    tc = _random_tc(0, ReLU(), skip=True)
    x = torch.randn(5, D_MODEL)
    lin = torch.nn.Linear(D_MODEL, D_MODEL, bias=False)
    lin.weight.data = tc.W_skip.data.clone()
    torch.testing.assert_close(tc.skip(x), lin(x))
    torch.testing.assert_close(tc(x), tc.decode(tc.encode(x)) + lin(x))
    assert torch.equal(_random_tc(0, ReLU()).skip(x), torch.zeros_like(x))


# -- round trip and the published layout -----------------------------------------------------------

@pytest.mark.parametrize("kind", ["topk", "jumprelu", "relu_skip"])
def test_round_trip_write_load_identical(tmp_path, kind):
    make = {"topk": lambda: TopK(8), "jumprelu": lambda: JumpReLU(torch.rand(WIDTH)), "relu_skip": ReLU}[kind]
    tset = _random_set(activation=make, skip=kind == "relu_skip")
    save_transcoder_set(tset, tmp_path / "set", num_model_layers=3)
    cfg = yaml.safe_load((tmp_path / "set" / "config.yaml").read_text())
    assert cfg["transcoders"] == [f"layer_{i}.safetensors" for i in range(3)]
    assert cfg["layers"] == [0, 1, 2] and cfg["num_model_layers"] == 3
    assert cfg["feature_input_hook"] == "mlp.hook_in" and cfg["feature_output_hook"] == "mlp.hook_out"
    assert (cfg.get("top_k") == 8) == (kind == "topk")
    loaded = load_transcoder_set(tmp_path / "set", lazy_decoder=False)
    x = torch.randn(2, 9, D_MODEL)
    for layer in range(3):
        a, b = tset[layer], loaded[layer]
        assert type(a.activation) is type(b.activation)
        assert torch.equal(a.encode(x), b.encode(x))
        acts = a.encode(x)
        assert torch.equal(a.decode(acts), b.decode(acts))
        assert torch.equal(a(x), b(x))
        for sa, sb in zip(a.encode_sparse(x), b.encode_sparse(x)):
            assert torch.equal(sa, sb)


def _write_published_gemma3(folder, n_layers=34, d_model=D_MODEL, width=WIDTH, k=48, names=None):
    """A tiny set in exactly the layout of tianhux2/gemma3-4b-it-plt (bf16 tensors, TopK, relative names)."""
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(7)
    tensors = {}
    for i in range(n_layers):
        t = {
            "W_enc": torch.randn(width, d_model, generator=g).to(torch.bfloat16),
            "W_dec": torch.randn(width, d_model, generator=g).to(torch.bfloat16),
            "b_enc": (torch.randn(width, generator=g) * 0.1).to(torch.bfloat16),
            "b_dec": torch.randn(d_model, generator=g).to(torch.bfloat16),
        }
        save_file(t, str(folder / f"layer_{i}.safetensors"))
        tensors[i] = t
    names = names or [f"layer_{i}.safetensors" for i in range(n_layers)]
    (folder / "config.yaml").write_text(
        "model_kind: transcoder_set\n"
        "model_name: google/gemma-3-4b-it\n"
        "feature_input_hook: mlp.hook_in\n"
        "feature_output_hook: mlp.hook_out\n"
        f"top_k: {k}\n"
        f"layers: [{', '.join(str(i) for i in range(n_layers))}]\n"
        f"num_model_layers: {n_layers}\n"
        "transcoders:\n" + "".join(f"- {n}\n" for n in names)
    )
    return tensors


def test_published_gemma3_layout_loads_and_matches(tmp_path):
    tensors = _write_published_gemma3(tmp_path / "plt")
    tset = load_transcoder_set(tmp_path / "plt")
    assert len(tset) == 34 and tset.layers == list(range(34))
    assert tset.d_model == D_MODEL and tset.d_transcoder == WIDTH
    assert tset.config["model_name"] == "google/gemma-3-4b-it" and tset.num_model_layers == 34
    x = torch.randn(5, D_MODEL, dtype=torch.bfloat16)
    for layer in (0, 17, 33):
        tc, t = tset[layer], tensors[layer]
        assert tc.dtype == torch.bfloat16 and tc.lazy_decoder and not tc.lazy_encoder
        assert isinstance(tc.activation, TopK) and tc.activation.k == 48
        pre = torch.nn.functional.linear(x, t["W_enc"], t["b_enc"])  # x @ W_enc.T + b_enc, bf16 rounding as in encode
        v, i = torch.topk(pre.clamp_min(0), 48)
        want = torch.zeros_like(pre).scatter(-1, i, v)
        assert torch.equal(tc.encode(x), want)
        torch.testing.assert_close(tc.decode(want), want @ t["W_dec"] + t["b_dec"], rtol=2e-2, atol=2e-2)
        feats = torch.tensor([5, 1, 5, 90])
        assert torch.equal(tc.decoder_rows(feats), t["W_dec"][feats])
    # float32 on request, same numbers
    t32 = load_transcoder_set(tmp_path / "plt", dtype=torch.float32, layers=[3])
    assert t32.layers == [3] and t32[3].dtype == torch.float32
    torch.testing.assert_close(t32[3].encoder_rows(torch.arange(WIDTH)), tensors[3]["W_enc"].float())


def test_lazy_and_eager_loading_agree(tmp_path):
    tset = _random_set(activation=lambda: TopK(6), skip=True)
    save_transcoder_set(tset, tmp_path / "s")
    x = torch.randn(3, 11, D_MODEL)
    eager = load_transcoder_set(tmp_path / "s", lazy_decoder=False, lazy_encoder=False)
    for lazy_dec, lazy_enc in ((True, False), (True, True), (False, True)):
        lazy = load_transcoder_set(tmp_path / "s", lazy_decoder=lazy_dec, lazy_encoder=lazy_enc)
        for layer in eager.layers:
            e, z = eager[layer], lazy[layer]
            assert z.lazy_decoder == lazy_dec and z.lazy_encoder == lazy_enc
            torch.testing.assert_close(z.pre_activations(x), e.pre_activations(x), rtol=0, atol=1e-5)
            z.block_elements = 4 * 32  # small chunks: several encoder reads per call
            for a, b in zip(z.encode_sparse(x), e.encode_sparse(x)):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
            torch.testing.assert_close(z(x), e(x), rtol=1e-5, atol=1e-5)
            idx = torch.tensor([7, 0, 7, WIDTH - 1])
            assert torch.equal(z.decoder_rows(idx), e.decoder_rows(idx))
            assert torch.equal(z.encoder_rows(idx), e.encoder_rows(idx))
            assert torch.equal(z.W_dec, e.W_dec)  # a lazy matrix read whole on request


def test_jumprelu_lazy_encoder_uses_threshold_slices(tmp_path):
    tset = _random_set(activation=lambda: JumpReLU(torch.rand(WIDTH) * 2))
    save_transcoder_set(tset, tmp_path / "j")
    lazy = load_transcoder_set(tmp_path / "j", lazy_encoder=True)
    lazy[0].block_elements = 10 * 7  # feature chunks of 70 // 16 = 4
    x = torch.randn(10, D_MODEL)
    for a, b in zip(lazy[0].encode_sparse(x), tset[0].encode_sparse(x)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_no_secrets_written(tmp_path):
    tset = _random_set()
    tset.config.update({"hf_token": "hf_" + "a" * 34, "note": "hf_" + "b" * 30, "train_tokens": 5,
                        "nested": {"api_key": "x", "ok": 1}})
    save_transcoder_set(tset, tmp_path / "s")
    text = (tmp_path / "s" / "config.yaml").read_text()
    assert "hf_" not in text and "api_key" not in text
    cfg = yaml.safe_load(text)
    assert cfg["train_tokens"] == 5 and cfg["nested"] == {"ok": 1}
    assert scrub_secrets({"token": "t", "tokenizer": "x"}) == {"tokenizer": "x"}


# -- bad inputs ------------------------------------------------------------------------------------

def _saved(tmp_path, **kw):
    folder = tmp_path / "set"
    save_transcoder_set(_random_set(**kw), folder, num_model_layers=3)
    return folder


def test_missing_layer_file(tmp_path):
    folder = _saved(tmp_path)
    (folder / "layer_1.safetensors").unlink()
    with pytest.raises(TranscoderFormatError, match=r"layer_1\.safetensors: missing.*layer 1"):
        load_transcoder_set(folder)


def test_missing_config(tmp_path):
    folder = _saved(tmp_path)
    (folder / "config.yaml").unlink()
    with pytest.raises(TranscoderFormatError, match="config.yaml: missing"):
        load_transcoder_set(folder)


def test_missing_tensor(tmp_path):
    folder = _saved(tmp_path)
    t = _random_tc(2, ReLU()).tensors()
    del t["W_dec"]
    save_file({k: v.contiguous() for k, v in t.items()}, str(folder / "layer_2.safetensors"))
    with pytest.raises(TranscoderFormatError, match=r"layer_2\.safetensors: missing tensor W_dec"):
        load_transcoder_set(folder)


@pytest.mark.parametrize("key,shape", [("W_dec", (WIDTH, D_MODEL + 1)), ("W_enc", (D_MODEL, WIDTH)),
                                       ("W_skip", (D_MODEL, 3)), ("b_dec", (D_MODEL, 2))])
def test_wrong_shape(tmp_path, key, shape):
    folder = _saved(tmp_path)
    t = {k: v.contiguous() for k, v in _random_tc(0, ReLU()).tensors().items()}
    t[key] = torch.zeros(shape)
    save_file(t, str(folder / "layer_0.safetensors"))
    with pytest.raises(TranscoderFormatError, match=rf"layer_0\.safetensors: {key} has shape"):
        load_transcoder_set(folder, lazy_decoder=False)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_corrupt_safetensors(tmp_path, damage):
    folder = _saved(tmp_path)
    path = folder / "layer_1.safetensors"
    data = path.read_bytes()
    path.write_bytes({"garbage": b"\x00\x01not a safetensors file" * 10, "truncated": data[: len(data) // 2],
                      "empty": b""}[damage])
    with pytest.raises(TranscoderFormatError, match=r"layer_1\.safetensors: not a readable safetensors file"):
        load_transcoder_set(folder)


def test_bad_config_values(tmp_path):
    folder = _saved(tmp_path)
    cfg = yaml.safe_load((folder / "config.yaml").read_text())
    for change, pattern in (({"layers": [0, 1]}, "'layers' has 2 entries"),
                            ({"model_kind": "cross_layer_transcoder"}, "not supported"),
                            ({"feature_input_hook": None}, None)):
        bad = dict(cfg, **change)
        if change.get("feature_input_hook", 1) is None:
            del bad["feature_input_hook"]
            pattern = "missing 'feature_input_hook'"
        (folder / "config.yaml").write_text(yaml.safe_dump(bad))
        with pytest.raises(TranscoderFormatError, match=pattern):
            load_transcoder_set(folder)
    (folder / "config.yaml").write_text("model_kind: [unclosed")
    with pytest.raises(TranscoderFormatError, match="not valid YAML"):
        load_transcoder_set(folder)
    with pytest.raises(TranscoderFormatError, match="no such folder"):
        load_transcoder_set(tmp_path / "nowhere")


def test_inconsistent_d_model_between_layers(tmp_path):
    folder = _saved(tmp_path)
    t = {k: v.contiguous() for k, v in _random_tc(1, ReLU(), d_model=8).tensors().items()}
    save_file(t, str(folder / "layer_1.safetensors"))
    with pytest.raises(TranscoderFormatError, match=r"layer_1\.safetensors: d_model is 8 but .*layer_0"):
        load_transcoder_set(folder)


# -- hub references (a real local huggingface_hub cache; no network) -----------------------------

def test_parse_hub_refs():
    assert parse_hub_ref("org/name") == parse_hub_ref("hf://org/name")
    r = parse_hub_ref("org/name@v1")
    assert (r.repo_id, r.revision, r.subfolder) == ("org/name", "v1", None)
    r = parse_hub_ref("hf://org/name@abc/sub/dir")
    assert (r.repo_id, r.revision, r.subfolder) == ("org/name", "abc", "sub/dir")
    r = parse_hub_ref("hf://org/name/sub?revision=r2")
    assert (r.repo_id, r.revision, r.subfolder) == ("org/name", "r2", "sub")
    r = parse_hub_ref("org/name/sub@main")
    assert (r.repo_id, r.revision, r.subfolder) == ("org/name", "main", "sub")


COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _hub_cache(tmp_path, repo="tianhux2/gemma3-4b-it-plt", sub=None, names=None, n_layers=4):
    cache = tmp_path / "hub-cache"
    base = cache / f"models--{repo.replace('/', '--')}"
    (base / "refs").mkdir(parents=True, exist_ok=True)
    (base / "refs" / "main").write_text(COMMIT)
    snap = base / "snapshots" / COMMIT
    tensors = _write_published_gemma3(snap / sub if sub else snap, n_layers=n_layers, k=8, names=names)
    return cache, tensors


@pytest.mark.parametrize("ref", ["tianhux2/gemma3-4b-it-plt", "tianhux2/gemma3-4b-it-plt@main",
                                 f"tianhux2/gemma3-4b-it-plt@{COMMIT}", "hf://tianhux2/gemma3-4b-it-plt"])
def test_hub_reference_from_local_cache(tmp_path, ref, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache, tensors = _hub_cache(tmp_path)
    tset = load_transcoder_set(ref, cache_dir=cache)
    assert tset.layers == [0, 1, 2, 3] and tset.config["hub"]["repo_id"] == "tianhux2/gemma3-4b-it-plt"
    assert torch.equal(tset[2].decoder_rows(torch.tensor([3, 4])), tensors[2]["W_dec"][[3, 4]])


def test_hub_subfolder_and_hf_uris_in_config(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    uris = [f"hf://org/plts/sub/layer_{i}.safetensors" for i in range(4)]
    cache, tensors = _hub_cache(tmp_path, repo="org/plts", sub="sub", names=uris)
    tset = load_transcoder_set("hf://org/plts/sub", cache_dir=cache)
    assert tset.config["transcoders"] == uris
    assert torch.equal(tset[1].encoder_rows(torch.tensor([0])), tensors[1]["W_enc"][[0]])
    # a local folder whose config lists hf:// URIs resolves them through the same cache
    local = tmp_path / "local"
    local.mkdir()
    (local / "config.yaml").write_text(
        (cache / "models--org--plts" / "snapshots" / COMMIT / "sub" / "config.yaml").read_text())
    assert load_transcoder_set(local, cache_dir=cache).layers == [0, 1, 2, 3]


def test_hub_reference_not_cached_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache, _ = _hub_cache(tmp_path)
    with pytest.raises(TranscoderFormatError, match="could not get the config 'config.yaml'.*other/repo"):
        load_transcoder_set("other/repo", cache_dir=cache)


def test_gemma_scope_npz_loads(tmp_path):
    import numpy as np

    g = np.random.default_rng(0)
    params = {"W_enc": g.normal(size=(D_MODEL, WIDTH)).astype(np.float32),
              "W_dec": g.normal(size=(WIDTH, D_MODEL)).astype(np.float32),
              "b_enc": g.normal(size=WIDTH).astype(np.float32), "b_dec": g.normal(size=D_MODEL).astype(np.float32),
              "threshold": np.abs(g.normal(size=WIDTH)).astype(np.float32)}
    np.savez(tmp_path / "params.npz", **params)
    (tmp_path / "config.yaml").write_text("model_kind: transcoder_set\nmodel_name: google/gemma-2-2b\n"
                                          "feature_input_hook: ln2.hook_normalized\nfeature_output_hook: hook_mlp_out\n"
                                          "transcoders: [params.npz]\n")
    tc = load_transcoder_set(tmp_path)[0]
    assert isinstance(tc.activation, JumpReLU)
    x = torch.randn(3, D_MODEL)
    pre = x @ torch.from_numpy(params["W_enc"]) + torch.from_numpy(params["b_enc"])
    torch.testing.assert_close(tc.encode(x), pre * (pre > torch.from_numpy(params["threshold"])))


def test_gemma_scope_2_safetensors_loads(tmp_path):
    g = torch.Generator().manual_seed(3)
    t = {"w_enc": torch.randn(D_MODEL, WIDTH, generator=g), "w_dec": torch.randn(WIDTH, D_MODEL, generator=g),
         "b_enc": torch.randn(WIDTH, generator=g), "b_dec": torch.randn(D_MODEL, generator=g),
         "threshold": torch.rand(WIDTH, generator=g), "affine_skip_connection": torch.randn(D_MODEL, D_MODEL, generator=g)}
    save_file(t, str(tmp_path / "layer_0.safetensors"))
    (tmp_path / "config.yaml").write_text("feature_input_hook: mlp.hook_in\nfeature_output_hook: mlp.hook_out\n"
                                          "layers: [0]\n")
    tc = load_transcoder_set(tmp_path)[0]
    x = torch.randn(4, D_MODEL)
    pre = x @ t["w_enc"] + t["b_enc"]
    acts = pre * (pre > t["threshold"])
    torch.testing.assert_close(tc.encode(x), acts)
    torch.testing.assert_close(tc(x), acts @ t["w_dec"] + t["b_dec"] + x @ t["affine_skip_connection"])


# -- against the toy model -------------------------------------------------------------------------

def test_mismatch_with_model(tmp_path, toy_vlm):
    model, _ = toy_vlm
    folder = _saved(tmp_path)  # d_model 16, 3 layers; the toy VLM has d_model 128 and 4 layers
    tset = load_transcoder_set(folder)
    with pytest.raises(TranscoderMismatchError) as info:
        tset.check_compatible(model)
    msg = str(info.value)
    assert "layer_0.safetensors: d_model is 16 but the model's d_model is 128" in msg
    assert "num_model_layers is 3 but the model has 4 layers" in msg
    assert "no transcoder for model layers [3]" in msg
    with pytest.raises(TranscoderMismatchError):
        load_transcoder_set(folder, model=model)


def test_session_from_parts_checks_the_set_and_traces_like_a_loaded_session(tmp_path, toy_vlm):
    import numpy as np

    from tracer.session import TracingSession

    model, processor = toy_vlm
    with pytest.raises(TranscoderMismatchError):
        TracingSession.from_parts(model, processor, load_transcoder_set(_saved(tmp_path)), model_ref="toy",
                                  transcoders_ref="wrong")
    loaded = TracingSession(device="cpu")
    built = TracingSession.from_parts(model, processor, loaded.transcoders, model_ref="my-toy",
                                      transcoders_ref="my-plt")
    settings = dict(max_feature_nodes=30, progress=False)
    a = loaded.attribute("What color is grass?", **settings)
    b = built.attribute("What color is grass?", **settings)
    assert (b.model, b.transcoders) == ("my-toy", "my-plt")
    np.testing.assert_allclose(b.adjacency, a.adjacency, rtol=1e-6, atol=1e-7)


def test_hooks_the_model_does_not_have(tmp_path, toy_vlm):
    model, _ = toy_vlm
    tset = TranscoderSet([_random_tc(i, TopK(4), d_model=128) for i in range(4)],
                         config={"feature_output_hook": "hook_mlp_out", "feature_input_hook": "resid.weird",
                                 "num_model_layers": 4})
    folder = tmp_path / "hooks"
    save_transcoder_set(tset, folder)
    loaded = load_transcoder_set(folder)
    with pytest.raises(TranscoderMismatchError) as info:
        loaded.check_compatible(model)
    msg = str(info.value)
    assert f"{folder}/config.yaml: feature_output_hook 'hook_mlp_out' is not a hook" in msg
    assert "post_feedforward_layernorm" in msg and "'resid.weird'" in msg


def test_shipped_toy_set_loads_by_default_and_fits_the_toy_model(toy_vlm):
    from tracer.transcoders.loading import default_transcoders_dir

    model, _ = toy_vlm
    tset = load_transcoder_set()
    assert tset.source == str(default_transcoders_dir())
    tset.check_compatible(model)
    assert tset.layers == [0, 1, 2, 3] and tset.d_model == 128
    assert isinstance(tset[0].activation, TopK) and tset[0].activation.k <= 32
    norms = tset[0].decoder_rows(torch.arange(tset.d_transcoder)).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones_like(norms), rtol=1e-3, atol=1e-3)
    report = json.loads((default_transcoders_dir() / "training_log.json").read_text())
    for layer, row in report["heldout"].items():
        assert row["fvu"] <= 0.10 and row["mean_l0"] <= 32 and row["dead_fraction"] < 0.10, (layer, row)
    assert min(report["toy_accuracy_all_replaced"].values()) >= 0.90


def test_replacement_keeps_the_toy_model_answering(toy_vlm):
    from tracer.toy import world
    from tracer.toy.evaluate import predict
    from tracer.transcoders import replace_mlps

    model, processor = toy_vlm
    tset = load_transcoder_set()
    examples = [world.make_example("heldout", i, 0, q) for q in world.QUESTION_TYPES for i in range(8)]
    with replace_mlps(model, tset, tokenizer=processor.tokenizer):
        guesses = predict(model, processor, examples)
    correct = sum(g == e.answer for g, e in zip(guesses, examples))
    assert correct >= 0.85 * len(examples)
    # with the error added back, the hooks change nothing
    from tracer.toy.data import make_batch

    batch = make_batch(processor, examples[:6], with_answers=False)
    with torch.no_grad():
        clean = model(**batch.inputs).logits
        with replace_mlps(model, tset, add_error=True):
            same = model(**batch.inputs).logits
        with replace_mlps(model, tset, keep_prefix=4):
            replaced = model(**batch.inputs).logits
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(replaced, clean, atol=1e-3)
    assert math.isfinite(float(replaced.abs().max()))
