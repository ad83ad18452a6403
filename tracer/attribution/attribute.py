"""Attribution graphs: one forward pass, batched backward lanes, influence-ordered exploration.

    graph = attribute(model, processor, transcoders, "What color is the circle?", image=img)

Phases: (1) run the model once and record the frozen quantities; (2) encode every layer's MLP
input with its transcoder (active features, reconstruction, error); (3) one backward lane per
target logit; (4) feature lanes in order of their influence on the targets (estimated from the
rows computed so far), until `max_feature_nodes` features are explored; (5) assemble the Graph:
rows of explored features and logits, columns of explored features, errors and embeddings, and
for each row the summed edges from active features that were not explored, so the sum rule
still closes.
"""

from __future__ import annotations

import math
import numbers
import sys
import time
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from tracer.attribution.budget import check_edge_budget, check_prompt_budget, graph_file_bytes
from tracer.attribution.record import compute_dtype_for, record_forward
from tracer.attribution.replacement import LocalReplacement
from tracer.attribution.targets import ResolvedTarget, resolve_targets
from tracer.errors import InputError
from tracer.graph.graph import Graph
from tracer.graph.pruning import graph_scores
from tracer.models.base import PromptInputs, VLMAdapter, get_adapter, prepare_prompt


@dataclass
class AttributionConfig:
    """Settings; names follow circuit-tracer's where they mean the same."""

    max_n_logits: int = 10
    desired_logit_prob: float = 0.95
    targets: list[str] | None = None  # tokens ("red", "#123") or contrasts ("red - blue")
    max_feature_nodes: int | None = 7500  # None: explore every active feature
    batch_size: int = 256
    exclude_prefix: bool = True  # no feature/error nodes at BOS and the chat-template prefix
    chat: bool = True  # apply the chat template to a plain prompt
    offload: str | None = None  # "cpu": keep the edge rows in host memory
    tf32: bool = False  # allow TF32 matmuls on GPUs (faster; inputs rounded to 10-bit mantissas)
    top_logit_k: int = 10  # promoted / suppressed tokens stored per feature
    feature_position_activations: bool = True
    progress: bool = True  # a tqdm progress bar
    # For programs driving long runs (the app's worker): called as on_progress(phase, done, total)
    # at every step; should_stop() is polled between batches and, when true, the run stops with
    # AttributionCancelled.
    on_progress: Callable[[str, int, int], None] | None = None
    should_stop: Callable[[], bool] | None = None

    def validate(self) -> None:
        """Raise SettingError for a setting that would give a wrong graph or none (the CLI, the app
        and library callers all pass through here)."""
        def count(name: str, low: int, none_ok: bool = False) -> None:
            value = getattr(self, name)
            if value is None and none_ok:
                return
            if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
                raise SettingError(f"{name} must be an integer of at least {low}"
                                   f"{' (or None: no limit)' if none_ok else ''}, got {value!r}")

        count("max_n_logits", 1)
        count("max_feature_nodes", 1, none_ok=True)
        count("batch_size", 1)
        count("top_logit_k", 0)
        p = self.desired_logit_prob
        if isinstance(p, bool) or not isinstance(p, numbers.Real) or not math.isfinite(p) or not 0 < p <= 1:
            raise SettingError(f"desired_logit_prob must be above 0 and at most 1, got {p!r}")
        if self.offload not in (None, "cpu"):
            raise SettingError(f"offload must be None or 'cpu', got {self.offload!r}")


class SettingError(InputError):
    """An attribution setting out of its range (e.g. max_feature_nodes 0, desired_logit_prob nan)."""


class AttributionCancelled(RuntimeError):
    """The run was stopped by its should_stop callback."""


