"""The one way the library reads what each MLP reads and writes: forward hooks on
`adapter.mlp(layer)`, whose input is the transcoder input (`mlp.hook_in`) and whose output is
what a transcoder replaces (`mlp.hook_out`), for every family."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterable

import torch


class StopForward(Exception):
    """Raised by capture hooks to skip the layers after the last one recorded."""


@dataclass
class MLPRecord:
    inputs: dict[int, torch.Tensor] = field(default_factory=dict)
    outputs: dict[int, torch.Tensor] = field(default_factory=dict)


@contextmanager
def record_mlps(model, layers: Iterable[int], stop_after_last: bool = False, outputs: bool = True):
    """Record each chosen layer's MLP input (and raw output unless outputs=False) on every
    forward call, detached. `model`: an HF model or an adapter.

    With stop_after_last, the forward pass is cut short after the last chosen MLP: call the model
    through `run_recording(model, **inputs)`, which swallows the StopForward.
    """
    from tracer.models.base import get_adapter

    adapter = get_adapter(model)
    layers = sorted(set(int(x) for x in layers))
    record = MLPRecord()
    handles = []

    def make_hook(layer: int):
        def hook(module, args, output):
            record.inputs[layer] = args[0].detach()
            if outputs:
                record.outputs[layer] = output.detach()
            if stop_after_last and layer == layers[-1]:
                raise StopForward
        return hook

    try:
        for layer in layers:
            handles.append(adapter.mlp(layer).register_forward_hook(make_hook(layer)))
        yield record
    finally:
        for h in handles:
            h.remove()


def run_recording(model, **inputs):
    """model(**inputs), tolerating a StopForward raised by record_mlps(stop_after_last=True)."""
    try:
        return model(**inputs)
    except StopForward:
        return None


__all__ = ["MLPRecord", "StopForward", "record_mlps", "run_recording"]
