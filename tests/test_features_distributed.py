"""Feature examples sharded over Ray workers equal the store one process writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

pytest.importorskip("ray")


def _store_contents(root):
    from safetensors.numpy import load_file

    manifest = json.loads((root / "manifest.json").read_text())
    stats = {entry["filename"]: load_file(str(root / entry["filename"])) for entry in manifest["layers"]}
    inputs = pd.concat([pd.read_parquet(root / entry["filename"]) for entry in manifest["inputs"]])
    images = {p.name: p.read_bytes() for p in (root / "images").iterdir()}
    return manifest, stats, inputs, images


def test_two_ray_workers_write_the_store_of_one_process(tmp_path):
    from tracer.cli import main

    common = ["--n-examples", "40", "--per-feature", "4", "--batch-size", "8", "--no-progress"]
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    threads = torch.get_num_threads()
    try:  # Ray gives each 1-CPU worker one thread: compare like with like
        assert main(["features", "--out", str(single), "--threads", "1", *common]) == 0
    finally:
        torch.set_num_threads(threads)
    assert main(["features", "--out", str(sharded), "--workers", "2", *common]) == 0
    m1, s1, i1, img1 = _store_contents(single)
    m2, s2, i2, img2 = _store_contents(sharded)
    assert m1 == m2
    assert s1.keys() == s2.keys()
    for name in s1:
        assert s1[name].keys() == s2[name].keys()
        for key in s1[name]:
            np.testing.assert_array_equal(s1[name][key], s2[name][key], err_msg=f"{name}:{key}")
    pd.testing.assert_frame_equal(i1.reset_index(drop=True), i2.reset_index(drop=True))
    assert img1 == img2
    assert sum(len(s["feature_ids"]) for s in s1.values()) > 100  # a store with substance


def test_merging_top_k_tables_is_order_free_and_keeps_ties_deterministic():
    from tracer.features.writer import _LayerTop

    rng = np.random.default_rng(0)
    n_inputs, d, k = 30, 7, 3
    values = np.round(rng.random((n_inputs, d)), 1)  # coarse values: many ties across inputs
    def table(ids):
        top = _LayerTop(d, k)
        for i in ids:
            feats = np.arange(d)
            top.update(torch.full((d,), i), torch.zeros(d, dtype=torch.int64), torch.as_tensor(feats),
                       torch.as_tensor(values[i], dtype=torch.float32))
        return top

    whole = table(range(n_inputs))
    left, right = table(range(0, 13)), table(range(13, n_inputs))
    right.merge(left)  # merged in the "wrong" order
    for field in ("values", "inputs", "positions", "firing"):
        assert torch.equal(getattr(whole, field), getattr(right, field)), field
    # ties resolve to the lower input id
    for f in range(d):
        vals, ins = whole.values[f].tolist(), whole.inputs[f].tolist()
        for a in range(k - 1):
            assert vals[a] > vals[a + 1] or (vals[a] == vals[a + 1] and ins[a] < ins[a + 1])
