"""The interactive map: a compact JSON payload drawn by an interactive `gr.HTML` with
plotly.js (WebGL points) and an SVG layer for the highlight.

At 20,000 points a plotly figure with a dict, a thumbnail URL and an id per point was
2-3 MB of JSON to send, parse and redraw on every click. The payload is compact instead:

    {"format": "rmap/1", "key": ..., "token": ..., "title": ..., "layout": {...},
     "points": {"n": N, "x": base64 float32, "y": base64 float32,
                "label": base64 uint8 (uint16 above 256 classes, uint32 above 65,536),
                "label_type": "uint8" | "uint16" | "uint32",
                "ids": [id without its class folder, ...]},
     "classes": [{"name": ..., "colour": ...}, ...], "marker": {...},
     "highlight": {"key": ..., "seq": ..., "overlays": [...], "range": {"x": [..], "y": [..]}}}

(≈ 12 bytes a point plus the ids: an id "class/name.png" is sent as "name.png"; one that
does not start with its class folder is sent whole, marked by a leading "/"; see
`decode_map`). The page decodes it into typed arrays, draws one scattergl trace per class
(`customdata` = each point's global index; above `MAX_CLASS_TRACES` classes one trace per
palette colour instead, without a legend: a WebGL trace per class costs a draw call each,
and a legend of hundreds of classes helps nobody) and never receives a thumbnail URL for all
points: the hovered point's thumbnail is asked for when it is hovered (`hover_thumbnail`,
a server function of the component, with the session's `token`).

A click or a query changes only the highlight: the event sends the component's
`highlight` prop (`highlight_json`: the rings and the star as overlays of point indices
or positions, with the map's `key` and a sequence number), and the page redraws its SVG
layer above the WebGL canvas (a plotly restyle of a WebGL trace repaints every point:
~0.4 s at 20,000 points in software rendering). The zoom survives every update
(`layout.uirevision`); the server validates every index it receives.

The app keeps the points out of the component's props: its `value` carries
`"points": {"n": N, "url": ...}` and the page fetches the points object (the "points"
above, as JSON) from that URL once per map (`points_json`; the app serves it from the
session's folder, see served.py). Gradio's page copies and compares a component's whole
props on every event's status change: counted at 20,000 points, one click cloned the map
value 32 times and serialised it 26 times; at 100,000 points the value is 2.4 MB inline,
1.1 KB with the URL.
`map_payload` without a URL gives the whole map inline, which the page draws as well."""

from __future__ import annotations

import base64
import hashlib
import json
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from ..palette import class_colours

PALETTE = tuple(class_colours(60))  # distinct up to 60 classes (palette.py); more are computed
FORMAT = "rmap/1"
MAX_CLASS_TRACES = 60  # above this many classes: one trace per colour, no legend
# The narrowest little-endian unsigned type for class numbers 0 … n - 1, by name.
LABEL_TYPES = (("uint8", "<u1", 1 << 8), ("uint16", "<u2", 1 << 16), ("uint32", "<u4", 1 << 32))
RANGE_PADDING = 0.06  # of the data extent, on each side
POINT_SIZE = 8
POINT_OPACITY = 0.85
# The query star: black with a white outline (no class colour is black or white) and
# much bigger than a point, so it stands out inside any cluster.
STAR_SIZE = 28
STAR_COLOUR = "#000000"
STAR_OUTLINE = "#ffffff"
RING_SIZE = 16
RING_COLOUR = "#111111"


FILE_ROUTE = "/gradio_api/file="  # Gradio's route for files on disk (only inside the allowed paths)


def file_url(path) -> str:
    """The URL under which Gradio serves `path` (only inside the allowed paths)."""
    return "" if path is None else FILE_ROUTE + Path(path).as_posix()


def file_path(url: str) -> Path:
    """The file a `file_url` names (for callers in the app's own process, e.g. tests)."""
    if not url.startswith(FILE_ROUTE):
        raise ValueError(f"not a served file's URL: {url!r}")
    return Path(url[len(FILE_ROUTE):])


def class_colour(label: int) -> str:
    """A class's colour on every map of the app: distinct up to `MAX_CLASS_TRACES` classes;
    above that the palette repeats (the page then draws one trace per colour)."""
    return PALETTE[label % len(PALETTE)]


# ---------------------------------------------------------------- the payload
def _b64(values: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(values, dtype=dtype).tobytes()).decode("ascii")


def _short_ids(ids: Sequence[str], labels: np.ndarray, classes: Sequence[str]) -> list[str]:
    """Each id without its class folder ("class/x.png" → "x.png"); an id that does not
    start with it is sent whole behind a "/" (ids are relative paths: never "/..." else)."""
    prefixes = [f"{name}/" for name in classes]
    out = []
    for id_, label in zip(ids, labels.tolist()):
        prefix = prefixes[label] if 0 <= label < len(prefixes) else None
        out.append(id_[len(prefix):] if prefix and id_.startswith(prefix) else "/" + id_)
    return out


