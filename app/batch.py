"""A batch folder (`python -m tracer batch --out DIR`) in the explorer: its examples as a table
and what they say together (recurring features, where image influence lands)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go

from tracer.batch.aggregate import cell_influence_map, recurring_features
from tracer.batch.run import read_summary

# (column, header, decimals or None for text)
COLUMNS = [("id", "example", None), ("question_type", "type", None), ("prompt", "prompt", None),
           ("answer", "expected", None), ("top_target", "answer", None), ("probability", "p", 3),
           ("correct", "correct", None), ("replacement", "replacement", 3), ("completeness", "completeness", 3),
           ("image_influence_share", "image share", 3), ("evidence_share", "ground-truth share", 3),
           ("evidence_ratio", "ground-truth ratio", 1), ("n_features", "features", None),
           ("time_s", "time (s)", 2), ("error", "error", None)]
ALL_TYPES = "all"


@dataclass
class BatchView:
    folder: Path
    rows: list[dict]
    error: str = ""
    graphs: dict[str, str] = field(default_factory=dict)  # example id -> graph file name in graphs/

    @classmethod
    def open(cls, folder: str | Path) -> "BatchView":
        from tracer.errors import InputError

        folder = Path(folder)
        try:
            rows = read_summary(folder)
        except InputError as err:
            return cls(folder, [], str(err))
        graphs = {str(r["id"]): Path(str(r["graph"])).name for r in rows if r.get("graph")}
        return cls(folder, rows, "", graphs)

    def table_rows(self) -> list[dict]:
        out = []
        for row in self.rows:
            shown = {}
            for key, _, decimals in COLUMNS:
                value = row.get(key)
                if decimals is not None and isinstance(value, (int, float)) and value is not None:
                    value = round(float(value), decimals)
                elif key == "correct" and value is not None:
                    value = "yes" if value else "no"
                shown[key] = value
            shown["id"] = str(row.get("id"))
            out.append(shown)
        return out

    def headline(self) -> str:
        n = len(self.rows)
        errors = sum(1 for r in self.rows if r.get("error"))
        judged = [r["correct"] for r in self.rows if r.get("correct") is not None]
        acc = f", {sum(judged) / len(judged):.0%} answered as expected" if judged else ""
        return f"Batch: {n} examples{acc}, {errors} errors ({self.folder.name}/summary.parquet)"

    def question_types(self) -> list[str]:
        return sorted({str(r["question_type"]) for r in self.rows if r.get("question_type")})

    def recurring_figure(self, top: int = 15) -> go.Figure:
        table = recurring_features(self.rows, top=top)
        fig = go.Figure(go.Bar(
            x=[r["examples"] for r in table][::-1], y=[f"L{r['layer']} #{r['feature']}" for r in table][::-1],
            orientation="h", marker_color="#e07b39",
            customdata=[[r["mean_influence"]] for r in table][::-1],
            hovertemplate="%{y}: among the strongest features of %{x} examples<br>"
                          "mean influence %{customdata[0]:.4f}<extra></extra>"))
        fig.update_layout(title="Features that recur (among each example's 20 strongest)", height=300,
                          margin=dict(l=80, r=10, t=40, b=30), xaxis_title="examples")
        return fig

    def influence_figure(self, question_type: str = ALL_TYPES) -> go.Figure:
        grid = cell_influence_map(self.rows, None if question_type == ALL_TYPES else question_type)
        fig = go.Figure()
        if grid is not None:
            fig.add_trace(go.Heatmap(z=grid.tolist(), colorscale="Oranges", zmin=0,
                                     hovertemplate="cell (%{y}, %{x}): %{z:.3f} of the image influence<extra></extra>"))
            fig.update_yaxes(autorange="reversed", scaleanchor="x")
        which = "every type" if question_type == ALL_TYPES else question_type
        fig.update_layout(title=f"Where image influence lands (mean share per cell, {which})", height=300,
                          margin=dict(l=30, r=10, t=40, b=30))
        return fig
