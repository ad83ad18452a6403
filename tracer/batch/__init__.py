"""Batch tracing of a data set on Ray: one graph file per example plus a summary table.

    examples.py   reading and checking the batch file (JSONL)
    summary.py    what one graph says in one table row (scores, image influence, ground truth)
    run.py        the Ray driver and its workers (one model copy each), resumable
"""
