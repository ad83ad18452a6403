"""The sweep's plot: warm attribution time against prompt tokens and against explored feature
nodes, both tools, log-log. A PNG with matplotlib when it is installed, otherwise an SVG drawn here
(the project does not depend on matplotlib)."""

from __future__ import annotations

import math
from pathlib import Path

COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"]


def series(sweep: dict) -> list[dict]:
    """Two panels of lines: [{title, xlabel, lines: [(label, dashed, [(x, y), ...])]}]."""
    cells = sweep["cells"]
    by_budget, by_tokens = {}, {}
    for c in cells:
        for tool in ("ours", "circuit-tracer"):
            y = c["summary"][tool]["warm_s"]
            budget = "all" if c["budget"] is None else f"{c['budget']:,}"
            by_budget.setdefault((tool, budget), []).append((c["tokens"], y))
            by_tokens.setdefault((tool, c["tokens"]), []).append((c["explored"], y))
    return [
        {"title": "warm time vs prompt length", "xlabel": "prompt tokens",
         "lines": [(f"{tool}, {b} nodes", tool != "ours", sorted(pts)) for (tool, b), pts in by_budget.items()]},
        {"title": "warm time vs explored feature nodes", "xlabel": "feature nodes",
         "lines": [(f"{tool}, {t} tokens", tool != "ours", sorted(pts)) for (tool, t), pts in by_tokens.items()]},
    ]


def plot_sweep(sweep: dict, path: Path) -> Path:
    panels = series(sweep)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        path = path.with_suffix(".svg")
        path.write_text(svg(panels))
        return path
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4.2))
    for ax, panel in zip(axes, panels):
        for i, (label, dashed, pts) in enumerate(panel["lines"]):
            ax.plot(*zip(*pts), "--o" if dashed else "-o", color=COLORS[i // 2 % len(COLORS)], label=label)
        ax.set(xscale="log", yscale="log", title=panel["title"], xlabel=panel["xlabel"], ylabel="seconds")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=110)
    return path.with_suffix(".png")


def svg(panels: list[dict], w: int = 460, h: int = 340) -> str:
    """Log-log line charts side by side, as a standalone SVG document."""
    pad_l, pad_r, pad_t, pad_b = 58, 12, 28, 44
    parts = []
    for k, panel in enumerate(panels):
        x0 = k * w
        pts = [p for _, _, line in panel["lines"] for p in line]
        lx = [math.log10(x) for x, _ in pts]
        ly = [math.log10(y) for _, y in pts if y > 0]
        xa, xb = math.floor(min(lx) * 2) / 2, math.ceil(max(lx) * 2) / 2 + 1e-9
        ya, yb = math.floor(min(ly)), math.ceil(max(ly))
        if yb == ya:
            yb += 1

        def X(x):
            return x0 + pad_l + (math.log10(x) - xa) / (xb - xa) * (w - pad_l - pad_r)

        def Y(y):
            return pad_t + (yb - math.log10(y)) / (yb - ya) * (h - pad_t - pad_b)

        parts.append(f'<text x="{x0 + w / 2}" y="16" text-anchor="middle" font-size="13">{panel["title"]}</text>')
        parts.append(f'<rect x="{x0 + pad_l}" y="{pad_t}" width="{w - pad_l - pad_r}" height="{h - pad_t - pad_b}" '
                     'fill="none" stroke="#888"/>')
        for e in range(ya, yb + 1):
            y = Y(10 ** e)
            parts.append(f'<line x1="{x0 + pad_l}" x2="{x0 + w - pad_r}" y1="{y}" y2="{y}" stroke="#ddd"/>')
            parts.append(f'<text x="{x0 + pad_l - 4}" y="{y + 4}" text-anchor="end" font-size="10">{10.0 ** e:g}</text>')
        for x in sorted({x for x, _ in pts}):
            parts.append(f'<text x="{X(x)}" y="{h - pad_b + 14}" text-anchor="middle" font-size="10">{x:,}</text>')
        parts.append(f'<text x="{x0 + w / 2}" y="{h - 8}" text-anchor="middle" font-size="11">{panel["xlabel"]}</text>')
        parts.append(f'<text x="{x0 + 14}" y="{h / 2}" font-size="11" transform="rotate(-90 {x0 + 14} {h / 2})" '
                     'text-anchor="middle">warm seconds</text>')
        for i, (label, dashed, line) in enumerate(panel["lines"]):
            color = COLORS[i // 2 % len(COLORS)] if len(panel["lines"]) > 2 else COLORS[i]
            d = " ".join(f"{X(x):.1f},{Y(y):.1f}" for x, y in line if y > 0)
            dash = ' stroke-dasharray="5,3"' if dashed else ""
            parts.append(f'<polyline points="{d}" fill="none" stroke="{color}" stroke-width="1.6"{dash}/>')
            for x, y in line:
                if y > 0:
                    parts.append(f'<circle cx="{X(x):.1f}" cy="{Y(y):.1f}" r="2.5" fill="{color}"/>')
            ly_ = pad_t + 12 + 13 * i
            parts.append(f'<line x1="{x0 + pad_l + 8}" x2="{x0 + pad_l + 26}" y1="{ly_ - 4}" y2="{ly_ - 4}" '
                         f'stroke="{color}" stroke-width="1.6"{dash}/>')
            parts.append(f'<text x="{x0 + pad_l + 30}" y="{ly_}" font-size="9">{label}</text>')
    body = "\n".join(parts)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{w * len(panels)}" height="{h}" '
            f'font-family="sans-serif">\n<rect width="100%" height="100%" fill="white"/>\n{body}\n</svg>\n')
