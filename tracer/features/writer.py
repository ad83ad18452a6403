"""Accumulate top-activating examples per feature and write a store (see layout.py).

Policy: a feature's slots are its highest activations over the data set with at most one slot
per input (the input's maximum over positions, the earliest position on ties), so that the
examples are different inputs. `firing_counts` counts every retained token at which the feature
is active; `processor_tokens` in the manifest is the number of retained tokens (positions after
the chat-template prefix, padding excluded), so firing_count / processor_tokens is the
feature's activation frequency.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tracer.errors import InputError
from tracer.features.layout import (
    EXAMPLE_ACTS, EXTENSION_VERSION, IMAGES_DIR, INPUTS_DIR, MANIFEST, SCHEMA, STATS_DIR, image_filename,
    input_filename, layer_filename,
)


@dataclass
class InputRecord:
    """One input of the data set as the store keeps it."""

    example_id: str
    text: str
    token_ids: list[int]
    token_mask: list[bool]
    token_type_ids: list[int]
    tokens: list[str]
    images: list[Any] = field(default_factory=list)  # PIL images
    metadata: dict = field(default_factory=dict)
    image_grids: list[tuple[int, int]] = field(default_factory=list)  # (rows, cols) of soft tokens per image


def check_replaceable_store(out: str | Path) -> None:
    """A store is written to a new folder, an empty one, or over an older store (replaced once the
    new one is complete); any other existing path is refused, so nothing a user keeps there is lost."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise InputError(f"{out}: exists and is not a folder; choose a new or empty folder for the feature store")
    if (out / MANIFEST).is_file() or not any(out.iterdir()):
        return
    raise InputError(f"{out}: holds files but is not a feature-examples store (no {MANIFEST}); a store replaces "
                     "its folder whole, so choose a new or empty folder")


class _LayerTop:
    """Running top-k (one slot per input) of every feature of one layer."""

    def __init__(self, d_transcoder: int, k: int):
        self.d = int(d_transcoder)
        self.k = int(k)
        self.values = torch.full((self.d, self.k), -torch.inf)
        self.inputs = torch.full((self.d, self.k), -1, dtype=torch.int64)
        self.positions = torch.full((self.d, self.k), -1, dtype=torch.int64)
        self.firing = torch.zeros(self.d, dtype=torch.int64)

    def update(self, inputs: torch.Tensor, positions: torch.Tensor, features: torch.Tensor, values: torch.Tensor):
        """Sparse activations of a batch: global input id, position, feature, value (all 1-D)."""
        if features.numel() == 0:
            return
        inputs, positions, features = inputs.long(), positions.long(), features.long()
        values = values.float()
        active = values > 0
        inputs, positions, features, values = inputs[active], positions[active], features[active], values[active]
        if features.numel() == 0:
            return
        self.firing += torch.bincount(features, minlength=self.d)
        # one candidate per (input, feature): the maximum, earliest position on ties
        first = torch.unique(inputs, sorted=True)
        local = torch.searchsorted(first, inputs)
        key = local * self.d + features
        order = torch.argsort(positions, stable=True)
        order = order[torch.argsort(-values[order], stable=True)]
        order = order[torch.argsort(key[order], stable=True)]
        k_sorted = key[order]
        head = torch.ones_like(k_sorted, dtype=torch.bool)
        head[1:] = k_sorted[1:] != k_sorted[:-1]
        pick = order[head]
        b = local[pick]
        cand_v = torch.full((self.d, len(first)), -torch.inf)
        cand_p = torch.full((self.d, len(first)), -1, dtype=torch.int64)
        cand_v[features[pick], b] = values[pick]
        cand_p[features[pick], b] = positions[pick]
        cand_i = first.unsqueeze(0).expand(self.d, -1)
        self._keep_top(torch.cat([self.values, cand_v], 1), torch.cat([self.inputs, cand_i], 1),
                       torch.cat([self.positions, cand_p], 1))

    def merge(self, other: "_LayerTop") -> None:
        """Fold in the top-k of other inputs (a shard scanned elsewhere): the result is what one
        scan over both sets of inputs gives, ties included."""
        if (other.d, other.k) != (self.d, self.k):
            raise ValueError("merging top-k tables of different shapes")
        self.firing += other.firing
        self._keep_top(torch.cat([self.values, other.values], 1), torch.cat([self.inputs, other.inputs], 1),
                       torch.cat([self.positions, other.positions], 1))

    def _keep_top(self, all_v: torch.Tensor, all_i: torch.Tensor, all_p: torch.Tensor) -> None:
        # A total order, value descending then input id ascending, so that the slots do not depend
        # on the order in which inputs were scanned (one process or merged shards agree exactly).
        empty = all_i < 0
        order = torch.argsort(torch.where(empty, torch.iinfo(torch.int64).max, all_i), dim=1, stable=True)
        order = torch.gather(order, 1, torch.argsort(-torch.gather(all_v, 1, order), dim=1, stable=True))
        idx = order[:, : self.k]
        self.values = torch.gather(all_v, 1, idx)
        self.inputs = torch.gather(all_i, 1, idx)
        self.positions = torch.gather(all_p, 1, idx)

    def slots(self) -> dict[str, np.ndarray]:
        """The published per-layer tensors (numpy), features with at least one slot."""
        valid = torch.isfinite(self.values) & (self.values > 0)
        counts = valid.sum(1)
        feature_ids = torch.nonzero(counts > 0, as_tuple=True)[0]
        # rows come out of topk sorted by value, descending, with the empty slots (-inf) last
        m = valid[feature_ids]
        cat = (lambda t, dt: t[feature_ids][m].numpy().astype(dt))
        return {
            "feature_ids": feature_ids.numpy().astype(np.int32),
            "slot_counts": counts[feature_ids].numpy().astype(np.int32),
            "top_values": cat(self.values, np.float32),
            "input_ids": cat(self.inputs, np.int32),
            "token_positions": cat(self.positions, np.int32),
            "firing_counts": self.firing[feature_ids].numpy().astype(np.int64),
        }


