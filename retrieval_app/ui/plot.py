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
RANGE_PADDING = 0.06  # of the data extent, on each side
POINT_SIZE = 8
# The query star: black with a white outline (no class colour is black or white) and
# much bigger than a point, so it stands out inside any cluster.
STAR_SIZE = 28
STAR_COLOUR = "#000000"
STAR_OUTLINE = "#ffffff"
RING_COLOUR = "#111111"


def file_url(path: Path | None) -> str:
    """The URL under which Gradio serves `path` (only inside the allowed paths)."""
    return "" if path is None else f"/gradio_api/file={Path(path).as_posix()}"


def map_figure_json(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], ids: Sequence[str], thumbs: Sequence[Path | None], *, query: int | None = None, neighbours: Sequence[int] = (), query_point: np.ndarray | None = None, title: str = "", revision: str = "map") -> str:
    """The plotly figure (as JSON) drawn by the page: one trace per class, then the highlight.

    `revision` names the map: the user's zoom survives redraws of the same map (new
    highlights) and resets when it changes (another folder, model or projection)."""
    traces = []
    for label, name in enumerate(classes):
        rows = np.flatnonzero(labels == label)
        if not len(rows):
            continue
        traces.append({
            "type": "scattergl", "mode": "markers", "name": name,
            "x": coords[rows, 0].tolist(), "y": coords[rows, 1].tolist(),
            "marker": {"size": POINT_SIZE, "color": PALETTE[label % len(PALETTE)], "opacity": 0.85},
            "customdata": [[int(i), file_url(thumbs[i]), ids[i], name] for i in rows],
            "hoverinfo": "none",  # the page draws its own tip: thumbnail, class, id
        })
    # Highlights stay out of the legend: a legend that grows would resize the plot area and
    # move every point under the user's mouse. They are WebGL traces like the points, drawn
    # after them: plotly paints SVG traces *under* the WebGL canvas, where a dense cluster
    # hid the star and the rings.
    if neighbours:
        rows = list(neighbours)
        traces.append({
            "type": "scattergl", "mode": "markers", "name": "neighbours", "hoverinfo": "skip", "showlegend": False,
            "x": coords[rows, 0].tolist(), "y": coords[rows, 1].tolist(),
            "marker": {"size": 16, "color": "rgba(0,0,0,0)", "line": {"width": 2.5, "color": RING_COLOUR}},
        })
    star = coords[query] if query is not None else query_point
    if star is not None:  # last: above everything
        traces.append({
            "type": "scattergl", "mode": "markers", "name": "query", "hoverinfo": "skip", "showlegend": False,
            "x": [float(star[0])], "y": [float(star[1])],
            "marker": {"size": STAR_SIZE, "symbol": "star", "color": STAR_COLOUR, "line": {"width": 2, "color": STAR_OUTLINE}},
        })
    layout = {
        # Title on the left: the mode bar takes the top right corner.
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"}, "uirevision": revision, "hovermode": "closest",
        "dragmode": "zoom", "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 600,
        # Fixed ranges: autorange would widen for a big highlight marker at the edge and
        # shift every point under the mouse.
        "xaxis": {"showticklabels": False, "zeroline": False, "range": _axis_range(coords[:, 0], star, 0)},
        "yaxis": {"showticklabels": False, "zeroline": False, "range": _axis_range(coords[:, 1], star, 1)},
        "legend": {"itemsizing": "constant"}, "plot_bgcolor": "#fafafa",
    }
    return json.dumps({"data": traces, "layout": layout})


def _axis_range(values: np.ndarray, star: np.ndarray | None, axis: int) -> list[float]:
    lo, hi = float(values.min()), float(values.max())
    if star is not None:  # a dropped query may land outside the points (exact PCA placement)
        lo, hi = min(lo, float(star[axis])), max(hi, float(star[axis]))
    pad = RANGE_PADDING * (hi - lo) if hi > lo else 1.0
    return [lo - pad, hi + pad]


PLOT_TEMPLATE = """
<div class="rmap">
  <div class="rmap-plot"></div>
  <div class="rmap-tip"><img alt=""><span></span></div>
</div>
"""

PLOT_CSS = """
.rmap { position: relative; min-height: 600px; }
.rmap-plot { width: 100%; min-height: 600px; }
.rmap-empty { padding: 2em; color: #666; }
.rmap-tip { position: absolute; display: none; pointer-events: none; background: white; border: 1px solid #ccc;
            border-radius: 6px; padding: 4px; box-shadow: 0 2px 8px rgba(0,0,0,.2); z-index: 10; font-size: 12px; }
.rmap-tip img { display: block; width: 160px; height: 160px; object-fit: contain; }
.rmap-tip span { display: block; max-width: 160px; overflow-wrap: anywhere; }
"""

