"""Trace every example of a batch file on Ray, resumably.

Layout of the output folder:

    DIR/graphs/<id>.graph.safetensors   one graph per example (written by the worker, atomically)
    DIR/results/<id>.json               its summary row, written after the graph: the mark of a
                                        finished example (an error row marks a failed one)
    DIR/summary.parquet, summary.csv    every row, rebuilt from results/ at the end of each run
    DIR/batch.json                      the settings of the run (a re-run must use the same ones)

Each Ray worker is an actor holding one model copy (one per GPU on a GPU machine, one per
`cpus_per_worker` cores otherwise); examples are streamed to whichever worker is free. A worker
process that dies is restarted by Ray and its example retried (`max_restarts`,
`max_task_retries`); finished examples are on disk and never redone. An example that fails
(a corrupt image, an unknown target word) becomes an error row; the batch goes on.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tracer.batch.examples import BatchExample, read_examples
from tracer.errors import InputError
from tracer.files import atomic_write_text

SUMMARY_COLUMNS = ["id", "question_type", "prompt", "image", "answer", "top_target", "probability", "correct",
                   "replacement", "completeness", "n_features", "image_influence_share", "evidence_share",
                   "evidence_ratio", "top_features", "graph", "time_s", "peak_rss_mb", "attempt", "error",
                   "feature_ids", "cell_influence", "cell_grids"]


@dataclass
class BatchSettings:
    model: str | None = None
    transcoders: str | None = None
    device: str | None = None
    dtype: str = "float32"
    attribution: dict = field(default_factory=dict)  # AttributionConfig fields (max_feature_nodes, ...)

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class TraceWorker:
    """One model copy; traces examples one at a time. Runs as a Ray actor (or in-process)."""

    def __init__(self, settings: dict, out_dir: str):
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        from tracer.session import TracingSession

        self.settings = BatchSettings(**settings)
        self.out = Path(out_dir)
        self.session = TracingSession(self.settings.model, self.settings.transcoders, device=self.settings.device,
                                      dtype=self.settings.dtype)

    def pid(self) -> int:
        return os.getpid()

    def trace(self, example: dict) -> dict:
        from tracer.batch.summary import graph_row
        from tracer.graph.storage import save_graph

        ex = BatchExample(**example)
        row = {"id": ex.id, "question_type": ex.question_type, "prompt": ex.prompt, "image": ex.image,
               "answer": ex.answer, "graph": None, "error": None}
        marker = self.out / "results" / f".{ex.id}.started"
        # A restarted worker sees the marker of the attempt that died with its process.
        row["attempt"] = 2 if marker.exists() else 1
        marker.write_text(str(os.getpid()))
        start = time.time()
        try:
            image = None
            if ex.image is not None:
                from tracer.images import open_image

                image = open_image(ex.image)
            settings = dict(self.settings.attribution)
            if ex.targets:
                settings["targets"] = ex.targets
            graph = self.session.attribute(ex.prompt, image, slug=ex.id, progress=False, **settings)
            graph.info["batch"] = {"id": ex.id, "answer": ex.answer, "question_type": ex.question_type,
                                   "evidence_tokens": ex.evidence_tokens}
            path = save_graph(graph, self.out / "graphs" / f"{ex.id}.graph.safetensors")
            row.update(graph_row(graph, ex.evidence_tokens, ex.answer))
            row["graph"] = str(path.relative_to(self.out))
        except Exception as err:  # noqa: BLE001 - one bad example must never stop the batch
            row["error"] = f"{type(err).__name__}: {err}".splitlines()[0][:500]
        row["time_s"] = round(time.time() - start, 3)
        row["peak_rss_mb"] = round(_peak_rss_mb(), 1)
        atomic_write_text(self.out / "results" / f"{ex.id}.json", json.dumps(row))
        marker.unlink(missing_ok=True)
        return row


def _peak_rss_mb() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 if sys.platform != "darwin" else peak / 2**20


def finished_ids(out: Path, retry_errors: bool = False) -> set[str]:
    done = set()
    for path in (out / "results").glob("*.json"):
        if retry_errors:
            try:
                if json.loads(path.read_text()).get("error"):
                    continue
            except ValueError:
                continue
        done.add(path.stem)
    return done


def _check_settings(out: Path, settings: BatchSettings) -> None:
    """A resumed batch must trace with the settings its finished graphs were made with."""
    path = out / "batch.json"
    if path.exists():
        before = json.loads(path.read_text())
        if before != settings.to_dict():
            changed = sorted(k for k in set(before) | set(settings.to_dict())
                             if before.get(k) != settings.to_dict().get(k))
            raise InputError(f"{out} holds a batch traced with other settings ({', '.join(changed)}): use another "
                             f"--out, or the same settings to resume it")
    else:
        atomic_write_text(path, json.dumps(settings.to_dict(), indent=1))


def run_batch(data: str | Path, out: str | Path, settings: BatchSettings, *, workers: int | None = None,
              address: str | None = None, cpus_per_worker: float = 1.0, retry_errors: bool = False,
              max_restarts: int = 3, progress: bool = True) -> dict:
    """Trace every unfinished example of `data` into `out`; returns {"rows": [...], "traced": n,
    "skipped": n, "errors": n}. `address`: an existing Ray cluster (None: a local instance)."""
    examples = read_examples(data)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file, not a folder")
    for sub in ("graphs", "results"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    _check_settings(out, settings)
    done = finished_ids(out, retry_errors)
    todo = [ex for ex in examples if ex.id not in done]
    if todo:
        _trace_on_ray(todo, out, settings, workers, address, cpus_per_worker, max_restarts, progress)
    rows = write_summary(out, [ex.id for ex in examples])
    return {"rows": rows, "traced": len(todo), "skipped": len(examples) - len(todo),
            "errors": sum(1 for r in rows if r.get("error"))}


def _trace_on_ray(todo: list[BatchExample], out: Path, settings: BatchSettings, workers: int | None,
                  address: str | None, cpus_per_worker: float, max_restarts: int, progress: bool) -> None:
    from ray.util import ActorPool
    from tqdm import tqdm

    from tracer.batch.ray_workers import actor_class, ray_session

    with ray_session(address):
        actor, n = actor_class(TraceWorker, len(todo), workers, _wants_gpu(settings), cpus_per_worker,
                               max_restarts=max_restarts, max_task_retries=max_restarts)
        pool = ActorPool([actor.remote(settings.to_dict(), str(out.resolve())) for _ in range(n)])
        bar = tqdm(total=len(todo), desc=f"tracing on {n} worker{'s' * (n > 1)}", unit="example",
                   disable=not progress, dynamic_ncols=True)
        for row in pool.map_unordered(lambda w, ex: w.trace.remote(ex.to_dict()), todo):
            bar.update(1)
            if row.get("error"):
                bar.write(f"{row['id']}: {row['error']}")
        bar.close()


def _wants_gpu(settings: BatchSettings) -> bool:
    if settings.device is not None:
        return settings.device.startswith("cuda")
    import torch

    return torch.cuda.is_available()


def write_summary(out: Path, order: list[str] | None = None) -> list[dict]:
    """summary.parquet and summary.csv from results/ (in batch-file order where given)."""
    import pandas as pd

    rows = {}
    for path in (out / "results").glob("*.json"):
        try:
            rows[path.stem] = json.loads(path.read_text())
        except ValueError:
            continue  # a torn file cannot exist (atomic writes); anything else is not ours
    ids = [i for i in (order or sorted(rows)) if i in rows]
    table = pd.DataFrame([rows[i] for i in ids], columns=SUMMARY_COLUMNS)
    from tracer.files import atomic_path

    with atomic_path(out / "summary.parquet") as tmp:
        table.to_parquet(tmp, index=False)
    with atomic_path(out / "summary.csv") as tmp:
        table.to_csv(tmp, index=False)
    return [rows[i] for i in ids]


MAX_SUMMARY_BYTES = 256 * 2**20  # a summary of a million examples is far below this


def is_batch_folder(folder: str | Path) -> bool:
    """A folder written by run_batch (summary.parquet next to graphs/)."""
    folder = Path(folder)
    return (folder / "summary.parquet").is_file() and (folder / "graphs").is_dir()


def read_summary(folder: str | Path) -> list[dict]:
    """The rows of a batch folder's summary.parquet (InputError if it cannot be read), with the
    list columns as plain lists."""
    import pandas as pd
    import pyarrow

    path = Path(folder) / "summary.parquet"
    if path.stat().st_size > MAX_SUMMARY_BYTES:
        raise InputError(f"{path} is larger than {MAX_SUMMARY_BYTES // 2**20} MB: not a batch summary")
    try:
        table = pd.read_parquet(path)
    except (OSError, ValueError, pyarrow.ArrowException) as err:
        raise InputError(f"{path}: not a readable batch summary ({str(err).splitlines()[0][:200]})") from None
    missing = [c for c in ("id", "graph") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: not a batch summary (no {', '.join(missing)} column)")
    rows = table.to_dict("records")
    for row in rows:
        for key in ("feature_ids", "cell_influence", "cell_grids"):
            value = row.get(key)
            row[key] = [] if value is None else [list(v) if hasattr(v, "__len__") else v for v in value]
        for key, value in row.items():
            if isinstance(value, float) and value != value:  # NaN from pandas: missing
                row[key] = None
    return rows


def per_type_table(rows: list[dict]) -> str:
    """Accuracy and ground-truth circuit metrics per question type."""
    import pandas as pd

    table = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    table["question_type"] = table["question_type"].fillna("-")
    ok = table[table["error"].isna()]
    lines = [f"{'type':<10} {'n':>4} {'errors':>6} {'accuracy':>8} {'image share':>11} {'evidence share':>14} "
             f"{'evidence ratio':>14}"]
    for qtype, group in table.groupby("question_type", sort=True):
        good = ok[ok["question_type"] == qtype]
        acc = good["correct"].dropna()

        def med(col):
            values = pd.to_numeric(good[col], errors="coerce").dropna()
            return f"{values.median():.3f}" if len(values) else "-"

        lines.append(f"{qtype:<10} {len(group):>4} {int(group['error'].notna().sum()):>6} "
                     f"{(f'{acc.astype(float).mean():.1%}' if len(acc) else '-'):>8} {med('image_influence_share'):>11} "
                     f"{med('evidence_share'):>14} {med('evidence_ratio'):>14}")
    lines.append("(medians over the traced examples; evidence = the ground-truth cells of the answer)")
    return "\n".join(lines)
