"""Read a feature-examples store: ours, or the published Gemma3 one (a local copy of
`Jingcheng/gemma3-4b-it-plt-activations`). Layout in tracer/features/layout.py.

    store = ExampleStore("app/sample_graphs/feature_examples")
    for ex in store.top_examples(layer=2, feature=17, k=8):
        ex.value, ex.tokens[ex.token_position], ex.image, ex.image_cell

No model is needed. Token strings come from the store's ``tokens`` column (ours), else from a
tokenizer (passed in, or the manifest's model_name if it is in the local Hugging Face cache),
else they read ``<id>``. Images are resolved relative to the store folder; references that are
not local files (the published store's ``hf-dataset://...``) give ``image=None`` and keep the
reference in ``image_reference``.
"""

from __future__ import annotations

import json
import math
import threading
from bisect import bisect_right
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tracer.errors import InputError
from tracer.features.layout import EXAMPLE_ACTS, MANIFEST, SCHEMA, STAT_TENSORS


class ExampleStoreError(InputError):
    """A feature-examples store that cannot be read."""


@dataclass
class FeatureExample:
    value: float  # the feature's activation at token_position
    text: str  # the input as the model saw it (the formatted prompt)
    tokens: list[str]  # one string per position of the input
    token_position: int  # the position of `value` (an index into tokens)
    image: Any = None  # PIL image (RGB) of the image the position belongs to, or of the input's first image
    image_cell: tuple[int, int, int] | None = None  # (image, row, col) when token_position is an image soft token
    activations_per_position: np.ndarray | None = None  # (len(tokens),) float32, when the store has them
    input_id: int = -1
    example_id: str = ""
    image_reference: str | None = None  # the stored reference of `image` (path relative to the store, or URI)
    image_path: Path | None = None  # the local file of `image`
    tokens_per_side: int = 0  # the side of the image's soft-token grid when square, else 0
    grid: tuple[int, int] = (0, 0)  # (rows, cols) of the image's soft-token grid
    token_ids: list[int] = field(default_factory=list)
    token_mask: list[bool] = field(default_factory=list)  # positions whose activations were counted
    metadata: dict = field(default_factory=dict)


@dataclass
class _Layer:
    feature_ids: np.ndarray
    offsets: np.ndarray  # (F+1,) slot offsets
    top_values: np.ndarray
    input_ids: np.ndarray
    token_positions: np.ndarray
    firing_counts: np.ndarray
    act_offsets: np.ndarray | None = None
    act_positions: np.ndarray | None = None
    act_values: np.ndarray | None = None


