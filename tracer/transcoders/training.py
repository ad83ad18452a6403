"""Train per-layer transcoders (PLTs) for a VLM.

Recipe:

- Data: the MLP input (``mlp.hook_in``, after pre_feedforward_layernorm) and raw MLP output
  (``mlp.hook_out``) of each layer, at every image and text position after the chat-template
  prefix, recorded by forward hooks on ``adapter.mlp(layer)`` while the model reads image +
  prompt pairs. Activations are streamed: a buffer of ``buffer_tokens`` positions per layer is
  filled, shuffled, used once and refilled, so memory does not grow with the training length.
- Layers are trained in groups of ``group_size``: one forward pass (stopped after the group's
  last layer) feeds every layer of the group.
- Inputs and outputs are scaled to unit mean squared norm per dimension while training; the
  scales are folded back into the saved weights, so the files are in model units.
- Activation TopK(k) (ReLU, then the k largest) with the AuxK dead-latent loss (Gao et al.
  2024), or JumpReLU with an L0 penalty and straight-through gradients (Rajamanoharan et al.
  2024) reaching thresholds and pre-activations; thresholds start from the data at the target
  rate and the L0 weight adapts to keep the running L0 at ``target_l0``.
- Decoder rows are kept at unit norm (gradient component along each row removed, rows
  renormalised after every step), so a feature's activation is the norm of what it writes.
- Adam with fp32 parameters and optimizer state; warm-up, then a linear decay over the last
  20% of steps; gradient clipping. Everything is seeded.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from tracer.errors import InputError
from tracer.transcoders.activations import JumpReLU, TopK
from tracer.transcoders.per_layer import PerLayerTranscoder
from tracer.transcoders.replacement import record_mlps, run_recording
from tracer.transcoders.transcoder_set import TranscoderSet


@dataclass
class PLTTrainConfig:
    layers: list[int] | None = None  # None: every layer
    group_size: int = 0  # layers trained together per forward pass; 0: all at once
    width: int = 1024
    activation: str = "topk"  # "topk" or "jumprelu"
    k: int = 32
    aux_k: int = 0  # 0: d_model // 2 (capped at the width)
    aux_coef: float = 1 / 32
    dead_tokens: int = 50_000  # a feature that has not fired for this many tokens is dead (AuxK, resampling)
    resample: bool = True  # re-initialise dead features from badly reconstructed positions
    resample_until: float = 0.8  # ... during this first fraction of the steps
    l0_coef: float = 2e-3  # JumpReLU: weight of the L0 penalty (with target_l0: its starting value)
    target_l0: float = 32.0  # JumpReLU: adapt the L0 weight so the running L0 stays here; 0: fixed l0_coef
    l0_adapt_rate: float = 0.02  # JumpReLU: log(L0 weight) moves by this times log(L0 / target_l0) per step
    l0_warmup: float = 0.1  # JumpReLU, fixed l0_coef: fraction of steps over which the L0 weight ramps up
    jump_bandwidth: float = 0.2  # JumpReLU: straight-through kernel width (in unit-scaled pre-activations)
    jump_init_threshold: float = 0.0  # JumpReLU: 0: per feature, from the data (fires on target_l0/width of positions)
    jump_pre_grad: bool = True  # JumpReLU: the L0 straight-through gradient also reaches the pre-activations
    threshold_lr_scale: float = 10.0  # JumpReLU: learning rate of log(threshold) relative to lr
    skip: bool = False  # train a linear skip W_skip too
    tokens: int = 1_000_000  # training positions per layer
    batch_tokens: int = 1024  # positions per optimizer step
    lr: float = 1e-3
    warmup_steps: int = 100
    decay_fraction: float = 0.2
    grad_clip: float = 1.0
    buffer_tokens: int = 131_072  # positions per layer held at a time
    buffer_dtype: str = "float32"  # storage of buffered activations (bfloat16 halves it)
    model_batch: int = 32  # prompts per model forward pass
    max_length: int | None = None  # drop prompts longer than this (tokens)
    eval_examples: int = 600
    eval_batch: int = 32
    seed: int = 0
    device: str = "cpu"
    threads: int = 1
    log_every: int = 100

    def resolved_aux_k(self, d_model: int) -> int:
        return min(self.width, self.aux_k or max(1, d_model // 2))


# -- JumpReLU straight-through functions ---------------------------------------------------------

def _rect(u: torch.Tensor) -> torch.Tensor:
    return ((u > -0.5) & (u < 0.5)).to(u.dtype)


class _JumpReLUFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth, pre_grad=False):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.pre_grad = bandwidth, pre_grad
        return pre * (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        jump = (threshold / bw) * _rect((pre - threshold) / bw) * grad
        g_pre = (pre > threshold).to(pre.dtype) * grad
        if ctx.pre_grad:  # the jump's straight-through gradient reaches the pre-activations too
            g_pre = g_pre + jump
        g_thr = (-jump).reshape(-1, pre.shape[-1]).sum(0)
        return g_pre, g_thr, None, None


class _StepFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, pre, threshold, bandwidth, pre_grad=False):
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth, ctx.pre_grad = bandwidth, pre_grad
        return (pre > threshold).to(pre.dtype)

    @staticmethod
    def backward(ctx, grad):
        pre, threshold = ctx.saved_tensors
        bw = ctx.bandwidth
        kernel = (1.0 / bw) * _rect((pre - threshold) / bw) * grad
        g_thr = (-kernel).reshape(-1, pre.shape[-1]).sum(0)
        # d/dpre H(pre - threshold) = -d/dthreshold: lets the encoder, not only the threshold, answer the penalty
        g_pre = kernel if ctx.pre_grad else torch.zeros_like(pre)
        return g_pre, g_thr, None, None


# -- one layer's trainable transcoder -------------------------------------------------------------

class _Trainee(torch.nn.Module):
    """A transcoder in unit-scaled coordinates, with what training needs (AuxK state, scales)."""

    def __init__(self, layer: int, d_model: int, cfg: PLTTrainConfig, x_scale: float, y_scale: float,
                 y_mean: torch.Tensor, generator: torch.Generator, x_mean: torch.Tensor | None = None):
        super().__init__()
        self.layer, self.cfg = layer, cfg
        self.x_scale, self.y_scale = x_scale, y_scale
        W = torch.randn(cfg.width, d_model, generator=generator)
        W = W / W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W.clone())
        self.W_enc = torch.nn.Parameter(W.clone())
        # centred start: each feature's pre-activation is positive on about half the inputs
        self.b_enc = torch.nn.Parameter(-(W @ x_mean.float()) if x_mean is not None else torch.zeros(cfg.width))
        self.b_dec = torch.nn.Parameter(y_mean.float() / y_scale)
        self.W_skip = torch.nn.Parameter(torch.zeros(d_model, d_model)) if cfg.skip else None
        if cfg.activation == "jumprelu":
            self.log_threshold = torch.nn.Parameter(torch.full((cfg.width,), math.log(cfg.jump_init_threshold or 0.05)))
        self.register_buffer("since_fired", torch.zeros(cfg.width, dtype=torch.long))

    @torch.no_grad()
    def init_thresholds(self, x: torch.Tensor) -> None:
        """JumpReLU start: each feature's threshold is the quantile of its pre-activations on `x`
        (unit-scaled inputs) above which it fires on target_l0 / width of the positions (k / width
        without a target), so training starts at the intended L0 with no silent feature."""
        cfg = self.cfg
        if cfg.activation != "jumprelu" or cfg.jump_init_threshold > 0:
            return
        n = x.shape[0]
        above = max(1, round(min(0.5, (cfg.target_l0 or cfg.k) / cfg.width) * n))
        chunk = max(1, 2 ** 24 // n)
        for i in range(0, cfg.width, chunk):  # bounded memory for wide transcoders
            pre = x @ self.W_enc[i:i + chunk].T + self.b_enc[i:i + chunk]
            thr = torch.kthvalue(pre, n - above, dim=0).values if n > above else pre.max(0).values
            self.log_threshold[i:i + chunk] = thr.clamp_min(1e-3).log()

    def forward(self, x: torch.Tensor, y: torch.Tensor, l0_weight: float):
        """(loss, stats) for unit-scaled x, y of shape [n, d_model]."""
        cfg = self.cfg
        pre = x @ self.W_enc.T + self.b_enc
        aux = torch.zeros((), device=x.device)
        if cfg.activation == "topk":
            v, i = torch.topk(torch.relu(pre), min(cfg.k, cfg.width), dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, i, v)
        else:
            thr = self.log_threshold.exp()
            acts = _JumpReLUFn.apply(pre, thr, cfg.jump_bandwidth, cfg.jump_pre_grad)
            l0 = _StepFn.apply(pre, thr, cfg.jump_bandwidth, cfg.jump_pre_grad).sum(-1).mean()
            aux = l0_weight * l0
        y_hat = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip.T
        var = ((y - y.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-12)
        err = y - y_hat
        mse = (err ** 2).sum(-1).mean() / var
        with torch.no_grad():
            fired = (acts > 0).any(0)
            self.since_fired += x.shape[0]
            self.since_fired[fired] = 0
            l0_now = float((acts > 0).float().sum(-1).mean())
        if cfg.activation == "topk" and cfg.aux_coef > 0:
            dead = self.since_fired >= cfg.dead_tokens
            n_dead = int(dead.sum())
            if n_dead:
                k_aux = min(cfg.resolved_aux_k(x.shape[1]), n_dead)
                masked = torch.where(dead, torch.relu(pre), torch.zeros_like(pre))
                v, i = torch.topk(masked, k_aux, dim=-1)
                e_hat = torch.zeros_like(pre).scatter(-1, i, v) @ self.W_dec
                e = err.detach()
                e_var = ((e - e.mean(0)) ** 2).sum(-1).mean().clamp_min(1e-12)
                aux_loss = ((e - e_hat) ** 2).sum(-1).mean() / e_var
                aux = cfg.aux_coef * torch.nan_to_num(aux_loss, nan=0.0)
        return mse + aux, {"fvu": float(mse.detach()), "l0": l0_now, "aux": float(aux.detach())}

    @torch.no_grad()
    def project_decoder_grad(self):
        """Remove the gradient component along each (unit) decoder row."""
        if self.W_dec.grad is not None:
            W = self.W_dec
            self.W_dec.grad -= (self.W_dec.grad * W).sum(1, keepdim=True) * W

    @torch.no_grad()
    def normalize_decoder(self):
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-12)

    @torch.no_grad()
    def resample_dead(self, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer,
                      generator: torch.Generator) -> int:
        """Give dead features a new start (after Bricken et al. 2023): each takes a position drawn
        with probability proportional to its squared reconstruction error; its decoder row becomes
        that position's residual direction, its encoder row that position's input, scaled so that
        it enters the top k there; its bias is zeroed and its Adam state reset."""
        dead = torch.nonzero(self.since_fired >= self.cfg.dead_tokens, as_tuple=True)[0]
        if dead.numel() == 0 or dead.numel() == self.cfg.width:
            return 0
        pre = x @ self.W_enc.T + self.b_enc
        if self.cfg.activation == "topk":
            v, i = torch.topk(torch.relu(pre), min(self.cfg.k, self.cfg.width), dim=-1)
            acts = torch.zeros_like(pre).scatter(-1, i, v)
            entry = v[:, -1].mean()  # the activation it takes to be among the top k
        else:
            acts = pre * (pre > self.log_threshold.exp())
            entry = self.log_threshold.exp().mean()
        y_hat = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            y_hat = y_hat + x @ self.W_skip.T
        err = y - y_hat
        weights = (err ** 2).sum(-1)
        if float(weights.sum()) <= 0:
            return 0
        n = min(dead.numel(), int((weights > 0).sum()))
        dead = dead[torch.randperm(dead.numel(), generator=generator)[:n].to(dead.device)]
        picks = torch.multinomial(weights.cpu(), n, replacement=False, generator=generator).to(x.device)
        alive = torch.ones(self.cfg.width, dtype=torch.bool, device=x.device)
        alive[dead] = False
        e = err[picks]
        xs = x[picks]
        e_norm = e.norm(dim=1, keepdim=True).clamp_min(1e-12)
        # Scaled so that on its own position the pre-activation is the error's norm (it would
        # write exactly the missing residual there) but at least what it takes to enter the
        # top k, so that it gets a chance to fire; bounded, so nothing explodes elsewhere.
        scale = torch.maximum(e_norm, 1.1 * entry.clamp_min(0))
        self.W_dec[dead] = e / e_norm
        self.W_enc[dead] = xs / (xs ** 2).sum(1, keepdim=True).clamp_min(1e-12) * scale
        self.b_enc[dead] = 0
        if self.cfg.activation == "jumprelu":
            self.log_threshold[dead] = torch.log(0.5 * e_norm.squeeze(1)).clamp_max(float(self.log_threshold[alive].mean()))
        for p in (self.W_dec, self.W_enc, self.b_enc) + ((self.log_threshold,) if self.cfg.activation == "jumprelu" else ()):
            state = opt.state.get(p)
            if state:
                for key in ("exp_avg", "exp_avg_sq"):
                    if key in state:
                        state[key][dead] = 0
        self.since_fired[dead] = 0
        return int(n)

    def dead_fraction(self) -> float:
        return float((self.since_fired >= self.cfg.dead_tokens).float().mean())

    @torch.no_grad()
    def export(self) -> PerLayerTranscoder:
        """The transcoder in model units: fold the input scale s and output scale t into the weights.

        Trained: y/t ~ act(W_enc x/s + b_enc) W_dec + b_dec + (x/s) W_skip^T. ReLU, TopK and
        JumpReLU commute with a positive scale, so with activations scaled by t:
        W_enc' = t/s W_enc, b_enc' = t b_enc, threshold' = t threshold, W_dec' = W_dec (unit rows),
        b_dec' = t b_dec, W_skip' = t/s W_skip.
        """
        s, t = self.x_scale, self.y_scale
        if self.cfg.activation == "topk":
            act = TopK(self.cfg.k)
        else:
            act = JumpReLU((self.log_threshold.exp() * t).cpu())
        return PerLayerTranscoder(
            self.layer, (self.W_enc * (t / s)).cpu(), (self.b_enc * t).cpu(), self.W_dec.detach().cpu().clone(),
            (self.b_dec * t).cpu(), act, (self.W_skip * (t / s)).cpu() if self.W_skip is not None else None,
        )


# -- activation streaming ----------------------------------------------------------------------

class ActivationStream:
    """Buffers of (MLP input, MLP output) per layer, from a stream of prompts."""

    def __init__(self, model, processor, items, layers: list[int], cfg: PLTTrainConfig):
        from tracer.models.base import get_adapter
        from tracer.transcoders.sources import iter_batches

        self.model, self.processor = model, processor
        self.adapter = get_adapter(model)
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.layers = layers
        self.cfg = cfg
        self.batches = iter_batches(processor, items, cfg.model_batch, cfg.max_length)
        self.dtype = getattr(torch, cfg.buffer_dtype)
        self.leftover: dict[int, tuple[torch.Tensor, torch.Tensor]] | None = None
        self.forward_s = 0.0
        self.tokens_read = 0

    @torch.no_grad()
    def _next_chunk(self) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        from tracer.transcoders.evaluation import position_mask

        batch = next(self.batches)
        mask, _ = position_mask(batch.inputs, self.adapter, self.tokenizer)
        inputs = self.adapter.model_inputs(batch.inputs)
        start = time.time()
        with record_mlps(self.model, self.layers, stop_after_last=True) as rec:
            run_recording(self.model, **inputs)
        self.forward_s += time.time() - start
        out = {}
        for layer in self.layers:
            m = mask.to(rec.inputs[layer].device)
            out[layer] = (rec.inputs[layer][m].to(self.cfg.device, self.dtype),
                          rec.outputs[layer][m].to(self.cfg.device, self.dtype))
        self.tokens_read += int(mask.sum())
        return out

    def fill(self, n_tokens: int) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
        """At least n_tokens positions per layer (exactly n_tokens; the rest is kept for next time)."""
        parts = {layer: ([], []) for layer in self.layers}
        have = 0
        if self.leftover is not None:
            for layer, (x, y) in self.leftover.items():
                parts[layer][0].append(x), parts[layer][1].append(y)
            have = next(iter(self.leftover.values()))[0].shape[0]
            self.leftover = None
        while have < n_tokens:
            chunk = self._next_chunk()
            for layer, (x, y) in chunk.items():
                parts[layer][0].append(x), parts[layer][1].append(y)
            have += next(iter(chunk.values()))[0].shape[0]
        out, rest = {}, {}
        for layer, (xs, ys) in parts.items():
            x, y = torch.cat(xs), torch.cat(ys)
            out[layer] = (x[:n_tokens], y[:n_tokens])
            if x.shape[0] > n_tokens:
                rest[layer] = (x[n_tokens:], y[n_tokens:])
        self.leftover = rest or None
        return out


# -- the training loop -------------------------------------------------------------------------

@dataclass
class GroupLog:
    layers: list[int]
    steps: int = 0
    seconds: float = 0.0
    forward_seconds: float = 0.0
    history: list[dict] = field(default_factory=list)


def _lr_at(step: int, total: int, cfg: PLTTrainConfig) -> float:
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_start = int(total * (1 - cfg.decay_fraction))
    if step >= decay_start and total > decay_start:
        return cfg.lr * max(0.0, (total - step) / (total - decay_start))
    return cfg.lr


def train_group(model, processor, source, layers: list[int], cfg: PLTTrainConfig, progress: bool = True,
                log: Callable[[str], None] | None = None) -> tuple[dict[int, PerLayerTranscoder], GroupLog]:
    """Train the transcoders of `layers` together; returns them in model units."""
    from tracer.models.base import get_adapter

    adapter = get_adapter(model)
    d_model = adapter.d_model
    stream = ActivationStream(model, processor, source.train_items(cfg.seed), layers, cfg)
    gen = torch.Generator().manual_seed(cfg.seed)
    buffer_tokens = max(cfg.batch_tokens, min(cfg.buffer_tokens, cfg.tokens))
    buf = stream.fill(buffer_tokens)
    trainees: dict[int, _Trainee] = {}
    for layer in layers:
        x, y = buf[layer][0].float(), buf[layer][1].float()
        x_scale = float(x.pow(2).mean().sqrt().clamp_min(1e-12))
        y_scale = float(y.pow(2).mean().sqrt().clamp_min(1e-12))
        init_gen = torch.Generator().manual_seed(cfg.seed * 100_003 + layer)
        trainees[layer] = _Trainee(layer, d_model, cfg, x_scale, y_scale, y.mean(0).cpu(), init_gen,
                                   (x.mean(0) / x_scale).cpu()).to(cfg.device)
        trainees[layer].init_thresholds(x[:16_384].to(cfg.device) / x_scale)
    params = [p for t in trainees.values() for p in t.parameters()]
    thr_params = [t.log_threshold for t in trainees.values() if hasattr(t, "log_threshold")]
    other = [p for p in params if all(p is not q for q in thr_params)]
    groups = [{"params": other, "lr_scale": 1.0}]
    if thr_params:
        groups.append({"params": thr_params, "lr_scale": cfg.threshold_lr_scale})
    opt = torch.optim.Adam(groups, lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    adaptive = cfg.activation == "jumprelu" and cfg.target_l0 > 0
    l0_coef = {layer: cfg.l0_coef for layer in layers}
    total_steps = max(1, cfg.tokens // cfg.batch_tokens)
    glog = GroupLog(list(layers))
    start = time.time()
    bar = tqdm(total=total_steps, desc=f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}",
               disable=not progress, dynamic_ncols=True)
    order = torch.randperm(buffer_tokens, generator=gen)
    pos = 0
    running = {layer: {"fvu": 0.0, "l0": 0.0, "aux": 0.0} for layer in layers}
    n_running = 0
    resample_every = max(1, cfg.dead_tokens // cfg.batch_tokens)
    resampled = {layer: 0 for layer in layers}
    for step in range(total_steps):
        if pos + cfg.batch_tokens > buffer_tokens:
            buf = stream.fill(buffer_tokens)
            order = torch.randperm(buffer_tokens, generator=gen)
            pos = 0
        idx = order[pos:pos + cfg.batch_tokens].to(cfg.device)
        pos += cfg.batch_tokens
        lr = _lr_at(step, total_steps, cfg)
        for g in opt.param_groups:
            g["lr"] = lr * g["lr_scale"]
        ramp = 1.0 if adaptive else min(1.0, (step + 1) / max(1, cfg.l0_warmup * total_steps))
        opt.zero_grad(set_to_none=True)
        total = 0.0
        for layer, t in trainees.items():
            x = buf[layer][0][idx].float() / t.x_scale
            y = buf[layer][1][idx].float() / t.y_scale
            loss, stats = t(x, y, l0_coef[layer] * ramp)
            loss.backward()
            total += float(loss.detach())
            for key in running[layer]:
                running[layer][key] += stats[key]
            if adaptive:
                # integral controller in log space: more active features than the target -> a larger weight
                ratio = max(stats["l0"], 1e-3) / cfg.target_l0
                l0_coef[layer] = min(10.0, max(1e-8, l0_coef[layer] * ratio ** cfg.l0_adapt_rate))
        n_running += 1
        for t in trainees.values():
            t.project_decoder_grad()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip * math.sqrt(len(trainees)))
        opt.step()
        for t in trainees.values():
            t.normalize_decoder()
        if (cfg.resample and (step + 1) % resample_every == 0 and step + 1 > cfg.warmup_steps
                and step + 1 < cfg.resample_until * total_steps):
            for layer, t in trainees.items():
                x = buf[layer][0][idx].float() / t.x_scale
                y = buf[layer][1][idx].float() / t.y_scale
                resampled[layer] += t.resample_dead(x, y, opt, gen)
        if (step + 1) % cfg.log_every == 0 or step + 1 == total_steps:
            entry = {"step": step + 1, "lr": lr, "elapsed_s": round(time.time() - start, 1)}
            for layer in layers:
                entry[f"L{layer}"] = {k: round(v / n_running, 5) for k, v in running[layer].items()}
                entry[f"L{layer}"]["dead"] = round(trainees[layer].dead_fraction(), 4)
                entry[f"L{layer}"]["resampled"] = resampled[layer]
                if cfg.activation == "jumprelu":
                    entry[f"L{layer}"]["l0_coef"] = float(f"{l0_coef[layer]:.4g}")
            glog.history.append(entry)
            bar.set_postfix_str(" ".join(
                f"L{layer}:fvu={running[layer]['fvu'] / n_running:.3f},l0={running[layer]['l0'] / n_running:.0f},"
                f"dead={trainees[layer].dead_fraction():.2f}" for layer in layers))
            if log is not None and not progress:
                log(json.dumps(entry))
            running = {layer: {"fvu": 0.0, "l0": 0.0, "aux": 0.0} for layer in layers}
            n_running = 0
        bar.update(1)
    bar.close()
    glog.steps = total_steps
    glog.seconds = round(time.time() - start, 1)
    glog.forward_seconds = round(stream.forward_s, 1)
    return {layer: t.export() for layer, t in trainees.items()}, glog


def _model_name(model_ref) -> str:
    if model_ref is None:
        return "tracer/toy-vlm"
    p = Path(str(model_ref)).expanduser()
    return p.name if p.exists() else str(model_ref)


def train_plt(model, processor, source, out: str | Path, cfg: PLTTrainConfig, model_ref=None,
              progress: bool = True, resume: bool = False, evaluate: bool = True,
              log: Callable[[str], None] | None = print) -> tuple[TranscoderSet, dict]:
    """Train a transcoder for every chosen layer, group by group, saving after each group.

    Returns (the set, the training log with the held-out report). The set is written to `out`
    in the published layout (config.yaml + layer_{i}.safetensors) plus training_log.json.
    """
    from tracer.models.base import get_adapter
    from tracer.transcoders.loading import load_transcoder_set

    torch.manual_seed(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    adapter = get_adapter(model)
    layers = list(range(adapter.n_layers)) if cfg.layers is None else sorted(set(cfg.layers))
    bad = [layer for layer in layers if not 0 <= layer < adapter.n_layers]
    if bad:
        raise InputError(f"layers {bad} do not exist (the model has {adapter.n_layers})")
    if cfg.activation not in ("topk", "jumprelu"):
        raise InputError(f"activation must be topk or jumprelu, got {cfg.activation!r}")
    if cfg.activation == "topk" and not 0 < cfg.k <= cfg.width:
        raise InputError(f"k = {cfg.k} must be between 1 and the width ({cfg.width}): TopK keeps k of its features")
    out = Path(out)
    rank, world = distributed_rank()
    done: dict[int, PerLayerTranscoder] = {}
    log_data: dict = {"config": asdict(cfg), "model": _model_name(model_ref), "groups": []}
    if resume:
        # the finished set and, after an interrupted multi-process run, every rank's partial set
        for folder in [out, *sorted(out.glob(f"{RANKS_DIR}/rank*"))]:
            if not (folder / "config.yaml").exists():
                continue
            prev = load_transcoder_set(folder, lazy_decoder=False)
            done.update({layer: prev[layer] for layer in prev.layers if layer in layers})
            if (folder / "training_log.json").exists():
                log_data["groups"] += json.loads((folder / "training_log.json").read_text()).get("groups", [])
        if log is not None and rank == 0:
            log(f"resuming: layers {sorted(done)} already trained in {out}")
    todo = [layer for layer in layers if layer not in done]
    size = cfg.group_size or len(todo) or 1
    groups = [todo[i:i + size] for i in range(0, len(todo), size)]
    if world > 1:
        # Layers split across ranks: each group is trained exactly as one process would (its data
        # stream and initial weights depend only on the seed and its layers), so the set is the
        # same; every rank saves what it trained in its own folder, rank 0 merges.
        return _train_plt_ranked(model, processor, source, out, cfg, adapter, groups, done, log_data, model_ref,
                                 progress, evaluate, log, rank, world)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    def save(current: dict[int, PerLayerTranscoder]) -> TranscoderSet:
        return _save_set(current, out, cfg, model_ref, adapter.n_layers, log_data)

    for group in groups:
        trained, glog = train_group(model, processor, source, group, cfg, progress=progress, log=log)
        done.update(trained)
        log_data["groups"].append(asdict(glog))
        save(dict(sorted(done.items())))
        if log is not None:
            last = glog.history[-1] if glog.history else {}
            log(f"trained layers {group} in {glog.seconds:.0f}s (model forward {glog.forward_seconds:.0f}s): "
                + " ".join(f"L{layer} fvu={last.get(f'L{layer}', {}).get('fvu', float('nan')):.3f}" for layer in group))
    tset = save(dict(sorted(done.items())))
    if (out / RANKS_DIR).exists():  # partial sets of an interrupted torchrun, now merged
        import shutil

        shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
    if evaluate:
        tset = _evaluate_into_log(model, processor, source, out, cfg, adapter, log_data, progress, log)
    return tset, log_data


def _evaluate_into_log(model, processor, source, out: Path, cfg: PLTTrainConfig, adapter, log_data: dict,
                       progress: bool, log) -> TranscoderSet:
    """The held-out report of the saved set, added to its training_log.json."""
    from tracer.transcoders.evaluation import evaluate_layers, format_report, is_toy_model, toy_accuracy
    from tracer.transcoders.loading import load_transcoder_set

    tset = load_transcoder_set(out, lazy_decoder=False, device=cfg.device)
    items = source.heldout_items(cfg.eval_examples, seed=cfg.seed)
    report = evaluate_layers(model, processor, tset, items, batch_size=cfg.eval_batch, max_length=cfg.max_length,
                             progress=progress)
    log_data["heldout"] = {str(k): v.to_dict() for k, v in report.items()}
    accuracy = None
    if is_toy_model(model, processor) and set(tset.layers) == set(range(adapter.n_layers)):
        accuracy = toy_accuracy(model, processor, tset, per_type=max(50, cfg.eval_examples // 6), progress=progress)
        log_data["toy_accuracy_all_replaced"] = accuracy
    (out / "training_log.json").write_text(json.dumps(log_data, indent=1))
    if log is not None:
        log(format_report(report, accuracy))
    return tset


RANKS_DIR = ".ranks"  # inside the output folder: each rank's partial set during a torchrun


def distributed_rank() -> tuple[int, int]:
    """(rank, world size) of this process in torch.distributed (0, 1 when not distributed)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _save_set(current: dict[int, PerLayerTranscoder], folder: Path, cfg: PLTTrainConfig, model_ref, n_layers: int,
              log_data: dict) -> TranscoderSet:
    from tracer.transcoders.loading import save_transcoder_set

    tset = TranscoderSet(dict(sorted(current.items())), config={"feature_input_hook": "mlp.hook_in",
                                                                 "feature_output_hook": "mlp.hook_out"},
                         source=str(folder))
    save_transcoder_set(tset, folder, model_name=_model_name(model_ref), num_model_layers=n_layers,
                        extra={"training": {k: v for k, v in asdict(cfg).items()
                                            if k not in ("device", "threads", "log_every")}})
    (folder / "training_log.json").write_text(json.dumps(log_data, indent=1))
    return tset


