"""What the graph explains: salient logits, chosen tokens, or custom directions.

A target is a vector t in the unembedding space read at the last position: its value is
t . final_norm(h_last). For a token, t = W_U[token] - mean_v W_U[v] (the logit minus the mean
logit, as circuit-tracer does); for a contrast "A - B", t = W_U[A] - W_U[B] (the logit
difference). Softcapping is not applied (Gemma3ForConditionalGeneration does not apply it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tracer.errors import InputError
from tracer.graph.graph import Target


class TargetError(InputError):
    """A target that cannot be resolved (unknown token, token that is not one id, ...)."""


@dataclass
class ResolvedTarget:
    target: Target
    direction: torch.Tensor  # (d_model,) in the compute dtype


def resolve_token(tokenizer, text: str) -> int:
    """A token id from '#123', an exact vocabulary entry, or text that encodes to one known token.
    Text the tokenizer only knows as its unknown token is refused, not traced as `<unk>`."""
    if not text.strip():
        raise TargetError("an empty target: give a token, 'A - B' or '#<id>'")
    spaced = text[:1].isspace()
    text = text.strip()
    if text.startswith("#") and len(text) > 1:
        try:
            token_id = int(text[1:])
        except ValueError:
            token_id = None  # '#' followed by text: maybe a token that starts with '#'
        if token_id is not None:
            if not 0 <= token_id < len(tokenizer):
                raise TargetError(f"token id {token_id} is outside the vocabulary (0..{len(tokenizer) - 1})")
            return token_id
    unk = getattr(tokenizer, "unk_token_id", None)
    if spaced:  # ' Paris' and 'Paris' are different tokens in a real vocabulary: keep the space asked for
        ids = tokenizer.encode(" " + text, add_special_tokens=False)
        if len(ids) == 1 and (unk is None or ids[0] != unk):
            return int(ids[0])
    vocab = tokenizer.get_vocab()
    if text in vocab:
        return int(vocab[text])
    for candidate in (text, " " + text):
        ids = tokenizer.encode(candidate, add_special_tokens=False)
        if len(ids) == 1 and (unk is None or ids[0] != unk):
            return int(ids[0])
    ids = tokenizer.encode(text, add_special_tokens=False)
    if unk is not None and unk in ids:
        raise TargetError(f"target {text!r} is not in the model's vocabulary (it reads as "
                          f"{tokenizer.convert_ids_to_tokens(ids)}); give a known token or '#<id>'")
    raise TargetError(
        f"target {text!r} is not a single token (it encodes to {len(ids)} tokens: "
        f"{tokenizer.convert_ids_to_tokens(ids)}); give one token or '#<id>'"
    )


def parse_target_spec(spec: str) -> tuple[str, str | None]:
    """'red' -> ('red', None); 'red - blue' -> ('red', 'blue')."""
    if " - " in spec:
        a, b = spec.split(" - ", 1)
        if not a.strip() or not b.strip():
            raise TargetError(f"a contrast target needs two tokens: {spec!r}")
        return a.strip(), b.strip()
    return spec, None


def resolve_directions(targets: list[Target], unembedding: torch.Tensor,
                      dtype: torch.dtype = torch.float32) -> list[ResolvedTarget]:
    """Each target with its direction in the unembedding space (token: W_U[t] - mean;
    direction: sum of W_U[plus] - sum of W_U[minus])."""
    W_U = unembedding.detach()
    # mean in at least float32, without a full-precision copy of a big vocabulary
    mean = W_U.mean(0, dtype=torch.promote_types(W_U.dtype, torch.float32)).to(dtype)
    out: list[ResolvedTarget] = []
    for t in targets:
        if t.kind == "direction" or t.token_id < 0:
            plus, minus = t.spec.get("plus", []), t.spec.get("minus", [])
            vec = W_U[plus].to(dtype).sum(0) - W_U[minus].to(dtype).sum(0)
        else:
            vec = W_U[t.token_id].to(dtype) - mean
        if not bool(vec.any()):  # nothing to explain: every edge would be 0
            raise TargetError(f"target {t.label!r} is an empty direction (its vector is zero)")
        out.append(ResolvedTarget(t, vec))
    return out


def resolve_targets(specs: list[str] | None, logits: torch.Tensor, unembedding: torch.Tensor, tokenizer,
                    max_n_logits: int = 10, desired_logit_prob: float = 0.95,
                    dtype: torch.dtype = torch.float32) -> list[ResolvedTarget]:
    """Chosen targets, or the salient logits: the most likely tokens until their probabilities
    add up to desired_logit_prob, at most max_n_logits of them."""
    probs = torch.softmax(logits.float(), -1)
    chosen: list[Target] = []
    if specs:
        for spec in specs:
            a, b = parse_target_spec(spec)
            ia = resolve_token(tokenizer, a)
            label_a = tokenizer.convert_ids_to_tokens(ia)
            if b is None:
                chosen.append(Target(label=label_a, token_id=ia, probability=float(probs[ia]), kind="token"))
            else:
                ib = resolve_token(tokenizer, b)
                label_b = tokenizer.convert_ids_to_tokens(ib)
                if ib == ia:
                    raise TargetError(f"target {spec!r} contrasts a token with itself: an empty direction")
                chosen.append(Target(label=f"{label_a} - {label_b}", token_id=-1, probability=0.0, kind="direction",
                                     spec={"plus": [ia], "minus": [ib], "labels": [label_a, label_b],
                                           "probabilities": [float(probs[ia]), float(probs[ib])]}))
        return resolve_directions(chosen, unembedding, dtype)
    if max_n_logits < 1:
        raise TargetError("max_n_logits must be at least 1")
    top_p, top_i = torch.sort(probs, descending=True)
    cum = torch.cumsum(top_p, 0)
    n = int(torch.searchsorted(cum, torch.tensor(desired_logit_prob, dtype=cum.dtype, device=cum.device)).item()) + 1
    n = max(1, min(n, max_n_logits))
    for p, i in zip(top_p[:n].tolist(), top_i[:n].tolist()):
        chosen.append(Target(label=tokenizer.convert_ids_to_tokens(i), token_id=int(i), probability=float(p),
                             kind="token"))
    return resolve_directions(chosen, unembedding, dtype)
