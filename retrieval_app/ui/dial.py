"""The specialise ↔ generalise dial in the page: a plotly figure and one line of words.

x is the estimated MAP@R on the user's classes, y on classes the model never saw (both
fold averages, see `training/dial.py`). Drawn: the curve over the blend at the refit
length (from the bare backbone at blend 0 to the trained head at 1), the curve over
training time at blend 1, the backbone, the recommended point, the point in use, the one
the slider selects and, when one was kept, the class gate's estimates at its blend."""

from __future__ import annotations

import plotly.graph_objects as go

from ..training.dial import FINE_BLEND_STEP, Dial, DialPoint, gate_applies
from .text import md_escape

BLEND_STEP = FINE_BLEND_STEP  # the slider's step: the finest blends the folds measured
COLOURS = {"blend": "#1f77b4", "time": "#ff7f0e", "backbone": "#555555", "recommended": "#2ca02c", "chosen": "#d62728", "selected": "#000000", "gate": "#9467bd"}


def blend_curve(dial: Dial) -> list[DialPoint]:
    """The measured points over the blend at the length the model is refitted for."""
    return [p for p in dial.curve_over_blend(dial.refit_step()) if p.seen is not None]


def is_blendable(dial: Dial) -> bool:
    """More than one blend was measured (heads that cannot blend have only blend 1)."""
    return len({p.blend for p in blend_curve(dial)}) > 1


def selected_point(dial: Dial, blend: float | None) -> DialPoint | None:
    """The measured point nearest `blend` at the refit length."""
    return None if blend is None else dial.nearest(blend=float(blend))


def initial_blend(dial: Dial) -> float:
    """Where the slider starts: the point in use, else the backbone (blend 0)."""
    return float(dial.chosen.blend) if dial.chosen is not None else 0.0


def _marker_trace(point: DialPoint | tuple[float | None, float | None], name: str, colour: str, symbol: str, size: int) -> dict:
    x, y = (point.seen, point.unseen) if isinstance(point, DialPoint) else point
    return go.Scatter(x=[x], y=[y], mode="markers", name=name, marker={"color": colour, "symbol": symbol, "size": size, "line": {"width": 2, "color": colour}}, hovertemplate=f"{name}<br>your classes %{{x:.3f}}<br>new classes %{{y:.3f}}<extra></extra>")


def dial_figure(dial: Dial, blend: float | None = None) -> go.Figure:
    """The dial as a plotly figure; `blend` marks the slider's point."""
    figure = go.Figure()
    over_blend = blend_curve(dial)
    over_time = [p for p in dial.curve_over_time(1.0) if p.seen is not None]
    if over_blend:
        figure.add_trace(go.Scatter(
            x=[p.seen for p in over_blend], y=[p.unseen for p in over_blend], mode="lines+markers+text", name=f"blend 0 → 1 ({dial.refit_step()} steps)",
            text=[f"{p.blend:g}" for p in over_blend], textposition="top center", line={"color": COLOURS["blend"]},
            hovertemplate="blend %{text}<br>your classes %{x:.3f}<br>new classes %{y:.3f}<extra></extra>",
        ))
    if over_time:
        figure.add_trace(go.Scatter(
            x=[p.seen for p in over_time], y=[p.unseen for p in over_time], mode="lines+markers", name="training time (blend 1)",
            customdata=[p.step for p in over_time], line={"color": COLOURS["time"], "dash": "dot"},
            hovertemplate="%{customdata} steps<br>your classes %{x:.3f}<br>new classes %{y:.3f}<extra></extra>",
        ))
    if dial.baseline_seen is not None:
        figure.add_trace(_marker_trace((dial.baseline_seen, dial.baseline_unseen), "backbone", COLOURS["backbone"], "square", 11))
    if dial.baseline_unseen is not None:  # below this line new classes get worse
        figure.add_hline(y=dial.baseline_unseen, line={"color": COLOURS["backbone"], "dash": "dash", "width": 1},
                         annotation_text="the backbone on new classes", annotation_position="bottom right", annotation_font={"size": 10, "color": COLOURS["backbone"]})
    if dial.recommended is not None:
        figure.add_trace(_marker_trace(dial.recommended, "recommended", COLOURS["recommended"], "diamond-open", 18))
    if dial.chosen is not None:
        figure.add_trace(_marker_trace(dial.chosen, "in use", COLOURS["chosen"], "circle-open", 22))
    if dial.gate is not None:
        figure.add_trace(_marker_trace((dial.gate["seen"], dial.gate["unseen"]), f"with the class gate (blend {dial.gate['blend']:g})", COLOURS["gate"], "star", 14))
    selected = selected_point(dial, blend)
    if selected is not None:
        figure.add_trace(_marker_trace(selected, f"selected (blend {selected.blend:g})", COLOURS["selected"], "x", 12))
    figure.update_layout(
        height=340, margin={"l": 50, "r": 10, "t": 30, "b": 40}, title={"text": "Your classes ↔ new classes (estimated MAP@R)", "font": {"size": 13}},
        xaxis={"title": {"text": "on your classes"}, "range": _axis_range(figure, "x")},
        yaxis={"title": {"text": "on classes it never saw"}, "range": _axis_range(figure, "y")},
        legend={"orientation": "h", "y": -0.25}, uirevision="dial",
    )
    return figure


def _axis_range(figure: go.Figure, axis: str) -> list[float] | None:
    """The values drawn on `axis`, padded; a little room around a single value (plotly's
    own would span 0 to 2 for points that all sit at 1.0)."""
    values = [v for trace in figure.data for v in (getattr(trace, axis) or ()) if v is not None]
    if not values:
        return None
    lo, hi = min(values), max(values)
    pad = max(0.1 * (hi - lo), 0.01)
    return [lo - pad, hi + pad]


def _change(before: float | None, after: float | None) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.2f}"

    return f"{fmt(before)} → {fmt(after)}"


def dial_text(dial: Dial, blend: float | None, *, saved: bool) -> str:
    """The slider's point in words: both estimates against the backbone, and what
    "Keep this point" will do (`saved`: a model was saved for this dial)."""
    point = selected_point(dial, blend)
    if point is None:
        return "No measured point: " + md_escape(dial.note or "too few images to validate") + "."
    words = f"**Blend {point.blend:g}** ({point.step} steps): on your classes {_change(dial.baseline_seen, point.seen)}, on new classes {_change(dial.baseline_unseen, point.unseen)}"
    marks = []
    if dial.recommended is not None and _same(point, dial.recommended):
        marks.append("recommended")
    if dial.chosen is not None and _same(point, dial.chosen):
        marks.append("in use")
    if marks:
        words += f" ({', '.join(marks)})"
    words += "."
    gate = dial.gate
    if gate is not None and gate_applies(gate, point.blend):
        words += (f" With the class gate, which this point keeps: on your classes {_change(dial.baseline_seen, gate['seen'])}, "
                  f"on new classes {_change(dial.baseline_unseen, gate['unseen'])}.")
    elif gate is not None:
        words += f" The class gate (chosen at blend {gate['blend']:g}) is off at this point."
    if dial.recommended is None:
        words += " Recommended: the backbone (no point improved your classes without making new classes worse in one of the class folds)."
    if not saved:
        words += " Nothing was saved: **Keep this point** trains again with this blend."
    elif dial.chosen is None or not _same(point, dial.chosen):
        words += " **Keep this point** switches the saved model to it."
    if dial.note:
        words += f" Note: {md_escape(dial.note)}."
    return words


def _same(a: DialPoint, b: DialPoint) -> bool:
    return a.step == b.step and abs(a.blend - b.blend) < 1e-9
