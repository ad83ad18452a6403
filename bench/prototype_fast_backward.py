"""Prototype (measurement only, not used by the engine): a cheaper LocalReplacement.backward.

    python bench/prototype_fast_backward.py --transcoders DIR [--threads 1] [--calls 5]

Patches tracer.attribution.replacement.LocalReplacement.backward in this process only, checks
that its rows and constants equal the original's on the benchmark's inputs, and times whole
attribution calls with the original and with the prototype, interleaved. The changes:

1. Norm scales folded once per prompt instead of per batch: the per-position 1/rms factors go
   into the frozen attention pattern (s_post_attn on queries, s_in on keys) and the per-channel
   gains into W_O / W_V (g_post_attn, g_in); the post-MLP scale goes into the feature sources,
   the error vectors, b_dec and the excluded positions' MLP outputs. No [lanes, P, d]
   elementwise multiply is left in the loop.
2. Feature edges, error edges and the b_dec / excluded-prefix constants come from one batched
   matmul per layer ([P, lanes, d] @ [P, d, kmax + 2]) instead of bmm + einsum + sums over
   index-copied slices (`G[:, kept]` copies the whole gradient twice per layer).
3. Positions past the last position any lane injects at are dropped for the whole batch (text
   attention is causal, so they carry no gradient); inside an image the cut moves to the end of
   the image (bidirectional attention there).
4. Rows are written straight into the caller's buffer, not into a temporary.

A third variant also leaves the replacement / completeness scores out of the call (as if they
were computed lazily, when first read or when the graph is saved), to show their share.

Prototype limits: no attention / skip biases (Gemma3 has none) and no transcoder skip.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def _fold(rep) -> list[dict]:
    """Per-layer tensors with the frozen norm scales folded in (computed once per prompt)."""
    to = dict(device=rep.device, dtype=rep.dtype)
    out = []
    for layer in range(rep.n_layers):
        rec = rep.record.layers[layer]
        w = rep.weights[layer]
        if w.b_O is not None or w.b_V is not None or rep.skip[layer] is not None:
            raise NotImplementedError("prototype: no attention biases, no transcoder skip")
        mlp_scale = rec.s_post_mlp.to(**to)[:, None] * w.g_post_mlp  # [P, d]
        act = rep.active[layer]
        kmax = act.padded_sources.shape[1]
        P, d = mlp_scale.shape
        S = torch.zeros(P, d, kmax + 2, **to)  # sources | error | constant
        S[:, :, :kmax] = (act.padded_sources * mlp_scale[:, None, :]).transpose(1, 2)
        S[:, :, kmax] = rep.errors[layer] * mlp_scale
        const_vec = torch.where(rep.keep[:, None], rep.b_dec[layer][None, :].expand(P, d),
                                rec.mlp_out.to(**to))
        S[:, :, kmax + 1] = const_vec * mlp_scale
        pattern = rec.pattern.to(**to) * rec.s_post_attn.to(**to)[None, :, None] * rec.s_in.to(**to)[None, None, :]
        out.append(dict(
            S=S, kmax=kmax, pattern=pattern,
            W_O=(w.g_post_attn[:, None] * w.W_O).contiguous(),
            W_V=(w.W_V * w.g_in[None, :]).contiguous(),
        ))
    return out


def _image_end(rep) -> torch.Tensor:
    """For each position, the last position its gradient can reach at the next layer down."""
    P = rep.n_positions
    end = torch.arange(P)
    img = getattr(rep.record.prompt, "image_positions", []) or []
    if img:
        pos = sorted(int(p) for p in img)
        start = prev = pos[0]
        for p in pos[1:] + [None]:
            if p is None or p != prev + 1:
                end[start:prev + 1] = prev
                if p is not None:
                    start = p
            if p is not None:
                prev = p
    return end


@torch.no_grad()
def fast_backward(self, n_lanes, top=None, injections=None, out_rows=None):
    if not hasattr(self, "_proto_fold"):
        self._proto_fold = _fold(self)
        self._proto_end = _image_end(self)
    injections = injections or {}
    P, d = self.n_positions, self.d_model
    to = dict(device=self.device, dtype=self.dtype)
    if top is not None:
        Pe, start = P, self.n_layers - 1
    elif injections:
        start = max(injections)
        Pe = int(self._proto_end[max(int(v[1].max()) for v in injections.values())]) + 1
    else:
        Pe, start = P, -1
    first = self.first_position
    G = torch.zeros(Pe, n_lanes, d, **to)  # position-major
    if top is not None:
        lanes, vecs = top
        G[P - 1, lanes] = vecs.to(**to)
    rows = out_rows if out_rows is not None else torch.zeros(n_lanes, self.n_columns, **to)
    if out_rows is not None:
        rows.zero_()
    const = torch.zeros(n_lanes, **to)
    for layer in range(start, -1, -1):
        f = self._proto_fold[layer]
        act = self.active[layer]
        kmax = f["kmax"]
        per_pos = torch.bmm(G, f["S"][:Pe])  # [Pe, lanes, kmax + 2]
        if act.n:
            m = act.positions < Pe
            cols = self.feature_columns(layer)
            if bool(m.all()):
                rows[:, cols] = per_pos[act.positions, :, act.slots].T
            else:
                idx = torch.nonzero(m).flatten()
                rows[:, cols.start + idx] = per_pos[act.positions[idx], :, act.slots[idx]].T
        ec = self.error_columns(layer)
        if Pe > first:
            rows[:, ec.start:ec.start + Pe - first] = per_pos[first:, :, kmax].T
        const += per_pos[:, :, kmax + 1].sum(0)
        if layer in injections:
            lanes, pos, vecs = injections[layer]
            G[pos, lanes] += vecs.to(**to)
        G_z = (G.reshape(Pe * n_lanes, d) @ f["W_O"]).view(Pe, n_lanes, -1)
        w = self.weights[layer]
        G_z = G_z.view(Pe, n_lanes, w.n_heads, w.head_dim)
        G_v = torch.einsum("hqk,qbhe->kbhe", f["pattern"][:, :Pe, :Pe], G_z)
        G_v = G_v.reshape(Pe, n_lanes, w.n_kv, w.n_heads // w.n_kv, w.head_dim).sum(3).reshape(Pe * n_lanes, -1)
        G = G + (G_v @ f["W_V"]).view(Pe, n_lanes, d)
    emb = self.embedding_columns
    rows[:, emb.start:emb.start + Pe] = torch.einsum("pbd,pd->bp", G, self.embeddings[:Pe])
    return rows, const


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--transcoders", required=True)
    p.add_argument("--model", default=None)
    p.add_argument("--prompt", default="What color is grass?")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--max-feature-nodes", type=int, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from tracer.attribution import attribute as attr_mod
    from tracer.attribution import replacement
    from tracer.models.base import prepare_prompt
    from tracer.session import TracingSession

    session = TracingSession(args.model, args.transcoders, device="cpu", dtype="float32")
    text = prepare_prompt(session.processor, args.prompt, None, chat=True, adapter=session.adapter).text
    kw = dict(max_feature_nodes=args.max_feature_nodes, batch_size=args.batch_size, chat=False, progress=False)
    original = replacement.LocalReplacement.backward

    spent = [0.0]

    def timed(fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[0] += time.perf_counter() - t
        return wrapper

    scores = attr_mod.graph_scores

    def run(backward, with_scores=True):
        replacement.LocalReplacement.backward = timed(backward)
        attr_mod.graph_scores = scores if with_scores else (lambda graph: {})
        spent[0] = 0.0
        t = time.perf_counter()
        try:
            g = session.attribute(text, None, **kw)
        finally:
            attr_mod.graph_scores = scores
        return time.perf_counter() - t, g, spent[0]

    _, g0, _ = run(original)
    _, g1, _ = run(fast_backward)
    a0, a1 = g0.adjacency.astype("float64"), g1.adjacency.astype("float64")
    rel = abs(a0 - a1).max() / abs(a0).max()
    crel = abs(g0.constants - g1.constants).max() / max(abs(g0.constants).max(), 1e-30)
    print(f"prototype vs original: adjacency max rel diff {rel:.2e}, constants {crel:.2e}")
    variants = (("original", original, True), ("prototype", fast_backward, True),
                ("prototype, no scores", fast_backward, False))
    times = {name: [] for name, _, _ in variants}
    back = {name: [] for name, _, _ in variants}
    for _ in range(args.calls):
        for name, fn, with_scores in variants:
            total, _, b = run(fn, with_scores)
            times[name].append(total)
            back[name].append(b)
    for name, ts in times.items():
        print(f"{name:21s} attribution call median {statistics.median(ts):.3f} s, of which backward "
              f"{statistics.median(back[name]):.3f} s  (calls: {', '.join(f'{t:.3f}' for t in ts)})")
    replacement.LocalReplacement.backward = original
    return 0


if __name__ == "__main__":
    sys.exit(main())
