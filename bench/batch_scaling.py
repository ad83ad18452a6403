"""Throughput of `python -m tracer batch` with 1 and 2 Ray workers, side by side in one run.

    python bench/batch_scaling.py                      # 200 held-out toy scenes, 300 feature nodes
    python bench/batch_scaling.py --n 40 --rounds 1    # a quick look

Each round traces the same scenes twice into fresh folders, once per worker count, alternating
which goes first (the machine is shared and noisy). Reported per run: wall time including Ray's
start and the model loads, the steady rate (examples per second between the first and the last
finished example), and the ratio 2 workers / 1 worker of each. Results go to
bench/results/batch_scaling_cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def one_run(data: Path, out: Path, workers: int, nodes: int) -> dict:
    from tracer.batch.run import BatchSettings, run_batch

    settings = BatchSettings(attribution={"max_feature_nodes": nodes})
    start = time.time()
    result = run_batch(data, out, settings, workers=workers, progress=False)
    wall = time.time() - start
    finished = sorted(p.stat().st_mtime for p in (out / "results").glob("*.json"))
    steady = (len(finished) - 1) / (finished[-1] - finished[0]) if len(finished) > 1 else float("nan")
    return {"workers": workers, "wall_s": round(wall, 1), "examples_per_s_wall": round(len(finished) / wall, 3),
            "examples_per_s_steady": round(steady, 3), "errors": result["errors"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out toy scenes")
    parser.add_argument("--nodes", type=int, default=300, help="max feature nodes per graph")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of (1 worker, 2 workers)")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "batch_scaling_cpu.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tracer.cli import main as tracer_main

    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tracer_main(["toy", "sample", "--out", str(tmp / "scenes"), "-n", str(args.n)])
        data = tmp / "scenes" / "examples.jsonl"
        for r in range(args.rounds):
            order = (1, 2) if r % 2 == 0 else (2, 1)
            for workers in order:
                run = one_run(data, tmp / f"r{r}-w{workers}", workers, args.nodes)
                run["round"] = r
                run["load_avg_after"] = round(os.getloadavg()[0], 2)
                runs.append(run)
                print(json.dumps(run), flush=True)

    def med(workers, key):
        return statistics.median(r[key] for r in runs if r["workers"] == workers)

    summary = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}",
        "n_examples": args.n, "max_feature_nodes": args.nodes, "rounds": args.rounds, "runs": runs,
        "ratio_wall": round(med(2, "examples_per_s_wall") / med(1, "examples_per_s_wall"), 2),
        "ratio_steady": round(med(2, "examples_per_s_steady") / med(1, "examples_per_s_steady"), 2),
        "date": time.strftime("%Y-%m-%d"),
    }
    print(f"2 workers / 1 worker: {summary['ratio_wall']}x wall (Ray start and model loads included), "
          f"{summary['ratio_steady']}x steady rate")
    Path(args.out).write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
