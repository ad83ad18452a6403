"""How good a transcoder set is on held-out data: per layer FVU, mean L0, dead features and
next-token loss with that layer's MLP replaced; for the toy model, answer accuracy with every
MLP replaced.

Positions: every real (non-padding) position after the chat-template prefix, image soft tokens
included; the prefix (BOS, ``<start_of_turn>user\\n``) is excluded, as attribution excludes it
from feature nodes. When an MLP is replaced, the real MLP output is kept at prefix positions
(attribution treats what they write as a constant).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from tqdm.auto import tqdm

from tracer.transcoders.replacement import prefix_lengths, record_mlps, replace_mlps
from tracer.transcoders.transcoder_set import TranscoderSet


@dataclass
class LayerReport:
    layer: int
    fvu: float = float("nan")
    mean_l0: float = float("nan")
    dead_fraction: float = float("nan")
    loss_clean: float = float("nan")
    loss_replaced: float = float("nan")
    loss_zero_ablated: float = float("nan")
    n_tokens: int = 0
    n_loss_tokens: int = 0

    @property
    def loss_recovered(self) -> float:
        """1 - (replaced - clean) / (ablated - clean): 1 is perfect, 0 is as bad as no MLP."""
        gap = self.loss_zero_ablated - self.loss_clean
        return 1.0 - (self.loss_replaced - self.loss_clean) / gap if gap > 0 else float("nan")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["loss_recovered"] = self.loss_recovered
        return d


@dataclass
class _Acc:
    sq_err: float = 0.0
    sum_y: torch.Tensor | None = None
    sum_y2: float = 0.0
    n: int = 0
    l0: float = 0.0
    fired: torch.Tensor | None = None
    loss_rep: float = 0.0
    loss_abl: float = 0.0


def position_mask(inputs: dict, adapter, tokenizer) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask [B, S] of positions that count, prefix length per row)."""
    ids = inputs["input_ids"]
    attn = inputs.get("attention_mask")
    if attn is None:
        attn = torch.ones_like(ids)
    prefix = prefix_lengths(ids, attn, adapter, tokenizer)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    mask = attn.bool().cpu() & (positions >= prefix.unsqueeze(1))
    return mask, prefix


def loss_targets(inputs: dict, mask: torch.Tensor, image_token_id: int | None,
                 answer_lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows, positions) whose next token counts for the next-token loss, and those token ids.

    Rows with an appended answer (answer_lengths > 0) count only the predictions of the answer
    tokens (prompt tokens of instruction data are not what the model was trained to predict);
    other rows count every next text token (not image soft tokens, not padding).
    """
    ids = inputs["input_ids"].cpu()
    attn = inputs.get("attention_mask", torch.ones_like(ids)).cpu().bool()
    ok = mask[:, :-1] & attn[:, 1:]
    if image_token_id is not None:
        ok &= ids[:, 1:] != image_token_id
    if answer_lengths is not None and bool((answer_lengths > 0).any()):
        # the answer occupies the last n real positions of its row
        real = attn.long()
        rank_from_end = real.flip(1).cumsum(1).flip(1) * real  # n..1 over real positions
        next_rank = rank_from_end[:, 1:]
        n = answer_lengths.unsqueeze(1)
        in_answer = (next_rank >= 1) & (next_rank <= n)
        ok &= torch.where(n > 0, in_answer, torch.ones_like(in_answer))
    rows, pos = torch.nonzero(ok, as_tuple=True)
    return torch.stack([rows, pos]), ids[rows, pos + 1]


class _FinalHidden:
    """Captures the final-norm output so that logits are only computed where they are needed."""

    def __init__(self, adapter):
        self.adapter = adapter
        self.hidden = None
        self.handle = adapter.final_norm.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        self.hidden = output

    def close(self):
        self.handle.remove()

    def ce(self, where: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy at (rows, positions) `where` (a float64 scalar)."""
        h = self.hidden[where[0].to(self.hidden.device), where[1].to(self.hidden.device)]
        total = torch.zeros((), dtype=torch.float64)
        W = self.adapter.unembedding
        cap = self.adapter.final_logit_softcap
        for s in range(0, h.shape[0], 256):
            logits = (h[s:s + 256] @ W.T).float()
            if cap:
                logits = torch.tanh(logits / cap) * cap
            total += torch.nn.functional.cross_entropy(
                logits, labels[s:s + 256].to(logits.device), reduction="sum").double().cpu()
        return total


def _forward(model, inputs):
    try:
        return model(**inputs, logits_to_keep=1)
    except TypeError:
        return model(**inputs)


