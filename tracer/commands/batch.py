"""`python -m tracer batch --data examples.jsonl --out DIR`: trace a data set on Ray."""

from __future__ import annotations

from tracer.commands.common import (
    HelpFormatter, add_attribution_arguments, add_model_arguments, check_writable, positive_float, positive_int,
)


def register(sub) -> None:
    p = sub.add_parser(
        "batch", help="trace every example of a JSONL data set on Ray (resumable)",
        description="Trace every example of a JSONL batch file (one object per line: prompt or question, "
        "optional image path relative to the file, targets, contrast, answer, question_type and "
        "evidence_tokens as ground truth; `python -m tracer toy sample` writes one) with the same settings, on "
        "a local Ray instance (all cores, or one worker per GPU) or an existing cluster (--address). Writes "
        "DIR/graphs/<id>.graph.safetensors and DIR/summary.parquet + summary.csv (answer, probability, scores, "
        "image influence share, ground-truth share, strongest features, time, peak memory, error). Re-running "
        "skips finished examples; a worker that dies is restarted and its example retried; a bad example "
        "becomes an error row. Example: python -m tracer toy sample --out scenes -n 20 && python -m tracer "
        "batch --data scenes/examples.jsonl --out runs/batch --max_feature_nodes 300",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--data", required=True, metavar="FILE.jsonl", help="the batch file")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it holds this batch)")
    add_model_arguments(p)
    add_attribution_arguments(p, max_feature_nodes=500)
    p.add_argument("--workers", type=positive_int, default=None,
                   help="Ray workers, each with its own model copy (default: one per GPU, else one per "
                        "--cpus-per-worker cores)")
    p.add_argument("--cpus-per-worker", type=positive_float, default=1.0, help="CPU cores reserved per worker")
    p.add_argument("--address", default=None,
                   help="an existing Ray cluster ('auto' or host:port; default: start a local instance)")
    p.add_argument("--retry-errors", action="store_true", help="trace again the examples that failed last time")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_batch)


def _batch(args) -> int:
    from tracer.batch.run import BatchSettings, per_type_table, run_batch

    check_writable(args.out, folder=True)
    settings = BatchSettings(
        model=args.model, transcoders=args.transcoders, device=args.device, dtype=args.dtype,
        attribution={"max_feature_nodes": args.max_feature_nodes, "max_n_logits": args.max_n_logits,
                     "desired_logit_prob": args.desired_logit_prob, "batch_size": args.batch_size},
    )
    result = run_batch(args.data, args.out, settings, workers=args.workers, address=args.address,
                       cpus_per_worker=args.cpus_per_worker, retry_errors=args.retry_errors,
                       progress=not args.quiet)
    print(per_type_table(result["rows"]))
    print(f"{result['traced']} traced, {result['skipped']} already done, {result['errors']} errors; "
          f"summary in {args.out}/summary.parquet and summary.csv")
    return 0
