"""Our attribution engine against the UIUC vlm-circuit-tracing tool, side by side, on an image prompt.

    bash bench/setup_uiuc.sh SOURCE            # once: bench/.venv-uiuc (SOURCE: a clone, a git dir or a URL)
    python bench/compare_uiuc.py               # in the project's virtualenv; ~15 min on a 2-core machine
    python bench/compare_uiuc.py --quick       # smoke test: 500 / 2,000 nodes, 1 round, 1 call (~2 min)

The UIUC tool (github UIUC-MONET/vlm-circuit-tracing, CVPR 2026 Findings) is circuit-tracer's
algorithm on a TransformerLens fork with vision-language support (HookedVLTransformer). Both tools
get the project's toy Gemma3 VLM (tracer/data/toy-vlm, a transformers Gemma3ForConditionalGeneration),
its shipped per-layer transcoders (tracer/data/toy-plt: TopK, k = 32, which the UIUC tool loads as
its own ReLU + top-k), one toy scene drawn by tracer.toy.world (64x64 px) and its question, chat
template applied: 85 positions, 64 of them image tokens; the same token ids (checked in every run),
the same pixel values (checked), float32, one torch thread, max_n_logits 10, desired_logit_prob 0.95,
eager encoder / lazy decoder in both. For each feature-node budget (`--nodes`, default
500,2000,7500) our engine runs at its default batch size (256) and the UIUC tool at each of
`--uiuc-batch-sizes` (default 64 and 4: its README runs `--batch_size 4`). Every (tool, batch,
budget) is a fresh subprocess of its own virtualenv (bench/worker_ours.py, bench/worker_uiuc.py),
`--rounds` rounds, interleaved and in alternating order (the machine is shared and noisy). In each
process only the attribution call is timed, `--repeats` times (the first is reported as "first
call", the rest as "warm"), in wall and CPU time; peak memory is the process's peak RSS
(getrusage), and its growth over the RSS after loading. Ratios are UIUC / ours per round (the
processes of a round ran back to back), then the median. Then the last round's graphs are matched
node by node and the edges among common nodes compared.

Where the two differ, and what the UIUC worker bridges (docs: bench/worker_uiuc.py; `--no-bridge`
runs the tool as it is, for timing: its graph then comes from a different forward and the edges
no longer agree):

- Loading: the tool knows Gemma3-4B/12B only by name and needs transformers 4.5x; the worker loads
  the toy (written by transformers 5) into transformers 4.57, gives the fork the toy's architecture
  and goes through the fork's own from_pretrained and the tool's own replacement-model setup.
- Forward: the tool shares one RoPE table (the last layer's) across all layers, and its image path
  drops Gemma3's sliding window; the worker restores each layer's table and re-applies the window,
  after which its logits equal the HF model's to ~5e-6 (reported). The uncorrected difference is
  reported too ("as shipped").
- Excluded positions: the tool drops position 0 only, we drop the 4-token chat prefix; the worker
  drops the tool's features and error nodes there too, so both have the same active features.
- Embedding nodes: the UIUC tool's are the residual stream entering layer 0 (scaled token
  embeddings, projected image embeddings), compared as they are (no sqrt(d) factor, unlike
  circuit-tracer's).
- Feature selection under a budget: both rank by influence on the logits, but the UIUC tool
  re-ranks every 4 batches by power iteration over its dense edge matrix, we re-rank after every
  batch; the selected sets overlap mostly but not wholly (reported), and edges are compared among
  the features both selected.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from compare_circuit_tracer import (  # noqa: E402
    _Rows, _Stats, fmt_table, machine_description, run_worker, worker_env,
)

DEFAULT_UIUC_PYTHON = HERE / ".venv-uiuc" / "bin" / "python"
DEFAULT_JSON = HERE / "results" / "uiuc_cpu.json"
OUR_DEFAULT_BATCH = 256  # tracer.attribution.attribute.AttributionConfig.batch_size


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped toy VLM tracer/data/toy-vlm)")
    p.add_argument("--transcoders", default=None, help="transcoder folder (default: the shipped tracer/data/toy-plt)")
    p.add_argument("--image", default=None, help="image file (default: the toy scene 'heldout' #3, drawn for the run)")
    p.add_argument("--question", default=None,
                   help="question (default: the toy example's, 'What color is the triangle?'); chat template applied")
    p.add_argument("--nodes", default=None,
                   help="comma-separated max_feature_nodes budgets, 'all' = every active feature "
                        "(default 500,2000,7500; --quick: 500,2000)")
    p.add_argument("--uiuc-batch-sizes", default="64,4", help="the UIUC tool's batch sizes (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=OUR_DEFAULT_BATCH, help="ours (default: our default, %(default)s)")
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--rounds", type=int, default=None, help="interleaved rounds (default 2; --quick 1)")
    p.add_argument("--repeats", type=int, default=None,
                   help="attribution calls per process; the first is reported as 'first call' (default 2; --quick 1)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in every process (default: %(default)s)")
    p.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                   help="OMP_WAIT_POLICY for every worker")
    p.add_argument("--lazy-encoder", action="store_true", help="both tools read encoder rows lazily")
    p.add_argument("--eager-decoder", action="store_true", help="both tools load the decoders whole")
    p.add_argument("--no-bridge", action="store_true",
                   help="run the UIUC tool as shipped (its RoPE sharing, no sliding window with images, only "
                        "position 0 excluded): timing only, edges are then not expected to agree")
    p.add_argument("--no-agreement", action="store_true", help="skip the edge comparison")
    p.add_argument("--uiuc-python", default=str(DEFAULT_UIUC_PYTHON), help="python of the UIUC tool's virtualenv")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    p.add_argument("--keep", default=None, help="keep the work folder (image, specs, graphs, logs) here")
    p.add_argument("--json", default=None,
                   help=f"write all numbers here (default {DEFAULT_JSON.relative_to(ROOT)}; none with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke test: 500,2000 nodes, 1 round, 1 call per process")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = 1 if args.quick else 2
    if args.repeats is None:
        args.repeats = 1 if args.quick else 2
    if args.nodes is None:
        args.nodes = "500,2000" if args.quick else "500,2000,7500"
    if args.json is None and not args.quick:
        args.json = str(DEFAULT_JSON)
    args.budgets = [None if x.strip() == "all" else int(x) for x in args.nodes.split(",") if x.strip()]
    args.uiuc_batches = [int(x) for x in args.uiuc_batch_sizes.split(",") if x.strip()]
    return args


# ----------------------------------------------------------------------------- inputs
def prepare_inputs(args, work: Path) -> dict:
    """The image, the prompt as our engine tokenises it, pixel values and HF logits for the checks."""
    import torch

    from tracer.models.base import get_adapter, prepare_prompt
    from tracer.models.loading import load_vlm, resolve_model_ref
    from tracer.transcoders.loading import default_transcoders_dir

    torch.set_num_threads(args.threads)
    model_dir = Path(resolve_model_ref(args.model)).resolve()
    transcoders = Path(args.transcoders).resolve() if args.transcoders else default_transcoders_dir()
    if args.image:
        image_path = Path(args.image).resolve()
        question = args.question or "What color is the triangle?"
        scene = str(image_path)
    else:
        from tracer.toy import world

        ex = world.make_example("heldout", 3, question_type="color")
        image_path = work / "image.png"
        ex.image().save(image_path)
        question = args.question or ex.question
        scene = "tracer.toy.world.make_example('heldout', 3, question_type='color')"
    from PIL import Image

    image = Image.open(image_path).convert("RGB")
    model, processor = load_vlm(str(model_dir))
    adapter = get_adapter(model)
    prompt = prepare_prompt(processor, question, image, chat=True, adapter=adapter)
    tokenizer = getattr(processor, "tokenizer", processor)
    bos = tokenizer.bos_token or ""
    if not prompt.text.startswith(bos):
        raise SystemExit(f"expected the prompt text to start with {bos!r}: {prompt.text!r}")
    with torch.no_grad():
        logits = model(**prompt.inputs).logits[0].float().numpy()
    np.save(work / "hf_logits.npy", logits)
    np.save(work / "pixel_values.npy", prompt.inputs["pixel_values"].float().numpy())
    image_token = getattr(model.config, "image_token_index", None)
    if image_token is None:
        image_token = getattr(model.config, "image_token_id", -1)
    import yaml

    tc_cfg = yaml.safe_load(open(transcoders / "config.yaml"))
    info = {
        "model": str(model_dir), "transcoders": str(transcoders), "image": str(image_path), "scene": scene,
        "question": question, "prompt_text": prompt.text,
        # the UIUC tool tokenises with the tokenizer's own BOS (as Gemma's does): its text has none
        "uiuc_prompt": prompt.text[len(bos):],
        "input_ids": [int(i) for i in prompt.input_ids], "tokens": list(prompt.tokens),
        "n_image_tokens": sum(int(i) == image_token for i in prompt.input_ids),
        "prefix_length": int(prompt.prefix_length),
        "d_model": int(adapter.d_model), "n_layers": int(adapter.n_layers),
        "transcoder_kind": f"TopK k={tc_cfg.get('top_k')}" if tc_cfg.get("top_k") else "as in config.yaml",
        "transcoder_width": tc_cfg.get("d_transcoder"),
        "hf_logits": str(work / "hf_logits.npy"), "pixel_values": str(work / "pixel_values.npy"),
    }
    del model, adapter
    return info


def uiuc_commit(python: Path) -> str:
    f = python.parent.parent / "uiuc-commit"
    return f.read_text().strip() if f.exists() else ""


# ----------------------------------------------------------------------------- running


def specs(args, info: dict, budget, commit: str) -> dict:
    """(tool label -> (kind, spec without out_dir)) for one budget."""
    common = {
        "model": info["model"], "transcoders": info["transcoders"], "image": info["image"],
        "max_feature_nodes": budget, "max_n_logits": args.max_n_logits,
        "desired_logit_prob": args.desired_logit_prob, "threads": args.threads, "repeats": args.repeats,
        "lazy_encoder": bool(args.lazy_encoder), "lazy_decoder": not args.eager_decoder,
    }
    out = {"ours": ("ours", dict(common, prompt=info["question"], chat=True, batch_size=args.batch_size))}
    for b in args.uiuc_batches:
        out[f"uiuc-b{b}"] = ("uiuc", dict(
            common, batch_size=b, uiuc_prompt=info["uiuc_prompt"], input_ids=info["input_ids"],
            prefix_length=info["prefix_length"], pixel_values=info["pixel_values"], hf_logits=info["hf_logits"],
            bridge=not args.no_bridge, uiuc_commit=commit))
    return out


def run_all(args, info: dict, work: Path, env: dict, pythons: dict, commit: str) -> dict:
    """rounds x budgets x tools, each a fresh process; the order alternates from one round to the next."""
    results = {b or "all": {} for b in args.budgets}
    for rnd in range(args.rounds):
        for bi, budget in enumerate(args.budgets):
            key = budget or "all"
            tools = specs(args, info, budget, commit)
            order = list(tools) if (rnd + bi) % 2 == 0 else list(tools)[::-1]
            for label in order:
                kind, spec = tools[label]
                spec = dict(spec, out_dir=str(work / f"nodes{key}" / f"round{rnd}" / label),
                            save_graph=(rnd == args.rounds - 1) and not args.no_agreement)
                print(f"round {rnd + 1}/{args.rounds}, {key} nodes: {label} ...", end=" ", flush=True)
                r = run_worker(kind, pythons[kind], spec, None, args.timeout, env, other="worker_uiuc.py")
                print(", ".join(f"{t:.2f}s" for t in r["attribution_s"])
                      + f" (peak {r['peak_rss_mb']:.0f} MB, load {r['load_average_before']:.2f})", flush=True)
                if r["input_ids"] != info["input_ids"]:
                    raise SystemExit(f"{label} saw different tokens: {r['input_ids']} vs {info['input_ids']}")
                results[key].setdefault(label, []).append(r)
    return results


# ----------------------------------------------------------------------------- summary
def _med(xs):
    xs = [x for x in xs if x is not None and x == x]
    return statistics.median(xs) if xs else float("nan")


def summarize(runs: dict) -> dict:
    """Per tool: medians; per UIUC batch size: the per-round ratios to ours and their median."""
    s = {}
    for label, rs in runs.items():
        warm = [t for r in rs for t in r["attribution_s"][1:]]
        warm_cpu = [t for r in rs for t in r["attribution_cpu_s"][1:]]
        s[label] = {
            "first_s": _med([r["attribution_s"][0] for r in rs]),
            "first_cpu_s": _med([r["attribution_cpu_s"][0] for r in rs]),
            "warm_s": _med(warm), "warm_cpu_s": _med(warm_cpu),
            # the time this comparison reports: warm calls when there are, else first calls
            "time_s": _med(warm) if warm else _med([r["attribution_s"][0] for r in rs]),
            "cpu_s": _med(warm_cpu) if warm_cpu else _med([r["attribution_cpu_s"][0] for r in rs]),
            "peak_rss_mb": _med([r["peak_rss_mb"] for r in rs]),
            "rss_after_load_mb": _med([r["rss_after_load_mb"] for r in rs]),
            "growth_mb": _med([r["peak_rss_mb"] - r["rss_after_load_mb"] for r in rs]),
            "load_s": _med([r["load_s"] for r in rs]), "import_s": _med([r["import_s"] for r in rs]),
            "n_active_features": rs[0]["n_active_features"], "n_selected_features": rs[0]["n_selected_features"],
            "all_s": [r["attribution_s"] for r in rs],
        }

    def per_call(r, cpu=False):
        xs = r["attribution_cpu_s" if cpu else "attribution_s"]
        return _med(xs[1:]) if len(xs) > 1 else xs[0]

    for label in runs:
        if label == "ours":
            continue
        pairs = list(zip(runs["ours"], runs[label]))
        ratios = {
            "time": [per_call(t) / per_call(o) for o, t in pairs],
            "cpu": [per_call(t, True) / per_call(o, True) for o, t in pairs],
            "first": [t["attribution_s"][0] / o["attribution_s"][0] for o, t in pairs],
            "peak_rss": [t["peak_rss_mb"] / o["peak_rss_mb"] for o, t in pairs],
            "growth": [(t["peak_rss_mb"] - t["rss_after_load_mb"])
                       / max(o["peak_rss_mb"] - o["rss_after_load_mb"], 1e-9) for o, t in pairs],
        }
        s[label]["ratios_to_ours"] = {k: {"median": _med(v), "all": v} for k, v in ratios.items()}
    return s


# ----------------------------------------------------------------------------- agreement
def compare_graphs(ours_dir: Path, uiuc_dir: Path, prefix: int, chunk: int = 256) -> dict:
    """Match the two graphs node by node (features by (layer, position, index), errors by (layer,
    position), embeddings by position, logits by token) and compare the edges among common nodes."""
    o = np.load(ours_dir / "graph.npz")
    u = np.load(uiuc_dir / "graph.npz")
    A_o, A_u = _Rows(ours_dir / "adjacency.npy"), _Rows(uiuc_dir / "adjacency.npy")
    n_layers, n_pos = int(u["n_layers"]), int(u["n_positions"])
    feats_o = o["features"]
    act_u, sel_u = u["active_features"], u["selected_features"]
    feats_u = act_u[sel_u]
    n_sel_u, n_log_u, N_u = len(sel_u), len(u["logit_token_ids"]), A_u.shape[0]
    col_u = {tuple(int(v) for v in f): i for i, f in enumerate(feats_u)}
    common = [(i, col_u[k]) for i, k in enumerate(tuple(int(v) for v in f) for f in feats_o) if k in col_u]
    o_idx = np.array([i for i, _ in common], dtype=np.int64)
    u_idx = np.array([j for _, j in common], dtype=np.int64)
    active_u = {tuple(int(v) for v in f) for f in act_u}
    out = {
        "ours_selected": int(len(feats_o)), "uiuc_selected": int(n_sel_u), "uiuc_active": int(len(act_u)),
        "common_features": int(len(common)),
        "ours_features_not_active_in_uiuc": int(sum(tuple(int(v) for v in f) not in active_u for f in feats_o)),
        "same_logit_targets": bool(np.array_equal(o["logit_token_ids"], u["logit_token_ids"])),
        "logit_targets": {"ours": o["logit_token_ids"].tolist(), "uiuc": u["logit_token_ids"].tolist()},
    }
    act_vals_u = u["activation_values"]
    out["activations"] = _Stats().add(o["activations"][o_idx],
                                      act_vals_u[sel_u][u_idx] if len(act_vals_u) == len(act_u) else act_vals_u[u_idx]
                                      ).result()
    if out["same_logit_targets"]:
        out["logit_probabilities"] = _Stats().add(o["logit_probabilities"], u["logit_probabilities"]).result()
        rows_o_log = len(feats_o) + np.arange(len(o["logit_token_ids"]))
        rows_u_log = N_u - n_log_u + np.arange(n_log_u)
    else:
        rows_o_log = rows_u_log = np.zeros(0, dtype=np.int64)
    errs_o = o["errors"]
    n_sel_o, n_err_o = len(feats_o), len(errs_o)
    cols_o_err = n_sel_o + np.arange(n_err_o)
    cols_u_err = n_sel_u + errs_o[:, 0] * n_pos + errs_o[:, 1]
    cols_o_emb = n_sel_o + n_err_o + np.arange(n_pos)
    cols_u_emb = n_sel_u + n_layers * n_pos + np.arange(n_pos)
    # the UIUC columns no common node maps to: its error nodes at excluded positions (zero vectors
    # with the bridge) and the features it selected that we did not (non-zero edges, expected)
    err_all = n_sel_u + np.arange(n_layers * n_pos)
    err_excluded = err_all[(np.arange(n_layers * n_pos) % n_pos) < prefix]
    feat_only_u = np.setdiff1d(np.arange(n_sel_u), u_idx)
    cols_o = np.concatenate([o_idx, cols_o_err, cols_o_emb])
    cols_u = np.concatenate([u_idx, cols_u_err, cols_u_emb, err_excluded, feat_only_u])
    nf, ne, nm, nx = len(o_idx), len(cols_o_err), len(cols_o_emb), len(err_excluded)
    names = ("feature", "error", "embedding")
    stats = {f"{r} <- {k}": _Stats() for r in ("feature", "logit") for k in names}
    fe = _Stats()
    excluded_max, only_u_max = 0.0, 0.0
    for rname, ro, ru in (("feature", o_idx, u_idx), ("logit", rows_o_log, rows_u_log)):
        for s in range(0, len(ro), chunk):
            Ro, Ru = A_o.take(ro[s:s + chunk], cols_o), A_u.take(ru[s:s + chunk], cols_u)
            for k, a, b in zip(names, (Ro[:, :nf], Ro[:, nf:nf + ne], Ro[:, nf + ne:]),
                               (Ru[:, :nf], Ru[:, nf:nf + ne], Ru[:, nf + ne:nf + ne + nm])):
                stats[f"{rname} <- {k}"].add(a, b)
            fe.add(Ro[:, :nf + ne], Ru[:, :nf + ne])
            if nx:
                excluded_max = max(excluded_max, float(np.abs(Ru[:, nf + ne + nm:nf + ne + nm + nx]).max()))
            if Ru.shape[1] > nf + ne + nm + nx:
                only_u_max = max(only_u_max, float(np.abs(Ru[:, nf + ne + nm + nx:]).max()))
    out["blocks"] = {k: v.result() for k, v in stats.items()}
    out["blocks"]["all feature + error edges"] = fe.result()
    out["uiuc_excluded_position_error_edges_max_abs"] = excluded_max
    out["uiuc_edges_from_features_only_it_selected_max_abs"] = only_u_max
    return out


# ----------------------------------------------------------------------------- report
def report(args, info: dict, summary: dict, agreement: dict, machine: str, runs: dict) -> str:
    first_u = next(r for key in runs for label, rs in runs[key].items() if label != "ours" for r in rs)
    first_o = next(r for key in runs for r in runs[key]["ours"])
    checks = [r.get("checks", {}) for key in runs for label, rs in runs[key].items() if label != "ours" for r in rs]
    worst = lambda k: max((c.get(k, float("nan")) for c in checks), default=float("nan"))  # noqa: E731
    out = [f"machine: {machine}",
           f"model: {info['model']} ({info['n_layers']} layers, d_model {info['d_model']}); "
           f"transcoders: {info['transcoders']} ({info['transcoder_kind']}, width {info['transcoder_width']})",
           f"prompt: {info['question']!r} + image {info['scene']} -> {len(info['input_ids'])} positions "
           f"({info['n_image_tokens']} image tokens), first {info['prefix_length']} excluded from feature/error "
           "nodes in both" + (" (UIUC as shipped: position 0 only)" if args.no_bridge else ""),
           f"settings: float32, threads={args.threads}, max_n_logits={args.max_n_logits}, "
           f"desired_logit_prob={args.desired_logit_prob}, encoder {'lazy' if args.lazy_encoder else 'eager'}, "
           f"decoder {'eager' if args.eager_decoder else 'lazy'}; ours batch {args.batch_size}; "
           f"UIUC batch {', '.join(map(str, args.uiuc_batches))}; {args.rounds} round(s), {args.repeats} call(s) per "
           "process" + ("; times: warm calls (2nd and later)" if args.repeats > 1 else "; times: first calls"),
           f"versions: ours torch {first_o['versions']['torch']} transformers {first_o['versions']['transformers']}; "
           f"UIUC vlm-circuit-tracing {first_u['versions'].get('uiuc_commit', '')[:12]} (circuit-tracer "
           f"{first_u['versions']['circuit_tracer_vlm']}, transformer-lens {first_u['versions']['transformer_lens']}), "
           f"torch {first_u['versions']['torch']}, transformers {first_u['versions']['transformers']}",
           f"UIUC forward check (bridged: {not args.no_bridge}): logits vs the HF model max |diff| "
           f"{worst('logits_max_abs_diff_vs_hf'):.2g} (last position {worst('last_logits_max_abs_diff_vs_hf'):.2g}); "
           f"pixel values max |diff| {worst('pixel_values_max_abs_diff'):.2g}; "
           f"transformers 4.57's own forward of the toy vs ours: {worst('hf_457_logits_max_abs_diff_vs_hf5'):.2g}",
           ""]
    labels = ["ours"] + [f"uiuc-b{b}" for b in args.uiuc_batches]
    rows = []
    for key, s in summary.items():
        o = s["ours"]
        for label in labels:
            t = s[label]
            r = t.get("ratios_to_ours", {})
            ratio = lambda k: f"{r[k]['median']:.1f}x" if r else ""  # noqa: E731
            rows.append([f"{key:,}" if isinstance(key, int) else f"{key} ({o['n_selected_features']:,})",
                         "ours" if label == "ours" else "UIUC", str(args.batch_size if label == "ours" else label[6:]),
                         f"{t['time_s']:.2f}", f"{t['cpu_s']:.2f}", f"{t['first_s']:.2f}", ratio("time"), ratio("cpu"),
                         ratio("first"), f"{t['peak_rss_mb']:.0f}", f"{t['growth_mb']:.0f}",
                         f"{r['peak_rss']['median']:.2f}x" if r else "", f"{r['growth']['median']:.1f}x" if r else ""])
    out.append(fmt_table(rows, ["feature nodes", "tool", "batch", "time s", "CPU s", "first call s", "UIUC/ours",
                                "CPU", "first", "peak RSS MB", "growth MB", "peak UIUC/ours", "growth UIUC/ours"]))
    out.append("(active features: ours %d, UIUC %d; ratios: per round, then the median)" % (
        first_o["n_active_features"], first_u["n_active_features"]))
    for key, s in summary.items():
        for label in labels[1:]:
            t = s[label]
            if t.get("ratios_to_ours"):
                out.append(f"  {key} nodes, UIUC batch {label[6:]}: time ratios per round "
                           + ", ".join(f"{x:.2f}" for x in t["ratios_to_ours"]["time"]["all"])
                           + "; all times (s): ours " + str([[round(x, 2) for x in xs] for xs in s["ours"]["all_s"]])
                           + ", UIUC " + str([[round(x, 2) for x in xs] for xs in t["all_s"]]))
    if agreement:
        out.append("")
        rows = []
        for key, per in agreement.items():
            for label in labels[1:]:
                a = per[label]
                b = a["blocks"]
                rows.append([str(key), label[6:], f"{a['ours_selected']:,} / {a['uiuc_selected']:,}",
                             f"{a['common_features']:,}", "yes" if a["same_logit_targets"] else "NO",
                             f"{a['activations']['rel_max']:.1e}"]
                            + [f"{b[k]['rel_max']:.1e}" for k in ("feature <- feature", "feature <- error",
                                                                   "feature <- embedding", "logit <- feature",
                                                                   "logit <- error", "logit <- embedding")]
                            + [f"{a['uiuc_excluded_position_error_edges_max_abs']:.1g}"])
        out.append("agreement (last round's graphs; rel = max |diff| / max |ours| over the block, common nodes only):")
        out.append(fmt_table(rows, ["nodes", "UIUC batch", "selected ours / UIUC", "common", "same logits",
                                    "activations", "f<-f", "f<-err", "f<-emb", "logit<-f", "logit<-err",
                                    "logit<-emb", "UIUC excl.-pos. edges"]))
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    uiuc_python = Path(args.uiuc_python)
    if not uiuc_python.exists():
        raise SystemExit(f"{uiuc_python} not found: run `bash bench/setup_uiuc.sh SOURCE` first "
                         "(SOURCE: a clone or git dir of UIUC-MONET/vlm-circuit-tracing, or its URL)")
    machine = machine_description()
    started = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-uiuc-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print("preparing inputs ...", flush=True)
        info = prepare_inputs(args, work)
        env = worker_env(args.threads, args.omp_wait_policy)
        pythons = {"ours": sys.executable, "uiuc": str(uiuc_python)}
        commit = uiuc_commit(uiuc_python)
        runs = run_all(args, info, work, env, pythons, commit)
        summary = {key: summarize(per) for key, per in runs.items()}
        agreement = {}
        if not args.no_agreement:
            for key in runs:
                last = work / f"nodes{key}" / f"round{args.rounds - 1}"
                agreement[key] = {label: compare_graphs(last / "ours", last / label, info["prefix_length"])
                                  for label in runs[key] if label != "ours"}
                if not args.keep:
                    for p in last.glob("*/adjacency.npy"):
                        p.unlink()
        try:
            machine += ", %.2f at the end" % os.getloadavg()[0]
        except OSError:
            pass
        text = report(args, info, summary, agreement, machine, runs)
        print()
        print(text)
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(
                {"machine": machine, "started": started, "finished": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                 "info": info, "settings": {k: v for k, v in vars(args).items()}, "summary": summary,
                 "agreement": agreement, "runs": runs, "report": text}, indent=1, default=str))
            print(f"\nwrote {args.json}")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
