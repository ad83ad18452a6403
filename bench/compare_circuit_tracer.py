"""Our attribution engine against circuit-tracer 0.5.0, side by side, in one command.

    bash bench/setup_circuit_tracer.sh          # once: bench/.venv-ct with circuit-tracer 0.5.0
    python bench/compare_circuit_tracer.py      # in the project's virtualenv

Same toy model (tracer/data/toy-vlm), same transcoders, same text-only prompt (the same token
ids), same settings (max_feature_nodes, batch_size, max_n_logits, desired_logit_prob, torch
threads, lazy decoder / eager encoder). Each tool runs in a fresh subprocess of its own
virtualenv (worker_ours.py, worker_circuit_tracer.py), `--rounds` times, interleaved and in
alternating order because the machine is shared and noisy. In each process only the
attribution call is timed (`--repeats` calls: the first is "cold", the others "warm"), in wall
time and in CPU time (steadier on a shared machine: with one thread it is the work done);
import and model/transcoder load are reported apart; peak memory is the process's peak RSS
(getrusage), measured the same way in both. Then the two graphs of the last round are
matched node by node and their edges compared.

What has to be bridged for a fair comparison (docs/design.md §6, docs/benchmarks.md):

- circuit-tracer ignores `top_k` in config.yaml (a TopK set would load as plain ReLU there),
  so both tools are handed a set whose activation both implement the same way. By default
  (`--activation auto`) a ReLU or JumpReLU set is used as it is, and a TopK set is replaced by
  a JumpReLU copy (same W_enc, b_enc, W_dec, b_dec, W_skip) whose per-layer threshold is
  calibrated on the prompt so that on average k features fire per position, i.e. the
  sparsity of the TopK set. `--activation relu` writes a plain ReLU copy instead.
- circuit-tracer's Gemma3 `hook_mlp_out` is after post_feedforward_layernorm and it has no
  `mlp.hook_out`: its worker adds that entry (the raw MLP output) to its mapping table.
- Excluded positions: circuit-tracer zeroes position 0 (0-3 for gemma-3 "-it" names); its
  worker sets them to our excluded chat-template prefix. Its error nodes at those positions
  are zero vectors; we have no nodes there. Only nodes both have are compared.
- circuit-tracer's token-embedding edges use the unscaled embedding rows (Gemma scales them
  by sqrt(d_model) inside the model): they are compared after multiplying by sqrt(d_model),
  and reported apart from the feature and error edges.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
DEFAULT_CT_PYTHON = HERE / ".venv-ct" / "bin" / "python"


# ----------------------------------------------------------------------------- inputs
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model folder (default: the shipped toy VLM)")
    p.add_argument("--transcoders", default=None,
                   help="transcoder folder (default: the shipped tracer/data/toy-plt when it exists, else a random "
                        "TopK set written for this run)")
    p.add_argument("--prompt", default="What color is grass?", help="text-only question (default: %(default)r)")
    p.add_argument("--no-chat", action="store_true", help="do not apply the chat template")
    p.add_argument("--activation", choices=["auto", "jumprelu", "relu", "as-is"], default="auto",
                   help="what both tools get: auto = the set itself if it is ReLU/JumpReLU, a calibrated JumpReLU "
                        "copy of a TopK set (default); relu = a ReLU copy; jumprelu = a calibrated JumpReLU copy")
    p.add_argument("--max-feature-nodes", type=int, default=None,
                   help="default: every active feature (so that the graphs can be compared edge by edge)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-n-logits", type=int, default=10)
    p.add_argument("--desired-logit-prob", type=float, default=0.95)
    p.add_argument("--rounds", type=int, default=None,
                   help="subprocess pairs, interleaved (default: 5; 2 per cell with --sweep, 1 with --quick)")
    p.add_argument("--repeats", type=int, default=None,
                   help="attribution calls per process; the first is reported as cold (default: 3; 2 with --sweep)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads in both (default: %(default)s; on a shared, loaded 2-core machine more threads "
                        "mostly measure scheduler contention)")
    p.add_argument("--omp-wait-policy", choices=["default", "passive", "active"], default="default",
                   help="OMP_WAIT_POLICY for both workers (passive: idle OpenMP threads sleep instead of spinning, "
                        "which matters with --threads > 1 on a loaded machine)")
    p.add_argument("--lazy-encoder", action="store_true", help="both tools read encoder rows lazily")
    p.add_argument("--eager-decoder", action="store_true", help="both tools load the decoders whole")
    p.add_argument("--random-width", type=int, default=2048, help="width of the random TopK set (no shipped set)")
    p.add_argument("--random-k", type=int, default=32, help="k of the random TopK set (no shipped set)")
    p.add_argument("--ct-python", default=str(DEFAULT_CT_PYTHON), help="python of circuit-tracer's virtualenv")
    p.add_argument("--timeout", type=float, default=1800, help="seconds per subprocess")
    p.add_argument("--keep", default=None, help="keep the work folder (sets, specs, graphs) here")
    p.add_argument("--json", default=None, help="also write all results to this JSON file")
    p.add_argument("--sweep", action="store_true",
                   help="the size sweep: prompt tokens x explored feature nodes (--sweep-tokens, --sweep-nodes), "
                        "one table of warm / first-call / peak-growth ratios, plus our image-prompt phases")
    p.add_argument("--quick", action="store_true", help="with --sweep: a small subset (a smoke test, ~2 min)")
    p.add_argument("--sweep-tokens", default=None, help="comma-separated prompt lengths (default 14,60,120)")
    p.add_argument("--sweep-nodes", default=None, help="comma-separated feature-node budgets, 'all' = every "
                                                         "active feature (default 500,2000,all)")
    p.add_argument("--plot", default=None, help="with --sweep: write the time plot here (PNG; needs matplotlib)")
    args = p.parse_args(argv)
    if args.rounds is None:
        args.rounds = (1 if args.quick else 2) if args.sweep else 5
    if args.repeats is None:
        args.repeats = 2 if args.sweep else 3
    if args.quick and not args.sweep:
        p.error("--quick goes with --sweep")
    return args


def write_random_topk_set(folder: Path, d_model: int, n_layers: int, width: int, k: int, seed: int = 0) -> Path:
    import torch

    from tracer.transcoders import PerLayerTranscoder, TopK, TranscoderSet, save_transcoder_set

    gen = torch.Generator().manual_seed(seed)
    tset = TranscoderSet([PerLayerTranscoder.init_random(layer, d_model, width, TopK(k), generator=gen)
                          for layer in range(n_layers)])
    return save_transcoder_set(tset, folder, model_name="toy-vlm", num_model_layers=n_layers)


def prompt_of_length(processor, adapter, n_tokens: int, chat: bool = True) -> str:
    """A question of exactly n_tokens tokens (chat template included): the benchmark question after
    a filler of words the toy vocabulary has whole."""
    from tracer.models.base import prepare_prompt

    filler = "the sky is blue and the grass is green and the sea is blue and a lemon is yellow and".split()
    words = []
    while True:
        text = " ".join(words + ["What color is grass?"])
        n = len(prepare_prompt(processor, text, None, chat=chat, adapter=adapter).input_ids)
        if n == n_tokens:
            return text
        if n > n_tokens:
            raise SystemExit(f"no prompt of exactly {n_tokens} tokens (shortest: {n})")
        words.append(filler[len(words) % len(filler)])


def prepare_inputs(args, work: Path, question: str | None = None) -> dict:
    """Tokenise the prompt, resolve and (if needed) convert the transcoder set, once, here."""
    import torch

    from tracer.attribution.record import record_forward
    from tracer.models.base import get_adapter, prepare_prompt
    from tracer.models.loading import load_vlm, resolve_model_ref
    from tracer.transcoders import JumpReLU, PerLayerTranscoder, ReLU, TopK, TranscoderSet, load_transcoder_set
    from tracer.transcoders import save_transcoder_set
    from tracer.transcoders.loading import default_transcoders_dir

    model_dir = Path(resolve_model_ref(args.model)).resolve()
    model, processor = load_vlm(str(model_dir))
    adapter = get_adapter(model)
    prompt = prepare_prompt(processor, args.prompt if question is None else question, None, chat=not args.no_chat,
                            adapter=adapter)

    source_note = ""
    if args.transcoders:
        source = Path(args.transcoders).resolve()
    elif (default_transcoders_dir() / "config.yaml").exists():
        source = default_transcoders_dir()
        source_note = "shipped toy set"
    else:
        source = write_random_topk_set(work / "random-topk", adapter.d_model, adapter.n_layers,
                                       args.random_width, args.random_k)
        source_note = (f"random TopK set (width {args.random_width}, k {args.random_k}, seed 0): "
                       f"{default_transcoders_dir()} does not exist yet")
    tset = load_transcoder_set(source, lazy_decoder=False, lazy_encoder=False)
    act = next(iter(tset)).activation
    kind = type(act).__name__
    mode = args.activation
    if mode == "auto":
        mode = "jumprelu" if isinstance(act, TopK) else "as-is"
    if mode == "as-is" and isinstance(act, TopK):
        raise SystemExit("circuit-tracer ignores top_k: a TopK set cannot be compared as it is "
                         "(use --activation auto, jumprelu or relu)")
    desc = {"source": str(source), "source_note": source_note, "source_activation": repr(act), "mode": mode}
    if mode == "as-is":
        compare_dir = source
    else:
        record = record_forward(adapter, prompt)
        first = prompt.prefix_length
        k = getattr(act, "k", None)
        layers, thresholds = [], {}
        for tc in tset:
            x = record.layers[tc.layer].mlp_in[first:].float()
            if mode == "jumprelu":
                pre = torch.nn.functional.linear(x, tc.W_enc.float(), tc.b_enc.float()).flatten()
                per_pos = k if k is not None else int(((tc.encode(x) > 0).sum(1).float().mean()).item() or 1)
                count = min(pre.numel() - 1, per_pos * x.shape[0])
                theta = max(float(torch.sort(pre, descending=True).values[count]), 0.0)
                thresholds[tc.layer] = theta
                new_act = JumpReLU(torch.full((tc.d_transcoder,), theta, dtype=tc.b_enc.dtype))
            else:
                new_act = ReLU()
            layers.append(PerLayerTranscoder(
                tc.layer, tc.W_enc.detach().clone(), tc.b_enc.detach().clone(), tc.W_dec.detach().clone(),
                tc.b_dec.detach().clone(), new_act, None if tc.W_skip is None else tc.W_skip.detach().clone()))
        compare_dir = save_transcoder_set(
            TranscoderSet(layers, config={k2: v for k2, v in tset.config.items() if k2 not in ("top_k",)}),
            work / f"compare-{mode}", num_model_layers=adapter.n_layers)
        if mode == "jumprelu":
            desc["thresholds"] = thresholds
            desc["calibrated_on"] = "the benchmark prompt's kept positions: k features per position on average"
    info = {
        "model": str(model_dir),
        "transcoders": str(compare_dir),
        "transcoders_desc": desc,
        "prompt_text": prompt.text,
        "input_ids": [int(i) for i in prompt.input_ids],
        "tokens": list(prompt.tokens),
        "prefix_length": int(prompt.prefix_length),
        "d_model": int(adapter.d_model),
        "n_layers": int(adapter.n_layers),
        "activation_kind": kind,
    }
    del model, adapter, tset
    return info


# ----------------------------------------------------------------------------- running
def run_worker(tool: str, python: str, spec: dict, work: Path, timeout: float, env: dict,
               other: str = "worker_circuit_tracer.py") -> dict:
    """One worker process (ours, or `other` in its own virtualenv) on spec; its result.json, with the
    process's wall time and the load average when it started."""
    out_dir = Path(spec["out_dir"])
    out_dir.mkdir(parents=True, exist_ok=True)
    spec_path = out_dir / "spec.json"
    spec_path.write_text(json.dumps(spec, indent=1))
    script = HERE / ("worker_ours.py" if tool == "ours" else other)
    load = os.getloadavg()[0]
    t = time.perf_counter()
    proc = subprocess.run([python, str(script), str(spec_path)], cwd=str(ROOT), env=env, capture_output=True,
                          text=True, timeout=timeout)
    wall = time.perf_counter() - t
    (out_dir / "stdout.txt").write_text(proc.stdout)
    (out_dir / "stderr.txt").write_text(proc.stderr)
    if proc.returncode != 0:
        sys.stderr.write(proc.stderr[-6000:])
        raise SystemExit(f"{tool} worker failed (exit {proc.returncode}); its output is in {out_dir}")
    result = json.loads((out_dir / "result.json").read_text())
    result["process_wall_s"] = wall
    result["load_average_before"] = load
    return result


