"""The interactive map: a plotly figure (as JSON) drawn by an interactive `gr.HTML`.

Each point carries `customdata = [global index, thumbnail URL, id, class]`; the page's
JavaScript forwards clicks as `trigger('click', {index})`, shows the thumbnail on hover,
and keeps the zoom across updates (`layout.uirevision`). The server validates every
index it receives."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf",
           "#393b79", "#ad494a", "#8ca252", "#bd9e39", "#843c39", "#7b4173", "#5254a3", "#e7ba52", "#637939", "#d6616b")
UIREVISION = "keep-zoom"


def file_url(path: Path | None) -> str:
    return "" if path is None else f"/gradio_api/file={Path(path).as_posix()}"


def map_figure_json(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], ids: Sequence[str], thumbs: Sequence[Path | None], *, query: int | None = None, neighbours: Sequence[int] = (), query_point: np.ndarray | None = None, title: str = "") -> str:
    traces = []
    for label, name in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        if not len(rows):
            continue
        traces.append({
            "type": "scattergl", "mode": "markers", "name": name,
            "x": coords[rows, 0].tolist(), "y": coords[rows, 1].tolist(),
            "marker": {"size": 8, "color": PALETTE[label % len(PALETTE)], "opacity": 0.85},
            "customdata": [[int(i), file_url(thumbs[i]), ids[i], name] for i in rows],
            "hovertemplate": "%{customdata[2]}<br>class: %{customdata[3]}<extra></extra>",
        })
    if neighbours:
        rows = list(neighbours)
        traces.append({
            "type": "scatter", "mode": "markers", "name": "neighbours", "hoverinfo": "skip",
            "x": coords[rows, 0].tolist(), "y": coords[rows, 1].tolist(),
            "marker": {"size": 16, "color": "rgba(0,0,0,0)", "line": {"width": 2.5, "color": "#111"}},
        })
    star = coords[query] if query is not None else query_point
    if star is not None:
        traces.append({
            "type": "scatter", "mode": "markers", "name": "query", "hoverinfo": "skip",
            "x": [float(star[0])], "y": [float(star[1])],
            "marker": {"size": 22, "symbol": "star", "color": "#ffd400", "line": {"width": 1.5, "color": "#111"}},
        })
    layout = {
        "title": {"text": title, "font": {"size": 14}}, "uirevision": UIREVISION, "hovermode": "closest",
        "dragmode": "zoom", "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 560,
        "xaxis": {"showticklabels": False, "zeroline": False}, "yaxis": {"showticklabels": False, "zeroline": False},
        "legend": {"itemsizing": "constant"}, "plot_bgcolor": "#fafafa",
    }
    return json.dumps({"data": traces, "layout": layout})


PLOT_TEMPLATE = """
<div class="rmap">
  <div class="rmap-plot"></div>
  <div class="rmap-tip"><img alt=""><span></span></div>
</div>
"""

PLOT_CSS = """
.rmap { position: relative; min-height: 560px; }
.rmap-plot { width: 100%; min-height: 560px; }
.rmap-empty { padding: 2em; color: #666; }
.rmap-tip { position: absolute; display: none; pointer-events: none; background: white; border: 1px solid #ccc;
            border-radius: 6px; padding: 4px; box-shadow: 0 2px 8px rgba(0,0,0,.2); z-index: 10; font-size: 12px; }
.rmap-tip img { display: block; max-width: 160px; max-height: 160px; }
"""

# Runs once per component; draws on every value change. Plotly.react may replace the
# div's event emitter, so listeners are attached again whenever `gd._ev` changed.
PLOT_JS = """
const draw = () => {
  const gd = element.querySelector('.rmap-plot');
  if (!gd || typeof Plotly === 'undefined') return;
  let fig = null;
  try { fig = props.value ? JSON.parse(props.value) : null; } catch (e) { fig = null; }
  if (!fig || !fig.data || !fig.data.length) {
    if (gd.data) Plotly.purge(gd);
    gd.innerHTML = '<p class="rmap-empty">Load a folder to see its map.</p>';
    return;
  }
  if (!gd.data) gd.innerHTML = '';
  Plotly.react(gd, fig.data, fig.layout, {responsive: true, displaylogo: false});
  if (gd.__rmapEmitter === gd._ev) return;
  gd.__rmapEmitter = gd._ev;
  const tip = element.querySelector('.rmap-tip');
  gd.on('plotly_click', (ev) => {
    const p = ev && ev.points && ev.points.find((q) => q.customdata && q.customdata.length);
    if (p) trigger('click', {index: p.customdata[0]});
  });
  gd.on('plotly_hover', (ev) => {
    const p = ev && ev.points && ev.points[0];
    if (!p || !p.customdata || !p.customdata[1]) return;
    tip.querySelector('img').src = p.customdata[1];
    tip.querySelector('span').textContent = p.customdata[3] + ' · ' + p.customdata[2];
    const box = element.getBoundingClientRect();
    const e = ev.event || {};
    tip.style.left = Math.min((e.clientX || 0) - box.left + 14, box.width - 180) + 'px';
    tip.style.top = ((e.clientY || 0) - box.top + 14) + 'px';
    tip.style.display = 'block';
  });
  gd.on('plotly_unhover', () => { tip.style.display = 'none'; });
};
draw();
watch('value', draw);
"""
