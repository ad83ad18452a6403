"""Run a model with its MLPs replaced by transcoders, or record what its MLPs read and write.

Both work through forward hooks on ``adapter.mlp(layer)``: the MLP's input is the transcoder's
input (``mlp.hook_in``), the MLP's output is what the transcoder replaces (``mlp.hook_out``).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable

import torch

from tracer.models.base import get_adapter
from tracer.models.capture import MLPRecord, StopForward, record_mlps, run_recording
from tracer.transcoders.transcoder_set import TranscoderSet


def prefix_lengths(input_ids: torch.Tensor, attention_mask: torch.Tensor | None, adapter, tokenizer) -> torch.Tensor:
    """Per row: the index of the first position after the chat-template prefix (left padding aware)."""
    out = []
    for b in range(input_ids.shape[0]):
        ids = input_ids[b]
        start = 0
        if attention_mask is not None:
            valid = torch.nonzero(attention_mask[b], as_tuple=True)[0]
            start = int(valid[0]) if valid.numel() else 0
        out.append(start + adapter.chat_prefix_length(ids[start:].tolist(), tokenizer))
    return torch.tensor(out, dtype=torch.long)


@contextmanager
def replace_mlps(model, tset: TranscoderSet, layers: Iterable[int] | None = None, *,
                 keep_prefix: int | torch.Tensor | None = None, tokenizer=None, add_error: bool = False):
    """Inside the block, each chosen layer's MLP output is its transcoder's output (errors not added back).

    layers: which layers (default: every layer the set covers).
    keep_prefix: leading positions where the real MLP output is kept: an int, or one int per row
        ([batch] tensor). Attribution excludes the chat-template prefix (BOS,
        `<start_of_turn>user\\n`) from feature nodes and treats what its MLPs write as a constant,
        so a replacement model keeps the real MLP outputs there.
    tokenizer: when given (and keep_prefix is None), each row's prefix is found from the input
        ids of every forward call with adapter.chat_prefix_length.
    add_error: add the error (true output - reconstruction) back, i.e. leave the output
        unchanged but still run the transcoders (for tests of the hook plumbing).
    """
    adapter = get_adapter(model)
    layers = list(tset.layers if layers is None else layers)
    state: dict = {"prefix": None}
    handles = []

    if keep_prefix is None and tokenizer is not None:
        def pre_hook(module, args, kwargs):
            ids = kwargs.get("input_ids", args[0] if args else None)
            if ids is not None:
                state["prefix"] = prefix_lengths(ids, kwargs.get("attention_mask"), adapter, tokenizer)
            return None

        handles.append(adapter.model.register_forward_pre_hook(pre_hook, with_kwargs=True))
    elif keep_prefix is not None:
        state["prefix"] = keep_prefix

    def make_hook(layer: int):
        tc = tset[layer]

        def hook(module, args, output):
            x = args[0]
            rec = tc(x).to(output.dtype)
            if add_error:
                rec = rec + (output - rec).detach()
            prefix = state["prefix"]
            if prefix is not None and x.dim() == 3:
                positions = torch.arange(x.shape[1], device=x.device)
                if isinstance(prefix, torch.Tensor) and prefix.dim() == 1:
                    keep = positions.unsqueeze(0) < prefix.to(x.device).unsqueeze(1)
                else:
                    keep = (positions < int(prefix)).unsqueeze(0).expand(x.shape[0], -1)
                if keep.shape[0] == x.shape[0]:
                    rec = torch.where(keep.unsqueeze(-1), output, rec)
            return rec

        return hook

    try:
        for layer in layers:
            handles.append(adapter.mlp(layer).register_forward_hook(make_hook(layer)))
        yield
    finally:
        for h in handles:
            h.remove()


__all__ = ["MLPRecord", "StopForward", "prefix_lengths", "record_mlps", "replace_mlps", "run_recording"]