def worker_env(threads: int, wait_policy: str = "default") -> dict:
    env = dict(os.environ)
    if wait_policy != "default":
        env["OMP_WAIT_POLICY"] = wait_policy.upper()
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[key] = str(threads)
    env.update(TOKENIZERS_PARALLELISM="false", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               HF_HUB_DISABLE_TELEMETRY="1", PYTHONWARNINGS="ignore", TQDM_DISABLE="1")
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("VIRTUAL_ENV", None)
    return env


# ----------------------------------------------------------------------------- agreement
class _Stats:
    """Running agreement statistics of two arrays fed a block at a time (float64 per block only)."""

    def __init__(self):
        self.n, self.max_diff, self.max_abs, self.sq_diff, self.sq_ours, self.sq_theirs = 0, 0.0, 0.0, 0.0, 0.0, 0.0

    def add(self, ours: np.ndarray, theirs: np.ndarray) -> "_Stats":
        if ours.size:
            o, t = ours.astype(np.float64).ravel(), theirs.astype(np.float64).ravel()
            d = o - t
            self.n += o.size
            self.max_diff = max(self.max_diff, float(np.abs(d).max()))
            self.max_abs = max(self.max_abs, float(np.abs(o).max()))
            self.sq_diff += float(d @ d)
            self.sq_ours += float(o @ o)
            self.sq_theirs += float(t @ t)
        return self

    def result(self) -> dict:
        fro = math.sqrt(self.sq_ours)
        return {"n": self.n, "max_abs_diff": self.max_diff, "max_abs": self.max_abs,
                "rel_max": self.max_diff / self.max_abs if self.max_abs > 0 else self.max_diff,
                "rel_fro": math.sqrt(self.sq_diff) / fro if fro > 0 else math.sqrt(self.sq_theirs)}


