"""Driving the Gradio app from Playwright: the shared pieces of the browser tests, the
click-latency benchmark and the README screenshot.

Debian's chromium (/usr/bin/chromium) is used as is; Playwright's own browser download
(`playwright install`) is never needed."""

from __future__ import annotations

import socket
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PLOT = "#embedding-plot .rmap-plot"
# A map is drawn and its latest redraw has finished (the page sets `__rmapReady`).
MAP_READY = "() => { const g = document.querySelector('%s'); return !!(g && g.data && g.data.length && g._fullLayout && g.__rmapReady); }" % PLOT

# The pixel position of one point (by its global index, stored in customdata[0]),
# computed from the plot's own axes; null when it is not drawn.
_POINT_POSITION_JS = """(index) => {
    const gd = document.querySelector('%s');
    const fl = gd._fullLayout, box = gd.getBoundingClientRect();
    for (const trace of gd.data) {
        const rows = trace.customdata || [];
        for (let j = 0; j < rows.length; j++) {
            if (rows[j][0] !== index) continue;
            return {index, id: rows[j][2], label: rows[j][3], data_x: trace.x[j], data_y: trace.y[j],
                    x: box.left + fl.xaxis._offset + fl.xaxis.l2p(trace.x[j]),
                    y: box.top + fl.yaxis._offset + fl.yaxis.l2p(trace.y[j])};
        }
    }
    return null;
}""" % PLOT

# Points that no other point covers within `radius` pixels, so a click lands on them.
_ISOLATED_POINTS_JS = """(radius) => {
    const gd = document.querySelector('%s');
    const fl = gd._fullLayout, pts = [];
    for (const trace of gd.data) (trace.customdata || []).forEach((row, j) =>
        pts.push({index: row[0], px: fl.xaxis.l2p(trace.x[j]), py: fl.yaxis.l2p(trace.y[j])}));
    return pts.filter(p => pts.every(q => q === p || Math.hypot(p.px - q.px, p.py - q.py) > radius)).map(p => p.index);
}""" % PLOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_chromium(playwright):
    """Headless Debian chromium; raises if it is not installed."""
    if not CHROMIUM.exists():
        raise FileNotFoundError(f"{CHROMIUM} is not installed")
    return playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)


def wait_for_map(page, timeout_ms: int = 240_000) -> None:
    page.wait_for_function(MAP_READY, timeout=timeout_ms)


def wait_for_method(page, name: str, timeout_ms: int = 240_000) -> None:
    """Until the map's title names `name` (e.g. "UMAP" once it replaced the quick PCA)."""
    page.wait_for_function(
        "(name) => { const g = document.querySelector('%s'); return !!(g && g.layout && g.layout.title && g.layout.title.text.startsWith(name) && g.__rmapReady); }" % PLOT,
        arg=name, timeout=timeout_ms,
    )


def point_position(page, index: int) -> dict | None:
    return page.evaluate(_POINT_POSITION_JS, index)


def isolated_points(page, radius_px: float = 6.0) -> list[int]:
    return page.evaluate(_ISOLATED_POINTS_JS, radius_px)


def click_point(page, index: int) -> dict:
    """Moves the mouse onto point `index` and clicks it, as a user would."""
    page.locator("#embedding-plot").scroll_into_view_if_needed()
    wait_for_map(page)  # positions are only valid once the latest redraw has finished
    point = point_position(page, index)
    if point is None:
        raise AssertionError(f"point {index} is not on the map")
    page.mouse.move(point["x"], point["y"])
    page.mouse.click(point["x"], point["y"])
    return point


def set_k(page, k: int) -> None:
    box = page.locator("#k-slider input[type=number]")
    box.fill(str(k))
    box.press("Enter")


def gallery_captions(page) -> list[str]:
    return [c.inner_text() for c in page.query_selector_all("#neighbour-gallery .caption-label")]


def wait_for_query_result(page, text: str, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        "(text) => { const el = document.querySelector('#query-result'); return !!el && el.innerText.includes(text); }",
        arg=text, timeout=timeout_ms, polling="raf",
    )


def wait_for_gallery(page, count: int, timeout_ms: int = 60_000) -> None:
    page.wait_for_function(
        "(n) => document.querySelectorAll('#neighbour-gallery .caption-label').length === n",
        arg=count, timeout=timeout_ms, polling="raf",
    )


def wait_for_highlight(page, point: dict, n_neighbours: int, timeout_ms: int = 60_000) -> None:
    """Until the map marks `point` as the query (★) with `n_neighbours` rings."""
    page.wait_for_function(
        """([x, y, n]) => {
            const gd = document.querySelector('%s');
            const q = gd && gd.data && gd.data.find(t => t.name === 'query');
            const r = gd && gd.data && gd.data.find(t => t.name === 'neighbours');
            return !!(q && r && q.x[0] === x && q.y[0] === y && r.x.length === n && gd.__rmapReady);
        }""" % PLOT,
        arg=[point["data_x"], point["data_y"], n_neighbours], timeout=timeout_ms, polling="raf",
    )


_DROP_JS = """([b64, name, mime, selector]) => {
    const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
    const transfer = new DataTransfer();
    transfer.items.add(new File([bytes], name, {type: mime}));
    const target = document.querySelector(selector);
    for (const type of ['dragenter', 'dragover', 'drop'])
        target.dispatchEvent(new DragEvent(type, {bubbles: true, cancelable: true, dataTransfer: transfer}));
}"""


def drop_file(page, selector: str, path: Path, mime: str = "image/jpeg") -> None:
    """Drag-and-drop of a file onto `selector`, as the browser delivers it (a DataTransfer)."""
    import base64

    page.evaluate(_DROP_JS, [base64.b64encode(Path(path).read_bytes()).decode(), Path(path).name, mime, selector])
