"""What an attribution run will ask of the device, checked before it is asked.

Two checks, each before the allocation it guards:

* `check_prompt_budget`, once the prompt is tokenised and before the forward pass: the prompt
  (text tokens + image soft tokens) must fit the model's context, and the recorded forward pass
  (attention patterns, H x P x P per layer, kept twice: as recorded and folded) must fit.
* `check_edge_budget`, once the active features are known and before the edge rows are
  allocated: (logits + explored features) x (active features + errors + positions) rows, one
  batch of backward lanes, and the assembled graph must fit.

A run that does not fit is refused with the estimate and the setting to turn (an InputError,
which `python -m tracer` prints as one line and the app shows as the job's message).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from tracer.errors import InputError
from tracer.limits import format_bytes, host_memory_available

# Headroom for what the estimate leaves out (the allocator's fragmentation, small temporaries).
SAFETY = 1.25


class BudgetError(InputError):
    """An attribution run that would not fit: a prompt longer than the model's context, or more
    memory than the device has."""


def context_length(adapter) -> int | None:
    """The model's context length in positions, or None if its config does not say."""
    n = getattr(adapter.text_config, "max_position_embeddings", None)
    return int(n) if isinstance(n, int) and n > 0 else None


def memory_available(device: torch.device | str) -> int:
    """Bytes that can still be allocated on `device` (free device memory plus what PyTorch's
    cache holds unused; host memory for the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device))
    return host_memory_available()


@dataclass
class Estimate:
    parts: dict[str, tuple[str, int]]  # what -> (device kind, bytes)

    def total(self, kind: str) -> int:
        return sum(b for k, b in self.parts.values() if k == kind)

    def describe(self, kind: str) -> str:
        items = sorted(((b, what) for what, (k, b) in self.parts.items() if k == kind), reverse=True)
        return ", ".join(f"{what} {format_bytes(b)}" for b, what in items if b)


def _pools(device: torch.device) -> dict[str, torch.device]:
    return {"device": device} if device.type == "cpu" else {"device": device, "host": torch.device("cpu")}


def _one_pool(estimate: Estimate, device: torch.device) -> Estimate:
    """On the CPU what is "host" is on the device too: one pool."""
    if device.type != "cpu":
        return estimate
    return Estimate({w: ("device", b) for w, (_, b) in estimate.parts.items()})


def _shortfall(estimate: Estimate, device: torch.device, free: dict[str, int]) -> tuple[str, int] | None:
    """(pool, bytes needed) of the first pool the estimate does not fit in, or None."""
    estimate = _one_pool(estimate, device)
    for kind in _pools(device):
        need = int(estimate.total(kind) * SAFETY)
        if need > free[kind]:
            return kind, need
    return None


def _check(estimate: Estimate, device: torch.device, knobs: str, free: dict[str, int] | None = None) -> None:
    free = free or {kind: memory_available(dev) for kind, dev in _pools(device).items()}
    short = _shortfall(estimate, device, free)
    if short is not None:
        kind, need = short
        dev = _pools(device)[kind]
        where = "memory" if dev.type == "cpu" else f"{dev} memory"
        raise BudgetError(f"this attribution needs about {format_bytes(need)} of {where} "
                          f"({_one_pool(estimate, device).describe(kind)}), but {format_bytes(free[kind])} is free: "
                          f"{knobs}")


def prompt_estimate(adapter, n_positions: int) -> Estimate:
    """Memory of the recorded forward pass and its frozen copies, for a prompt of n positions."""
    cfg = adapter.text_config
    L, P, d = adapter.n_layers, n_positions, adapter.d_model
    H = int(getattr(cfg, "num_attention_heads", 1))
    b = 8 if adapter.dtype == torch.float64 else 4
    return Estimate({
        "attention patterns": ("device", 2 * L * H * P * P * b + H * P * P * 4),
        "recorded activations": ("device", 6 * L * P * d * b),
    })


def check_prompt_budget(adapter, prompt_inputs) -> None:
    """Before the forward pass (settings were checked by AttributionConfig.validate): the prompt
    fits the context and its forward record fits memory."""
    n = prompt_inputs.n_positions
    limit = context_length(adapter)
    if limit is not None and n > limit:
        n_img = len(prompt_inputs.image_positions)
        detail = f" ({n_img} of them image soft tokens)" if n_img else ""
        raise BudgetError(f"the prompt is {n} positions long{detail}, more than the model's context of {limit}: "
                          "shorten the prompt")
    _check(prompt_estimate(adapter, n), torch.device(adapter.device), "shorten the prompt")


def edge_estimate(n_logits: int, n_explore: int, n_columns: int, n_positions: int, n_errors: int, d_model: int,
                  batch_size: int, dtype_bytes: int, edge_bytes: int, offload: bool) -> Estimate:
    """Memory of the edge rows, one batch of backward lanes and the assembled graph."""
    lanes = min(max(1, batch_size), max(1, n_logits + n_explore))
    rows = (n_logits + n_explore) * n_columns * dtype_bytes
    n_nodes = n_explore + n_errors + n_positions + n_logits
    lane_bytes = (6 * n_positions * d_model + 2 * n_columns) * dtype_bytes  # gradients, row, per-slot products
    rows_pool = "host" if offload else "device"
    # choosing the next features to explore builds an explored x explored influence matrix
    # (not needed when every active feature is explored)
    n_active = n_columns - n_errors - n_positions
    influence = n_explore * n_explore * dtype_bytes if n_explore < n_active else 0
    return Estimate({
        f"edge rows ({n_logits + n_explore:,} x {n_columns:,})": (rows_pool, rows),
        "influence matrix": (rows_pool, influence),
        f"backward lanes ({lanes} per batch)": ("device", lanes * lane_bytes),
        "assembled graph": ("host", (n_explore + n_logits) * n_nodes * edge_bytes),
    })


def graph_file_bytes(n_features: int, n_logits: int, n_errors: int, n_positions: int, value_bytes: int) -> int:
    """About the size of the graph file (storage.py): the adjacency rows of features and logits
    over every node, dominant, plus per-position activations and per-row values."""
    n_nodes = n_features + n_errors + n_positions + n_logits
    return (n_features + n_logits) * (n_nodes * value_bytes + 3 * 8) + n_features * (n_positions * value_bytes + 48)


def check_edge_budget(rep, n_logits: int, n_explore: int, cfg) -> None:
    """Before the edge rows are allocated (the active features are known by then)."""
    b = 8 if rep.dtype == torch.float64 else 4
    device = torch.device(rep.device)

    def estimate(k: int) -> Estimate:
        return edge_estimate(n_logits, k, rep.n_columns, rep.n_positions, rep.n_errors, rep.d_model,
                             cfg.batch_size, b, b, cfg.offload == "cpu")

    free = {kind: memory_available(dev) for kind, dev in _pools(device).items()}
    if _shortfall(estimate(n_explore), device, free) is None:
        return
    lo, hi = 0, n_explore  # the most explored features that would fit (bisection on the same estimate)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _shortfall(estimate(mid), device, free) is None else (lo, mid - 1)
    knobs = f"lower max_feature_nodes (to about {lo:,}) or batch_size, shorten the prompt"
    if device.type != "cpu" and cfg.offload != "cpu":
        knobs += ", or keep the rows in host memory (offload='cpu')"
    _check(estimate(n_explore), device, knobs, free)


__all__ = ["BudgetError", "Estimate", "check_edge_budget", "check_prompt_budget", "context_length",
           "edge_estimate", "graph_file_bytes", "memory_available", "prompt_estimate"]