def _stats(ours: np.ndarray, theirs: np.ndarray) -> dict:
    return _Stats().add(ours, theirs).result()


class _Rows:
    """Rows of a 2-D .npy file read on demand, so that a multi-GB adjacency never sits whole in memory."""

    def __init__(self, path: Path):
        self.path = path
        m = np.load(path, mmap_mode="r")  # only for the header: shape, dtype, data offset
        self.shape, self.dtype, self.offset, fortran = m.shape, m.dtype, m.offset, not m.flags.c_contiguous
        del m
        if fortran or len(self.shape) != 2:
            raise SystemExit(f"{path}: expected a C-ordered 2-D array")

    def take(self, rows: np.ndarray, cols: np.ndarray | None = None) -> np.ndarray:
        n_cols = self.shape[1]
        out = np.empty((len(rows), n_cols if cols is None else len(cols)), dtype=self.dtype)
        with open(self.path, "rb") as f:
            for i, r in enumerate(rows):
                f.seek(self.offset + int(r) * n_cols * self.dtype.itemsize)
                row = np.fromfile(f, dtype=self.dtype, count=n_cols)
                out[i] = row if cols is None else row[cols]
        return out


def compare_graphs(ours_dir: Path, ct_dir: Path, d_model: int, chunk: int = 256) -> dict:
    """Match the two graphs node by node and compare their edges, a chunk of rows at a time."""
    o = np.load(ours_dir / "graph.npz")
    c = np.load(ct_dir / "graph.npz")
    A_o, A_c = _Rows(ours_dir / "adjacency.npy"), _Rows(ct_dir / "adjacency.npy")
    n_layers, n_pos = int(c["n_layers"]), int(c["n_positions"])
    feats_o = o["features"]
    act_c = c["active_features"]
    sel_c = c["selected_features"]
    feats_c = act_c[sel_c]
    n_sel_c = len(sel_c)
    n_log_c = len(c["logit_token_ids"])
    N_c = A_c.shape[0]
    col_c = {tuple(int(v) for v in f): i for i, f in enumerate(feats_c)}
    # features of ours that circuit-tracer also selected
    common = [(i, col_c[tuple(int(v) for v in f)]) for i, f in enumerate(feats_o) if tuple(int(v) for v in f) in col_c]
    o_idx = np.array([i for i, _ in common], dtype=np.int64)
    c_idx = np.array([j for _, j in common], dtype=np.int64)
    all_active_c = {tuple(int(v) for v in f) for f in act_c}
    out = {
        "ours_features": int(len(feats_o)), "ct_selected_features": int(n_sel_c),
        "ct_active_features": int(len(act_c)), "common_features": int(len(common)),
        "ours_features_not_active_in_ct": int(sum(tuple(int(v) for v in f) not in all_active_c for f in feats_o)),
        "same_logit_targets": bool(np.array_equal(o["logit_token_ids"], c["logit_token_ids"])),
        "ours_logit_targets": o["logit_token_ids"].tolist(), "ct_logit_targets": c["logit_token_ids"].tolist(),
    }
    # activations of the common features
    act_vals_c = c["activation_values"]
    out["activations"] = _stats(o["activations"][o_idx], act_vals_c[sel_c][c_idx] if len(act_vals_c) == len(act_c)
                                else act_vals_c[c_idx])
    # logit probabilities
    if out["same_logit_targets"]:
        out["logit_probabilities"] = _stats(o["logit_probabilities"], c["logit_probabilities"])
    # rows: common features, then logits (when the targets agree)
    n_sel_o = len(feats_o)
    n_log_o = len(o["logit_token_ids"])
    if out["same_logit_targets"]:
        rows_o_log = n_sel_o + np.arange(n_log_o)
        rows_c_log = N_c - n_log_c + np.arange(n_log_c)
    else:
        rows_o_log = rows_c_log = np.zeros(0, dtype=np.int64)
    # columns
    errs_o = o["errors"]
    n_err_o = len(errs_o)
    cols_o_err = n_sel_o + np.arange(n_err_o)
    cols_c_err = n_sel_c + errs_o[:, 0] * n_pos + errs_o[:, 1]
    cols_o_emb = n_sel_o + n_err_o + np.arange(n_pos)
    cols_c_emb = n_sel_c + n_layers * n_pos + np.arange(n_pos)
    # what circuit-tracer has in the compared rows outside the mapped columns (its error nodes at
    # excluded positions, features we did not select): should be zero when all features are explored
    mapped = np.zeros(N_c, dtype=bool)
    mapped[c_idx] = True
    mapped[cols_c_err] = True
    mapped[cols_c_emb] = True
    unmapped = np.flatnonzero(~mapped)
    cols_o = np.concatenate([o_idx, cols_o_err, cols_o_emb])
    cols_c = np.concatenate([c_idx, cols_c_err, cols_c_emb, unmapped])
    nf, ne, nm = len(o_idx), len(cols_o_err), len(cols_o_emb)
    scale = math.sqrt(d_model)
    names = ("feature", "error", "embedding (ct x sqrt(d))")
    stats = {f"{r} <- {k}": _Stats() for r in ("feature", "logit") for k in names}
    fe, unmapped_max = _Stats(), 0.0
    for rname, ro, rc in (("feature", o_idx, c_idx), ("logit", rows_o_log, rows_c_log)):
        for s in range(0, len(ro), chunk):
            Ro, Rc = A_o.take(ro[s:s + chunk], cols_o), A_c.take(rc[s:s + chunk], cols_c)
            parts_o = (Ro[:, :nf], Ro[:, nf:nf + ne], Ro[:, nf + ne:])
            parts_c = (Rc[:, :nf], Rc[:, nf:nf + ne], Rc[:, nf + ne:nf + ne + nm] * scale)
            for k, po, pc in zip(names, parts_o, parts_c):
                stats[f"{rname} <- {k}"].add(po, pc)
            fe.add(Ro[:, :nf + ne], Rc[:, :nf + ne])
            rest = Rc[:, nf + ne + nm:]
            if rest.size:
                unmapped_max = max(unmapped_max, float(np.abs(rest).max()))
    out["blocks"] = {k: v.result() for k, v in stats.items()}
    out["blocks"]["all feature + error edges"] = fe.result()
    out["ct_unmapped_max_abs"] = unmapped_max
    return out


