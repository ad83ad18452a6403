"""Compute a feature-examples store: run the model over a data set, encode every layer's MLP
input with its transcoder, keep each feature's top-activating examples.

Positions of the chat-template prefix (and padding) are excluded, as in attribution graphs.
A second, optional pass re-runs only the inputs that hold a slot and records each slot
feature's activation at every position of its input (the per-position heatmaps of the app).
"""

from __future__ import annotations

import hashlib
import json
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from tracer.errors import InputError
from tracer.features.writer import InputRecord, StoreWriter
from tracer.models.capture import record_mlps, run_recording


class DataSpecError(InputError):
    """A --data value that cannot be used."""


@dataclass
class DataSpec:
    name: str = "toy"
    split: str = "heldout"
    seed: int = 0
    start: int = 0
    question_type: str | None = None

    def describe(self) -> dict:
        return {"name": self.name, "split": self.split, "seed": self.seed, "start": self.start,
                "question_type": self.question_type}


def parse_data_spec(text: str | None, split: str = "heldout", seed: int = 0, start: int = 0) -> DataSpec:
    """'toy' or 'toy:SPLIT' (SPLIT = heldout | train), with optional ',type=color'."""
    text = (text or "toy").strip()
    head, _, opts = text.partition(",")
    name, _, sp = head.partition(":")
    if name != "toy":
        raise DataSpecError(f"unknown data set {name!r}: this version computes examples over the toy world "
                            "('toy' or 'toy:heldout' / 'toy:train')")
    spec = DataSpec("toy", sp or split, int(seed), int(start))
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key == "type":
            spec.question_type = value
        elif key == "seed":
            spec.seed = int(value)
        elif key == "start":
            spec.start = int(value)
        else:
            raise DataSpecError(f"unknown data option {key!r} (known: type, seed, start)")
    from tracer.toy import world

    if spec.split not in world.SPLITS:
        raise DataSpecError(f"split must be one of {world.SPLITS}, got {spec.split!r}")
    if spec.question_type is not None and spec.question_type not in world.QUESTION_TYPES:
        raise DataSpecError(f"question type must be one of {world.QUESTION_TYPES}")
    return spec


def toy_examples(spec: DataSpec, count: int) -> list:
    from tracer.toy import world

    return list(world.examples(spec.split, spec.seed, spec.start, count, spec.question_type))


class MLPInputs:
    """Each chosen layer's MLP input (the transcoder input, mlp.hook_in) for a batch, the forward
    pass stopped after the last layer needed (tracer.models.capture.record_mlps)."""

    def __init__(self, adapter, layers: list[int]):
        self.adapter = adapter
        self.layers = sorted(layers)
        self._stack = ExitStack()
        self._record = None

    def __enter__(self):
        self._record = self._stack.enter_context(
            record_mlps(self.adapter, self.layers, stop_after_last=True, outputs=False))
        return self

    def __exit__(self, *exc):
        self._stack.close()
        return False

    def run(self, model, inputs: dict) -> dict[int, torch.Tensor]:
        self._record.inputs.clear()
        with torch.no_grad():
            run_recording(model, **inputs)
        captured = dict(self._record.inputs)
        missing = [layer for layer in self.layers if layer not in captured]
        if missing:
            raise RuntimeError(f"the forward pass never reached the MLPs of layers {missing}")
        return captured


