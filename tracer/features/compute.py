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
    name: str = "toy"  # toy | pydoc | text
    split: str = "heldout"
    seed: int = 0
    start: int = 0
    question_type: str | None = None
    path: str | None = None  # text:FILE
    window: int = 64  # text:FILE: tokens per window (after <bos>)
    chars: int = 400  # pydoc: most characters per chunk, as tracer.transcoders.pydoc_corpus writes them

    def describe(self) -> dict:
        if self.name == "toy":
            return {"name": self.name, "split": self.split, "seed": self.seed, "start": self.start,
                    "question_type": self.question_type}
        if self.name == "pydoc":
            return {"name": self.name, "chars": self.chars, "start": self.start,
                    "source": "pydoc_data.topics (tracer.transcoders.pydoc_corpus)"}
        return {"name": self.name, "file": Path(self.path).name, "window": self.window, "start": self.start}


@dataclass
class TextInput:
    """One text input of a corpus: its token ids as the model reads them (<bos> first)."""

    index: int
    ids: list[int]


_OPTIONS = {"toy": ("type", "seed", "start"), "pydoc": ("chars", "start"), "text": ("window", "start")}


def parse_data_spec(text: str | None, split: str = "heldout", seed: int = 0, start: int = 0) -> DataSpec:
    """'toy' or 'toy:SPLIT' (SPLIT = heldout | train), with optional ',type=color'; 'pydoc' (the
    Python reference manual's topics, the corpus of the shipped Gemma 3 270M transcoders;
    ',chars=400'); 'text:FILE' (a UTF-8 text file cut into windows of ',window=64' tokens).
    ',start=N' skips the first N inputs of any of them."""
    text = (text or "toy").strip()
    head, _, opts = text.partition(",")
    name, _, arg = head.partition(":")
    if name not in _OPTIONS:
        raise DataSpecError(f"unknown data set {name!r}: use 'toy' ('toy:heldout' / 'toy:train'), 'pydoc' "
                            "or 'text:FILE'")
    spec = DataSpec(name, arg or split if name == "toy" else split, int(seed), int(start))
    if name == "pydoc" and arg:
        raise DataSpecError(f"'pydoc' takes no ':{arg}' (options: ,chars=N ,start=N)")
    if name == "text":
        if not arg:
            raise DataSpecError("text: needs a file, e.g. text:notes.txt")
        if not Path(arg).is_file():
            raise DataSpecError(f"text file not found: {arg}")
        _read_text(arg)  # checked here, before a model loads
        spec.path = arg
    for opt in filter(None, opts.split(",")):
        key, _, value = opt.partition("=")
        if key not in _OPTIONS[name]:
            raise DataSpecError(f"unknown option {key!r} for {name} data (known: {', '.join(_OPTIONS[name])})")
        if key == "type":
            spec.question_type = value
            continue
        try:
            number = int(value)
        except ValueError:
            raise DataSpecError(f"{key} must be a whole number, got {value!r}") from None
        if number < (0 if key in ("start", "seed") else 1) or (key == "chars" and number < 20):
            raise DataSpecError(f"{key}={number} is out of range")
        setattr(spec, key, number)
    if name != "toy":
        return spec
    from tracer.toy import world

    if spec.split not in world.SPLITS:
        raise DataSpecError(f"split must be one of {world.SPLITS}, got {spec.split!r}")
    if spec.question_type is not None and spec.question_type not in world.QUESTION_TYPES:
        raise DataSpecError(f"question type must be one of {world.QUESTION_TYPES}")
    return spec


def toy_examples(spec: DataSpec, count: int) -> list:
    from tracer.toy import world

    return list(world.examples(spec.split, spec.seed, spec.start, count, spec.question_type))