@torch.no_grad()
def evaluate_layers(model, processor, tset: TranscoderSet, items, layers=None, batch_size: int = 32,
                    max_length: int | None = None, losses: bool = True, ablation: bool = True,
                    progress: bool = True) -> dict[int, LayerReport]:
    """Per-layer report of `tset` on `items` (PromptItems)."""
    from tracer.models.base import get_adapter
    from tracer.transcoders.sources import iter_batches

    adapter = get_adapter(model)
    tokenizer = getattr(processor, "tokenizer", processor)
    layers = list(tset.layers if layers is None else layers)
    acc = {layer: _Acc() for layer in layers}
    loss_clean, n_loss = 0.0, 0
    final = _FinalHidden(adapter) if losses else None
    batches = list(range(0, len(items), batch_size))
    try:
        for batch in tqdm(iter_batches(processor, iter(items), batch_size, max_length), total=len(batches),
                          desc="evaluate", disable=not progress, leave=False):
            mask, prefix = position_mask(batch.inputs, adapter, tokenizer)
            inputs = adapter.model_inputs(batch.inputs)
            with record_mlps(model, layers) as rec:
                _forward(model, inputs)
            if losses:
                where, labels = loss_targets(batch.inputs, mask, adapter.image_token_id, batch.answer_lengths)
                loss_clean += float(final.ce(where, labels))
                n_loss += labels.numel()
            for layer in layers:
                tc, a = tset[layer], acc[layer]
                m = mask.to(rec.inputs[layer].device)
                x, y = rec.inputs[layer][m], rec.outputs[layer][m].double()
                rows, feats, vals = tc.encode_sparse(x)
                y_hat = (tc.decode_sparse(rows, feats, vals, x.shape[0]) + tc.skip(x)).double()
                a.sq_err += float(((y - y_hat) ** 2).sum())
                a.sum_y = y.sum(0).cpu() if a.sum_y is None else a.sum_y + y.sum(0).cpu()
                a.sum_y2 += float((y ** 2).sum())
                a.n += x.shape[0]
                a.l0 += rows.numel()
                fired = torch.zeros(tc.d_transcoder, dtype=torch.bool)
                fired[feats.cpu()] = True
                a.fired = fired if a.fired is None else (a.fired | fired)
                if losses:
                    with replace_mlps(model, tset, [layer], keep_prefix=prefix):
                        _forward(model, inputs)
                    a.loss_rep += float(final.ce(where, labels))
                    if ablation:
                        h = adapter.mlp(layer).register_forward_hook(
                            lambda mod, args, out, p=prefix: torch.where(
                                (torch.arange(out.shape[1], device=out.device)[None, :] < p.to(out.device)[:, None])[..., None],
                                out, torch.zeros_like(out)))
                        try:
                            _forward(model, inputs)
                        finally:
                            h.remove()
                        a.loss_abl += float(final.ce(where, labels))
    finally:
        if final is not None:
            final.close()
    out = {}
    for layer, a in acc.items():
        r = LayerReport(layer, n_tokens=a.n, n_loss_tokens=n_loss)
        if a.n:
            total_var = a.sum_y2 - float((a.sum_y ** 2).sum()) / a.n
            r.fvu = a.sq_err / total_var if total_var > 0 else float("nan")
            r.mean_l0 = a.l0 / a.n
            r.dead_fraction = 1.0 - float(a.fired.float().mean())
        if losses and n_loss:
            r.loss_clean = loss_clean / n_loss
            r.loss_replaced = a.loss_rep / n_loss
            r.loss_zero_ablated = a.loss_abl / n_loss if ablation else float("nan")
        out[layer] = r
    return out


def toy_accuracy(model, processor, tset: TranscoderSet | None, per_type: int = 200, seed: int = 0,
                 progress: bool = True, batch_size: int = 128) -> dict[str, float]:
    """Toy answer accuracy per question type on held-out scenes, with every MLP the set covers
    replaced by its transcoder (no error terms; real MLP outputs kept at the chat prefix).
    tset=None: the clean model."""
    from tracer.toy.evaluate import evaluate_model

    if tset is None:
        return evaluate_model(model, processor, per_type, batch_size=batch_size, seed=seed, progress=progress)
    with replace_mlps(model, tset, tokenizer=getattr(processor, "tokenizer", processor)):
        return evaluate_model(model, processor, per_type, batch_size=batch_size, seed=seed, progress=progress)


def is_toy_model(model, processor) -> bool:
    """Whether the model speaks the shapes-world vocabulary (so toy accuracy means something)."""
    from tracer.toy import world

    if getattr(model.config, "vision_config", None) is None:  # a text-only model cannot see the shapes
        return False
    vocab = getattr(processor, "tokenizer", processor).get_vocab()
    return all(w in vocab for w in world.vocabulary())


def format_report(layers: dict[int, LayerReport], accuracy: dict[str, float] | None = None,
                  accuracy_clean: dict[str, float] | None = None, markdown: bool = False) -> str:
    """The per-layer table (and the toy accuracy table), as text or markdown."""
    head = ["layer", "FVU", "mean L0", "dead %", "loss clean", "loss replaced", "loss 0-ablated", "recovered %"]
    rows = []
    for layer, r in sorted(layers.items()):
        rows.append([str(layer), f"{r.fvu:.4f}", f"{r.mean_l0:.1f}", f"{100 * r.dead_fraction:.1f}",
                     f"{r.loss_clean:.4g}", f"{r.loss_replaced:.4g}", f"{r.loss_zero_ablated:.4g}",
                     f"{100 * r.loss_recovered:.1f}"])
    lines = _table(head, rows, markdown)
    if accuracy is not None:
        lines.append("")
        head2 = ["question type", "accuracy, all MLPs replaced"] + (["clean model"] if accuracy_clean else [])
        rows2 = []
        for q, v in accuracy.items():
            row = [q, f"{100 * v:.1f}%"]
            if accuracy_clean:
                row.append(f"{100 * accuracy_clean.get(q, float('nan')):.1f}%")
            rows2.append(row)
        lines += _table(head2, rows2, markdown)
    return "\n".join(lines)


def _table(head, rows, markdown):
    if markdown:
        out = ["| " + " | ".join(head) + " |", "|" + "|".join("---:" if i else "---" for i in range(len(head))) + "|"]
        out += ["| " + " | ".join(r) + " |" for r in rows]
        return out
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:>{w}}}" for w in widths)
    return [fmt.format(*head), "-" * (sum(widths) + 2 * (len(widths) - 1))] + [fmt.format(*r) for r in rows]


__all__ = ["LayerReport", "evaluate_layers", "format_report", "is_toy_model", "toy_accuracy"]