def transcoder_fingerprint(tset) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(getattr(tset, "config", {}), sort_keys=True, default=str).encode())
    for layer, tc in sorted(tset.items()) if hasattr(tset, "items") else []:
        h.update(str((layer, tc.d_transcoder, tc.d_model)).encode())
        h.update(tc.b_enc.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _batches(items: list, size: int) -> Iterator[tuple[int, list]]:
    for start in range(0, len(items), size):
        yield start, items[start: start + size]


def _prepare(processor, adapter, examples: list):
    """Batch inputs plus, per example, its ids, mask of retained positions and token types."""
    from tracer.toy.data import make_batch

    batch = make_batch(processor, examples, with_answers=False)
    inputs = adapter.model_inputs(batch.inputs)
    tok = processor.tokenizer
    ids = batch.inputs["input_ids"]
    am = batch.inputs["attention_mask"].bool()
    tt = batch.inputs.get("token_type_ids")
    retained = torch.zeros_like(am)
    per_example = []
    for b in range(len(examples)):
        valid = torch.nonzero(am[b], as_tuple=True)[0]
        row = ids[b, valid].tolist()
        prefix = adapter.chat_prefix_length(row, tok)
        retained[b, valid[prefix:]] = True
        per_example.append((valid, row, prefix, tt[b, valid].tolist() if tt is not None else [0] * len(row)))
    return inputs, retained, per_example


class FeatureScanner:
    """One process's share of the work: a model with capture hooks on its MLP inputs, its
    processor and transcoders. Scans inputs into top-k tables, and rescans the inputs that hold a
    slot for per-position activations. Used in-process and by each Ray worker
    (tracer.features.distributed)."""

    def __init__(self, model, processor, transcoders):
        from tracer.models import get_adapter

        self.model, self.processor, self.transcoders = model, processor, transcoders
        self.adapter = get_adapter(model)
        self.layers = [int(layer) for layer in transcoders.layers]
        self.d = {layer: int(transcoders[layer].d_transcoder) for layer in self.layers}

    def manifest_extra(self, spec: DataSpec, count: int, model_name: str, transcoder_name: str) -> dict:
        tpi = int(getattr(self.adapter, "tokens_per_image", 0) or 0)
        return {
            "model_name": model_name or str(getattr(self.model.config, "_name_or_path", "")),
            "model_revision": None,
            "transcoder": {"fingerprint": transcoder_fingerprint(self.transcoders), "name": transcoder_name,
                           "source": _portable(getattr(self.transcoders, "source", "")),
                           "feature_input_hook": getattr(self.transcoders, "feature_input_hook", "mlp.hook_in"),
                           "d_transcoder": {str(layer): self.d[layer] for layer in self.layers}},
            "dataset": {**spec.describe(), "count": count},
            "image_token_id": self.adapter.image_token_id,
            "tokens_per_image": tpi,
            "tokens_per_side": int(round(tpi ** 0.5)) if tpi else 0,
            "excluded_positions": "chat-template prefix (<bos><start_of_turn>user\\n) and padding",
        }

    def scan(self, spec: DataSpec, examples: list, first_id: int, tops: dict, batch_size: int,
             on_record: Callable[[InputRecord], None], bar=None) -> None:
        """Every example's record (on_record, in order) and its activations folded into tops
        ({layer: top-k table}); input ids start at first_id."""
        tok = self.processor.tokenizer
        with MLPInputs(self.adapter, self.layers) as hooks:
            for start, chunk in _batches(examples, int(batch_size)):
                inputs, retained, per_example = _prepare(self.processor, self.adapter, chunk)
                for b, ex in enumerate(chunk):
                    valid, row, prefix, types = per_example[b]
                    on_record(InputRecord(
                        example_id=f"toy/{ex.split}/seed{spec.seed}/{ex.index:06d}",
                        text=_prompt_text(self.processor, ex),
                        token_ids=row, token_mask=[i >= prefix for i in range(len(row))], token_type_ids=types,
                        tokens=[tok.decode([t]) for t in row],
                        images=[ex.image()] if ex.has_image else [],
                        metadata={"source": "toy", **ex.to_dict(), "seed": spec.seed},
                    ))
                captured = hooks.run(self.model, inputs)
                _encode_batch(self.transcoders, captured, retained, first_id + start,
                              lambda layer, i, p, f, v: tops[layer].update(i, p, f, v))
                if bar is not None:
                    bar.update(len(chunk))

    def scan_positions(self, examples: dict, keys: dict, batch_size: int, bar=None) -> dict:
        """For the inputs in `examples` ({input id: example}): the activations at every position
        of the (input, feature) pairs that hold a slot. Returns {layer: [(slot, position, value)
        arrays, ...]}; keys from slot_keys()."""
        found: dict[int, list] = {layer: [] for layer in self.layers}

        def collect(layer, inp, pos, feat, val):
            k_sorted, order = keys[layer]
            if not len(k_sorted):
                return
            key = inp.numpy().astype(np.int64) * self.d[layer] + feat.numpy().astype(np.int64)
            j = np.minimum(np.searchsorted(k_sorted, key), len(k_sorted) - 1)
            hit = k_sorted[j] == key
            found[layer].append((order[j[hit]], pos.numpy()[hit], val.numpy()[hit]))

        ids = sorted(examples)
        with MLPInputs(self.adapter, self.layers) as hooks:
            for start in range(0, len(ids), batch_size):
                chunk_ids = ids[start: start + batch_size]
                inputs, retained, _ = _prepare(self.processor, self.adapter, [examples[i] for i in chunk_ids])
                captured = hooks.run(self.model, inputs)
                id_map = torch.tensor(chunk_ids, dtype=torch.int64)
                _encode_batch(self.transcoders, captured, retained, 0,
                              lambda layer, local, pos, feat, val: collect(layer, id_map[local], pos, feat, val))
                if bar is not None:
                    bar.update(len(chunk_ids))
        return found


def slot_keys(tables: dict, d: dict) -> tuple[dict, list[int]]:
    """Per layer, the sorted keys input_id * d + feature of its slots (and their slot order), and
    the ids of the inputs that hold any slot."""
    keys, needed = {}, set()
    for layer, table in tables.items():
        k = (table["input_ids"].astype(np.int64) * d[layer]
             + np.repeat(table["feature_ids"].astype(np.int64), table["slot_counts"]))
        order = np.argsort(k, kind="stable")
        keys[layer] = (k[order], order)
        needed.update(int(i) for i in np.unique(table["input_ids"]))
    return keys, sorted(needed)


def write_positions(writer: StoreWriter, tables: dict, found: dict, min_fraction: float) -> None:
    """Per-slot activations over positions (what scan_positions found) into the store."""
    for layer, table in tables.items():
        n_slots = len(table["top_values"])
        parts = found[layer]
        slot = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, np.int64)
        pos = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, np.int64)
        val = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, np.float32)
        if min_fraction > 0 and len(slot):
            keep = val >= min_fraction * table["top_values"][slot]
            slot, pos, val = slot[keep], pos[keep], val[keep]
        order = np.lexsort((pos, slot))
        slot, pos, val = slot[order], pos[order], val[order]
        offsets = np.concatenate([[0], np.cumsum(np.bincount(slot, minlength=n_slots))]).astype(np.int64)
        writer.set_example_activations(layer, offsets, pos, val)