class _Progress:
    """One tqdm bar with phases, mirrored to an optional callback; checks for cancellation."""

    def __init__(self, cfg: "AttributionConfig"):
        self.bar = tqdm(total=1, desc="forward", disable=not cfg.progress, unit="step")
        self.on_progress, self.should_stop = cfg.on_progress, cfg.should_stop
        self.name, self.done, self.total = "forward", 0, 1

    def note(self, text: str) -> None:
        """A line above the bar, on stderr with it (shown only when the bar is)."""
        if not self.bar.disable:
            self.bar.write(text, file=sys.stderr)

    def phase(self, name: str, total: int) -> None:
        self.check()
        self.name, self.done, self.total = name, 0, max(1, int(total))
        self.bar.reset(total=self.total)
        self.bar.set_description(name)
        self._notify()

    def update(self, n: int = 1) -> None:
        self.done += n
        self.bar.update(n)
        self._notify()
        self.check()

    def check(self) -> None:
        if self.should_stop is not None and self.should_stop():
            self.bar.close()
            raise AttributionCancelled("attribution cancelled")

    def _notify(self) -> None:
        if self.on_progress is not None:
            self.on_progress(self.name, self.done, self.total)

    def close(self) -> None:
        self.bar.close()


@dataclass
class AttributionResult:
    graph: Graph
    replacement: LocalReplacement
    targets: list[ResolvedTarget]
    timings: dict = field(default_factory=dict)


def attribute(model, processor, transcoders, prompt: str | PromptInputs, image=None, config: AttributionConfig | None = None,
              model_ref: str = "", transcoders_ref: str = "", slug: str = "", **overrides) -> Graph:
    """The attribution graph of the model's next token after prompt (+ image)."""
    return attribute_full(model, processor, transcoders, prompt, image, config, model_ref, transcoders_ref,
                          slug, **overrides).graph


@torch.no_grad()
def attribute_full(model, processor, transcoders, prompt: str | PromptInputs, image=None, config: AttributionConfig | None = None,
                   model_ref: str = "", transcoders_ref: str = "", slug: str = "", **overrides) -> AttributionResult:
    cfg = config or AttributionConfig()
    for key, value in overrides.items():
        if not hasattr(cfg, key):
            raise TypeError(f"unknown attribution setting {key!r}")
        setattr(cfg, key, value)
    cfg.validate()
    adapter = get_adapter(model)
    previous_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = bool(cfg.tf32)
    try:
        return _attribute(adapter, processor, transcoders, prompt, image, cfg, model_ref, transcoders_ref, slug)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous_tf32