def text_inputs(spec: DataSpec, count: int, processor) -> list[TextInput]:
    """The first `count` inputs (from spec.start) of a text corpus, tokenised as the transcoders'
    training tokenised them: the prompt path (chat template where the tokenizer has one) with the
    tokenizer's <bos>. A text file is tokenised whole and cut into windows of spec.window tokens."""
    from tracer.models.base import format_prompt

    tokenizer = getattr(processor, "tokenizer", processor)
    if spec.name == "pydoc":
        from tracer.transcoders.pydoc_corpus import chunks

        texts = chunks(spec.chars)[spec.start: spec.start + count]
        return [TextInput(spec.start + i, tokenizer(format_prompt(processor, t, 0))["input_ids"])
                for i, t in enumerate(texts)]
    ids = tokenizer(_read_text(spec.path), add_special_tokens=False)["input_ids"]
    bos = [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []
    w = spec.window
    starts = range(spec.start * w, len(ids), w)[:count]
    out = [TextInput(s // w, bos + ids[s: s + w]) for s in starts]
    if not out:
        raise DataSpecError(f"{spec.path} has no text from window {spec.start} on ({len(ids)} tokens)")
    return out


def _read_text(path: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise DataSpecError(f"{path} is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise DataSpecError(f"cannot read {path}: {err.strerror or err}") from None


def load_inputs(spec: DataSpec, count: int, processor) -> list:
    """The data set's first `count` inputs: toy examples or TextInputs."""
    return toy_examples(spec, count) if spec.name == "toy" else text_inputs(spec, count, processor)


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
    tok = getattr(processor, "tokenizer", processor)
    if examples and isinstance(examples[0], TextInput):
        raw = _pad_right([ex.ids for ex in examples], tok.pad_token_id or 0)
    else:
        from tracer.toy.data import make_batch

        raw = make_batch(processor, examples, with_answers=False).inputs
    inputs = adapter.model_inputs(raw)
    ids = raw["input_ids"]
    am = raw["attention_mask"].bool()
    tt = raw.get("token_type_ids")
    retained = torch.zeros_like(am)
    per_example = []
    grids = iter(_batch_grids(adapter, raw, examples))
    for b, ex in enumerate(examples):
        valid = torch.nonzero(am[b], as_tuple=True)[0]
        row = ids[b, valid].tolist()
        prefix = adapter.chat_prefix_length(row, tok)
        retained[b, valid[prefix:]] = True
        n_images = 0 if isinstance(ex, TextInput) or not ex.has_image else 1
        per_example.append((valid, row, prefix, tt[b, valid].tolist() if tt is not None else [0] * len(row),
                            [next(grids) for _ in range(n_images)]))
    return inputs, retained, per_example


def _batch_grids(adapter, raw: dict, examples: list) -> list[tuple[int, int]]:
    """(rows, cols) of every image of the batch, in order (one per toy example with an image)."""
    from tracer.models.base import image_grids

    n = sum(1 for ex in examples if not isinstance(ex, TextInput) and ex.has_image)
    return image_grids(adapter, raw, n, int(getattr(adapter, "tokens_per_image", 0) or 0)) if n else []


def _pad_right(rows: list[list[int]], pad: int) -> dict[str, torch.Tensor]:
    # right padding keeps every input's positions (and so its activations) as if it ran alone
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), int(pad), dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.tensor(row, dtype=torch.long)
        mask[b, :len(row)] = 1
    return {"input_ids": ids, "attention_mask": mask}


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
            "excluded_positions": ("chat-template prefix (<bos><start_of_turn>user\\n) and padding" if spec.name == "toy"
                                   else "<bos> (and a chat template's user-turn header, where the tokenizer has "
                                        "one) and padding"),
        }

    def scan(self, spec: DataSpec, examples: list, first_id: int, tops: dict, batch_size: int,
             on_record: Callable[[InputRecord], None], bar=None) -> None:
        """Every example's record (on_record, in order) and its activations folded into tops
        ({layer: top-k table}); input ids start at first_id."""
        tok = getattr(self.processor, "tokenizer", self.processor)
        with MLPInputs(self.adapter, self.layers) as hooks:
            for start, chunk in _batches(examples, int(batch_size)):
                inputs, retained, per_example = _prepare(self.processor, self.adapter, chunk)
                for b, ex in enumerate(chunk):
                    valid, row, prefix, types, grids = per_example[b]
                    if isinstance(ex, TextInput):
                        on_record(_text_record(spec, ex, row, prefix, types, tok))
                        continue
                    on_record(InputRecord(
                        example_id=f"toy/{ex.split}/seed{spec.seed}/{ex.index:06d}",
                        text=_prompt_text(self.processor, ex),
                        token_ids=row, token_mask=[i >= prefix for i in range(len(row))], token_type_ids=types,
                        tokens=[tok.decode([t]) for t in row],
                        images=[ex.image()] if ex.has_image else [], image_grids=grids,
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


def _text_record(spec: DataSpec, ex: TextInput, row: list[int], prefix: int, types: list[int], tok) -> InputRecord:
    where = {"pydoc": "pydoc", "text": f"text/{Path(spec.path or '').name}"}[spec.name]
    return InputRecord(
        example_id=f"{where}/{ex.index:06d}", text=tok.decode(row), token_ids=row,
        token_mask=[i >= prefix for i in range(len(row))], token_type_ids=types,
        tokens=[tok.decode([t]) for t in row], images=[],
        metadata={"source": spec.name, "index": ex.index, **({"window": spec.window} if spec.name == "text" else {})},
    )


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


def compute_feature_examples(out: str | Path, model=None, processor=None, transcoders=None, *,
                             data: str | DataSpec = "toy",
                             n_inputs: int = 600, n_per_feature: int = 8, batch_size: int = 32,
                             per_position: bool = True, progress: bool = True, model_name: str = "",
                             transcoder_name: str = "", min_fraction: float = 0.0,
                             log: Callable[[str], None] | None = None) -> Path:
    """Compute and write a store at `out`; returns its path.

    model / processor: a loaded VLM (default: the shipped toy VLM); transcoders: a TranscoderSet
    (default: the shipped toy set). data: see parse_data_spec (or a DataSpec). n_inputs: examples of the data set
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
    spec = data if isinstance(data, DataSpec) else parse_data_spec(data)
    examples = load_inputs(spec, int(n_inputs), processor)
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


__all__ = ["DataSpec", "DataSpecError", "FeatureScanner", "MLPInputs", "TextInput", "compute_feature_examples",
           "load_inputs", "parse_data_spec"]
