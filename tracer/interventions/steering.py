"""Feature interventions (steering): ablate, scale or set transcoder features and see the answer change.

Mechanism: a forward hook on each affected layer's MLP (``adapter.mlp(layer)``) computes the
feature's activation from the MLP input with the transcoder's own encoder and activation
function (TopK included, so a feature is active exactly where attribution says it is), and adds

    (new_activation - activation) * W_dec[feature]

to the MLP output. Everything else the MLP writes, the transcoder's error included, is untouched.

Options of `intervene` (one forward pass, next-token distribution before / after):

* ``freeze_attention``: every attention pattern is frozen to the clean run's (only the
  value/output path stays live).
* ``direct_only``: attention patterns *and* norm scales frozen to the clean run's, and every MLP
  output frozen to its clean value (plus the transcoder's linear skip of the change of its
  input, which is part of the frozen linear model), so only the direct effect of the edited
  features remains. Then the change of a logit target's value (target direction . final norm
  output) is exactly minus the sum of the ablated feature nodes' edges into that logit node of
  the attribution graph (docs/design.md §3; tested).

`steered_generate` generates greedily with the image in the prompt, before and after the edit;
with the KV cache the hooks know the absolute position of every token they see.

Positions (``FeatureIntervention.positions``):

* ``"active"``: wherever the feature fires (activation != 0) in the (steered) forward pass;
* ``"last"``: the last prompt position (the one predicting the next token);
* ``"all"``: every position, generated ones included;
* ``"generated"``: every position that predicts a generated token: the last prompt position and
  every generated token (in `intervene` the same as "last");
* a list of ints: sequence positions (negative: counted from the end of the prompt, -1 = last);
* a list of image cells ``(image, row, col)`` (or ``(row, col)`` for image 0), mapped to soft
  token positions through ``PromptInputs.image_grid``.
"""

from __future__ import annotations

import math
import re
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from tracer.attribution.frozen import frozen_attention_patterns, frozen_norms
from tracer.attribution.record import ForwardRecord, compute_dtype_for, eager_attention, record_forward
from tracer.attribution.replacement import encode_sparse_on
from tracer.interventions.common import (
    Bundle, NextTokenComparison, as_bundle, image_cell_positions, model_inputs, prompt_inputs, top_tokens,
)
from tracer.models.base import PromptInputs
from tracer.models.precision import model_precision

MODES = ("ablate", "scale", "set")
POSITION_KEYWORDS = ("active", "last", "all", "generated")


@dataclass
class FeatureIntervention:
    """Edit one transcoder feature.

    layer, feature: the transcoder feature (model layer, feature index).
    mode: "ablate" (activation -> 0), "scale" (activation -> activation * value) or "set"
        (activation -> value).
    value: the factor for "scale", the activation for "set" (ignored by "ablate").
    positions: where (see the module docstring): "active", "last", "all", "generated", a list of
        sequence positions, or a list of image cells (image, row, col).
    """

    layer: int
    feature: int
    mode: str = "ablate"
    value: float | None = None
    positions: str | Sequence = "active"

    def __post_init__(self):
        self.layer, self.feature = int(self.layer), int(self.feature)
        if self.mode not in MODES:
            raise ValueError(f"intervention mode must be one of {MODES}, got {self.mode!r}")
        if self.mode in ("scale", "set") and self.value is None:
            raise ValueError(f"mode {self.mode!r} needs a value (the {'factor' if self.mode == 'scale' else 'activation'})")
        if self.mode == "ablate":
            self.value = 0.0
        self.value = float(self.value)
        if not math.isfinite(self.value):  # NaN / inf would poison every later activation
            raise ValueError(f"L{self.layer}:F{self.feature}:{self.mode}: the value must be a finite number, "
                             f"got {self.value}")
        if isinstance(self.positions, str):
            if self.positions not in POSITION_KEYWORDS:
                raise ValueError(f"positions must be one of {POSITION_KEYWORDS} or a list, got {self.positions!r}")
        else:
            self.positions = [tuple(int(x) for x in p) if isinstance(p, (tuple, list)) else int(p)
                              for p in self.positions]
            if not self.positions:
                raise ValueError("an explicit position list must not be empty")
            kinds = {isinstance(p, tuple) for p in self.positions}
            if len(kinds) > 1:
                raise ValueError("positions: give either sequence positions or image cells, not both")

    @property
    def label(self) -> str:
        """'L2:F17:scale:3' style label."""
        tail = "" if self.mode == "ablate" else f":{self.value:g}"
        return f"L{self.layer}:F{self.feature}:{self.mode}{tail}"

    def new_activation(self, a: torch.Tensor) -> torch.Tensor:
        """The edited activation for the current activation a."""
        if self.mode == "ablate":
            return torch.zeros_like(a)
        if self.mode == "scale":
            return a * self.value
        return torch.full_like(a, self.value)

    def to_dict(self) -> dict:
        pos = self.positions if isinstance(self.positions, str) else [list(p) if isinstance(p, tuple) else p
                                                                       for p in self.positions]
        return {"layer": self.layer, "feature": self.feature, "mode": self.mode, "value": self.value,
                "positions": pos}

    @classmethod
    def parse(cls, spec: str, positions: str | Sequence = "active") -> "FeatureIntervention":
        """From 'L:F[:mode[:value]]', e.g. '2:17' (ablate), '2:17:scale:3', '2:17:set:5';
        'L2:F17' works too."""
        parts = [p.strip() for p in spec.strip().split(":")]
        if len(parts) < 2 or len(parts) > 4:
            raise ValueError(f"feature spec {spec!r}: expected LAYER:FEATURE[:MODE[:VALUE]]")
        try:
            layer = int(re.sub(r"^[Ll]", "", parts[0]))
            feature = int(re.sub(r"^[Ff#]", "", parts[1]))
        except ValueError:
            raise ValueError(f"feature spec {spec!r}: layer and feature must be integers") from None
        mode = parts[2] if len(parts) > 2 else "ablate"
        value = None
        if len(parts) > 3:
            try:
                value = float(parts[3])
            except ValueError:
                raise ValueError(f"feature spec {spec!r}: value {parts[3]!r} is not a number") from None
        return cls(layer, feature, mode, value, positions)