# ----------------------------------------------------------------------------- report
def _med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def summarize(results: dict) -> dict:
    s = {}
    for tool, runs in results.items():
        cold = [r["attribution_s"][0] for r in runs]
        warm = [t for r in runs for t in r["attribution_s"][1:]]
        cold_cpu = [r["attribution_cpu_s"][0] for r in runs]
        warm_cpu = [t for r in runs for t in r["attribution_cpu_s"][1:]]
        s[tool] = {
            "cold_s": _med(cold), "warm_s": _med(warm) if warm else float("nan"),
            "cold_cpu_s": _med(cold_cpu), "warm_cpu_s": _med(warm_cpu) if warm_cpu else float("nan"),
            "cold_all": cold, "warm_all": warm,
            "load_s": _med([r["load_s"] for r in runs]), "import_s": _med([r["import_s"] for r in runs]),
            "startup_s": _med([r["load_s"] + r["import_s"] for r in runs]),
            "peak_rss_mb": _med([r["peak_rss_mb"] for r in runs]),
            "rss_after_load_mb": _med([r["rss_after_load_mb"] for r in runs]),
            "growth_mb": _med([r["peak_rss_mb"] - r["rss_after_load_mb"] for r in runs]),
            "process_wall_s": _med([r["process_wall_s"] for r in runs]),
        }
    # per round, the two processes ran back to back under about the same machine load: the median of
    # the per-round ratios is steadier than the ratio of the medians
    paired = {}
    for key, pick in (("warm_s", lambda r: _med(r["attribution_s"][1:]) if len(r["attribution_s"]) > 1 else None),
                      ("cold_s", lambda r: r["attribution_s"][0]),
                      ("warm_cpu_s", lambda r: _med(r["attribution_cpu_s"][1:]) if len(r["attribution_cpu_s"]) > 1
                       else None)):
        ratios = []
        for ro, rc in zip(results["ours"], results["circuit-tracer"]):
            a, b = pick(ro), pick(rc)
            if a and b:
                ratios.append(b / a)
        paired[key] = {"median": _med(ratios), "all": ratios}
    s["paired_ratios"] = paired
    return s