def map_key(revision: str, coords: np.ndarray) -> str:
    """Names one set of points at their positions: a new key, a new drawing."""
    digest = hashlib.blake2b(np.ascontiguousarray(coords, dtype=np.float32).tobytes(), digest_size=8).hexdigest()
    return f"{revision}|{digest}"


def map_points(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], ids: Sequence[str]) -> dict:
    """The payload's "points" object (see the module docstring)."""
    coords = np.asarray(coords, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int64)
    label_type, label_dtype = label_encoding(len(classes))
    return {"n": len(coords), "x": _b64(coords[:, 0], "<f4"), "y": _b64(coords[:, 1], "<f4"),
            "label": _b64(labels, label_dtype), "label_type": label_type, "ids": _short_ids(ids, labels, classes)}


def points_json(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], ids: Sequence[str]) -> str:
    """The points alone, as the file the page fetches for a map sent with `points_url`."""
    return json.dumps(map_points(coords, labels, classes, ids), separators=(",", ":"))


def map_payload(coords: np.ndarray, labels: np.ndarray, classes: Sequence[str], ids: Sequence[str], *, token: str = "",
                highlight: dict | None = None, title: str = "", revision: str = "map", points_url: str | None = None) -> str:
    """The map as the page draws it (see the module docstring). `revision` names the map:
    the user's zoom survives redraws of the same map and resets when it changes (another
    folder, model or projection). `highlight`: from `highlight_payload` (its key is set
    to this map's). `points_url`: where the page fetches the points (`points_json` of the
    same arguments); None: the points inline."""
    coords = np.asarray(coords, dtype=np.float32)
    key = map_key(revision, coords)
    star = highlight.get("star") if highlight is not None else None
    if highlight is not None:
        highlight = {**highlight, "key": key, "range": _ranges(coords, star)}
    points = {"n": len(coords), "url": points_url} if points_url else map_points(coords, labels, classes, ids)
    payload = {
        "format": FORMAT, "key": key, "token": token, "title": title, "points": points,
        "classes": [{"name": name, "colour": class_colour(i)} for i, name in enumerate(classes)],
        "marker": {"size": POINT_SIZE, "opacity": POINT_OPACITY}, "max_class_traces": MAX_CLASS_TRACES,
        "highlight": highlight,
        "layout": _layout(coords, star, title, revision, classes),
    }
    return json.dumps(payload, separators=(",", ":"))


def label_encoding(n_classes: int) -> tuple[str, str]:
    """(name, NumPy dtype) of the narrowest type that holds class numbers below `n_classes`."""
    for name, dtype, limit in LABEL_TYPES:
        if n_classes <= limit:
            return name, dtype
    raise ValueError(f"{n_classes} classes do not fit the map's label types")


def _layout(coords: np.ndarray, star, title: str, revision: str, classes: Sequence[str] = ()) -> dict:
    ranges = _ranges(coords, star)
    legend, extra_height = _legend(classes)
    return {
        # Title on the left: the mode bar takes the top right corner.
        "title": {"text": title, "font": {"size": 14}, "x": 0.01, "xanchor": "left"}, "uirevision": revision, "hovermode": "closest",
        "dragmode": "zoom", "margin": {"l": 10, "r": 10, "t": 40, "b": 10}, "height": 600 + extra_height,
        # Fixed ranges: autorange would widen for a big highlight marker at the edge and
        # shift every point under the mouse.
        "xaxis": {"showticklabels": False, "zeroline": False, "range": ranges["x"]},
        "yaxis": {"showticklabels": False, "zeroline": False, "range": ranges["y"]},
        "legend": legend, "plot_bgcolor": "#fafafa",
    }


LEGEND_COLUMN_FROM = 21  # classes: from here the legend is a grid of columns below the map
LEGEND_ROW_PX = 19


