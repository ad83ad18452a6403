"""Bad input gets one clear line and exit status 2, never a wrong answer with exit 0 nor a
traceback (issue 11, sections 3 and 4): unknown targets and empty directions, out-of-range
numbers, unusable devices and dtypes, outputs that cannot be written (checked before any work),
graphs that cannot be verified or exported, ambiguous or repeated region cells, steering edits
that change nothing, and model / tokenizer folders that ship code (never run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from graph_factory import rewrite_graph_file

from tracer.cli import main
from tracer.toy import world


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "Loading weights" not in line]
    assert err and not any("Traceback" in line for line in err), err
    return err[-1]


@pytest.fixture(scope="module")
def session():
    from tracer.session import TracingSession

    return TracingSession()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A scene image, a small float32 graph of it, and that graph's pruned viewer JSON."""
    folder = tmp_path_factory.mktemp("files")
    ex = world.make_example("heldout", 3, question_type="color")
    image = folder / "scene.png"
    ex.image().save(image)
    graph = folder / "scene.graph.safetensors"
    assert main(["attribute", "--prompt", ex.question, "--image", str(image), "--max_feature_nodes", "30", "--quiet",
                 "-o", str(graph)]) == 0
    return {"example": ex, "image": image, "graph": graph, "folder": folder}


# -- targets: refused in tracer itself, so the app's trace job gets the same check


@pytest.mark.parametrize("spec, message", [
    ("xyzzy", "is not in the model's vocabulary"),
    ("#-1", "token id -1 is outside the vocabulary"),
    ("#100000", "outside the vocabulary"),
    ("red - xyzzy", "'xyzzy' is not in the model's vocabulary"),
    ("xyzzy - red", "'xyzzy' is not in the model's vocabulary"),
    ("red - red", "an empty direction"),
    ("red - ", "a contrast target needs two tokens"),
    ("   ", "an empty target"),
])
def test_unknown_targets_and_empty_directions_are_refused(session, spec, message):
    from tracer.attribution.targets import TargetError

    with pytest.raises(TargetError, match=message):
        session.attribute("What color is grass?", targets=[spec], max_feature_nodes=5, progress=False)


def test_known_targets_still_work(session):
    graph = session.attribute("What color is grass?", targets=["green", "green - red", "#44"], max_feature_nodes=5,
                              progress=False)
    assert [t.label for t in graph.targets] == ["green", "green - red", "red"]


def test_an_unknown_target_on_the_command_line_is_one_line(capsys):
    assert main(["attribute", "--prompt", "What color is grass?", "--target", "xyzzy", "--quiet"]) == 2
    assert _one_error_line(capsys).startswith("error: target 'xyzzy' is not in the model's vocabulary")


@pytest.mark.parametrize("setting, value", [
    ("max_feature_nodes", 0), ("max_feature_nodes", -5), ("max_n_logits", 0), ("desired_logit_prob", -1.0),
    ("desired_logit_prob", float("nan")), ("desired_logit_prob", 1.5), ("batch_size", 0), ("offload", "disk"),
])
def test_library_settings_out_of_range_are_refused(session, setting, value):
    from tracer.attribution.attribute import SettingError

    with pytest.raises(SettingError, match=setting):
        session.attribute("What color is grass?", progress=False, **{setting: value})


# -- numbers, dtypes, devices: argparse errors (usage + one line) or one `error:` line


