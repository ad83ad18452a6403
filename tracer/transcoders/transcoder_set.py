"""A set of per-layer transcoders, indexed by model layer, plus its config."""

from __future__ import annotations

from typing import Callable, Iterator

import torch

from tracer.transcoders.errors import TranscoderMismatchError
from tracer.transcoders.per_layer import PerLayerTranscoder

# Hook names a config may use, per adapter family, and what they mean there.
# input: the MLP's input (after pre_feedforward_layernorm for Gemma3);
# output: the raw MLP output (before post_feedforward_layernorm).
INPUT_HOOKS = {
    "gemma3": ("mlp.hook_in", "ln2.hook_normalized"),
}
OUTPUT_HOOKS = {
    "gemma3": ("mlp.hook_out",),
}
HOOK_NOTES = {
    "hook_mlp_out": "in TransformerLens / circuit-tracer's Gemma mapping this is the MLP output AFTER "
                    "post_feedforward_layernorm; this tracer replaces the raw MLP output (mlp.hook_out)",
    "hook_resid_mid": "the residual stream before the pre-feedforward norm, not the MLP input",
}


def supported_hooks(adapter) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(input hooks, output hooks) the adapter's model has."""
    declared = getattr(adapter, "transcoder_hooks", None)
    if declared:
        return tuple(declared[0]), tuple(declared[1])
    family = getattr(adapter, "family", "")
    return INPUT_HOOKS.get(family, ("mlp.hook_in",)), OUTPUT_HOOKS.get(family, ("mlp.hook_out",))