def fmt_table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
    sep = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), sep] + [line(r) for r in rows])


def report(args, info: dict, results: dict, agreement: dict, machine: str) -> str:
    s = summarize(results)
    o, c = s["ours"], s["circuit-tracer"]
    r0o, r0c = results["ours"][0], results["circuit-tracer"][0]
    out = []
    out.append(f"machine: {machine}")
    out.append(f"model: {info['model']}  ({info['n_layers']} layers, d_model {info['d_model']})")
    d = info["transcoders_desc"]
    out.append(f"transcoders: {d['source']}" + (f"  [{d['source_note']}]" if d["source_note"] else ""))
    out.append(f"  source activation: {d['source_activation']}; both tools get: {d['mode']}"
               + ("" if d["mode"] == "as-is" else f" copy {info['transcoders']}"))
    if d.get("thresholds"):
        out.append("  JumpReLU thresholds per layer: "
                   + ", ".join(f"{l}: {t:.4g}" for l, t in d["thresholds"].items())
                   + f" ({d['calibrated_on']})")
    out.append(f"prompt: {info['prompt_text']!r}  ({len(info['input_ids'])} tokens, "
               f"first {info['prefix_length']} excluded from feature/error nodes in both)")
    mfn = "all" if args.max_feature_nodes is None else args.max_feature_nodes
    out.append(f"settings: max_feature_nodes={mfn} batch_size={args.batch_size} max_n_logits={args.max_n_logits} "
               f"desired_logit_prob={args.desired_logit_prob} threads={args.threads} "
               f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset') if args.omp_wait_policy == 'default' else args.omp_wait_policy.upper()} float32 "
               f"encoder={'lazy' if args.lazy_encoder else 'eager'} decoder={'eager' if args.eager_decoder else 'lazy'}")
    out.append(f"active features: ours {r0o['n_active_features']}, circuit-tracer {r0c['n_active_features']}; "
               f"explored: ours {r0o['n_selected_features']}, circuit-tracer {r0c['n_selected_features']}; "
               f"logit targets: {r0o['n_logits']} / {r0c['n_logits']}")
    out.append(f"versions: ours torch {r0o['versions']['torch']} transformers {r0o['versions']['transformers']}; "
               f"circuit-tracer {r0c['versions']['circuit_tracer']} torch {r0c['versions']['torch']} "
               f"transformers {r0c['versions']['transformers']} nnsight {r0c['versions']['nnsight']}")
    out.append(f"runs: {args.rounds} processes per tool, interleaved; {args.repeats} attribution calls per process "
               "(first = cold); medians")
    out.append("")

    def ratio(a, b):
        return f"{a / b:.2f}x" if b and b == b and a == a else "n/a"

    pr = s["paired_ratios"]
    rows = [
        ["attribution, warm call (s)", f"{o['warm_s']:.3f}", f"{c['warm_s']:.3f}", ratio(c["warm_s"], o["warm_s"])],
        ["  same, CPU time (s)", f"{o['warm_cpu_s']:.3f}", f"{c['warm_cpu_s']:.3f}",
         ratio(c["warm_cpu_s"], o["warm_cpu_s"])],
        ["attribution, first call (s)", f"{o['cold_s']:.3f}", f"{c['cold_s']:.3f}", ratio(c["cold_s"], o["cold_s"])],
        ["  same, CPU time (s)", f"{o['cold_cpu_s']:.3f}", f"{c['cold_cpu_s']:.3f}",
         ratio(c["cold_cpu_s"], o["cold_cpu_s"])],
        ["model + transcoder load (s)", f"{o['load_s']:.2f}", f"{c['load_s']:.2f}", ratio(c["load_s"], o["load_s"])],
        ["imports (s)", f"{o['import_s']:.2f}", f"{c['import_s']:.2f}", ratio(c["import_s"], o["import_s"])],
        ["start-up: imports + load (s)", f"{o['startup_s']:.2f}", f"{c['startup_s']:.2f}",
         ratio(c["startup_s"], o["startup_s"])],
        ["peak RSS of the process (MB)", f"{o['peak_rss_mb']:.0f}", f"{c['peak_rss_mb']:.0f}",
         ratio(c["peak_rss_mb"], o["peak_rss_mb"])],
        ["RSS after load (MB)", f"{o['rss_after_load_mb']:.0f}", f"{c['rss_after_load_mb']:.0f}",
         ratio(c["rss_after_load_mb"], o["rss_after_load_mb"])],
        ["peak growth during attribution (MB)", f"{o['growth_mb']:.0f}", f"{c['growth_mb']:.0f}",
         ratio(c["growth_mb"], o["growth_mb"])],
    ]
    out.append(fmt_table(rows, ["", "ours", "circuit-tracer", "circuit-tracer / ours"]))
    out.append("")
    out.append("speed-up per round (circuit-tracer / ours, both processes of a round ran back to back): "
               + "; ".join(f"{name} median {pr[key]['median']:.2f}x ({', '.join(f'{x:.2f}' for x in pr[key]['all'])})"
                           for key, name in (("warm_s", "warm"), ("warm_cpu_s", "warm CPU"), ("cold_s", "first call"))
                           if pr[key]["all"]))
    out.append("all timings (s): ours warm " + ", ".join(f"{t:.3f}" for t in o["warm_all"])
               + " | cold " + ", ".join(f"{t:.3f}" for t in o["cold_all"]))
    out.append("                 circuit-tracer warm " + ", ".join(f"{t:.3f}" for t in c["warm_all"])
               + " | cold " + ", ".join(f"{t:.3f}" for t in c["cold_all"]))
    phases = [r.get("phases_s") for r in results["ours"]]
    if phases and phases[-1]:
        last = phases[-1][-1]
        out.append("ours, phases of the last call (s): " + ", ".join(f"{k} {v:.3f}" for k, v in last.items()))
    out.append("")
    a = agreement
    out.append(f"agreement (last round's graphs): features ours {a['ours_features']}, circuit-tracer "
               f"{a['ct_selected_features']} selected of {a['ct_active_features']} active, common {a['common_features']}; "
               f"ours not active in circuit-tracer: {a['ours_features_not_active_in_ct']}; "
               f"same logit targets: {a['same_logit_targets']}")
    rows = []
    for name, st in [("activations", a["activations"])] + (
            [("logit probabilities", a["logit_probabilities"])] if "logit_probabilities" in a else []) + \
            list(a["blocks"].items()):
        rows.append([name, str(st["n"]), f"{st['max_abs_diff']:.3g}", f"{st['max_abs']:.3g}", f"{st['rel_max']:.3g}",
                     f"{st['rel_fro']:.3g}"])
    out.append(fmt_table(rows, ["edges (target <- source)", "n", "max |diff|", "max |ours|", "rel (max)", "rel (fro)"]))
    out.append(f"circuit-tracer edges outside the matched nodes (its zeroed-position errors, unselected features): "
               f"max |w| = {a['ct_unmapped_max_abs']:.3g}")
    return "\n".join(out)


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemTotal"):
                mem = f", {int(line.split()[1]) / 1024 ** 2:.0f} GiB RAM"
                break
    except OSError:
        pass
    try:
        load = ", load average %.2f at start" % os.getloadavg()[0]
    except OSError:
        load = ""
    return f"{os.cpu_count()} CPU cores ({cpu}){mem}, {platform.system()} {platform.release()}{load}"