def _train_plt_ranked(model, processor, source, out: Path, cfg: PLTTrainConfig, adapter, groups, done, log_data,
                      model_ref, progress, evaluate, log, rank: int, world: int):
    import shutil

    import torch.distributed as dist

    from tracer.transcoders.loading import load_transcoder_set

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    dist.barrier()  # every rank has read what a previous run left ...
    if rank == 0 and done and (out / RANKS_DIR).exists():
        # ... and rank 0 consolidates it before any rank overwrites its partial folder
        _save_set(done, out, cfg, model_ref, adapter.n_layers, log_data)
        shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
    dist.barrier()
    mine_folder = out / RANKS_DIR / f"rank{rank}"
    mine: dict[int, PerLayerTranscoder] = {}
    mine_log = {**log_data, "groups": []}
    for group in groups[rank::world]:
        trained, glog = train_group(model, processor, source, group, cfg, progress=progress and rank == 0, log=log)
        mine.update(trained)
        mine_log["groups"].append(asdict(glog))
        _save_set(mine, mine_folder, cfg, model_ref, adapter.n_layers, mine_log)  # a checkpoint per group
        if log is not None:
            log(f"rank {rank}/{world}: trained layers {group} in {glog.seconds:.0f}s")
    dist.barrier()
    if rank == 0:
        merged = dict(done)
        groups_log = list(log_data["groups"])
        for folder in sorted((out / RANKS_DIR).glob("rank*")):
            if (folder / "config.yaml").exists():
                part = load_transcoder_set(folder, lazy_decoder=False)
                merged.update({layer: part[layer] for layer in part.layers})
                groups_log += json.loads((folder / "training_log.json").read_text()).get("groups", [])
        log_data["groups"] = sorted(groups_log, key=lambda g: g["layers"][0])
        log_data["distributed"] = {"world_size": world, "mode": "layers split across ranks"}
        _save_set(merged, out, cfg, model_ref, adapter.n_layers, log_data)
        shutil.rmtree(out / RANKS_DIR, ignore_errors=True)
        if evaluate:
            _evaluate_into_log(model, processor, source, out, cfg, adapter, log_data, progress, log)
    dist.barrier()
    return load_transcoder_set(out, lazy_decoder=False, device=cfg.device), log_data


__all__ = ["ActivationStream", "PLTTrainConfig", "distributed_rank", "train_group", "train_plt"]