def _attribute(adapter: VLMAdapter, processor, transcoders, prompt, image, cfg: AttributionConfig,
               model_ref: str, transcoders_ref: str, slug: str) -> AttributionResult:
    if hasattr(transcoders, "check_compatible"):
        transcoders.check_compatible(adapter)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    bar = _Progress(cfg)

    if isinstance(prompt, PromptInputs):  # already tokenised
        prompt_inputs = prompt
    else:
        prompt_inputs = prepare_prompt(
            processor, prompt, image, chat=cfg.chat, image_token_id=adapter.image_token_id,
            tokens_per_image=adapter.tokens_per_image, adapter=adapter,
        )
    check_prompt_budget(adapter, prompt_inputs)
    record = record_forward(adapter, prompt_inputs)
    bar.update(1)
    timings["forward"] = time.perf_counter() - t0

    first = prompt_inputs.prefix_length if cfg.exclude_prefix else 0
    if first >= prompt_inputs.n_positions:
        first = prompt_inputs.n_positions - 1
    bar.phase("encode", adapter.n_layers)
    rep = LocalReplacement(adapter, record, transcoders, first_position=first, device=adapter.device, progress=bar)
    timings["encode"] = time.perf_counter() - t0 - timings["forward"]

    tokenizer = getattr(processor, "tokenizer", processor)  # a text-only model's processor is its tokenizer
    targets = resolve_targets(cfg.targets, record.logits, adapter.unembedding, tokenizer,
                              cfg.max_n_logits, cfg.desired_logit_prob, dtype=rep.dtype)
    n_logits = len(targets)
    n_explore = rep.n_active if cfg.max_feature_nodes is None else min(cfg.max_feature_nodes, rep.n_active)
    check_edge_budget(rep, n_logits, n_explore, cfg)
    size = graph_file_bytes(n_explore, n_logits, rep.n_errors, rep.n_positions, 8 if rep.dtype == torch.float64 else 4)
    # the dense size: an upper bound, since files store the mostly-zero adjacency sparse when smaller
    bar.note(f"exploring {n_explore:,} of {rep.n_active:,} active features: the graph file will be at most "
             f"{size / 1e6:,.1f} MB" + (" (max_feature_nodes bounds it)" if size > 50e6 else ""))
    bar.phase("logit lanes", n_logits)
    store = torch.device("cpu") if cfg.offload == "cpu" else rep.device
    n_rows = n_logits + n_explore
    explore_all = n_explore == rep.n_active
    if explore_all:
        # Every feature explored: the lanes write straight into the graph's adjacency layout (rows:
        # features in global = (layer, position, feature) order, then logits; columns: rep's columns,
        # then the logits), so assembling needs no gather and no second copy of the matrix.
        edges = torch.zeros(n_rows, rep.n_columns + n_logits, dtype=rep.dtype, device=store)
        rows, logit_row = edges[:, :rep.n_columns], rep.n_active
    else:
        edges, logit_row = None, 0
        rows = torch.zeros(n_rows, rep.n_columns, dtype=rep.dtype, device=store)
    consts = torch.zeros(n_rows, dtype=rep.dtype, device=store)
    values = torch.zeros(n_rows, dtype=rep.dtype, device=store)
    bs = max(1, cfg.batch_size)

    directions = torch.stack([t.direction for t in targets]).to(rep.device, rep.dtype)
    values[logit_row:logit_row + n_logits] = (directions @ record.final_hidden.to(rep.device, rep.dtype)).to(store)
    for start in range(0, n_logits, bs):
        stop = min(n_logits, start + bs)
        lanes = torch.arange(stop - start, device=rep.device)
        consts[logit_row + start:logit_row + stop] = _lanes_into(
            rows[logit_row + start:logit_row + stop], rep, top=(lanes, rep.logit_injection(directions[start:stop])))
        bar.update(stop - start)
    timings["logits"] = time.perf_counter() - t0 - timings["forward"] - timings["encode"]

    bar.phase("features", n_explore)
    table = rep.active_table()  # (n_active, 3) on rep.device
    weights = torch.tensor([max(t.target.probability, 0.0) for t in targets], dtype=rep.dtype, device=store)
    weights = weights / weights.sum() if weights.sum() > 0 else torch.full_like(weights, 1.0 / n_logits)
    explored = torch.empty(0, dtype=torch.long, device=store)
    is_explored = torch.zeros(rep.n_active, dtype=torch.bool, device=store)
    # With every feature explored the order does not matter: go top layer first, one layer per batch,
    # positions ascending, which keeps each batch's lanes short (few layers, few positions).
    all_batches = [torch.arange(s, min(s + bs, rep.feature_offsets[l + 1]), device=store)
                   for l in range(rep.n_layers - 1, -1, -1)
                   for s in range(rep.feature_offsets[l], rep.feature_offsets[l + 1], bs)]
    feature_influence = None if explore_all else _Influence(rows, n_logits, weights, rep.n_active, rep.n_layers,
                                                             n_explore)
    while explored.numel() < n_explore:
        need = min(bs, n_explore - explored.numel())
        if explore_all:
            picked = all_batches.pop(0)
            need = picked.numel()
        else:
            influence = feature_influence(explored)
            influence[is_explored] = -1.0
            picked = torch.topk(influence, need).indices
        # lanes by layer (top first), then position: each run of one layer enters at once, and a
        # run of early positions stops early (see LocalReplacement.backward)
        picked_dev = picked.to(rep.device)
        order = torch.argsort(-table[picked_dev, 0] * rep.n_positions + table[picked_dev, 1], stable=True)
        picked, picked_dev = picked[order.to(store)], picked_dev[order]
        start = int(picked[0]) if explore_all else n_logits + explored.numel()
        for a, b in _lane_runs(table[picked_dev, 0], 1 if explore_all else 4):
            lanes_dev = picked_dev[a:b]
            layer = int(table[lanes_dev[0], 0])
            pos, feats = table[lanes_dev, 1], table[lanes_dev, 2]
            tc = transcoders[layer]
            enc = tc.encoder_rows(feats.cpu() if tc.lazy_encoder else feats.to(tc.b_enc.device))
            lanes = torch.arange(b - a, device=rep.device)
            consts[start + a:start + b] = _lanes_into(rows[start + a:start + b], rep,
                                                      injections={layer: (lanes, pos, rep.feature_injection(layer, pos, enc))})
            values[start + a:start + b] = rep.feature_target_values(layer, pos, enc).to(store)
        explored = torch.cat([explored, picked])
        is_explored[picked] = True
        bar.update(need)
    feature_influence = None  # its scratch buffer
    timings["features"] = time.perf_counter() - t0 - sum(timings.values())

    bar.phase("assemble", 1)
    graph = _assemble(rep, adapter, processor, prompt_inputs, targets, rows, consts, values, explored, table, cfg,
                      edges)
    graph.model = model_ref
    graph.transcoders = transcoders_ref or str(getattr(transcoders, "source", "") or "")
    graph.slug = slug
    graph.scan = graph.transcoders
    timings["assemble"] = time.perf_counter() - t0 - sum(timings.values())
    timings["total"] = time.perf_counter() - t0
    graph.info["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    graph.info["n_active_features"] = rep.n_active
    graph.info["logits_top"] = _top_tokens(record.logits, tokenizer, 5)
    bar.update(1)
    bar.close()
    return AttributionResult(graph, rep, targets, timings)


def _lane_runs(layers: torch.Tensor, max_splits: int, min_lanes: int = 64) -> list[tuple[int, int]]:
    """[a, b) runs of lanes sorted by layer: one run per layer, split into up to max_splits runs of
    at least min_lanes lanes (lanes sorted by position within a layer)."""
    runs = []
    bounds = torch.nonzero(layers[1:] != layers[:-1]).flatten().add(1).tolist()
    for a, b in zip([0] + bounds, bounds + [len(layers)]):
        k = max(1, min(max_splits, (b - a) // min_lanes))
        cuts = [a + (b - a) * i // k for i in range(k + 1)]
        runs += list(zip(cuts[:-1], cuts[1:]))
    return runs


def _lanes_into(out: torch.Tensor, rep: LocalReplacement, **lanes) -> torch.Tensor:
    """Run one batch of lanes, their rows written into `out` (zero-filled); returns their constants."""
    if out.device == rep.device:
        return rep.backward(out.shape[0], out=out, **lanes)[1].to(out.device)
    r, c = rep.backward(out.shape[0], **lanes)
    out.copy_(r)
    return c.to(out.device)


def _row_chunk(n_columns: int, elements: int = 1 << 26) -> int:
    """Rows per chunk so that a chunk of the edge matrix stays under `elements` entries."""
    return max(1, elements // max(1, n_columns))


class _Influence:
    """Influence of every active feature on the weighted targets, from the rows computed so far.

    Normalised matrix N = |rows| / row sums. Direct influence u = w @ N[logit rows]; explored
    features pass on what reaches them: x = u[explored] (I + M + M^2 + ...), M = N[feature rows,
    explored columns]; total = u + x @ N[feature rows]. Rows never change once computed, and
    features are only ever appended to `explored` (row n_logits + i is explored[i]'s), so the row
    sums, u and M are kept between calls, M grown by the new rows and columns only: each call makes
    one pass over the big matrix, not a gather of n_explored^2 entries from it.
    """

    def __init__(self, rows: torch.Tensor, n_logits: int, weights: torch.Tensor, n_active: int, n_layers: int,
                 n_explore: int | None = None):
        self.rows, self.n_logits, self.n_active, self.n_layers = rows, n_logits, n_active, n_layers
        self.n_explore = n_explore if n_explore is not None else rows.shape[0] - n_logits  # M's largest size
        self.inv = torch.zeros(rows.shape[0], dtype=rows.dtype, device=rows.device)
        self.done = 0
        self.M = torch.zeros(0, 0, dtype=rows.dtype, device=rows.device)  # M of the first m_size explored features
        self.m_size = 0
        self.buffer: torch.Tensor | None = None
        self._add_rows(n_logits)
        self.u = (weights * self.inv[:n_logits]) @ rows[:n_logits, :n_active].abs()

    def _add_rows(self, stop: int) -> None:
        chunk = _row_chunk(self.rows.shape[1])
        for s in range(self.done, stop, chunk):
            e = min(stop, s + chunk)
            sums = self.rows[s:e].abs().sum(1)
            self.inv[s:e] = torch.where(sums > 0, 1.0 / sums.clamp_min(1e-300), torch.zeros_like(sums))
        self.done = max(self.done, stop)

    def __call__(self, explored: torch.Tensor) -> torch.Tensor:
        n_logits, n_exp = self.n_logits, explored.numel()
        if n_exp == 0:
            return self.u.clone()
        self._add_rows(n_logits + n_exp)
        feat_rows = self.rows[n_logits:n_logits + n_exp]
        inv = self.inv[n_logits:n_logits + n_exp]
        M = self._grow_M(feat_rows, inv, explored)
        x = self.u[explored].clone()
        total = x.clone()
        for _ in range(self.n_layers + 1):
            x = x @ M
            if not bool(x.abs().sum() > 1e-12 * total.abs().sum()):
                break
            total += x
        scaled = total * inv
        out = self.u.clone()
        chunk = _row_chunk(self.rows.shape[1])
        for s in range(0, n_exp, chunk):
            part = feat_rows[s:s + chunk, :self.n_active]
            out += scaled[s:s + chunk] @ torch.abs(part, out=self._scratch(part.shape))
        return out

    def _grow_M(self, feat_rows: torch.Tensor, inv: torch.Tensor, explored: torch.Tensor) -> torch.Tensor:
        """M for the explored features: the kept block, plus the new features' columns (for the old
        rows) and rows (for every column)."""
        n, old = explored.numel(), self.m_size
        if n > self.M.shape[0]:  # room for the next batches too, but never more than the budget
            size = max(n, min(2 * self.M.shape[0], self.n_explore))
            grown = torch.zeros(size, size, dtype=self.M.dtype, device=self.M.device)
            grown[:old, :old] = self.M[:old, :old]
            self.M = grown
        if n > old:
            if old:
                self.M[:old, old:n] = feat_rows[:old].index_select(1, explored[old:]).abs_().mul_(inv[:old, None])
            self.M[old:n, :n] = feat_rows[old:n].index_select(1, explored).abs_().mul_(inv[old:n, None])
            self.m_size = n
        return self.M[:n, :n]

    def _scratch(self, shape: tuple[int, int]) -> torch.Tensor:
        """One buffer for |rows|, grown as rows come: a fresh multi-MB tensor per call costs page faults."""
        if self.buffer is None or self.buffer.numel() < shape[0] * shape[1]:
            rows = min(self.rows.shape[0], max(shape[0], 2 * (0 if self.buffer is None else self.buffer.shape[0])))
            self.buffer = torch.empty(rows * shape[1], dtype=self.rows.dtype, device=self.rows.device)
        return self.buffer[:shape[0] * shape[1]].view(shape)


def _assemble(rep: LocalReplacement, adapter: VLMAdapter, processor, prompt: PromptInputs,
              targets: list[ResolvedTarget], rows, consts, values, explored, table, cfg: AttributionConfig,
              edges: torch.Tensor | None = None) -> Graph:
    """The Graph. edges: when every feature was explored, the rows already in the adjacency's layout
    (see _attribute); otherwise rows are in exploration order (logits first) and are gathered."""
    n_logits = len(targets)
    store = rows.device
    # float32 edges, or float64 when the model ran in float64 (exactness checks)
    edge_dtype = compute_dtype_for(rep.dtype)
    t_np = table.cpu().numpy()
    if edges is not None:
        sel_np = np.arange(rep.n_active)
        order = sel_np
        sel_sorted = torch.arange(rep.n_active, device=store)
        row_index = torch.arange(rep.n_active + n_logits, device=store)
        adjacency = edges.to(edge_dtype).cpu()  # no copy on the CPU in the model's precision
        unexplored = torch.zeros(len(row_index), dtype=rows.dtype, device=store)
    else:
        # selected features in (layer, position, feature) order
        sel_np = explored.cpu().numpy()
        order = np.lexsort((t_np[sel_np, 2], t_np[sel_np, 1], t_np[sel_np, 0]))
        sel_sorted = explored[torch.as_tensor(order, device=store)]
        row_of = torch.empty(rep.n_active, dtype=torch.long, device=store)
        row_of[explored] = n_logits + torch.arange(explored.numel(), device=store)
        row_index = torch.cat([row_of[sel_sorted], torch.arange(n_logits, device=store)])
        adjacency, unexplored = _gather_rows(rep, rows, row_index, sel_sorted, n_logits, edge_dtype)
    n_sel = sel_sorted.numel()

    features = t_np[sel_np[order]]  # (n_sel, 3) int64: layer, position, feature
    acts = rep.active_values().to(store)[sel_sorted].to(edge_dtype).cpu().numpy()
    kept = rep.kept_positions.cpu().numpy()
    errors = np.array([(l, p) for l in range(rep.n_layers) for p in kept], dtype=np.int64).reshape(-1, 2)

    tokenizer = getattr(processor, "tokenizer", processor)
    graph = Graph(
        prompt=prompt.text,
        input_ids=np.asarray(prompt.input_ids, dtype=np.int64),
        tokens=list(prompt.tokens),
        n_layers=rep.n_layers,
        features=features,
        activations=acts,
        errors=errors,
        targets=[t.target for t in targets],
        adjacency=adjacency.numpy(),
        values=values[row_index].double().cpu().numpy(),
        constants=consts[row_index].double().cpu().numpy(),
        unexplored=unexplored.double().cpu().numpy(),
        image_positions=np.asarray(prompt.image_positions, dtype=np.int64),
        image_grid=np.asarray(prompt.image_grid, dtype=np.int64).reshape(-1, 3),
        tokens_per_side=prompt.tokens_per_side,
        image_grids=list(prompt.image_grids),
        images=[np.asarray(im.convert("RGB"), dtype=np.uint8) for im in prompt.images],
        prefix_length=rep.first_position,
        # settings only (asdict would deep-copy the callbacks, which may hold locks)
        config={f.name: getattr(cfg, f.name) for f in fields(cfg)
                if f.name not in ("progress", "on_progress", "should_stop")},
    )
    graph.config["dtype"] = str(adapter.dtype).replace("torch.", "")
    graph.config["compute_dtype"] = str(rep.dtype).replace("torch.", "")  # float32 for a bfloat16 model
    graph.config["family"] = adapter.family
    if cfg.feature_position_activations and n_sel:
        graph.feature_position_activations = _position_activations(rep, features, graph.stored_dtype)
    if cfg.top_logit_k and n_sel:
        ids_top, val_top, ids_bot, val_bot = _feature_logit_effects(rep, adapter, features, cfg.top_logit_k)
        graph.top_logit_ids, graph.top_logit_values = ids_top, val_top
        graph.bottom_logit_ids, graph.bottom_logit_values = ids_bot, val_bot
        used = set(np.unique(ids_top).tolist()) | set(np.unique(ids_bot).tolist())
    else:
        used = set()
    used |= {t.token_id for t in graph.targets if t.token_id >= 0}
    used |= set(int(i) for i in graph.input_ids)
    graph.vocab = {int(i): tokenizer.convert_ids_to_tokens(int(i)) for i in sorted(used)}
    graph.scores = graph_scores(graph)
    return graph


def _gather_rows(rep: LocalReplacement, rows: torch.Tensor, row_index: torch.Tensor, sel_sorted: torch.Tensor,
                 n_logits: int, edge_dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """The adjacency (rows in `row_index` order; columns: selected features, errors, embeddings,
    then zeros for the logits) and each row's summed edges from unexplored features."""
    n_sel = sel_sorted.numel()
    n_rest = rep.n_columns - rep.n_active  # errors + embeddings
    adjacency = torch.empty(len(row_index), n_sel + n_rest + n_logits, dtype=edge_dtype)
    adjacency[:, n_sel + n_rest:] = 0
    unexplored_mask = torch.ones(rep.n_active, dtype=torch.bool, device=rows.device)
    unexplored_mask[sel_sorted] = False
    columns = torch.cat([sel_sorted, torch.arange(rep.n_active, rep.n_columns, device=rows.device)])
    unexplored = torch.zeros(rows.shape[0], dtype=rows.dtype, device=rows.device)
    weights = unexplored_mask.to(rows.dtype)
    # output row of each stored row (-1: not kept)
    out_row = torch.full((rows.shape[0],), -1, dtype=torch.long, device=rows.device)
    out_row[row_index] = torch.arange(len(row_index), device=rows.device)
    step = _row_chunk(rows.shape[1])  # rows can be many GB: never copy them whole
    for s in range(0, rows.shape[0], step):
        # contiguous blocks of stored rows: a column gather of the block (much faster than a 2-d
        # fancy-index gather), then its rows scattered into their output places
        where = out_row[s:s + step]
        keep = where >= 0
        if not bool(keep.any()):
            continue
        block = rows[s:s + step]
        picked = block.index_select(1, columns)
        if not bool(keep.all()):
            picked = picked[keep]
        adjacency[where[keep].cpu(), :n_sel + n_rest] = picked.to(edge_dtype).cpu()
        if n_sel < rep.n_active:  # in the rows' own order, reordered below
            unexplored[s:s + step] = torch.mv(block[:, :rep.n_active], weights)
    return adjacency, unexplored[row_index]


def _position_activations(rep: LocalReplacement, features: np.ndarray, dtype=np.float32) -> np.ndarray:
    """Activation of each selected feature (its layer and index) at every position."""
    out = np.zeros((len(features), rep.n_positions), dtype=dtype)
    for layer in np.unique(features[:, 0]):
        act = rep.active[int(layer)]
        idx = np.flatnonzero(features[:, 0] == layer)
        wanted, which = np.unique(features[idx, 2], return_inverse=True)  # each feature index once
        a_feat = act.features.cpu().numpy()
        hit = np.isin(a_feat, wanted)
        table = np.zeros((len(wanted), rep.n_positions), dtype=dtype)
        table[np.searchsorted(wanted, a_feat[hit]), act.positions.cpu().numpy()[hit]] = \
            act.activations.cpu().numpy()[hit]
        out[idx] = table[which.ravel()]
    return out


def _feature_logit_effects(rep: LocalReplacement, adapter: VLMAdapter, features: np.ndarray, k: int,
                           elements: int = 1 << 26):
    """Tokens each feature's decoder row promotes / suppresses through the direct path:
    (W_dec[f] * g_post_mlp * g_final) @ W_U^T, positive scale factors (norm scales) dropped.
    Computed once per (layer, feature), however many positions it is active at, in chunks of at
    most `elements` logits (a 262k-token vocabulary makes each row 1 MB)."""
    W_U = adapter.unembedding.detach()  # in the model's dtype: a float32 copy of a big vocabulary costs GBs
    n = len(features)
    k = min(k, W_U.shape[0])
    chunk = max(1, elements // W_U.shape[0])
    ids_top = np.zeros((n, k), np.int64)
    val_top = np.zeros((n, k), np.float32)
    ids_bot = np.zeros((n, k), np.int64)
    val_bot = np.zeros((n, k), np.float32)
    for layer in np.unique(features[:, 0]):
        idx = np.flatnonzero(features[:, 0] == layer)
        unique, where = np.unique(features[idx, 2], return_inverse=True)
        tc = rep.transcoders[int(layer)]
        gain = rep.weights[int(layer)].g_post_mlp * rep.g_final
        for s in range(0, len(unique), chunk):
            feats = torch.as_tensor(unique[s:s + chunk])
            dec = tc.decoder_rows(feats if tc.lazy_decoder else feats.to(tc.b_enc.device)).to(rep.device, rep.dtype)
            effect = ((dec * gain).to(W_U.dtype) @ W_U.T).float()
            top = torch.topk(effect, k, dim=1)
            bot = torch.topk(-effect, k, dim=1)
            hit = (where >= s) & (where < s + len(feats))
            part, rows = idx[hit], where[hit] - s
            ids_top[part], val_top[part] = top.indices.cpu().numpy()[rows], top.values.float().cpu().numpy()[rows]
            ids_bot[part], val_bot[part] = bot.indices.cpu().numpy()[rows], (-bot.values).float().cpu().numpy()[rows]
    return ids_top, val_top, ids_bot, val_bot


def _top_tokens(logits: torch.Tensor, tokenizer, k: int) -> list[dict]:
    probs = torch.softmax(logits.float(), -1)
    p, i = torch.topk(probs, k)
    return [{"token": tokenizer.convert_ids_to_tokens(int(t)), "id": int(t), "p": float(v)} for v, t in zip(p, i)]