class StoreWriter:
    """Collects inputs and sparse activations, then writes the store atomically (a temporary
    folder next to `out`, renamed into place at the end)."""

    def __init__(self, out: str | Path, d_transcoders: dict[int, int], n_per_feature: int = 8,
                 manifest_extra: dict | None = None, shard_rows: int = 10_000):
        self.out = Path(out)
        check_replaceable_store(self.out)
        self.layers = sorted(int(k) for k in d_transcoders)
        self.d_transcoders = {int(k): int(v) for k, v in d_transcoders.items()}
        self.n_per_feature = int(n_per_feature)
        self.top = {layer: _LayerTop(self.d_transcoders[layer], self.n_per_feature) for layer in self.layers}
        self.records: list[dict] = []
        self.processor_tokens = 0
        self.manifest_extra = dict(manifest_extra or {})
        self.shard_rows = int(shard_rows)
        self.example_acts: dict[int, dict[str, np.ndarray]] = {}
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out.name}-", dir=self.out.parent))
        (self._tmp / IMAGES_DIR).mkdir()

    # -- collection --------------------------------------------------------------------------
    def add_input(self, record: InputRecord) -> int:
        """Store an input (and its images); returns its input_id."""
        input_id = len(self.records)
        refs = []
        for k, image in enumerate(record.images):
            name = image_filename(input_id, k)
            image.save(self._tmp / name, format="PNG", optimize=True)
            refs.append(name)
        self.records.append({
            "input_id": input_id,
            "example_id": record.example_id,
            "text": record.text,
            "image_references": refs,
            "metadata_json": json.dumps(record.metadata, sort_keys=True),
            "token_ids": [int(t) for t in record.token_ids],
            "token_mask": [bool(m) for m in record.token_mask],
            "token_type_ids": [int(t) for t in record.token_type_ids],
            "tokens": [str(t) for t in record.tokens],
            "image_grids": [[int(r), int(c)] for r, c in record.image_grids],
        })
        self.processor_tokens += int(sum(bool(m) for m in record.token_mask))
        return input_id

    def update(self, layer: int, inputs, positions, features, values) -> None:
        self.top[int(layer)].update(torch.as_tensor(inputs), torch.as_tensor(positions), torch.as_tensor(features),
                                    torch.as_tensor(values))

    def merge_top(self, layer: int, top: "_LayerTop") -> None:
        """Fold in the top-k table of a shard scanned by another process."""
        self.top[int(layer)].merge(top)

    def slot_table(self, layer: int) -> dict[str, np.ndarray]:
        return self.top[int(layer)].slots()

    def set_example_activations(self, layer: int, offsets: np.ndarray, positions: np.ndarray,
                                values: np.ndarray) -> None:
        """Per-slot activations over positions (CSR over the layer's slots, in slot order)."""
        self.example_acts[int(layer)] = {
            "example_activation_offsets": np.asarray(offsets, np.int64),
            "example_activation_positions": np.asarray(positions, np.int32),
            "example_activation_values": np.asarray(values, np.float16),
        }

    # -- writing -----------------------------------------------------------------------------
    def finish(self) -> Path:
        from safetensors.numpy import save_file

        import pyarrow as pa
        import pyarrow.parquet as pq

        tmp = self._tmp
        (tmp / STATS_DIR).mkdir(exist_ok=True)
        (tmp / INPUTS_DIR).mkdir(exist_ok=True)
        layer_entries = []
        for layer in self.layers:
            tensors = self.slot_table(layer)
            extra = self.example_acts.get(layer)
            if extra is not None:
                if len(extra["example_activation_offsets"]) != len(tensors["top_values"]) + 1:
                    raise ValueError(f"layer {layer}: example activations do not match the slots")
                tensors.update(extra)
            name = layer_filename(layer)
            save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(tmp / name),
                      metadata={"layer": str(layer), "d_transcoder": str(self.d_transcoders[layer])})
            layer_entries.append({"layer": layer, "filename": name, "d_transcoder": self.d_transcoders[layer],
                                  "n_features": int(len(tensors["feature_ids"])),
                                  "n_slots": int(len(tensors["top_values"]))})
        schema = pa.schema([
            ("input_id", pa.int64()), ("example_id", pa.string()), ("text", pa.string()),
            ("image_references", pa.list_(pa.string())), ("metadata_json", pa.string()),
            ("token_ids", pa.list_(pa.int32())), ("token_mask", pa.list_(pa.bool_())),
            ("token_type_ids", pa.list_(pa.int8())), ("tokens", pa.list_(pa.string())),
            ("image_grids", pa.list_(pa.list_(pa.int32()))),
        ])
        input_entries = []
        for part, start in enumerate(range(0, max(len(self.records), 1), self.shard_rows)):
            rows = self.records[start: start + self.shard_rows]
            name = input_filename(part)
            pq.write_table(pa.Table.from_pylist(rows, schema=schema), tmp / name, compression="zstd")
            input_entries.append({"filename": name, "start": start, "end": start + len(rows)})
        manifest = {
            "schema": SCHEMA,
            "processor_tokens": int(self.processor_tokens),
            "num_inputs": len(self.records),
            "max_examples_per_feature": self.n_per_feature,
            "layers": layer_entries,
            "inputs": input_entries,
            "vlm_circuits": {
                "extension_version": EXTENSION_VERSION,
                "slot_policy": "one slot per input: the input's maximum activation (earliest position on ties)",
                "example_activations": sorted(self.example_acts) == self.layers,
                "image_references": f"relative to the store folder ({IMAGES_DIR}/)",
                "extra_columns": ["tokens", "image_grids"],
                "extra_tensors": list(EXAMPLE_ACTS),
            },
        }
        for key, value in self.manifest_extra.items():
            if key == "vlm_circuits":
                manifest["vlm_circuits"].update(value)
            else:
                manifest[key] = value
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
        _normal_permissions(tmp)
        # swap into place: keep the old store until the new one is complete
        old = None
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}-old-{os.getpid()}")
            if old.exists():
                shutil.rmtree(old)
            os.replace(self.out, old)
        os.replace(tmp, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)


def _normal_permissions(root: Path) -> None:
    """mkdtemp makes a private (0700) folder and safetensors writes 0600 files: give the store
    the usual permissions (what the umask allows)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in [root, *root.rglob("*")]:
        try:
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
        except OSError:
            pass


__all__ = ["InputRecord", "StoreWriter"]