def run_rounds(args, base: dict, work: Path, env: dict, pythons: dict, input_ids: list[int] | None,
               label: str = "") -> dict:
    """args.rounds interleaved process pairs (alternating which tool goes first); the last saves its graph."""
    results = {"ours": [], "circuit-tracer": []}
    for rnd in range(args.rounds):
        order = ["ours", "circuit-tracer"] if rnd % 2 == 0 else ["circuit-tracer", "ours"]
        for tool in order:
            spec = dict(base, out_dir=str(work / f"round{rnd}" / tool), save_graph=rnd == args.rounds - 1)
            print(f"{label}round {rnd + 1}/{args.rounds}: {tool} ...", end=" ", flush=True)
            r = run_worker(tool, pythons[tool], spec, work, args.timeout, env)
            print(", ".join(f"{t:.2f}s" for t in r["attribution_s"]) + f" (peak {r['peak_rss_mb']:.0f} MB)",
                  flush=True)
            if input_ids is not None and r["input_ids"] != input_ids:
                raise SystemExit(f"{tool} saw different tokens: {r['input_ids']} vs {input_ids}")
            results[tool].append(r)
    return results


def worker_base(args, info: dict, max_feature_nodes) -> dict:
    return {
        "model": info["model"], "transcoders": info["transcoders"], "input_ids": info["input_ids"],
        "prompt": info["prompt_text"], "prefix_length": info["prefix_length"],
        "max_feature_nodes": max_feature_nodes, "batch_size": args.batch_size,
        "max_n_logits": args.max_n_logits, "desired_logit_prob": args.desired_logit_prob,
        "threads": args.threads, "repeats": args.repeats,
        "lazy_encoder": bool(args.lazy_encoder), "lazy_decoder": not args.eager_decoder,
    }


