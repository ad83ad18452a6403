"""Feature examples computed by several Ray workers, merged into the store one process would write.

The examples are cut into contiguous shards, one per worker (each worker holds one model copy).
Round 1: every worker scans its shard and returns its input records and, per layer, its top-k
table (input ids are global). The driver writes the records in order and merges the tables: the
top-k of a union is the top-k of the shards' top-k, and the tables order slots by value, then
input id, so the result equals a single scan exactly. Round 2 (per-position activations): the
driver sends each worker the slot keys and the ids of its inputs that hold a slot, and writes
what comes back.
"""

from __future__ import annotations

import os
from pathlib import Path

from tracer.batch.ray_workers import actor_class, ray_session
from tracer.features.compute import DataSpecError, parse_data_spec, slot_keys, toy_examples, write_positions
from tracer.features.writer import StoreWriter, _LayerTop


class FeatureWorker:
    """A Ray actor: one model copy and its scanner."""

    def __init__(self, model: str | None, transcoders: str | None, device: str, dtype: str, n_per_feature: int):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import torch

        from tracer.features.compute import FeatureScanner
        from tracer.models.loading import FAST_ATTENTION, load_vlm
        from tracer.transcoders import load_transcoder_set

        torch_dtype = getattr(torch, dtype)
        vlm, processor = load_vlm(model, dtype=torch_dtype, device=device, attn_implementation=FAST_ATTENTION)
        tset = load_transcoder_set(transcoders, device=device, dtype=torch_dtype, model=vlm)
        self.scanner = FeatureScanner(vlm, processor, tset)
        self.k = int(n_per_feature)

    def manifest_extra(self, data: str, count: int, model_name: str, transcoder_name: str) -> dict:
        return self.scanner.manifest_extra(parse_data_spec(data), count, model_name, transcoder_name)

    def scan(self, data: str, examples: list, first_id: int, batch_size: int) -> tuple[list, dict]:
        records = []
        tops = {layer: _LayerTop(self.scanner.d[layer], self.k) for layer in self.scanner.layers}
        self.scanner.scan(parse_data_spec(data), examples, first_id, tops, batch_size, records.append)
        return records, tops

    def scan_positions(self, examples: dict, keys: dict, batch_size: int) -> dict:
        return self.scanner.scan_positions(examples, keys, batch_size)


def compute_feature_examples_ray(out: str | Path, *, model: str | None = None, transcoders: str | None = None,
                                 data: str = "toy", n_inputs: int = 600, n_per_feature: int = 8,
                                 batch_size: int = 32, per_position: bool = True, min_fraction: float = 0.0,
                                 device: str = "cpu", dtype: str = "float32", workers: int | None = None,
                                 address: str | None = None, cpus_per_worker: float = 1.0, progress: bool = True,
                                 model_name: str = "", transcoder_name: str = "") -> Path:
    """The store of compute_feature_examples, computed by `workers` Ray actors (toy data only)."""
    spec = parse_data_spec(data)
    if spec.name != "toy":
        raise DataSpecError(f"Ray workers compute over the toy data set only; {data!r} runs in one process "
                            "(drop --workers / --address)")
    import ray
    from tqdm.auto import tqdm

    examples = toy_examples(spec, int(n_inputs))
    with ray_session(address):
        writer = None
        try:
            actor, n = actor_class(FeatureWorker, len(examples), workers, device.startswith("cuda"), cpus_per_worker)
            pool = [actor.remote(model, transcoders, device, dtype, n_per_feature) for _ in range(n)]
            # shard edges on batch edges: every forward pass sees the same inputs (and padding) as in
            # a single-process run, so activations agree bit for bit at equal thread counts
            per = -(-len(examples) // (n * batch_size)) * batch_size
            bounds = [min(len(examples), w * per) for w in range(n + 1)]
            extra = ray.get(pool[0].manifest_extra.remote(data, len(examples), model_name, transcoder_name))
            d = {int(layer): int(v) for layer, v in extra["transcoder"]["d_transcoder"].items()}
            writer = StoreWriter(out, d, n_per_feature, manifest_extra=extra)
            pending = [pool[w].scan.remote(data, examples[bounds[w]:bounds[w + 1]], bounds[w], batch_size)
                       for w in range(n) if bounds[w] < bounds[w + 1]]
            bar = tqdm(total=len(examples), desc=f"feature examples on {n} worker{'s' * (n > 1)}", unit="input",
                       disable=not progress)
            for job in pending:  # shards in order: input ids are global and records must be added in order
                records, tops = ray.get(job)
                for record in records:
                    writer.add_input(record)
                for layer, top in tops.items():
                    writer.merge_top(layer, top)
                bar.update(len(records))
            bar.close()
            if per_position:
                tables = {layer: writer.slot_table(layer) for layer in writer.layers}
                keys, ids = slot_keys(tables, d)
                jobs = []
                for w in range(n):
                    mine = {i: examples[i] for i in ids if bounds[w] <= i < bounds[w + 1]}
                    if mine:
                        jobs.append(pool[w].scan_positions.remote(mine, keys, batch_size))
                found = {layer: [] for layer in writer.layers}
                for part in ray.get(jobs):
                    for layer, pieces in part.items():
                        found[layer].extend(pieces)
                write_positions(writer, tables, found, min_fraction)
            return writer.finish()
        except BaseException:
            if writer is not None:
                writer.abort()
            raise
