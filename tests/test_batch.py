"""Batch tracing on Ray (`python -m tracer batch`): a local Ray instance, the shipped toy VLM,
real graph files. Starting Ray and one model per worker costs ~10-20 s on 2 cores, so one batch
run is shared by most tests here."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray")

from tracer.batch.examples import read_examples  # noqa: E402
from tracer.errors import InputError  # noqa: E402

SETTINGS = ["--max_feature_nodes", "60", "--quiet"]


def _write_batch(folder: Path, n: int) -> Path:
    from tracer.cli import main

    assert main(["toy", "sample", "--out", str(folder), "-n", str(n)]) == 0
    return folder / "examples.jsonl"


@pytest.fixture(scope="module")
def batch_run(tmp_path_factory):
    """Six toy examples (one per question type) plus a corrupt image, traced on 2 workers."""
    from tracer.cli import main

    folder = tmp_path_factory.mktemp("batch")
    data = _write_batch(folder / "scenes", 6)
    (folder / "scenes" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with open(data, "a") as fh:
        fh.write(json.dumps({"id": "corrupt", "question": "What color is the circle?", "image": "corrupt.png"}) + "\n")
    out = folder / "run"
    assert main(["batch", "--data", str(data), "--out", str(out), "--workers", "2", *SETTINGS]) == 0
    return data, out


def test_every_example_gets_a_graph_and_a_summary_row(batch_run):
    data, out = batch_run
    examples = read_examples(data)
    table = pd.read_parquet(out / "summary.parquet")
    assert list(table["id"]) == [ex.id for ex in examples]  # batch-file order
    assert pd.read_csv(out / "summary.csv")["id"].tolist() == table["id"].tolist()
    good = table[table["error"].isna()]
    assert len(good) == 6 and good["correct"].all()  # the toy VLM answers all six
    for row in good.itertuples():
        assert (out / row.graph).exists()


def test_summary_numbers_are_those_of_the_saved_graphs(batch_run):
    from tracer.batch.summary import graph_row
    from tracer.graph import load_graph
    from tracer.graph.pruning import node_influence

    data, out = batch_run
    examples = {ex.id: ex for ex in read_examples(data)}
    table = pd.read_parquet(out / "summary.parquet")
    for row in table[table["error"].isna()].itertuples():
        graph = load_graph(out / row.graph)
        ex = examples[row.id]
        expected = graph_row(graph, ex.evidence_tokens, ex.answer)
        assert row.top_target == ex.answer == expected["top_target"]
        assert row.probability == pytest.approx(graph.targets[0].probability)
        assert row.replacement == pytest.approx(graph.scores["replacement"])
        # the evidence share, recomputed by hand from the graph's embedding influence
        if ex.evidence_tokens:
            infl = node_influence(graph)[graph.embedding_offset + graph.image_positions]
            share = infl[ex.evidence_tokens].sum() / infl.sum()
            assert row.evidence_share == pytest.approx(share, rel=1e-6)
            assert row.evidence_share > len(ex.evidence_tokens) / 64  # more than the cells' area
        else:
            assert pd.isna(row.evidence_share)


def test_a_corrupt_image_is_an_error_row_and_the_batch_goes_on(batch_run):
    _, out = batch_run
    table = pd.read_parquet(out / "summary.parquet").set_index("id")
    assert "image" in table.loc["corrupt", "error"].lower() and pd.isna(table.loc["corrupt", "graph"])
    assert not (out / "graphs" / "corrupt.graph.safetensors").exists()


def test_a_rerun_skips_finished_examples_and_keeps_their_files(batch_run, capsys):
    from tracer.cli import main

    data, out = batch_run
    before = {p.name: p.stat().st_mtime_ns for p in (out / "graphs").iterdir()}
    assert main(["batch", "--data", str(data), "--out", str(out), *SETTINGS]) == 0
    assert "0 traced, 7 already done, 1 errors" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in (out / "graphs").iterdir()} == before


def test_a_rerun_with_other_settings_is_refused(batch_run, capsys):
    from tracer.cli import main

    data, out = batch_run
    assert main(["batch", "--data", str(data), "--out", str(out), "--max_feature_nodes", "61", "--quiet"]) == 2
    assert "other settings (attribution)" in capsys.readouterr().err


@pytest.mark.parametrize("line, message", [
    ("not json", "not JSON"),
    ('["a list"]', "expected a JSON object"),
    ('{"image": "x.png"}', "needs a non-empty 'prompt'"),
    ('{"prompt": "q", "id": "../escape"}', "must be 1-100 letters"),
    ('{"prompt": "q", "targets": [3]}', "'targets' must be a list"),
    ('{"prompt": "q", "evidence_tokens": [-1]}', "non-negative integers"),
    ('{"prompt": "q", "contrast": "red"}', "one 'A - B' spec"),
])
def test_bad_batch_lines_are_refused_before_any_work(tmp_path, line, message):
    data = tmp_path / "b.jsonl"
    data.write_text('{"prompt": "fine"}\n' + line + "\n")
    with pytest.raises(InputError, match=message) as err:
        read_examples(data)
    assert "b.jsonl:2:" in str(err.value)


def test_duplicate_ids_and_empty_files_are_refused(tmp_path):
    data = tmp_path / "b.jsonl"
    data.write_text('{"prompt": "a", "id": "x"}\n{"prompt": "b", "id": "x"}\n')
    with pytest.raises(InputError, match="appears twice"):
        read_examples(data)
    data.write_text("\n\n")
    with pytest.raises(InputError, match="holds no examples"):
        read_examples(data)


@pytest.mark.slow
def test_a_killed_worker_loses_no_graph_and_its_example_is_retried(tmp_path):
    """SIGKILL one Ray worker while the batch runs: Ray restarts it, its example is traced
    again, and every finished graph stays on disk."""
    data = _write_batch(tmp_path / "scenes", 8)
    out = tmp_path / "run"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "tracer", "batch", "--data", str(data), "--out", str(out),
                             "--workers", "1", "--max_feature_nodes", "2000", "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        killed = None
        deadline = time.time() + 240
        while time.time() < deadline and killed is None and proc.poll() is None:
            started = list((out / "results").glob(".*.started")) if (out / "results").exists() else []
            if started and list((out / "results").glob("*.json")):
                killed = int(started[0].read_text())  # the worker busy with an example
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.2)
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert killed is not None, output
    assert proc.returncode == 0, output
    table = pd.read_parquet(out / "summary.parquet")
    assert len(table) == 8 and table["error"].isna().all(), output
    assert (table["attempt"] == 2).sum() == 1  # the example whose worker died, traced again
    for row in table.itertuples():
        assert (out / row.graph).exists()
    assert not list((out / "results").glob(".*.started"))
    assert np.all(table["correct"])


def test_batch_aggregates_come_from_the_rows(batch_run):
    from tracer.batch.aggregate import cell_influence_map, recurring_features

    _, out = batch_run
    rows = pd.read_parquet(out / "summary.parquet").to_dict("records")
    recurring = recurring_features(rows, top=5)
    assert recurring and recurring[0]["examples"] >= recurring[-1]["examples"]
    by_hand = sum(1 for r in rows if r["feature_ids"] is not None
                  and any(int(l) == recurring[0]["layer"] and int(f) == recurring[0]["feature"]
                          for l, f, _ in r["feature_ids"]))
    assert recurring[0]["examples"] == by_hand
    grid = cell_influence_map(rows)
    assert grid.shape == (8, 8)
    with_image = [r for r in rows if r["cell_influence"] is not None and len(r["cell_influence"])]
    assert grid.sum() == pytest.approx(1.0)  # each example's shares sum to 1, and so does their mean
    assert len(with_image) == 5  # six examples, one text-only fact question, one corrupt image
    assert all([list(g) for g in r["cell_grids"]] == [[8, 8]] for r in with_image)
    # a dynamic-resolution family: each image size has its own grid, the most common one is mapped
    wide = {"cell_influence": list(np.full(6, 1 / 6)), "cell_grids": [[2, 3]]}
    assert cell_influence_map([wide, dict(wide), with_image[0]]).shape == (2, 3)
    assert np.allclose(cell_influence_map([wide, dict(wide), with_image[0]]), 1 / 6)
    old = {"cell_influence": with_image[0]["cell_influence"]}  # a summary written before cell_grids
    assert cell_influence_map([old]).shape == (8, 8)