def _legend(classes: Sequence[str]) -> tuple[dict, int]:
    """The legend, and the height it adds to the map. Up to 20 classes: one column at the
    right. More: a grid below the map (fixed-width entries, so names line up in columns)
    that the map grows to hold, instead of a column taller than the map that scrolls."""
    legend = {"itemsizing": "constant", "title": {"text": "click: hide · double-click: only this class", "font": {"size": 10, "color": "#666"}, "side": "top"}}
    if len(classes) < LEGEND_COLUMN_FROM:
        return legend, 0
    longest = max(len(name) for name in classes)
    width = min(230, 34 + 7 * longest)  # px: the swatch and ~7 px a character at font size 11
    rows = math.ceil(len(classes) / max(1, 900 // width))  # the map is about 900 px wide
    legend.update({"orientation": "h", "x": 0, "xanchor": "left", "y": -0.01, "yanchor": "top", "entrywidth": width,
                   "entrywidthmode": "pixels", "font": {"size": 11}, "tracegroupgap": 0})
    return legend, rows * LEGEND_ROW_PX + 30


def _ranges(coords: np.ndarray, star) -> dict:
    return {"x": _axis_range(coords[:, 0], star, 0), "y": _axis_range(coords[:, 1], star, 1)}


def _axis_range(values: np.ndarray, star, axis: int) -> list[float]:
    lo, hi = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    if star is not None:  # a dropped query may land outside the points (exact PCA placement)
        lo, hi = min(lo, float(star[axis])), max(hi, float(star[axis]))
    pad = RANGE_PADDING * (hi - lo) if hi > lo else 1.0
    return [lo - pad, hi + pad]


# -------------------------------------------------------------- the highlight
def highlight_payload(*, query: int | None = None, neighbours: Sequence[int] = (), query_point=None, seq: int = 0) -> dict:
    """The rings around the neighbours and the star on the query (a gallery point, or a
    dropped image's map position), as overlays drawn above the points, last on top.

    An overlay: `name`, `points` (global indices) or `x`/`y` (map positions), `symbol`
    ("circle" or "star"; see PLOT_JS `SYMBOLS`), `size` (px), `fill`, `stroke`, `width`."""
    overlays = []
    if len(neighbours):
        overlays.append({"name": "neighbours", "points": [int(i) for i in neighbours], "symbol": "circle", "size": RING_SIZE,
                         "fill": "none", "stroke": RING_COLOUR, "width": 2.5})
    star = {"name": "query", "symbol": "star", "size": STAR_SIZE, "fill": STAR_COLOUR, "stroke": STAR_OUTLINE, "width": 2}
    if query is not None:
        overlays.append({**star, "points": [int(query)]})
    elif query_point is not None:
        overlays.append({**star, "x": [float(query_point[0])], "y": [float(query_point[1])]})
    out = {"seq": int(seq), "overlays": overlays}
    if query is None and query_point is not None:  # a dropped image: the axes widen to show it
        out["star"] = [float(query_point[0]), float(query_point[1])]
    return out


def highlight_json(coords: np.ndarray, revision: str, highlight: dict) -> str:
    """The highlight alone, for the component's `highlight` prop: what a click or a query
    changes (the points are not sent again)."""
    coords = np.asarray(coords, dtype=np.float32)
    highlight = {**highlight, "key": map_key(revision, coords), "range": _ranges(coords, highlight.get("star"))}
    return json.dumps(highlight, separators=(",", ":"))


# --------------------------------------------------------------- the colouring
COLOUR_MODES = ("class", "agreement")
AGREEMENT_SCALE = "Viridis"  # 0 (no neighbour of its class) → 1 (all of them): dark → yellow


def colouring_json(coords: np.ndarray, revision: str, mode: str = "class", values: np.ndarray | None = None, title: str = "") -> str:
    """The component's `colouring` prop: colour the points by class, or by one value per
    point in [0, 1] (`values`, e.g. neighbour agreement) on one colour scale. Like the
    highlight it names its map by key, and the points are not sent again."""
    if mode not in COLOUR_MODES:
        raise ValueError(f"colour mode must be one of {COLOUR_MODES}, not {mode!r}")
    coords = np.asarray(coords, dtype=np.float32)
    out = {"key": map_key(revision, coords), "mode": mode}
    if mode != "class":
        values = np.asarray(values, dtype=np.float32)
        if values.shape != (len(coords),):
            raise ValueError(f"{len(coords)} points but {values.shape} values")
        out.update({"values": _b64(values, "<f4"), "title": title, "scale": AGREEMENT_SCALE})
    return json.dumps(out, separators=(",", ":"))


def decode_colouring(value: str) -> dict:
    """A `colouring` prop → {"key", "mode", "values" (N,) float32 or None, "title"}."""
    data = json.loads(value)
    values = np.frombuffer(base64.b64decode(data["values"]), dtype="<f4") if "values" in data else None
    return {"key": data["key"], "mode": data["mode"], "values": values, "title": data.get("title", "")}


# ------------------------------------------------------------ reading it back
def decode_map(value: str, fetch: Callable[[str], str | bytes] | None = None) -> dict:
    """A map payload → {"coords" (N, 2) float32, "labels" (N,) int, "ids", "classes",
    "highlight", "layout", "key", "token"}: for API clients and tests (the page does the
    same in JS). A map whose points are at a URL (the app's) needs `fetch(url)` → the
    points JSON (e.g. an HTTP GET on the app's address + url)."""
    payload = json.loads(value)
    points = payload["points"]
    if "url" in points:
        if fetch is None:
            raise ValueError("this map's points are served at points.url: pass fetch")
        points = json.loads(fetch(points["url"]))
    x = np.frombuffer(base64.b64decode(points["x"]), dtype="<f4")
    y = np.frombuffer(base64.b64decode(points["y"]), dtype="<f4")
    dtype = {name: dtype for name, dtype, _ in LABEL_TYPES}[points["label_type"]]
    labels = np.frombuffer(base64.b64decode(points["label"]), dtype=dtype).astype(np.int64)
    classes = [c["name"] for c in payload["classes"]]
    ids = [s[1:] if s.startswith("/") else f"{classes[label]}/{s}" for s, label in zip(points["ids"], labels.tolist())]
    return {"coords": np.stack([x, y], axis=1), "labels": labels, "ids": ids, "classes": classes,
            "highlight": payload.get("highlight"), "layout": payload["layout"], "key": payload["key"], "token": payload["token"]}


PLOT_TEMPLATE = """
<div class="rmap">
  <div class="rmap-plot"></div>
  <svg class="rmap-overlay" xmlns="http://www.w3.org/2000/svg"></svg>
  <div class="rmap-tip"><img alt=""><span></span></div>
</div>
"""

PLOT_CSS = """
.rmap { position: relative; min-height: 600px; }
.rmap-plot { width: 100%; min-height: 600px; }
.rmap-empty { padding: 2em; color: #666; }
.rmap-overlay { position: absolute; left: 0; top: 0; width: 0; height: 0; overflow: hidden; pointer-events: none; z-index: 5; }
.rmap-tip { position: absolute; display: none; pointer-events: none; background: white; border: 1px solid #ccc;
            border-radius: 6px; padding: 4px; box-shadow: 0 2px 8px rgba(0,0,0,.2); z-index: 10; font-size: 12px; }
.rmap-tip img { display: block; width: 160px; height: 160px; object-fit: contain; }
.rmap-tip span { display: block; max-width: 160px; overflow-wrap: anywhere; }
"""

# Runs once per component. A new `value` (another map) draws the points; a new
# `highlight` prop (a click, a query) redraws only the SVG layer above them. Plotly.react
# may replace the div's event emitter, so listeners are attached again whenever `gd._ev`
# changed. `gd.__rmap` holds the decoded map: `point(i)` → {index, id, label, x, y}.
PLOT_JS = """
const SVG_NS = 'http://www.w3.org/2000/svg';
const bytesOf = (b64) => { const s = atob(b64), out = new Uint8Array(s.length); for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i); return out; };
const decodeMap = (fig) => {
  const p = fig.points, n = p.n;
  const x = new Float32Array(bytesOf(p.x).buffer), y = new Float32Array(bytesOf(p.y).buffer);
  const raw = bytesOf(p.label).buffer;
  const label = p.label_type === 'uint32' ? new Uint32Array(raw) : p.label_type === 'uint16' ? new Uint16Array(raw) : new Uint8Array(raw);
  const names = fig.classes.map((c) => c.name);
  const id = (i) => { const s = p.ids[i]; return s.startsWith('/') ? s.slice(1) : names[label[i]] + '/' + s; };
  // Points grouped by class (a counting sort): each class trace holds one slice.
  const count = new Int32Array(names.length + 1);
  for (let i = 0; i < n; i++) count[label[i] + 1]++;
  for (let c = 0; c < names.length; c++) count[c + 1] += count[c];
  const order = new Int32Array(n), fill = count.slice(0, names.length);
  for (let i = 0; i < n; i++) order[fill[label[i]]++] = i;
  const point = (i) => (i >= 0 && i < n) ? {index: i, id: id(i), label: names[label[i]], x: x[i], y: y[i]} : null;
  return {key: fig.key, token: fig.token, n, x, y, label, names, colours: fig.classes.map((c) => c.colour), marker: fig.marker,
          id, order, start: count, point, traceOf: new Int32Array(names.length).fill(-1)};
};
const classTraces = (m, fig) => {
  // One trace per class; with many classes one per colour (each WebGL trace is a draw call).
  const grouped = fig.classes.length > (fig.max_class_traces || Infinity);
  const groups = new Map();
  fig.classes.forEach((c, k) => {
    if (m.start[k + 1] === m.start[k]) return;
    const key = grouped ? c.colour : k;
    if (!groups.has(key)) groups.set(key, {name: c.name, colour: c.colour, classes: []});
    groups.get(key).classes.push(k);
  });
  const traces = [];
  groups.forEach((g) => {
    const parts = g.classes.map((k) => m.order.subarray(m.start[k], m.start[k + 1]));
    const rows = parts.length === 1 ? parts[0] : Int32Array.from(parts.flatMap((r) => Array.from(r)));
    g.classes.forEach((k) => { m.traceOf[k] = traces.length; });
    traces.push({
      type: 'scattergl', mode: 'markers', name: g.name, customdata: rows, showlegend: !grouped,
      x: Float32Array.from(rows, (i) => m.x[i]), y: Float32Array.from(rows, (i) => m.y[i]),
      marker: {size: fig.marker.size, color: g.colour, opacity: fig.marker.opacity},
      hoverinfo: 'none',  // the page draws its own tip: thumbnail, class, id
      visible: true,
    });
  });
  return traces;
};
// The colouring prop of the map on screen (by class, or a value per point on one scale).
const currentColouring = (gd) => {
  const c = gd.__rmapColouring, m = gd.__rmap;
  return (c && m && c.key === m.key) ? c : null;
};
// New trace objects (Plotly.react redraws what changed by reference): colours by the
// colouring, visibility by the classes hidden from the legend.
const paintTraces = (gd, unselect = false) => {
  const m = gd.__rmap, c = currentColouring(gd), hidden = gd.__rmapHidden;
  const values = c && c.mode !== 'class' && c.values ? new Float32Array(bytesOf(c.values).buffer) : null;
  gd.__rmapValuesShown = values;
  gd.__rmapTraces = gd.__rmapTraces.map((old) => {
    // plotly marks a lasso's points in the trace (`selectedpoints`): kept unless cleared
    const {selectedpoints, ...t} = old;
    if (selectedpoints && !unselect) t.selectedpoints = selectedpoints;
    const k = m.names.indexOf(t.name), base = {size: m.marker.size, opacity: m.marker.opacity};
    let marker = {...base, color: m.colours[k]};
    if (values) {
      // No colour bar: it pushes the margins and broke the axes' scaling; the panel
      // names the scale (dark 0 → yellow 1).
      marker = {...base, color: Float32Array.from(t.customdata, (i) => values[i]), colorscale: c.scale || 'Viridis', cmin: 0, cmax: 1, showscale: false};
    }
    return {...t, marker, visible: hidden.has(t.name) ? 'legendonly' : true};
  });
};
// Pixel position (inside the plot area) of map coordinates, from the axes' linear maps.
const pixelMap = (gd) => {
  const xa = gd._fullLayout.xaxis, ya = gd._fullLayout.yaxis;
  const x0 = xa.l2p(0), y0 = ya.l2p(0), sx = xa.l2p(1) - x0, sy = ya.l2p(1) - y0;
  return {px: (v) => x0 + sx * v, py: (v) => y0 + sy * v, xa, ya};
};
// The point under the mouse (its global index), found from the event's own position over
// the visible classes. Plotly's click names the last *hovered* point, and its hover is
// throttled: a click right after a quick move would otherwise report the point under the
// mouse a moment earlier. Hover tips use the same rule, so a tip always shows what a click
// would pick.
const nearestPoint = (gd, e) => {
  const m = gd.__rmap;
  if (!m || !e || e.clientX === undefined || !gd._fullLayout || !gd._fullData) return null;
  const {px, py, xa, ya} = pixelMap(gd), box = gd.getBoundingClientRect();
  const mx = e.clientX - box.left - xa._offset, my = e.clientY - box.top - ya._offset;
  let best = null, bestD2 = 12 * 12;
  m.names.forEach((_, k) => {
    const t = m.traceOf[k], full = t >= 0 ? gd._fullData[t] : null;
    if (!full || full.visible !== true) return;
    for (let j = m.start[k]; j < m.start[k + 1]; j++) {
      const i = m.order[j], dx = px(m.x[i]) - mx, dy = py(m.y[i]) - my, d2 = dx * dx + dy * dy;
      if (d2 < bestD2) { bestD2 = d2; best = i; }
    }
  });
  return best;
};
// Overlay symbols as SVG paths around (0, 0), `s` = the marker's size in pixels.
const SYMBOLS = {
  circle: (s) => { const r = s / 2; return `M${r},0A${r},${r} 0 1,1 0,${-r}A${r},${r} 0 0,1 ${r},0Z`; },
  star: (s) => {
    const outer = s / 2, inner = outer * 0.42, pts = [];
    for (let k = 0; k < 10; k++) { const r = k % 2 ? inner : outer, a = Math.PI * k / 5 - Math.PI / 2; pts.push(`${(r * Math.cos(a)).toFixed(2)},${(r * Math.sin(a)).toFixed(2)}`); }
    return 'M' + pts.join('L') + 'Z';
  },
  diamond: (s) => { const r = s / 2; return `M${r},0L0,${r}L${-r},0L0,${-r}Z`; },
  square: (s) => { const r = s / 2; return `M${r},${r}H${-r}V${-r}H${r}Z`; },
  'triangle-up': (s) => { const r = s / 2; return `M${-r},${r * 0.8}H${r}L0,${-r}Z`; },
  x: (s) => { const r = s / 2; return `M${-r},${-r}L${r},${r}M${r},${-r}L${-r},${r}`; },
};
// The latest highlight (by its sequence number) of the map on screen.
const currentHighlight = (gd) => {
  const m = gd.__rmap;
  const all = [gd.__rmapValueHighlight, gd.__rmapPropHighlight].filter((h) => h && m && h.key === m.key);
  return all.reduce((a, b) => (!a || b.seq >= a.seq) ? b : a, null);
};
const drawOverlay = (gd) => {
  const svg = element.querySelector('.rmap-overlay'), m = gd.__rmap, h = currentHighlight(gd);
  if (!svg) return;
  svg.replaceChildren();
  gd.__rmapOverlay = {};
  if (!m || !gd._fullLayout || !gd._fullLayout.xaxis) { svg.style.width = svg.style.height = '0'; return; }
  const {px, py, xa, ya} = pixelMap(gd);
  // The SVG covers the plot area exactly (it clips what is zoomed out of view).
  svg.style.left = (gd.offsetLeft + xa._offset) + 'px'; svg.style.top = (gd.offsetTop + ya._offset) + 'px';
  svg.style.width = xa._length + 'px'; svg.style.height = ya._length + 'px';
  ((h && h.overlays) || []).forEach((o) => {
    const xs = o.points ? o.points.map((i) => m.x[i]) : o.x, ys = o.points ? o.points.map((i) => m.y[i]) : o.y;
    const shape = (SYMBOLS[o.symbol] || SYMBOLS.circle)(o.size || 10);
    const group = document.createElementNS(SVG_NS, 'g');
    group.setAttribute('data-name', o.name);
    xs.forEach((xv, j) => {
      const path = document.createElementNS(SVG_NS, 'path');
      path.setAttribute('d', shape);
      path.setAttribute('transform', `translate(${px(xv).toFixed(2)},${py(ys[j]).toFixed(2)})`);
      path.setAttribute('fill', o.fill || 'none');
      path.setAttribute('stroke', o.stroke || 'none');
      path.setAttribute('stroke-width', o.width || 0);
      group.appendChild(path);
    });
    svg.appendChild(group);
    gd.__rmapOverlay[o.name] = {x: xs, y: ys, points: o.points || null};
  });
};
// A dropped query far outside the points widens the axes (unless the user has zoomed).
const fitRange = (gd) => {
  const h = currentHighlight(gd), want = h && h.range, have = gd.__rmapRange;
  if (!want || !have || !gd.layout) return;
  const same = (a, b) => a && b && a[0] === b[0] && a[1] === b[1];
  const zoomed = !same(gd.layout.xaxis.range, have.x) || !same(gd.layout.yaxis.range, have.y);
  if (zoomed || (same(want.x, have.x) && same(want.y, have.y))) return;
  gd.__rmapRange = {x: want.x.slice(), y: want.y.slice()};
  return Plotly.relayout(gd, {'xaxis.range': want.x.slice(), 'yaxis.range': want.y.slice()});
};
const hoverThumb = async (gd, index) => {
  const m = gd.__rmap, cache = gd.__rmapThumbs;
  if (!cache.has(index)) cache.set(index, server.hover_thumbnail([m.token, index]).then((r) => (r && r.url) || '').catch(() => ''));
  return cache.get(index);
};
const showTip = (gd, tip, e) => {
  const index = nearestPoint(gd, e), p = index === null ? null : gd.__rmap.point(index);
  if (!p) { tip.style.display = 'none'; tip.__index = null; return; }
  const img = tip.querySelector('img');
  if (tip.__index !== index) {
    tip.__index = index;
    img.style.display = 'none';
    tip.querySelector('span').textContent = p.label + ' · ' + p.id;
    hoverThumb(gd, index).then((url) => {
      if (tip.__index !== index || !url) return;
      if (img.getAttribute('src') !== url) img.src = url;
      img.style.display = 'block';
    });
  }
  // Beside the mouse, flipped left / up where it would leave the map.
  const box = element.getBoundingClientRect();
  const x = e.clientX - box.left, y = e.clientY - box.top;
  tip.style.display = 'block';
  const w = tip.offsetWidth || 180, h = tip.offsetHeight || 190;
  tip.style.left = (x + 14 + w > box.width ? Math.max(0, x - 14 - w) : x + 14) + 'px';
  tip.style.top = (y + 14 + h > box.height ? Math.max(0, y - 14 - h) : y + 14) + 'px';
};
const listen = (gd) => {
  if (gd.__rmapEmitter === gd._ev) return;
  gd.__rmapEmitter = gd._ev;
  gd.on('plotly_click', (ev) => {
    Promise.resolve(gd.__rmapDrawn).then(() => {
      let index = nearestPoint(gd, ev && ev.event);
      if (index === null) {
        const p = ev && ev.points && ev.points.find((q) => typeof q.customdata === 'number');
        index = p ? p.customdata : null;
      }
      if (index !== null) trigger('click', {index});
    });
  });
  // Lasso / box: the selected points' global indices (each trace's customdata), and
  // whether shift was held (plotly then keeps the earlier selection: the server adds).
  gd.on('plotly_selected', (ev) => {
    if (!ev || !ev.points) return;  // none: plotly cleared its selection itself
    const indices = [];
    ev.points.forEach((p) => {
      const t = gd.data[p.curveNumber], i = t && t.customdata ? t.customdata[p.pointNumber] : undefined;
      if (typeof i === 'number') indices.push(i);
    });
    trigger('map_select', {indices, add: !!gd.__rmapShift});
  });
  // The legend as plotly users know it (click: hide / show a class; double-click: only this
  // class, again: all), timed here: plotly's own double-click is off (see `draw`).
  gd.on('plotly_legendclick', (ev) => { legendClick(gd, ev); return false; });
  gd.on('plotly_legenddoubleclick', () => false);
  // Zoom, pan, resize: the overlay follows the axes.
  for (const name of ['plotly_afterplot', 'plotly_relayout', 'plotly_relayouting']) gd.on(name, () => drawOverlay(gd));
  if (gd.__rmapTip) return;
  // The tip follows the mouse itself (one update per frame) rather than plotly's hover
  // events, which fire only when plotly's own pick changes.
  gd.__rmapTip = true;
  const tip = element.querySelector('.rmap-tip');
  let frame = null;
  gd.addEventListener('mousemove', (e) => {
    if (frame === null) frame = requestAnimationFrame(() => { frame = null; showTip(gd, tip, e); });
  });
  gd.addEventListener('mouseleave', () => { tip.style.display = 'none'; tip.__index = null; });
  // Shift held when a drag starts: the selection adds to the last one. A double-click
  // (the second press: detail 2) on empty map clears the selection; on a point it is two
  // clicks, two queries, as before. Captured before plotly's drag layer sees the press.
  element.addEventListener('mousedown', (e) => {
    gd.__rmapShift = e.shiftKey;
    if (e.detail === 2 && insidePlotArea(gd, e) && nearestPoint(gd, e) === null) {
      trigger('map_clear', {});
      clearSelection(gd);
    }
  }, true);
  // In the lasso and box modes plotly sends no plotly_click: a click (no drag) on a point
  // still asks for its neighbours. (In zoom and pan modes plotly_click does, above.)
  gd.addEventListener('click', (e) => {
    const mode = gd._fullLayout && gd._fullLayout.dragmode;
    if (mode !== 'select' && mode !== 'lasso') return;
    Promise.resolve(gd.__rmapDrawn).then(() => {
      const index = nearestPoint(gd, e);
      if (index !== null) trigger('click', {index});
    });
  });
};
const insidePlotArea = (gd, e) => {
  if (!gd.__rmap || !gd._fullLayout || !gd._fullLayout.xaxis) return false;
  const {xa, ya} = pixelMap(gd), box = gd.getBoundingClientRect();
  const mx = e.clientX - box.left - xa._offset, my = e.clientY - box.top - ya._offset;
  return mx >= 0 && my >= 0 && mx <= xa._length && my <= ya._length;
};
// plotly's own marks of a selection go too: the lasso's outline, then the dimming of
// the points left out (a redraw without `selectedpoints`; restyling it to null fails on
// these typed-array traces).
const clearSelection = (gd) => {
  if (!gd.data) return;
  gd.__rmapDrawn = Promise.resolve(gd.__rmapDrawn).catch(() => null).then(() => Plotly.relayout(gd, {selections: []}));
  redraw(gd, true);
};
const LEGEND_DOUBLE_MS = 350;
const legendClick = (gd, ev) => {
  // One click, one call: Gradio's own plots load a second plotly bundle that takes
  // `window.Plotly` over, and a map redrawn by both carries two event emitters that both
  // report the click (a single click was then taken for a double one and isolated the class).
  const click = (ev && ev.event) || ev;
  if (click === gd.__rmapLegendEvent) return;
  gd.__rmapLegendEvent = click;
  const trace = gd.data && gd.data[ev.curveNumber];
  if (!trace) return;
  const name = trace.name, now = Date.now(), last = gd.__rmapLegendLast;
  if (last) clearTimeout(last.timer);
  if (last && last.name === name && now - last.at < LEGEND_DOUBLE_MS) {
    gd.__rmapLegendLast = null;
    isolateClass(gd, name);
    return;
  }
  if (last) toggleClass(gd, last.name);  // another item's click waiting: it was a single one
  gd.__rmapLegendLast = {name, at: now, timer: setTimeout(() => { gd.__rmapLegendLast = null; toggleClass(gd, name); }, LEGEND_DOUBLE_MS)};
};
const toggleClass = (gd, name) => {
  if (gd.__rmapHidden.has(name)) gd.__rmapHidden.delete(name); else gd.__rmapHidden.add(name);
  redraw(gd);
};
// Only this class shown (its images fill the selection grid), or, when it already is the
// only one, every class again.
const isolateClass = (gd, name) => {
  const shown = gd.__rmapTraces.filter((t) => !gd.__rmapHidden.has(t.name)).map((t) => t.name);
  const alone = shown.length === 1 && shown[0] === name;
  gd.__rmapHidden = new Set(alone ? [] : gd.__rmapTraces.map((t) => t.name).filter((n) => n !== name));
  redraw(gd);
  if (!alone) trigger('class_isolate', {name});
};
// Colours or visibility changed: the same points, redrawn.
const redraw = (gd, unselect = false) => {
  if (!gd.__rmap || !gd.__rmapTraces) return;
  paintTraces(gd, unselect);
  gd.__rmapReady = false;
  // (A failed earlier redraw must not stop this one.)
  const drawn = Promise.resolve(gd.__rmapDrawn).catch(() => null).then(() => Plotly.react(gd, gd.__rmapTraces, gd.layout, gd.__rmapConfig));
  gd.__rmapDrawn = drawn;
  drawn.then(() => { drawOverlay(gd); listen(gd); if (gd.__rmapDrawn === drawn) gd.__rmapReady = true; });
};
const draw = () => {
  const gd = element.querySelector('.rmap-plot');
  if (!gd) return;
  // plotly.js (3.5 MB, in the page head) may still be loading when the first map arrives,
  // e.g. from the cache on a busy machine: draw as soon as it is there.
  if (typeof Plotly === 'undefined') { setTimeout(draw, 100); return; }
  let fig = null;
  try { fig = props.value ? JSON.parse(props.value) : null; } catch (e) { fig = null; }
  const seq = (gd.__rmapValueSeq || 0) + 1;
  gd.__rmapValueSeq = seq;  // a value that arrives later wins over a fetch still running
  if (!fig || !fig.points || !fig.points.n) { showEmpty(gd, 'Load a folder to see its map.'); return; }
  // Axes are only valid once a redraw has finished: clicks wait for it (`__rmapDrawn`);
  // `__rmapReady` tells tests the map on screen is the latest one.
  gd.__rmapReady = false;
  const fresh = !gd.__rmap || gd.__rmap.key !== fig.key;
  if (!fresh || !fig.points.url) { show(gd, fig, fresh); return; }
  // Another map whose points are served apart from the value (see plot.py): fetched once.
  gd.__rmapDrawn = fetch(fig.points.url, {credentials: 'same-origin'})
    .then((r) => { if (!r.ok) throw new Error(`the map's points: HTTP ${r.status}`); return r.json(); })
    .then((points) => (gd.__rmapValueSeq === seq ? show(gd, {...fig, points}, true) : null))
    .catch((e) => { if (gd.__rmapValueSeq === seq) showEmpty(gd, 'The map could not be loaded: ' + e.message); });
};
const showEmpty = (gd, words) => {
  if (gd.data) Plotly.purge(gd);
  gd.__rmap = null;
  drawOverlay(gd);
  gd.innerHTML = '';
  const p = document.createElement('p');
  p.className = 'rmap-empty';
  p.textContent = words;
  gd.appendChild(p);
};
// Draws `fig` (its points inline); `fresh`: another map than the one on screen.
const show = (gd, fig, fresh) => {
  if (!gd.data) gd.innerHTML = '';
  if (fresh) {
    gd.__rmap = decodeMap(fig);
    gd.__rmapTraces = classTraces(gd.__rmap, fig);
    gd.__rmapHidden = new Set();  // another map: every class shown
    paintTraces(gd);
  }
  gd.__rmapThumbs = new Map();  // a reloaded folder serves its thumbnails under new names
  gd.__rmapValueHighlight = fig.highlight;
  gd.__rmapRange = {x: fig.layout.xaxis.range.slice(), y: fig.layout.yaxis.range.slice()};
  // No double-click: two quick clicks on two points would be one double-click (an axes
  // reset) instead of two queries. The mode bar's buttons still reset the zoom.
  // (The legend's double-click is timed by the page itself: `legendClick`. A double-click
  // on empty map clears a selection: the mousedown listener in `listen`.)
  const config = {responsive: true, displaylogo: false, doubleClick: false, doubleClickDelay: 1};
  gd.__rmapConfig = config;
  const drawn = Plotly.react(gd, gd.__rmapTraces, fig.layout, config);
  gd.__rmapDrawn = drawn;
  Promise.resolve(drawn).then(() => {
    drawOverlay(gd);
    if (gd.__rmapDrawn === drawn) gd.__rmapReady = true;
  });
  listen(gd);
  // Another map (folder, model, projection): the server resets the selection and the
  // class list, and colours it as the page asks (a colouring is per map).
  if (fresh) Promise.resolve(drawn).then(() => trigger('map_loaded', {key: fig.key}));
  return drawn;
};
// Colour by class or by a value per point: the same points, recoloured.
const recolour = () => {
  const gd = element.querySelector('.rmap-plot');
  let c = null;
  try { c = props.colouring ? JSON.parse(props.colouring) : null; } catch (e) { c = null; }
  if (!gd || !c) return;
  gd.__rmapColouring = c;
  if (gd.__rmap && c.key === gd.__rmap.key && typeof Plotly !== 'undefined') redraw(gd);
};
// A click or a query: only the highlight changes.
const highlight = () => {
  const gd = element.querySelector('.rmap-plot');
  let h = null;
  try { h = props.highlight ? JSON.parse(props.highlight) : null; } catch (e) { h = null; }
  if (!gd || !h) return;
  gd.__rmapPropHighlight = h;
  if (!gd.__rmap || typeof Plotly === 'undefined') return;
  Promise.resolve(gd.__rmapDrawn).then(() => {
    const fitted = fitRange(gd);
    if (fitted) {
      gd.__rmapReady = false;
      gd.__rmapDrawn = fitted;
      fitted.then(() => { if (gd.__rmapDrawn === fitted) gd.__rmapReady = true; });
    }
    drawOverlay(gd);
  });
};
draw();
watch('value', draw);
watch('highlight', highlight);
watch('colouring', recolour);
"""
