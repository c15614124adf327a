"""The fine-tune panel's mining diagnostics, drawn from a training job's snapshot.

- `mining_figure`: over the training steps, the shares of hard, semi-hard and easy
  triplets among each batch's valid ones (stacked, they fill the plot), and the mean
  anchor-positive and anchor-negative distances on a second axis;
- `gap_figure`: histograms of d(a, p) and d(a, n) over the steps before the latest
  validation, with those before the first one of the same run outlined: the gap between
  the two growing is training at work.

Both read only `snapshot.series["mining"]` and the validation rows' "mining" entries."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go

KIND_STYLE = (("hard", "hard: d(a,n) ≤ d(a,p)", "#d62728"), ("semi_hard", "semi-hard: within the margin", "#ff7f0e"), ("easy", "easy: beyond the margin", "#2ca02c"))
POSITIVE_COLOUR, NEGATIVE_COLOUR = "#1f77b4", "#9467bd"
HEIGHT = 260


def mining_figure(snapshot) -> go.Figure:
    points = [(step, stats) for step, stats in snapshot.series.get("mining", []) if isinstance(stats, dict)]
    figure = go.Figure()
    if points:
        steps = [step for step, _ in points]
        for key, label, colour in KIND_STYLE:
            figure.add_trace(go.Scatter(x=steps, y=[stats.get(key, 0.0) for _, stats in points], name=label, mode="lines",
                                        stackgroup="kinds", line={"width": 0.5, "color": colour}))
        for key, label, colour in (("d_ap", "mean d(a,p)", POSITIVE_COLOUR), ("d_an", "mean d(a,n)", NEGATIVE_COLOUR)):
            figure.add_trace(go.Scatter(x=steps, y=[stats.get(key) for _, stats in points], name=label, mode="lines", yaxis="y2",
                                        line={"color": colour, "width": 2}))
    figure.update_layout(
        height=HEIGHT, margin={"l": 40, "r": 40, "t": 30, "b": 30}, title="Triplets in each batch (share) and mean distances",
        yaxis={"range": [0, 1], "title": None}, yaxis2={"overlaying": "y", "side": "right", "rangemode": "tozero"},
        legend={"orientation": "h", "font": {"size": 10}}, xaxis={"title": None},
    )
    return figure


def _windows(snapshot) -> tuple[dict[str, Any] | None, dict[str, Any] | None, str]:
    """(first, latest) validation rows with mining statistics of the latest run (quick
    mode: the latest fold), and a label for the latest."""
    rows = [row for row in snapshot.val_history if isinstance(row.get("mining"), dict) and row["mining"].get("histogram")]
    if not rows:
        return None, None, ""
    latest = rows[-1]
    same_run = [row for row in rows if row.get("fold") == latest.get("fold")]
    label = f"fold {latest['fold']}, step {latest.get('step')}" if "fold" in latest else f"epoch {latest.get('epoch')}"
    first = same_run[0] if same_run[0] is not latest else None
    return first, latest, label


def gap_figure(snapshot) -> go.Figure:
    first, latest, label = _windows(snapshot)
    figure = go.Figure()
    if latest is not None:
        for row, opacity, suffix in ((first, 0.0, " (first measurement)"), (latest, 0.55, "")):
            if row is None:
                continue
            hist = row["mining"]["histogram"]
            edges = hist["edges"]
            centres = [(a + b) / 2 for a, b in zip(edges, edges[1:])]
            width = edges[1] - edges[0] if len(edges) > 1 else 1.0
            for key, name, colour in (("d_ap", "d(a,p)", POSITIVE_COLOUR), ("d_an", "d(a,n)", NEGATIVE_COLOUR)):
                total = max(sum(hist[key]), 1)
                figure.add_trace(go.Bar(
                    x=centres, y=[count / total for count in hist[key]], width=width, name=name + suffix, opacity=opacity if opacity else 1.0,
                    marker={"color": colour if opacity else "rgba(0,0,0,0)", "line": {"color": colour, "width": 1.5 if not opacity else 0}},
                ))
    figure.update_layout(
        height=HEIGHT, margin={"l": 40, "r": 10, "t": 30, "b": 30}, barmode="overlay", bargap=0,
        title=f"Distances of the valid triplets: {label}" if label else "Distances of the valid triplets",
        legend={"orientation": "h", "font": {"size": 10}}, yaxis={"title": None, "tickformat": ".0%"},
    )
    return figure