# Runs once per component; draws on every value change. Plotly.react may replace the
# div's event emitter, so listeners are attached again whenever `gd._ev` changed.
PLOT_JS = """
// The point under the mouse (its customdata row), found from the event's own position.
// Plotly's click names the last *hovered* point, and its hover is throttled: a click right
// after a quick move would otherwise report the point under the mouse a moment earlier.
// Hover tips use the same rule, so a tip always shows what a click would pick.
const nearestPoint = (gd, e) => {
  if (!e || e.clientX === undefined || !gd._fullLayout) return null;
  const fl = gd._fullLayout, box = gd.getBoundingClientRect();
  const px = e.clientX - box.left - fl.xaxis._offset, py = e.clientY - box.top - fl.yaxis._offset;
  let best = null, bestD2 = 12 * 12;
  gd.data.forEach((trace, t) => {
    const full = gd._fullData[t];
    if (!trace.customdata || !full || full.visible !== true) return;
    for (let j = 0; j < trace.x.length; j++) {
      const dx = fl.xaxis.l2p(trace.x[j]) - px, dy = fl.yaxis.l2p(trace.y[j]) - py;
      const d2 = dx * dx + dy * dy;
      if (d2 < bestD2) { bestD2 = d2; best = trace.customdata[j]; }
    }
  });
  return best;
};
const pointRow = (ev) => {
  const p = ev && ev.points && ev.points.find((q) => q.customdata && q.customdata.length);
  return p ? p.customdata : null;
};
const showTip = (gd, tip, e) => {
  const row = gd.data ? nearestPoint(gd, e) : null;
  if (!row) { tip.style.display = 'none'; return; }
  const img = tip.querySelector('img');
  img.style.display = row[1] ? 'block' : 'none';
  if (row[1] && img.getAttribute('src') !== row[1]) img.src = row[1];
  tip.querySelector('span').textContent = row[3] + ' · ' + row[2];
  // Beside the mouse, flipped left / up where it would leave the map.
  const box = element.getBoundingClientRect();
  const x = e.clientX - box.left, y = e.clientY - box.top;
  tip.style.display = 'block';
  const w = tip.offsetWidth || 180, h = tip.offsetHeight || 190;
  tip.style.left = (x + 14 + w > box.width ? Math.max(0, x - 14 - w) : x + 14) + 'px';
  tip.style.top = (y + 14 + h > box.height ? Math.max(0, y - 14 - h) : y + 14) + 'px';
};
const draw = () => {
  const gd = element.querySelector('.rmap-plot');
  if (!gd) return;
  // plotly.js (3.5 MB, in the page head) may still be loading when the first map arrives,
  // e.g. from the cache on a busy machine: draw as soon as it is there.
  if (typeof Plotly === 'undefined') { setTimeout(draw, 100); return; }
  let fig = null;
  try { fig = props.value ? JSON.parse(props.value) : null; } catch (e) { fig = null; }
  if (!fig || !fig.data || !fig.data.length) {
    if (gd.data) Plotly.purge(gd);
    gd.innerHTML = '<p class="rmap-empty">Load a folder to see its map.</p>';
    return;
  }
  if (!gd.data) gd.innerHTML = '';
  // Axes are only valid once a redraw has finished: clicks wait for it (`__rmapDrawn`);
  // `__rmapReady` tells tests the map on screen is the latest one.
  gd.__rmapReady = false;
  // No double-click: two quick clicks on two points would be one double-click (an axes
  // reset) instead of two queries. The mode bar's buttons still reset the zoom.
  const config = {responsive: true, displaylogo: false, doubleClick: false, doubleClickDelay: 1};
  const drawn = Plotly.react(gd, fig.data, fig.layout, config);
  gd.__rmapDrawn = drawn;
  Promise.resolve(drawn).then(() => { if (gd.__rmapDrawn === drawn) gd.__rmapReady = true; });
  if (gd.__rmapEmitter === gd._ev) return;
  gd.__rmapEmitter = gd._ev;
  const tip = element.querySelector('.rmap-tip');
  gd.on('plotly_click', (ev) => {
    Promise.resolve(gd.__rmapDrawn).then(() => {
      const row = nearestPoint(gd, ev && ev.event) || pointRow(ev);
      if (row) trigger('click', {index: row[0]});
    });
  });
  if (gd.__rmapTip) return;
  // The tip follows the mouse itself (one update per frame) rather than plotly's hover
  // events, which fire only when plotly's own pick changes.
  gd.__rmapTip = true;
  let frame = null;
  gd.addEventListener('mousemove', (e) => {
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; showTip(gd, tip, e); });
  });
  gd.addEventListener('mouseleave', () => { tip.style.display = 'none'; });
};
draw();
watch('value', draw);
"""