# ----------------------------------------------------------------------------- the sweep
def _int_list(text: str) -> list:
    return [None if x.strip() == "all" else int(x) for x in text.split(",") if x.strip()]


def run_sweep(args, ct_python: Path, machine: str, work: Path) -> dict:
    """Every (prompt tokens, feature nodes) cell side by side, then our image-prompt phases."""
    from tracer.models.base import get_adapter
    from tracer.models.loading import load_vlm, resolve_model_ref

    tokens = _int_list(args.sweep_tokens or ("14,60" if args.quick else "14,60,120"))
    budgets = _int_list(args.sweep_nodes or ("500,all" if args.quick else "500,2000,all"))
    budgets = sorted(budgets, key=lambda b: (b is not None, b or 0))  # "all" first: it gives the active count
    model, processor = load_vlm(str(resolve_model_ref(args.model)))
    adapter = get_adapter(model)
    questions = {n: prompt_of_length(processor, adapter, n, chat=not args.no_chat) for n in tokens}
    del model, adapter
    env = worker_env(args.threads, args.omp_wait_policy)
    pythons = {"ours": sys.executable, "circuit-tracer": str(ct_python)}
    cells = []
    for n_tok in tokens:
        folder = work / f"tokens{n_tok}"
        folder.mkdir(parents=True, exist_ok=True)
        print(f"preparing the {n_tok}-token prompt ...", flush=True)
        info = prepare_inputs(args, folder, questions[n_tok])
        n_active = None
        for budget in budgets:
            if budget is not None and n_active is not None and budget >= n_active:
                continue  # the same graph as "all"
            cell_dir = folder / f"nodes{budget or 'all'}"
            label = f"[{n_tok} tokens, {budget or 'all'} nodes] "
            results = run_rounds(args, worker_base(args, info, budget), cell_dir, env, pythons, info["input_ids"],
                                 label)
            n_active = results["ours"][0]["n_active_features"]
            last = cell_dir / f"round{args.rounds - 1}"
            agreement = compare_graphs(last / "ours", last / "circuit-tracer", info["d_model"])
            if not args.keep:
                for tool in ("ours", "circuit-tracer"):
                    (last / tool / "adjacency.npy").unlink(missing_ok=True)
            cells.append({"tokens": n_tok, "budget": budget, "n_active": n_active,
                          "explored": results["ours"][0]["n_selected_features"],
                          "summary": summarize(results), "runs": results, "agreement": agreement,
                          "transcoders_desc": info["transcoders_desc"]})
    images = run_image_phases(args, budgets, work / "image", env)
    return {"machine": machine, "cells": cells, "image": images}


def run_image_phases(args, budgets: list, work: Path, env: dict) -> list[dict]:
    """Ours only (circuit-tracer takes no images): a toy-world image + question, the shipped transcoders;
    time and peak RSS growth of each phase of the warm call, per feature-node budget."""
    from tracer.toy import world
    from tracer.transcoders.loading import default_transcoders_dir

    work.mkdir(parents=True, exist_ok=True)
    ex = world.make_example("heldout", 3, question_type="color")
    image_path = work / "image.png"
    ex.image().save(image_path)
    out = []
    for budget in budgets:
        spec = {"model": str(resolve_model_dir(args)), "transcoders": str(default_transcoders_dir()),
                "prompt": ex.question, "image": str(image_path), "chat": True, "max_feature_nodes": budget,
                "batch_size": args.batch_size, "max_n_logits": args.max_n_logits,
                "desired_logit_prob": args.desired_logit_prob, "threads": args.threads, "repeats": args.repeats,
                "lazy_encoder": bool(args.lazy_encoder), "lazy_decoder": not args.eager_decoder,
                "out_dir": str(work / f"nodes{budget or 'all'}")}
        print(f"[image prompt, {budget or 'all'} nodes] ours ...", end=" ", flush=True)
        r = run_worker("ours", sys.executable, spec, work, args.timeout, env)
        print(", ".join(f"{t:.2f}s" for t in r["attribution_s"]) + f" (peak {r['peak_rss_mb']:.0f} MB)", flush=True)
        out.append({"budget": budget, "question": ex.question, "run": r})
    return out


