"""Graph diff (`python -m tracer diff`): alignment of positions and nodes, and a toy pair whose
difference is known: the same scene with the queried object recoloured."""

from __future__ import annotations

import csv
import dataclasses
import json

import numpy as np
import pytest

from tracer.errors import InputError
from tracer.graph.diff import APPEARS, SAME, VANISHES, align_positions, diff_graphs


@pytest.fixture(scope="module")
def recoloured_pair(tmp_path_factory):
    """A held-out colour scene (a yellow square) and the same scene with the square blue, both
    traced with the shipped toy VLM; plus the cells the square covers (the ground truth)."""
    from tracer.session import TracingSession
    from tracer.toy.world import Scene, make_example

    example = make_example("heldout", 0, question_type="color")
    square = example.evidence[0]
    blue = dataclasses.replace(square, color="blue")
    scene_b = Scene(tuple(blue if o == square else o for o in example.scene.objects))
    session = TracingSession()
    a = session.attribute(example.question, image=example.scene.render(), max_feature_nodes=200)
    b = session.attribute(example.question, image=scene_b.render(), max_feature_nodes=200)
    cells = {divmod(t, 8) for t in example.scene.token_positions(square)}
    folder = tmp_path_factory.mktemp("pair")
    from tracer.graph import save_graph

    save_graph(a, folder / "yellow.graph.safetensors")
    save_graph(b, folder / "blue.graph.safetensors")
    return a, b, cells, example.answer, folder


def test_a_graph_against_itself_changes_nothing(recoloured_pair):
    a, _, _, _, _ = recoloured_pair
    diff = diff_graphs(a, a)
    assert diff.nodes and all(n.status == SAME and n.delta == 0 for n in diff.nodes)
    assert all(e.status == SAME for e in diff.edges)
    assert diff.changed_cells == []


def test_recolouring_the_object_changes_exactly_its_cells_and_the_answer(recoloured_pair):
    a, b, cells, answer, _ = recoloured_pair
    diff = diff_graphs(a, b)
    assert {(c["row"], c["col"]) for c in diff.changed_cells} == cells
    assert diff.targets_a[0]["label"] == answer and diff.targets_b[0]["label"] == "blue"
    # the answer's logit node vanishes and the new one appears
    assert any(n.key == f"logit {answer}" and n.status == VANISHES for n in diff.nodes)
    assert any(n.key == "logit blue" and n.status == APPEARS for n in diff.nodes)
    # Features at image positions that appear or vanish sit on the recoloured cells only: the
    # rest of the image is the same picture, read the same way.
    positions = {p["key"]: p for p in diff.positions}
    moved_cells = set()
    for n in diff.nodes:
        if n.kind != "feature" or n.status not in (APPEARS, VANISHES):
            continue
        pos = positions[n.key.split("@", 1)[1]]
        graph, index = (a, pos["pos_a"]) if pos["pos_a"] is not None else (b, pos["pos_b"])
        cell = graph.image_cell(index)
        if cell is not None:
            moved_cells.add((cell[1], cell[2]))
    assert moved_cells and moved_cells <= cells


def test_every_compared_edge_weight_is_the_graphs_own(recoloured_pair):
    a, b, _, _, _ = recoloured_pair
    diff = diff_graphs(a, b)
    pos_a, pos_b, _ = align_positions(a, b)
    from tracer.graph.diff import node_keys

    index_a = {k: i for i, k in enumerate(node_keys(a, pos_a))}
    index_b = {k: i for i, k in enumerate(node_keys(b, pos_b))}
    for edge in diff.edges[:200]:
        for graph, index, weight in ((a, index_a, edge.weight_a), (b, index_b, edge.weight_b)):
            s, t = index.get(edge.source), index.get(edge.target)
            expected = 0.0 if s is None or t is None else float(graph.adjacency[graph.row_of_node(t), s])
            assert weight == expected


def test_prompts_that_differ_by_one_word_align_position_for_position():
    from graph_factory import make_graph

    a = make_graph(seed=1, n_pos=20)
    b = make_graph(seed=1, n_pos=20)
    i = a.tokens.index("circle")
    b.tokens = list(b.tokens)
    b.tokens[i] = "cross"
    keys_a, keys_b, table = align_positions(a, b)
    assert keys_a == keys_b  # every position pairs with its own, the swapped word included
    row = next(r for r in table if r["pos_a"] == i)
    assert (row["text_a"], row["text_b"]) == ("circle", "cross")
    # an inserted word shifts the positions after it, and they still align with their own
    longer = a.tokens[:i] + ["big"] + a.tokens[i:]
    c = dataclasses.replace(a, tokens=longer, input_ids=np.zeros(len(longer), np.int64))
    keys_a, keys_c, _ = align_positions(a, c)
    assert keys_c[i] == f"b{i}"  # the new word has no partner
    assert keys_a[:i] == keys_c[:i] and keys_a[i:] == keys_c[i + 1:]
    assert keys_a[i] == f"p{i}/{i + 1}"


def test_graphs_of_different_transcoders_or_kinds_are_refused(recoloured_pair):
    a, b, _, _, _ = recoloured_pair
    other = dataclasses.replace(b, transcoders="some/other-set")
    with pytest.raises(InputError, match="different transcoders"):
        diff_graphs(a, other)
    assert diff_graphs(a, other, allow_mismatch=True).nodes
    attention = dataclasses.replace(b, info={**b.info, "kind": "attention"})
    with pytest.raises(InputError, match="only attribution graphs"):
        diff_graphs(a, attention)


def test_diff_command_writes_json_csv_and_the_image_panel(recoloured_pair, tmp_path, capsys):
    from PIL import Image

    from tracer.cli import main

    _, _, cells, _, folder = recoloured_pair
    out = tmp_path / "yellow-vs-blue"
    assert main(["diff", str(folder / "yellow.graph.safetensors"), str(folder / "blue.graph.safetensors"),
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "image cells that changed (4)" in printed and "nodes that appear in B" in printed
    data = json.loads((out / "diff.json").read_text())
    assert {(c["row"], c["col"]) for c in data["changed_cells"]} == cells
    with open(out / "nodes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(data["nodes"]) and {r["status"] for r in rows} >= {APPEARS, VANISHES}
    panel = np.asarray(Image.open(out / "images.png"))
    assert panel.shape[1] > 2 * panel.shape[0] * 0.9  # A and B side by side


def test_diff_command_refuses_bad_input_in_one_line(recoloured_pair, tmp_path, capsys):
    from tracer.cli import main

    _, _, _, _, folder = recoloured_pair
    a = str(folder / "yellow.graph.safetensors")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert main(["diff", a, a, "--out", str(blocker)]) == 2
    assert "is a file" in capsys.readouterr().err
    broken = tmp_path / "broken.graph.safetensors"
    broken.write_bytes(b"\x00" * 40)
    assert main(["diff", a, str(broken), "--out", str(tmp_path / "d")]) == 2
    assert capsys.readouterr().err.startswith("error:")
    with pytest.raises(SystemExit):
        main(["diff", a, a, "--out", str(tmp_path / "d"), "--node_threshold", "nan"])