def parse_positions(text: str) -> str | list:
    """CLI form of positions: a keyword ("active", "last", "all", "generated"), sequence positions
    "12,13,-1", or image cells "r,c;r,c" / "i,r,c;i,r,c" (semicolon-separated)."""
    text = text.strip()
    if text in POSITION_KEYWORDS:
        return text
    try:
        if ";" in text or text.startswith("("):
            cells = [c.strip().strip("()") for c in text.split(";") if c.strip()]
            return [tuple(int(x) for x in c.split(",")) for c in cells]
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"positions {text!r}: a keyword {POSITION_KEYWORDS}, positions '3,4,-1' or image cells "
                         "'r,c;r,c'") from None


@dataclass
class _Selector:
    """Where one intervention applies, resolved against a prompt."""

    kind: str  # "active", "all", "from", "fixed"
    fixed: torch.Tensor | None = None  # absolute positions for "fixed"
    start: int = 0  # for "from"

    def mask(self, abs_pos: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """(B, T) bool for absolute positions abs_pos (T,) and activations acts (B, T)."""
        if self.kind == "active":
            return acts != 0
        if self.kind == "all":
            m = torch.ones_like(abs_pos, dtype=torch.bool)
        elif self.kind == "from":
            m = abs_pos >= self.start
        else:
            m = torch.isin(abs_pos, self.fixed.to(abs_pos.device))
        return m.unsqueeze(0).expand_as(acts)


def resolve_positions(positions, prompt: PromptInputs) -> _Selector:
    """The selector of a positions spec for this prompt (image cells through image_grid)."""
    n = prompt.n_positions
    if isinstance(positions, str):
        if positions == "active":
            return _Selector("active")
        if positions == "all":
            return _Selector("all")
        if positions == "last":
            return _Selector("fixed", torch.tensor([n - 1]))
        return _Selector("from", start=n - 1)  # generated
    if isinstance(positions[0], tuple):
        return _Selector("fixed", torch.tensor(image_cell_positions(prompt, positions)))
    fixed = [p + n if p < 0 else p for p in positions]
    if min(fixed) < 0:
        raise ValueError(f"position {min(positions)} is before the start of the prompt ({n} positions)")
    return _Selector("fixed", torch.tensor(fixed))


def feature_activations(tc, x: torch.Tensor, features: torch.Tensor, device) -> torch.Tensor:
    """Activations (N, n) of `features` for inputs x (N, d_model), computed with the transcoder's
    own encoder and activation function (TopK decides over all features)."""
    rows, feats, vals = encode_sparse_on(tc, x, device)
    lookup = torch.full((tc.d_transcoder,), -1, dtype=torch.long, device=device)
    lookup[features.to(device)] = torch.arange(features.numel(), device=device)
    col = lookup[feats.to(device)]
    keep = col >= 0
    out = torch.zeros(x.shape[0], features.numel(), dtype=vals.dtype, device=device)
    out[rows.to(device)[keep], col[keep]] = vals[keep]
    return out


@dataclass
class SteeringState:
    """What the hooks did: `applied` lists, per edited (feature, position), the activation before
    and after the edit (positions are absolute sequence positions)."""

    offset: int = 0  # absolute position of the first token of the current forward call
    applied: list[dict] = field(default_factory=list)


def _check(bundle: Bundle, interventions: Sequence[FeatureIntervention]) -> None:
    if bundle.transcoders is None:
        raise ValueError("feature interventions need a transcoder set")
    for iv in interventions:
        if not 0 <= iv.layer < bundle.adapter.n_layers:
            raise ValueError(f"{iv.label}: layer {iv.layer} is not a layer of the model ({bundle.adapter.n_layers})")
        if iv.layer not in bundle.transcoders:
            raise ValueError(f"{iv.label}: the transcoder set has no transcoder for layer {iv.layer}")
        d_tc = bundle.transcoders[iv.layer].d_transcoder
        if not 0 <= iv.feature < d_tc:
            raise ValueError(f"{iv.label}: feature {iv.feature} is out of range (layer {iv.layer} has {d_tc})")


@contextmanager
def steering_hooks(session, prompt: PromptInputs, interventions: Sequence[FeatureIntervention],
                   record: ForwardRecord | None = None, direct_only: bool = False):
    """Inside the block the model's MLPs apply the interventions on every forward call; yields a
    SteeringState. Works under model.generate (absolute positions from the KV cache).

    direct_only (needs `record`, the clean run, and one forward pass over exactly that prompt):
    every MLP output is its clean value + the transcoder skip of the change of its input, and
    the edits are computed from the clean activations, so edits do not interact.
    """
    bundle = as_bundle(session)
    ad, tset = bundle.adapter, bundle.transcoders
    interventions = list(interventions)
    _check(bundle, interventions)
    if direct_only and record is None:
        raise ValueError("direct_only needs the clean run's record")
    cdt = compute_dtype_for(ad.dtype)
    device = ad.device
    state = SteeringState()
    by_layer: dict[int, list[FeatureIntervention]] = {}
    for iv in interventions:
        by_layer.setdefault(iv.layer, []).append(iv)

    def offset_hook(module, args, kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        state.offset = int(cache.get_seq_length()) if cache is not None else 0

    def make_hook(layer: int):
        ivs = by_layer.get(layer, [])
        tc = tset[layer] if (tset is not None and layer in tset) else None
        feats = torch.tensor(sorted({iv.feature for iv in ivs}), dtype=torch.long)
        col = {int(f): j for j, f in enumerate(feats.tolist())}
        dec = None
        if ivs:
            dec = tc.decoder_rows(feats.cpu() if tc.lazy_decoder else feats.to(tc.b_enc.device)).to(device, cdt)
        selectors = [resolve_positions(iv.positions, prompt) for iv in ivs]
        skip = None
        if direct_only and tc is not None and tc.W_skip is not None:
            skip = tc.W_skip.detach().to(device, cdt)
        clean_in = record.layers[layer].mlp_in.to(device, cdt) if direct_only else None
        clean_out = record.layers[layer].mlp_out.to(device, cdt) if direct_only else None

        def hook(module, args, output):
            x = args[0]
            B, T, d = x.shape
            abs_pos = torch.arange(T, device=x.device) + state.offset
            if direct_only:
                if T != clean_in.shape[0] or state.offset:
                    raise RuntimeError("direct_only applies to one forward pass over the recorded prompt")
                base = clean_out.unsqueeze(0) + (0 if skip is None else (x.to(cdt) - clean_in) @ skip.T)
            else:
                base = output.to(cdt)
            if not ivs:
                return base.to(output.dtype)
            src = clean_in.unsqueeze(0).expand(B, -1, -1) if direct_only else x
            acts = feature_activations(tc, src.reshape(B * T, d), feats, device).view(B, T, -1).to(cdt)
            delta = torch.zeros(B, T, d, dtype=cdt, device=x.device)
            for iv, sel in zip(ivs, selectors):
                j = col[iv.feature]
                a = acts[..., j]
                m = sel.mask(abs_pos, a)
                if not bool(m.any()):
                    continue
                new = iv.new_activation(a)
                change = (new - a) * m
                delta += change.unsqueeze(-1) * dec[j]
                b_idx, t_idx = torch.nonzero(m, as_tuple=True)
                for b, t in zip(b_idx.tolist(), t_idx.tolist()):
                    state.applied.append({"layer": iv.layer, "feature": iv.feature, "mode": iv.mode,
                                          "batch": b, "position": int(abs_pos[t]), "before": float(a[b, t]),
                                          "after": float(new[b, t])})
            return (base + delta).to(output.dtype)
        return hook

    layers = range(ad.n_layers) if direct_only else sorted(by_layer)
    with ExitStack() as stack:
        stack.callback(ad.language_model.register_forward_pre_hook(offset_hook, with_kwargs=True).remove)
        for layer in layers:
            stack.callback(ad.mlp(layer).register_forward_hook(make_hook(layer)).remove)
        yield state


@dataclass
class InterventionResult(NextTokenComparison):
    """Next-token distribution before / after feature interventions (one forward pass each).

    final_hidden_before / _after: the final norm's output at the last position (d_model,); the
    change of a logit target's value is `target_change(direction)`.
    applied: per edited (feature, position): activation before and after.
    clean_activations: per intervention label, the feature's activation at every position in
    the clean run.
    """

    interventions: list[FeatureIntervention] = field(default_factory=list)
    freeze_attention: bool = False
    freeze_norms: bool = False
    direct_only: bool = False
    final_hidden_before: torch.Tensor | None = field(default=None, repr=False)
    final_hidden_after: torch.Tensor | None = field(default=None, repr=False)
    applied: list[dict] = field(default_factory=list, repr=False)
    clean_activations: dict[str, list[float]] = field(default_factory=dict, repr=False)

    def target_change(self, direction: torch.Tensor) -> float:
        """Change of direction . final_hidden (a logit target's value, docs/design.md §3)."""
        d = direction.to(self.final_hidden_after.dtype)
        return float(d @ (self.final_hidden_after - self.final_hidden_before))

    def target_changes(self, targets, unembedding: torch.Tensor) -> list[dict]:
        """Per logit target of a graph (tracer.graph.Target), the change of its value along the
        graph's own direction (W_U[t] - mean W_U for a token, W_U[a] - W_U[b] for a contrast):
        the quantity the graph's logit edges measure, so with direct_only the ablation of one
        feature node moves it by exactly minus that node's edge. Raw logit changes are in
        changes()."""
        from tracer.attribution.targets import resolve_directions

        resolved = resolve_directions(list(targets), unembedding, self.final_hidden_after.dtype)
        return [{"label": r.target.label, "change": self.target_change(r.direction)} for r in resolved]

    def to_dict(self) -> dict:
        out = super().to_dict()
        out.update({"interventions": [iv.to_dict() for iv in self.interventions],
                    "freeze_attention": self.freeze_attention, "freeze_norms": self.freeze_norms,
                    "direct_only": self.direct_only, "applied": self.applied,
                    "clean_activations": self.clean_activations})
        return out


@torch.no_grad()
def intervene(session, prompt: str | PromptInputs, image, interventions: Sequence[FeatureIntervention],
              freeze_attention: bool = False, direct_only: bool = False, top_k: int = 10, *,
              freeze_norms: bool | None = None, chat: bool = True) -> InterventionResult:
    """Run the prompt (+ image) clean and with the interventions; compare the next token.

    session: a TracingSession (or Bundle / (model, processor, transcoders)).
    prompt: the question (chat template applied unless chat=False) or prepared PromptInputs.
    freeze_attention: attention patterns frozen to the clean run's.
    direct_only: patterns, norm scales and all other MLP outputs frozen (only direct effects).
    freeze_norms: freeze the norm scales (default: only with direct_only).
    top_k: how many most likely tokens to list before and after.
    """
    bundle = as_bundle(session)
    ad = bundle.adapter
    interventions = list(interventions)
    _check(bundle, interventions)
    pi = prompt_inputs(bundle, prompt, image, chat=chat)
    for iv in interventions:
        sel = resolve_positions(iv.positions, pi)
        if sel.kind == "fixed" and int(sel.fixed.max()) >= pi.n_positions:
            raise ValueError(f"{iv.label}: position {int(sel.fixed.max())} is beyond the prompt "
                             f"({pi.n_positions} positions)")
    freeze_norms = direct_only if freeze_norms is None else bool(freeze_norms)
    freeze_attention = bool(freeze_attention or direct_only)
    record = record_forward(ad, pi)
    captured: dict = {}

    def capture_final(module, args, output):
        captured["final_hidden"] = output[0, -1].to(record.dtype)

    with ExitStack() as stack:
        stack.enter_context(eager_attention(ad))
        if freeze_norms:
            stack.enter_context(frozen_norms(ad, record))
        stack.callback(ad.final_norm.register_forward_hook(capture_final).remove)  # after a frozen norm's hook
        if freeze_attention:
            stack.enter_context(frozen_attention_patterns(ad, [lr.pattern for lr in record.layers]))
        state = stack.enter_context(steering_hooks(bundle, pi, interventions, record, direct_only=direct_only))
        out = ad.model(**model_inputs(bundle, pi), use_cache=False, logits_to_keep=1)
    logits_after = out.logits[0, -1].to(record.dtype)
    clean: dict[str, list[float]] = {f"L{iv.layer}:F{iv.feature}": [] for iv in interventions}
    by_layer: dict[int, list[int]] = {}
    for iv in interventions:
        by_layer.setdefault(iv.layer, []).append(iv.feature)
    for layer, feats in by_layer.items():  # one encoding per layer, however many of its features are edited
        feats = sorted(set(feats))
        a = feature_activations(bundle.transcoders[layer], record.layers[layer].mlp_in, torch.tensor(feats), ad.device)
        for j, f in enumerate(feats):
            clean[f"L{layer}:F{f}"] = a[:, j].double().cpu().tolist()
    tok = bundle.tokenizer
    return InterventionResult(
        prompt=pi, logits_before=record.logits, logits_after=logits_after,
        top_before=top_tokens(record.logits, tok, top_k), top_after=top_tokens(logits_after, tok, top_k),
        tokenizer=tok, interventions=interventions, freeze_attention=freeze_attention, freeze_norms=freeze_norms,
        direct_only=direct_only, final_hidden_before=record.final_hidden, final_hidden_after=captured["final_hidden"],
        applied=state.applied, clean_activations=clean,
    )


def _eos_ids(bundle: Bundle) -> list[int]:
    ids: list[int] = []
    for source in (getattr(bundle.model, "generation_config", None), bundle.adapter.text_config):
        eos = getattr(source, "eos_token_id", None) if source is not None else None
        if eos is not None:
            ids.extend(eos if isinstance(eos, (list, tuple)) else [eos])
    tok = bundle.tokenizer
    end = tok.convert_tokens_to_ids("<end_of_turn>") if "<end_of_turn>" in tok.get_vocab() else None
    if end is not None:
        ids.append(int(end))
    return list(dict.fromkeys(int(i) for i in ids))


@torch.no_grad()
def generate_ids(session, prompt: PromptInputs, max_new_tokens: int = 16) -> list[int]:
    """Greedy generation with the image in the prompt (pixel values passed to generate): the new
    token ids, up to and excluding the first end-of-turn / end-of-sequence token."""
    bundle = as_bundle(session)
    eos = _eos_ids(bundle)
    tok = bundle.tokenizer
    with model_precision(bundle.adapter):  # a float64 model generates with float64 norms and softmaxes
        out = bundle.model.generate(**model_inputs(bundle, prompt), max_new_tokens=int(max_new_tokens),
                                    do_sample=False, eos_token_id=eos,
                                    pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else eos[0])
    new = out[0, prompt.n_positions:].tolist()
    for k, t in enumerate(new):
        if t in eos:
            return new[:k]
    return new


@torch.no_grad()
def steered_generate(session, prompt: str | PromptInputs, image, interventions: Sequence[FeatureIntervention],
                     max_new_tokens: int = 16, *, chat: bool = True) -> tuple[str, str]:
    """(before_text, after_text): greedy generations without and with the interventions, the
    image in the prompt both times. Attention and norms are live (nothing is frozen: there are
    no clean patterns for tokens that do not exist yet). Positions "generated" and "all" follow
    the generation through the KV cache."""
    bundle = as_bundle(session)
    interventions = list(interventions)
    _check(bundle, interventions)
    pi = prompt_inputs(bundle, prompt, image, chat=chat)
    tok = bundle.tokenizer
    before = generate_ids(bundle, pi, max_new_tokens)
    with steering_hooks(bundle, pi, interventions):
        after = generate_ids(bundle, pi, max_new_tokens)
    return tok.decode(before, skip_special_tokens=True).strip(), tok.decode(after, skip_special_tokens=True).strip()