@pytest.mark.parametrize("argv, message", [
    (["attribute", "--prompt", "x", "--max_feature_nodes", "0"], "must be at least 1 (or 'all')"),
    (["attribute", "--prompt", "x", "--max_feature_nodes", "-2"], "must be at least 1 (or 'all')"),
    (["attribute", "--prompt", "x", "--desired_logit_prob", "-1"], "must be above 0 and at most 1"),
    (["attribute", "--prompt", "x", "--desired_logit_prob", "nan"], "is not a finite number"),
    (["attribute", "--prompt", "x", "--node_threshold", "5"], "must be between 0 and 1"),
    (["attribute", "--prompt", "x", "--edge_threshold", "-0.1"], "must be between 0 and 1"),
    (["attribute", "--prompt", "x", "--batch_size", "0"], "must be at least 1"),
    (["attribute", "--prompt", "x", "--max_n_logits", "two"], "is not an integer"),
    (["verify", "g.graph.safetensors", "--sources", "-3"], "must be at least 1"),
    (["verify", "g.graph.safetensors", "--seed", "-1"], "must be 0 or more"),
    (["export", "g.graph.safetensors", "--out", "d", "--node_threshold", "5"], "must be between 0 and 1"),
    (["attention", "--prompt", "x", "-o", "a", "--desired-logit-prob", "0"], "must be above 0"),
    (["attention", "--prompt", "x", "-o", "a", "--max-nodes", "0"], "must be at least 1"),
    (["steer", "--prompt", "x", "--feature", "1:2", "--top-k", "0"], "must be at least 1"),
])
def test_numeric_options_are_validated_by_the_parser(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    assert message in _one_error_line(capsys)


def test_max_feature_nodes_all_explores_every_feature():
    from tracer.cli import build_parser

    args = build_parser().parse_args(["attribute", "--prompt", "x", "--max_feature_nodes", "all"])
    assert args.max_feature_nodes is None


@pytest.mark.parametrize("argv, message", [
    (["--dtype", "int8"], "unknown dtype 'int8'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    # a CUDA device this build or machine cannot use
    (["--device", "cuda:99" if torch.cuda.is_available() else "cuda"], "cuda"),
])
def test_dtypes_and_devices_are_checked_before_loading(argv, message, capsys):
    assert main(["attribute", "--prompt", "What color is grass?", "--quiet", *argv]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and message in line


def test_steering_values_must_be_finite(capsys):
    from tracer.interventions import FeatureIntervention

    assert main(["steer", "--prompt", "x", "--feature", "1:2:set:nan"]) == 2
    assert "must be a finite number" in _one_error_line(capsys)
    assert main(["steer", "--prompt", "x", "--feature", "1:2:scale:inf"]) == 2
    assert "must be a finite number" in _one_error_line(capsys)
    with pytest.raises(ValueError, match="finite"):  # the library refuses it too (the app's steering)
        FeatureIntervention(1, 2, "set", float("nan"))


@pytest.mark.parametrize("port", ["99999", "0", "-1", "http"])
def test_the_app_refuses_a_port_out_of_range(port, capsys):
    from app.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_info:
        parse_args(["--port", port])
    assert exit_info.value.code == 2
    assert "--port" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, message", [(["--dtype", "int8"], "unknown dtype"),
                                           (["--device", "tpu"], "unknown device")])
def test_the_app_checks_dtype_and_device_at_start(argv, message, capsys):
    from app.__main__ import parse_args

    with pytest.raises(SystemExit):
        parse_args(argv)
    assert message in _one_error_line(capsys)


# -- outputs are checked before any work


def _under_a_file(tmp_path: Path) -> Path:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    return blocker


@pytest.mark.parametrize("make_argv", [
    lambda out: ["attribute", "--prompt", "What color is grass?", "-o", str(out / "g.graph.safetensors")],
    lambda out: ["attribute", "--prompt", "What color is grass?", "--graph_file_dir", str(out)],
    lambda out: ["attention", "--prompt", "What color is grass?", "-o", str(out / "a")],
    lambda out: ["steer", "--prompt", "What color is grass?", "--feature", "1:2", "--json", str(out / "r.json")],
    lambda out: ["export", "app/sample_graphs/fact-heldout5000-what-color-is-fire.graph.safetensors", "--out", str(out)],
    lambda out: ["import", "app/sample_graphs/fact-heldout5000-what-color-is-fire.graph.safetensors",
                 "--out", str(out / "x")],
], ids=["attribute", "graph_file_dir", "attention", "steer-json", "export", "import"])
def test_an_output_under_a_file_fails_before_any_work(make_argv, tmp_path, capsys, monkeypatch):
    import tracer.models.loading
    import tracer.session

    blocker = _under_a_file(tmp_path)
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    loads = []
    for module in (tracer.models.loading, tracer.session):  # a tripwire: no model may be loaded
        monkeypatch.setattr(module, "load_vlm", lambda *a, **k: loads.append(a))
    assert main(make_argv(blocker)) == 2
    line = _one_error_line(capsys)
    assert line.startswith("error: ") and "not-a-folder" in line and "is a file" in line
    assert loads == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not-a-folder"]


def test_an_unwritable_output_folder_is_one_line(capsys):
    # /proc refuses new files even to root, so this holds whoever runs the tests
    assert main(["attribute", "--prompt", "What color is grass?", "-o", "/proc/g.graph.safetensors"]) == 2
    assert _one_error_line(capsys).startswith("error: cannot write /proc/g.graph.safetensors: /proc is not writable")


# -- verify and export: say what can be checked for each kind of graph


def test_verify_of_a_graph_whose_model_folder_is_gone(files, tmp_path, capsys):
    from tracer.graph import load_graph, save_graph

    graph = load_graph(files["graph"])
    graph.model = str(tmp_path / "moved-away")
    path = save_graph(graph, tmp_path / "gone.graph.safetensors")
    assert main(["verify", str(path)]) == 2
    assert "moved-away: no such folder" in _one_error_line(capsys)


def test_a_hub_name_read_from_a_graph_is_not_fetched(files, tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    from tracer.graph import load_graph, save_graph

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)  # even with the hub reachable in principle
    graph = load_graph(files["graph"])
    graph.model = "someone/some-vlm"
    path = save_graph(graph, tmp_path / "hub.graph.safetensors")
    assert main(["verify", str(path)]) == 2
    line = _one_error_line(capsys)
    assert "a name read from a file is only looked up locally; pass --model someone/some-vlm" in line


def test_hub_offline_blocks_hub_requests_inside_and_restores():
    from huggingface_hub import constants

    from tracer.models.loading import hub_offline

    before = constants.HF_HUB_OFFLINE
    with hub_offline():
        assert constants.is_offline_mode()
    assert constants.HF_HUB_OFFLINE == before


def test_verify_of_an_attention_graph_and_its_export_say_what_is_possible(tmp_path, capsys):
    stem = tmp_path / "att"
    assert main(["attention", "--prompt", "What color is grass?", "-o", str(stem), "--no-vision"]) == 0
    capsys.readouterr()
    graph = f"{stem}.graph.safetensors"
    assert main(["verify", graph]) == 2
    assert "an attention graph cannot be verified" in _one_error_line(capsys)
    assert main(["export", graph, "--out", str(tmp_path / "json")]) == 2
    assert "no circuit-tracer / Neuronpedia JSON form" in _one_error_line(capsys)
    assert not (tmp_path / "json").exists()
    assert main(["export", graph, "--out", str(tmp_path / "gml"), "--format", "graphml"]) == 0
    assert list((tmp_path / "gml").glob("*.graphml"))


def test_verify_of_a_pruned_imported_graph_checks_the_edges_it_kept(files, tmp_path, capsys):
    assert main(["export", str(files["graph"]), "--out", str(tmp_path / "json")]) == 0
    capsys.readouterr()
    (json_file,) = [p for p in (tmp_path / "json").glob("*.json") if p.name != "graph-metadata.json"]
    assert main(["verify", str(json_file)]) == 0
    text = capsys.readouterr().out
    assert "nan" not in text
    assert "(the edges the pruned graph kept)" in text and "sum rule: not checkable" in text and "PASS" in text


def test_a_reference_pt_graph_is_refused_with_the_reason(files):
    from tracer.attribution.verify import VerificationError, check_verifiable
    from tracer.graph import load_graph

    graph = load_graph(files["graph"])
    graph.info["imported_from"] = "reference-pt"
    with pytest.raises(VerificationError, match="reference tool's conventions"):
        check_verifiable(graph)


# -- region syntax and steering


def test_region_syntax_cells_versus_positions():
    from tracer.errors import InputError
    from tracer.interventions.common import parse_region

    assert parse_region("2,3") == [(0, 2, 3)]  # one cell, never positions 2 and 3
    assert parse_region("2,3;2,4") == [(0, 2, 3), (0, 2, 4)]
    assert parse_region("1,2,3; (0,0,1)") == [(1, 2, 3), (0, 0, 1)]
    assert parse_region("pos:40,41") == [40, 41]
    for bad, message in [("9,9;9,9", "twice"), ("2,3;0,2,3", "twice"), ("pos:9,9", "twice"),
                         ("1,2,3,4", "not an image cell"),
                         ("a,b", "not an image cell"), ("-1,2", "not an image cell"), ("pos:x", "integers"),
                         (";", "empty"), ("pos:", "empty")]:
        with pytest.raises(InputError, match=message):
            parse_region(bad)


def test_region_cells_given_twice_are_refused_by_the_library(files, session):
    from tracer.interventions import ablate_region

    ex = files["example"]
    with pytest.raises(ValueError, match="given twice"):
        ablate_region(session, ex.question, files["image"], [(2, 3), (0, 2, 3)])


def test_steer_region_on_the_command_line(files, capsys):
    ex, image = files["example"], files["image"]
    assert main(["steer", "--prompt", ex.question, "--image", str(image), "--ablate-region", "2,3"]) == 0
    assert "of 1 soft tokens [(0, 2, 3)]" in capsys.readouterr().out
    assert main(["steer", "--prompt", ex.question, "--image", str(image), "--ablate-region", "9,9;9,9"]) == 2
    assert "names cell (0, 9, 9) twice" in _one_error_line(capsys)


def test_steer_top_features_lists_specs_that_steer(files, capsys):
    from tracer.graph import load_graph
    from tracer.graph.pruning import node_influence

    assert main(["steer", "--graph", str(files["graph"]), "--top-features", "4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if "--feature" in line]
    graph = load_graph(files["graph"])
    top = np.argsort(-node_influence(graph)[: graph.n_features], kind="stable")[:4]
    assert len(lines) == 4
    for line, i in zip(lines, top):
        layer, pos, feat = (int(x) for x in graph.features[i])
        assert f"--feature {layer}:{feat} --positions {pos}" in line
    assert main(["steer", "--top-features", "3"]) == 2
    assert "--graph" in _one_error_line(capsys)


def test_steer_warns_when_an_edit_changes_nothing(files, session, capsys):
    from tracer.attribution.record import record_forward
    from tracer.graph import load_graph
    from tracer.interventions import feature_activations
    from tracer.interventions.common import prompt_inputs

    ex, image = files["example"], files["image"]
    graph = load_graph(files["graph"])
    layer, pos, feat = (int(x) for x in graph.features[0])
    record = record_forward(session.adapter, prompt_inputs(session, ex.question, image))
    tc = session.transcoders[layer]
    every = torch.arange(tc.d_transcoder)
    acts = feature_activations(tc, record.layers[layer].mlp_in[pos:pos + 1], every, "cpu")[0]
    assert acts[feat] != 0
    silent = int(torch.nonzero(acts == 0)[0])  # not active at that position
    out = files["folder"] / "steer.json"
    code = main(["steer", "--prompt", ex.question, "--image", str(image), "--feature", f"{layer}:{feat}",
                 "--feature", f"{layer}:{silent}", "--positions", str(pos), "--json", str(out)])
    assert code == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and f"L{layer}:F{silent}:ablate changes no activation" in warnings[0]
    applied = json.loads(out.read_text())["intervention"]["applied"]
    assert any(a["feature"] == feat and a["before"] != a["after"] for a in applied)


# -- code shipped with a model or tokenizer is never run


@pytest.fixture
def custom_code_folder(tmp_path):
    """A folder whose config asks transformers to import its own module; importing it would
    leave a marker file."""
    folder = tmp_path / "custom"
    folder.mkdir()
    marker = tmp_path / "code-ran"
    (folder / "custom_model.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
    auto = {"AutoConfig": "custom_model.C", "AutoModelForImageTextToText": "custom_model.M",
            "AutoProcessor": "custom_model.P", "AutoTokenizer": ["custom_model.T", None]}
    (folder / "config.json").write_text(json.dumps({"model_type": "custom-vlm", "auto_map": auto}))
    (folder / "tokenizer_config.json").write_text(json.dumps({"auto_map": {"AutoTokenizer": ["custom_model.T", None]},
                                                              "tokenizer_class": "T"}))
    return folder, marker


def test_a_model_folder_with_custom_code_is_refused_not_run(custom_code_folder, capsys):
    from tracer.models.loading import ModelLoadError, load_vlm

    folder, marker = custom_code_folder
    with pytest.raises(ModelLoadError, match="contains custom code"):
        load_vlm(folder)
    assert main(["attribute", "--prompt", "x", "--model", str(folder), "--quiet"]) == 2
    assert "contains custom code" in _one_error_line(capsys)
    assert not marker.exists()


def test_a_graph_naming_a_custom_code_folder_does_not_run_it(custom_code_folder, files, tmp_path, capsys):
    from tracer.graph import load_graph, save_graph
    from tracer.graph.reference_pt import _tokenizer_for

    folder, marker = custom_code_folder
    graph = load_graph(files["graph"])
    graph.model = str(folder)
    path = save_graph(graph, tmp_path / "custom.graph.safetensors")
    assert main(["verify", str(path)]) == 2
    assert "contains custom code" in _one_error_line(capsys)
    assert _tokenizer_for(str(folder)) is None  # a reference .pt's cfg.tokenizer_name
    assert not marker.exists()


def test_attention_checks_every_option_before_writing_anything(files, tmp_path, capsys):
    ex, image = files["example"], files["image"]
    stem = tmp_path / "att"
    assert main(["attention", "--prompt", ex.question, "--image", str(image), "--rollout-layers", "99",
                 "-o", str(stem)]) == 2
    assert "last_layers must be in 1.." in _one_error_line(capsys)
    assert list(tmp_path.iterdir()) == []  # not even the heads file


# -- found by a hostile-input audit: each is one line and exit 2, and nothing is lost


def _nan_first(name):
    def edit(t):
        t[name] = t[name].copy()
        t[name][0] = np.nan if name == "activations" else np.inf
    return edit


@pytest.mark.parametrize("edit_tensors, edit_meta, words", [
    (_nan_first("activations"), None, "activations hold NaN"),
    (_nan_first("constants"), None, "constants hold NaN or infinite"),
    (_nan_first("values"), None, "values hold NaN or infinite"),
    (lambda t: t.__setitem__("features", t["features"] * np.array([1, 1, -1])), None, "feature index out of range"),
    (None, lambda m: m.__setitem__("scores", {"replacement": "high"}), "scores must be finite numbers"),
    (None, lambda m: m["targets"][0].__setitem__("probability", float("nan")), "is not a number"),
    (None, lambda m: m["targets"][0].__setitem__("token_id", 10 ** 30), "out of range"),
])
def test_tampered_numbers_are_refused_when_a_graph_is_read(files, tmp_path, capsys, edit_tensors, edit_meta, words):
    """Not a verify that says PASS, nor a traceback in export: the file is refused on reading."""
    bad = rewrite_graph_file(files["graph"], edit_meta, edit_tensors, out=tmp_path / "bad.graph.safetensors")
    for argv in (["verify", str(bad)], ["export", str(bad), "--out", str(tmp_path / "np")]):
        assert main(argv) == 2
        assert words in _one_error_line(capsys)


def test_a_slug_names_a_file_in_the_current_folder(files, tmp_path, capsys, monkeypatch):
    here = tmp_path / "a" / "b"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    ex = files["example"]
    assert main(["attribute", "--prompt", ex.question, "--image", str(files["image"]), "--slug", "../../escape",
                 "--max_feature_nodes", "20", "--quiet"]) == 0
    assert (here / "escape.graph.safetensors").is_file()
    assert not (tmp_path / "escape.graph.safetensors").exists()


def test_an_empty_prompt_without_an_image_is_refused(capsys):
    assert main(["attribute", "--prompt", "   ", "--quiet"]) == 2
    assert "the prompt is empty" in _one_error_line(capsys)


def test_features_never_replaces_a_folder_of_other_files(tmp_path, capsys):
    folder = tmp_path / "mine"
    (folder / "sub").mkdir(parents=True)
    (folder / "precious.txt").write_text("keep me")
    assert main(["features", "--data", "toy", "--n-examples", "2", "--out", str(folder)]) == 2
    assert "not a feature-examples store" in _one_error_line(capsys)
    assert (folder / "precious.txt").read_text() == "keep me" and (folder / "sub").is_dir()


def test_trained_weights_are_not_overwritten_without_asking(tmp_path, capsys):
    import shutil

    from tracer.toy.shipped import shipped_model_dir

    toy = tmp_path / "toy"
    shutil.copytree(shipped_model_dir("toy"), toy)
    before = (toy / "model.safetensors").read_bytes()
    assert main(["toy", "tiny", "--family", "gemma3", "--out", str(toy)]) == 2
    assert "--overwrite" in _one_error_line(capsys)
    assert (toy / "model.safetensors").read_bytes() == before
    plt = tmp_path / "plt"
    shutil.copytree(Path(__file__).resolve().parent.parent / "tracer" / "data" / "toy-plt", plt)
    assert main(["train-plt", "--out", str(plt), "--tokens", "64"]) == 2
    assert "--resume" in _one_error_line(capsys)


@pytest.mark.parametrize("argv, words", [
    (["train-plt", "--layers", "3-1"], "give layers as"),
    (["train-plt", "--layers", "abc"], "give layers as"),
    (["toy", "sample", "-n", "2", "--type", "zebra"], "invalid choice"),
])
def test_malformed_options_are_usage_errors(argv, words, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(argv + ["--out", str(tmp_path / "o")])
    assert exit_.value.code == 2 and words in capsys.readouterr().err


@pytest.mark.parametrize("extra, words", [
    (["--layers", "9"], "layers [9] do not exist"),
    (["--data", "zebra:foo"], "unknown kind 'zebra'"),
    (["--data", "folder:/nonexistent-folder"], "no such folder"),
    (["--k", "5000", "--width", "16"], "is more than --width"),
])
def test_train_plt_input_errors_are_one_line(extra, words, tmp_path, capsys):
    assert main(["train-plt", "--out", str(tmp_path / "o"), "--tokens", "64", "--no-progress", *extra]) == 2
    assert words in _one_error_line(capsys)


def test_supernodes_with_transcoders_of_another_model(files, capsys):
    root = Path(__file__).resolve().parent.parent
    assert main(["supernodes", str(files["graph"]), "--transcoders", str(root / "tracer/data/gemma-3-270m-plt")]) == 2
    assert "not the transcoders this graph was traced with" in _one_error_line(capsys)


def test_export_labels_errors_name_the_file(files, tmp_path, capsys):
    missing = tmp_path / "nonexist.json"
    assert main(["export", str(files["graph"]), "--out", str(tmp_path / "np"), "--labels", str(missing)]) == 2
    assert "nonexist.json: no such labels file" in _one_error_line(capsys)
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert main(["export", str(files["graph"]), "--out", str(tmp_path / "np"), "--labels", str(broken)]) == 2
    assert "broken.json: not JSON" in _one_error_line(capsys)


def test_transcoders_made_for_another_model_are_named_in_a_warning(files, tmp_path, capsys):
    """Same sizes, so they run; but the set's config names another model, and the user is told."""
    ex = files["example"]
    common = ["attribute", "--prompt", ex.question, "--image", str(files["image"]), "--max_feature_nodes", "20",
              "--quiet", "-o", str(tmp_path / "g.graph.safetensors")]
    assert main(common + ["--transcoders", "toy-plt-llava"]) == 0
    err = capsys.readouterr().err
    assert "warning: the transcoders" in err and "trained for 'toy-llava', not for 'toy'" in err
    assert main(common) == 0
    assert "warning" not in capsys.readouterr().err