class TranscoderSet:
    """Per-layer transcoders by model layer. `config` is the set's config.yaml as a dict."""

    def __init__(self, transcoders: dict[int, PerLayerTranscoder] | list[PerLayerTranscoder],
                 config: dict | None = None, source: str = ""):
        if isinstance(transcoders, (list, tuple)):
            transcoders = {t.layer: t for t in transcoders}
        if not transcoders:
            raise ValueError("a transcoder set needs at least one layer")
        self._by_layer: dict[int, PerLayerTranscoder] = dict(sorted(transcoders.items()))
        for layer, tc in self._by_layer.items():
            if tc.layer != layer:
                raise ValueError(f"transcoder for layer {layer} says it is for layer {tc.layer}")
        d_models = {t.d_model for t in self._by_layer.values()}
        if len(d_models) != 1:
            raise ValueError(f"transcoders disagree on d_model: {sorted(d_models)}")
        self.source = str(source)
        config = dict(config or {})
        config.setdefault("model_kind", "transcoder_set")
        config.setdefault("feature_input_hook", "mlp.hook_in")
        config.setdefault("feature_output_hook", "mlp.hook_out")
        config["layers"] = list(self._by_layer)
        first = next(iter(self._by_layer.values()))
        k = getattr(first.activation, "k", None)
        if k is not None:
            config["top_k"] = int(k)
        self.config = config

    # -- sequence interface --------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return list(self._by_layer)

    @property
    def n_layers(self) -> int:
        return len(self._by_layer)

    @property
    def d_model(self) -> int:
        return next(iter(self._by_layer.values())).d_model

    @property
    def d_transcoder(self) -> int:
        """The width (the largest one if layers differ)."""
        return max(t.d_transcoder for t in self._by_layer.values())

    @property
    def feature_input_hook(self) -> str:
        return self.config["feature_input_hook"]

    @property
    def feature_output_hook(self) -> str:
        return self.config["feature_output_hook"]

    @property
    def model_name(self) -> str | None:
        return self.config.get("model_name")

    def model_mismatch(self, *model_names) -> str | None:
        """A warning when this set says it was trained for another model than any of `model_names`
        (the model's reference and its config's name): same sizes, wrong features. Names compare by
        their last path component ('google/gemma-3-4b-it' = a folder '.../gemma-3-4b-it')."""
        def key(name) -> str:
            name = str(name or "").strip().lower().removeprefix("gguf:").replace("\\", "/").rstrip("/")
            name = name.rsplit("/", 1)[-1].removesuffix(".gguf")
            return "toy" if name == "toy-vlm" else name  # the shipped toy's set names its folder

        mine = key(self.model_name)
        names = [key(n) for n in model_names if key(n)]
        if not mine or not names or mine in names:
            return None
        return (f"the transcoders {self.source or ''} were trained for {self.model_name!r}, not for "
                f"{next(str(n) for n in model_names if n)!r}: same sizes, but their features may mean nothing "
                "for this model (pass the set made for it)")

    @property
    def num_model_layers(self) -> int | None:
        n = self.config.get("num_model_layers")
        return int(n) if n is not None else None

    def __getitem__(self, layer: int) -> PerLayerTranscoder:
        try:
            return self._by_layer[int(layer)]
        except KeyError:
            raise KeyError(f"no transcoder for layer {layer} (layers: {self.layers})") from None

    def __contains__(self, layer) -> bool:
        return int(layer) in self._by_layer

    def __len__(self) -> int:
        return len(self._by_layer)

    def __iter__(self) -> Iterator[PerLayerTranscoder]:
        return iter(self._by_layer.values())

    def items(self):
        return self._by_layer.items()

    def to(self, device=None, dtype=None) -> "TranscoderSet":
        for tc in self:
            tc.to(device=device, dtype=dtype)
        return self

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self)).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self)).device

    def __repr__(self) -> str:
        act = next(iter(self)).activation
        return (f"TranscoderSet({self.source or 'in memory'}: {self.n_layers} layers, d_model={self.d_model}, "
                f"d_transcoder={self.d_transcoder}, activation={act!r})")

    # -- compatibility -------------------------------------------------------------------------
    def _file_of(self, layer: int) -> str:
        src = self[layer].source
        return src or f"layer {layer}"

    def check_compatible(self, model_or_adapter, require_all_layers: bool = True) -> None:
        """Raise TranscoderMismatchError if this set cannot replace the model's MLPs.

        Checks d_model per layer file, the layer count (config num_model_layers and, with
        require_all_layers, that every model layer has a transcoder), and that the config's
        hooks exist on the model.
        """
        from tracer.models.base import get_adapter

        adapter = get_adapter(model_or_adapter)
        n_layers, d_model = int(adapter.n_layers), int(adapter.d_model)
        config_file = f"{self.source}/config.yaml" if self.source else "config.yaml"
        problems: list[str] = []
        for layer, tc in self.items():
            if tc.d_model != d_model:
                problems.append(f"{self._file_of(layer)}: d_model is {tc.d_model} but the model's d_model is {d_model}")
        bad_layers = [layer for layer in self.layers if not 0 <= layer < n_layers]
        if bad_layers:
            problems.append(f"{config_file}: layers {bad_layers} do not exist in a model with {n_layers} layers")
        if self.num_model_layers is not None and self.num_model_layers != n_layers:
            problems.append(
                f"{config_file}: num_model_layers is {self.num_model_layers} but the model has {n_layers} layers"
            )
        if require_all_layers:
            missing = [layer for layer in range(n_layers) if layer not in self]
            if missing:
                problems.append(f"{self.source or 'transcoder set'}: no transcoder for model layers {missing} "
                                f"(the model has {n_layers} layers; the set covers {self.layers})")
        ins, outs = supported_hooks(adapter)
        for key, hook, allowed in (("feature_input_hook", self.feature_input_hook, ins),
                                   ("feature_output_hook", self.feature_output_hook, outs)):
            if hook not in allowed:
                note = HOOK_NOTES.get(hook, "")
                problems.append(
                    f"{config_file}: {key} {hook!r} is not a hook of this {adapter.family or type(adapter.model).__name__} "
                    f"model (it has {', '.join(allowed)})" + (f"; {note}" if note else "")
                )
        if problems:
            raise TranscoderMismatchError("transcoders do not fit the model:\n  " + "\n  ".join(problems))


def random_transcoder_set(n_layers: int, d_model: int, width: int, activation: Callable[[torch.Generator], torch.nn.Module],
                          skip: bool = True, seed: int = 0, dtype: torch.dtype = torch.float64,
                          source: str = "random") -> TranscoderSet:
    """A seeded random set whose features fire on ordinary MLP inputs, for exactness tests and
    benchmarks: unit-norm decoder rows, encoder N(0, 0.15), biases N(0, 0.1), skip N(0, 0.03).
    activation(generator) makes each layer's activation (drawing its own parameters, if any)."""
    g = torch.Generator().manual_seed(seed)
    layers = {}
    for layer in range(n_layers):
        act = activation(g)
        tc = PerLayerTranscoder.init_random(layer, d_model, width, act, skip=skip, generator=g, dtype=dtype)
        with torch.no_grad():
            tc.W_enc.normal_(0, 0.15, generator=g)
            tc.b_enc.normal_(0, 0.1, generator=g)
            tc.b_dec.normal_(0, 0.1, generator=g)
            if skip:
                tc.W_skip.normal_(0, 0.03, generator=g)
        layers[layer] = tc
    return TranscoderSet(layers, config={"model_name": "toy", "feature_input_hook": "mlp.hook_in",
                                         "feature_output_hook": "mlp.hook_out"}, source=source)


__all__ = ["TranscoderSet", "random_transcoder_set", "supported_hooks"]