def compute_feature_examples(out: str | Path, model=None, processor=None, transcoders=None, *, data: str = "toy",
                             n_inputs: int = 600, n_per_feature: int = 8, batch_size: int = 32,
                             per_position: bool = True, progress: bool = True, model_name: str = "",
                             transcoder_name: str = "", min_fraction: float = 0.0,
                             log: Callable[[str], None] | None = None) -> Path:
    """Compute and write a store at `out`; returns its path.

    model / processor: a loaded VLM (default: the shipped toy VLM); transcoders: a TranscoderSet
    (default: the shipped toy set). data: see parse_data_spec. n_inputs: examples of the data set
    to scan. n_per_feature: top examples kept per feature. per_position: also store each slot
    feature's activation at every position of its input. min_fraction: per-position values below
    this share of the slot's own value are not stored (0 keeps every non-zero value).
    """
    from tqdm.auto import tqdm

    if model is None or processor is None:
        from tracer.models import load_vlm

        model, processor = load_vlm(None)
        model_name = model_name or "toy-vlm (shipped)"
    if transcoders is None:
        from tracer.transcoders import load_transcoder_set

        transcoders = load_transcoder_set(None, lazy_decoder=True)
        transcoder_name = transcoder_name or "toy-plt (shipped)"
    scanner = FeatureScanner(model, processor, transcoders)
    spec = parse_data_spec(data)
    examples = toy_examples(spec, int(n_inputs))
    writer = StoreWriter(out, scanner.d, n_per_feature,
                         manifest_extra=scanner.manifest_extra(spec, len(examples), model_name, transcoder_name))
    try:
        bar = tqdm(total=len(examples), desc="feature examples", unit="input", disable=not progress)
        scanner.scan(spec, examples, 0, writer.top, batch_size, writer.add_input, bar)
        bar.close()
        if per_position:
            tables = {layer: writer.slot_table(layer) for layer in scanner.layers}
            keys, ids = slot_keys(tables, scanner.d)
            bar = tqdm(total=len(ids), desc="per-position activations", unit="input", disable=not progress)
            found = scanner.scan_positions({i: examples[i] for i in ids}, keys, int(batch_size), bar)
            bar.close()
            write_positions(writer, tables, found, min_fraction)
        return writer.finish()
    except BaseException:
        writer.abort()
        raise


def _portable(source) -> str:
    """A transcoder source as written in the manifest: paths inside this package relative to it
    (no machine-specific absolute paths for the shipped set)."""
    text = str(source or "")
    try:
        package = Path(__file__).resolve().parents[1]
        path = Path(text).resolve()
        if text and package in path.parents:
            return str(Path("tracer") / path.relative_to(package))
    except (OSError, ValueError):
        pass
    return text


def _prompt_text(processor, ex) -> str:
    """The example's prompt as the model read it (chat template and BOS included)."""
    from tracer.models.base import format_prompt

    return format_prompt(processor, ex.question, int(ex.has_image))


def _encode_batch(transcoders, captured: dict[int, torch.Tensor], retained: torch.Tensor, start: int, emit) -> None:
    """Sparse activations of every retained position: emit(layer, input ids, positions, features, values)."""
    b_idx, p_idx = torch.nonzero(retained, as_tuple=True)
    for layer, x in captured.items():
        rows = x[b_idx, p_idx]
        r, f, v = transcoders[layer].encode_sparse(rows)
        r, f, v = r.cpu(), f.cpu(), v.detach().float().cpu()
        emit(layer, b_idx[r] + start, p_idx[r], f, v)


__all__ = ["DataSpec", "DataSpecError", "FeatureScanner", "MLPInputs", "compute_feature_examples", "parse_data_spec"]