def resolve_model_dir(args) -> Path:
    from tracer.models.loading import resolve_model_ref

    return Path(resolve_model_ref(args.model)).resolve()


def sweep_report(sweep: dict, args) -> str:
    out = [f"machine: {sweep['machine']}",
           f"settings: batch_size={args.batch_size} max_n_logits={args.max_n_logits} "
           f"desired_logit_prob={args.desired_logit_prob} threads={args.threads} float32; "
           f"{args.rounds} process pair(s) per cell, {args.repeats} calls each (first = cold); medians; "
           "ratios = circuit-tracer / ours, per round then median", ""]
    rows = []
    for c in sweep["cells"]:
        s = c["summary"]
        o, t, pr = s["ours"], s["circuit-tracer"], s["paired_ratios"]
        nodes = f"all ({c['explored']:,})" if c["budget"] is None else f"{c['explored']:,}"
        fe = c["agreement"]["blocks"]["all feature + error edges"]
        rows.append([str(c["tokens"]), nodes, f"{o['warm_s']:.3f}", f"{t['warm_s']:.3f}",
                     f"{pr['warm_s']['median']:.1f}x", f"{pr['warm_cpu_s']['median']:.1f}x",
                     f"{pr['cold_s']['median']:.1f}x", f"{o['growth_mb']:.0f}", f"{t['growth_mb']:.0f}",
                     f"{t['growth_mb'] / max(o['growth_mb'], 1e-9):.2f}x", f"{fe['rel_max']:.1e}"])
    out.append(fmt_table(rows, ["tokens", "feature nodes", "ours warm s", "CT warm s", "warm", "warm CPU",
                                "first call", "ours growth MB", "CT growth MB", "growth CT/ours",
                                "edges rel diff"]))
    if sweep.get("image"):
        out.append("")
        out.append(f"image prompt (ours; {sweep['image'][0]['question']!r} + one 64x64 toy image, shipped transcoders): "
                   "warm call, time (s) / peak RSS growth (MB) per phase")
        names = list(sweep["image"][0]["run"]["phases_s"][-1])
        rows = []
        for im in sweep["image"]:
            r = im["run"]
            ph, mem = r["phases_s"][-1], (r.get("phase_peak_growth_mb") or [{}])[-1]
            mem_key = {"logits": "logit lanes"}
            rows.append([f"{r['n_selected_features']:,}" + (" (all)" if im["budget"] is None else "")]
                        + [f"{ph.get(k, float('nan')):.3f} / {mem.get(mem_key.get(k, k), float('nan')):.0f}"
                           if k != "total" else f"{ph.get(k, float('nan')):.3f} / "
                           f"{r['peak_rss_mb'] - r['rss_after_load_mb']:.0f}" for k in names])
        out.append(fmt_table(rows, ["feature nodes"] + names))
    return "\n".join(out)


def main(argv=None) -> int:
    args = parse_args(argv)
    ct_python = Path(args.ct_python)
    if not ct_python.exists():
        raise SystemExit(f"{ct_python} not found: run `bash bench/setup_circuit_tracer.sh` first")
    machine = machine_description()
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="bench-ct-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        if args.sweep:
            sweep = run_sweep(args, ct_python, machine, work)
            try:
                sweep["machine"] += ", %.2f at the end" % os.getloadavg()[0]
            except OSError:
                pass
            text = sweep_report(sweep, args)
            print()
            print(text)
            if args.plot:
                from sweep_plot import plot_sweep  # bench/, next to this script

                print("plot:", plot_sweep(sweep, Path(args.plot)))
            if args.json:
                Path(args.json).write_text(json.dumps(dict(sweep, settings=vars(args), report=text), indent=1,
                                                      default=str))
            return 0
        print("preparing inputs ...", flush=True)
        info = prepare_inputs(args, work)
        env = worker_env(args.threads, args.omp_wait_policy)
        pythons = {"ours": sys.executable, "circuit-tracer": str(ct_python)}
        results = run_rounds(args, worker_base(args, info, args.max_feature_nodes), work, env, pythons,
                             info["input_ids"])
        last = work / f"round{args.rounds - 1}"
        agreement = compare_graphs(last / "ours", last / "circuit-tracer", info["d_model"])
        try:
            machine += ", %.2f at the end" % os.getloadavg()[0]
        except OSError:
            pass
        text = report(args, info, results, agreement, machine)
        print()
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps({"machine": machine, "info": info, "settings": vars(args),
                                                   "summary": summarize(results), "runs": results,
                                                   "agreement": agreement, "report": text}, indent=1, default=str))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