class ExampleStore:
    """Lazy reader; thread-safe (the Dash app calls it from several threads)."""

    def __init__(self, path: str | Path, tokenizer=None, cache_inputs: int = 4):
        self.path = Path(path)
        manifest = self.path / MANIFEST if self.path.is_dir() else self.path
        if self.path.is_file():
            self.path = self.path.parent
        if not manifest.is_file():
            raise ExampleStoreError(f"{self.path}: no {MANIFEST} (not a feature-examples store)")
        try:
            self.manifest: dict = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ExampleStoreError(f"{manifest}: not valid JSON ({err})") from err
        if not isinstance(self.manifest, dict) or self.manifest.get("schema") != SCHEMA:
            raise ExampleStoreError(f"{manifest}: schema is {self.manifest.get('schema') if isinstance(self.manifest, dict) else None!r}, "
                                    f"expected {SCHEMA!r}")
        try:
            self._layer_files = {int(e["layer"]): str(e["filename"]) for e in self.manifest["layers"]}
            self._inputs = sorted(({"filename": str(e["filename"]), "start": int(e["start"]), "end": int(e["end"])}
                                   for e in self.manifest["inputs"]), key=lambda e: e["start"])
        except (KeyError, TypeError, ValueError) as err:
            raise ExampleStoreError(f"{manifest}: layers / inputs entries are malformed ({err})") from err
        self._starts = [e["start"] for e in self._inputs]
        self._layers: dict[int, _Layer] = {}
        self._tables: OrderedDict[int, Any] = OrderedDict()
        self._cache_inputs = max(1, int(cache_inputs))
        self._tokenizer = tokenizer
        self._tokenizer_tried = tokenizer is not None
        self._lock = threading.RLock()

    # -- manifest facts ----------------------------------------------------------------------
    @property
    def layers(self) -> list[int]:
        return sorted(self._layer_files)

    @property
    def processor_tokens(self) -> int:
        return int(self.manifest.get("processor_tokens", 0) or 0)

    @property
    def model_name(self) -> str:
        return str(self.manifest.get("model_name", ""))

    def __repr__(self) -> str:
        return f"ExampleStore({str(self.path)!r}: layers {self.layers}, {self.manifest.get('num_inputs', '?')} inputs)"

    # -- per-layer statistics ----------------------------------------------------------------
    def _layer(self, layer: int) -> _Layer:
        layer = int(layer)
        with self._lock:
            if layer in self._layers:
                return self._layers[layer]
            if layer not in self._layer_files:
                raise KeyError(f"the store has no layer {layer} (layers: {self.layers})")
            path = self.path / self._layer_files[layer]
            try:
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:  # "pt": the published store has bf16 values
                    keys = set(f.keys())
                    missing = [k for k in STAT_TENSORS if k not in keys]
                    if missing:
                        raise ExampleStoreError(f"{path}: missing tensors {missing}")
                    t = {k: _to_numpy(f.get_tensor(k)) for k in STAT_TENSORS}
                    extra = {k: _to_numpy(f.get_tensor(k)) for k in EXAMPLE_ACTS if k in keys}
            except ExampleStoreError:
                raise
            except Exception as err:  # noqa: BLE001 - unreadable file
                raise ExampleStoreError(f"{path}: cannot read layer statistics ({err})") from err
            fids = t["feature_ids"].astype(np.int64)
            counts = t["slot_counts"].astype(np.int64)
            if len(fids) > 1 and not np.all(fids[1:] > fids[:-1]):
                raise ExampleStoreError(f"{path}: feature_ids are not strictly increasing")
            offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
            n_slots = int(offsets[-1])
            for k in ("top_values", "input_ids", "token_positions"):
                if len(t[k]) != n_slots:
                    raise ExampleStoreError(f"{path}: {k} has {len(t[k])} entries, slot_counts add up to {n_slots}")
            if len(t["firing_counts"]) != len(fids):
                raise ExampleStoreError(f"{path}: firing_counts and feature_ids differ in length")
            data = _Layer(fids, offsets, t["top_values"].astype(np.float32), t["input_ids"].astype(np.int64),
                          t["token_positions"].astype(np.int64), t["firing_counts"].astype(np.int64))
            if len(extra) == len(EXAMPLE_ACTS) and len(extra["example_activation_offsets"]) == n_slots + 1:
                data.act_offsets = extra["example_activation_offsets"].astype(np.int64)
                data.act_positions = extra["example_activation_positions"].astype(np.int64)
                data.act_values = extra["example_activation_values"].astype(np.float32)
            self._layers[layer] = data
            return data

    def _row(self, layer: int, feature: int) -> int | None:
        data = self._layer(layer)
        i = int(np.searchsorted(data.feature_ids, int(feature)))
        if i < len(data.feature_ids) and int(data.feature_ids[i]) == int(feature):
            return i
        return None

    def features(self, layer: int) -> np.ndarray:
        """Feature indices of the layer that have examples."""
        return self._layer(layer).feature_ids.copy()

    def firing_count(self, layer: int, feature: int) -> int:
        """Retained tokens of the data set at which the feature is active (0 if never)."""
        row = self._row(layer, feature)
        return 0 if row is None else int(self._layer(layer).firing_counts[row])

    def activation_frequency(self, layer: int, feature: int) -> float:
        total = self.processor_tokens
        return self.firing_count(layer, feature) / total if total else 0.0

    def max_activation(self, layer: int, feature: int) -> float:
        row = self._row(layer, feature)
        if row is None:
            return 0.0
        data = self._layer(layer)
        a, b = data.offsets[row], data.offsets[row + 1]
        return float(data.top_values[a:b].max()) if b > a else 0.0

    # -- inputs -------------------------------------------------------------------------------
    def _table(self, part: int):
        with self._lock:
            if part in self._tables:
                self._tables.move_to_end(part)
                return self._tables[part]
            import pyarrow.parquet as pq

            path = self.path / self._inputs[part]["filename"]
            try:
                table = pq.read_table(str(path))
            except Exception as err:  # noqa: BLE001
                raise ExampleStoreError(f"{path}: cannot read input shard ({err})") from err
            self._tables[part] = table
            while len(self._tables) > self._cache_inputs:
                self._tables.popitem(last=False)
            return table

    def input_record(self, input_id: int) -> dict:
        """The stored row of one input (all columns, as Python values)."""
        input_id = int(input_id)
        part = bisect_right(self._starts, input_id) - 1
        if part < 0 or input_id >= self._inputs[part]["end"]:
            raise KeyError(f"input {input_id} is not in the store")
        table = self._table(part)
        row = input_id - self._inputs[part]["start"]
        if row >= table.num_rows:
            raise ExampleStoreError(f"{self._inputs[part]['filename']}: has {table.num_rows} rows, input {input_id} "
                                    "should be there")
        return {name: table.column(name)[row].as_py() for name in table.column_names}

    @property
    def tokenizer(self):
        if not self._tokenizer_tried:
            self._tokenizer_tried = True
            name = self.manifest.get("tokenizer_name") or self.manifest.get("model_name")
            if name:
                try:
                    from transformers import AutoTokenizer

                    self._tokenizer = AutoTokenizer.from_pretrained(
                        name, revision=self.manifest.get("model_revision"), local_files_only=True,
                        trust_remote_code=False)
                except Exception:  # noqa: BLE001 - not in the local cache: no token strings
                    self._tokenizer = None
        return self._tokenizer

    def _tokens(self, record: dict) -> list[str]:
        toks = record.get("tokens")
        ids = record.get("token_ids") or []
        if isinstance(toks, list) and len(toks) == len(ids):
            return [str(t) for t in toks]
        tok = self.tokenizer
        out = []
        for i in ids:
            s = None
            if tok is not None:
                try:
                    s = tok.decode([int(i)], skip_special_tokens=False, clean_up_tokenization_spaces=False)
                except Exception:  # noqa: BLE001
                    s = None
            out.append(s if s is not None else f"<{i}>")
        return out

    def _image(self, ref: str | None):
        if not ref:
            return None, None
        p = Path(ref)
        path = p if p.is_absolute() else self.path / p
        try:
            resolved = path.resolve()
            root = self.path.resolve()
            if not p.is_absolute() and root not in resolved.parents:
                return None, None  # never read outside the store through a relative reference
            if not resolved.is_file():
                return None, None
            from tracer.images import open_image

            return open_image(resolved), resolved
        except Exception:  # noqa: BLE001 - a broken image: show the example without it
            return None, None

    def _grid(self, record: dict, position: int) -> tuple[tuple[int, int, int] | None, tuple[int, int], int]:
        """(image, row, col) of an image soft-token position, the (rows, cols) grid of its image,
        image index. Grids come from the record (image_grids), else from the manifest's square
        tokens_per_side (stores written before grids were recorded)."""
        types = record.get("token_type_ids") or []
        n_img_tokens = sum(1 for t in types if int(t) == 1)
        if not n_img_tokens:
            return None, (0, 0), 0
        grids = [tuple(int(x) for x in g) for g in (record.get("image_grids") or []) if len(g) == 2]
        if not grids or sum(r * c for r, c in grids) != n_img_tokens:
            n_images = max(1, len(record.get("image_references") or []))
            per_image = int(self.manifest.get("tokens_per_image") or 0) or n_img_tokens // n_images
            side = int(self.manifest.get("tokens_per_side") or 0) or int(round(math.sqrt(per_image)))
            grids = [(side, side)] * n_images if side > 0 and side * side == per_image else []
        if not grids or not 0 <= position < len(types) or int(types[position]) != 1:
            return None, grids[0] if grids else (0, 0), 0
        k = sum(1 for t in types[:position] if int(t) == 1)
        for image, (rows, cols) in enumerate(grids):
            if k < rows * cols:
                return (image, k // cols, k % cols), (rows, cols), image
            k -= rows * cols
        return None, grids[0], 0

    def top_examples(self, layer: int, feature: int, k: int = 8, load_images: bool = True) -> list[FeatureExample]:
        """The feature's top-activating examples, highest first (empty if it never fired)."""
        row = self._row(layer, feature)
        if row is None:
            return []
        data = self._layer(layer)
        a, b = int(data.offsets[row]), int(data.offsets[row + 1])
        slots = sorted(range(a, b), key=lambda s: -float(data.top_values[s]))[: max(0, int(k))]
        out = []
        for s in slots:
            input_id, pos, value = int(data.input_ids[s]), int(data.token_positions[s]), float(data.top_values[s])
            record = self.input_record(input_id)
            tokens = self._tokens(record)
            cell, grid, image_index = self._grid(record, pos)
            refs = record.get("image_references") or []
            ref = refs[image_index] if image_index < len(refs) else (refs[0] if refs else None)
            image, image_path = self._image(ref) if load_images else (None, None)
            acts = None
            if data.act_offsets is not None:
                acts = np.zeros(len(tokens), np.float32)
                lo, hi = int(data.act_offsets[s]), int(data.act_offsets[s + 1])
                p = data.act_positions[lo:hi]
                ok = (p >= 0) & (p < len(tokens))
                acts[p[ok]] = data.act_values[lo:hi][ok]
            try:
                metadata = json.loads(record.get("metadata_json") or "{}")
            except json.JSONDecodeError:
                metadata = {}
            out.append(FeatureExample(
                value=value, text=str(record.get("text") or ""), tokens=tokens, token_position=pos, image=image,
                image_cell=cell, activations_per_position=acts, input_id=input_id,
                example_id=str(record.get("example_id") or ""), image_reference=ref, image_path=image_path,
                tokens_per_side=grid[0] if grid[0] == grid[1] else 0, grid=grid,
                token_ids=[int(t) for t in record.get("token_ids") or []],
                token_mask=[bool(m) for m in record.get("token_mask") or []], metadata=metadata,
            ))
        return out


def _to_numpy(t) -> np.ndarray:
    import torch

    if t.dtype in (torch.bfloat16, torch.float16):
        t = t.float()
    return t.numpy()


def open_store(path: str | Path, **kwargs) -> ExampleStore:
    return ExampleStore(path, **kwargs)


__all__ = ["ExampleStore", "ExampleStoreError", "FeatureExample", "open_store"]
