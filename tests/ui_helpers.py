"""Driving the Gradio app from Playwright: the shared pieces of the browser tests, the
click-latency benchmark and the README screenshot.

Debian's chromium (/usr/bin/chromium) is used as is; Playwright's own browser download
(`playwright install`) is never needed."""

from __future__ import annotations

import contextlib
import socket
from pathlib import Path
from typing import Iterator

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
PLOT = "#embedding-plot .rmap-plot"
# A map is drawn and its latest redraw has finished (the page sets `__rmapReady`).
MAP_READY = "() => { const g = document.querySelector('%s'); return !!(g && g.data && g.data.length && g._fullLayout && g.__rmapReady); }" % PLOT

# The page keeps the decoded map on the plot element: `gd.__rmap.point(i)` gives point i
# (its global index, as the server numbers it) as {index, id, label, x, y}; each class
# trace's `customdata` holds its points' global indices.
_POINT_POSITION_JS = """(index) => {
    const gd = document.querySelector('%s');
    const p = gd.__rmap && gd.__rmap.point(index);
    if (!p) return null;
    const fl = gd._fullLayout, box = gd.getBoundingClientRect();
    return {index, id: p.id, label: p.label, data_x: p.x, data_y: p.y,
            x: box.left + fl.xaxis._offset + fl.xaxis.l2p(p.x), y: box.top + fl.yaxis._offset + fl.yaxis.l2p(p.y)};
}""" % PLOT

# Points inside the plot area that no other point covers within `radius` pixels, so a
# click lands on them (a grid of radius-sized cells: fast at 20,000 points).
_ISOLATED_POINTS_JS = """(radius) => {
    const gd = document.querySelector('%s'), m = gd.__rmap, fl = gd._fullLayout;
    const cell = (v) => Math.floor(v / radius), grid = new Map(), pts = [];
    for (let i = 0; i < m.n; i++) {
        const p = {index: i, px: fl.xaxis.l2p(m.x[i]), py: fl.yaxis.l2p(m.y[i])};
        pts.push(p);
        const key = cell(p.px) + ',' + cell(p.py);
        if (!grid.has(key)) grid.set(key, []);
        grid.get(key).push(p);
    }
    const inside = (p) => p.px > 10 && p.py > 10 && p.px < fl.xaxis._length - 10 && p.py < fl.yaxis._length - 10;
    const alone = (p) => {
        for (let dx = -1; dx <= 1; dx++) for (let dy = -1; dy <= 1; dy++)
            for (const q of grid.get((cell(p.px) + dx) + ',' + (cell(p.py) + dy)) || [])
                if (q !== p && Math.hypot(p.px - q.px, p.py - q.py) <= radius) return false;
        return true;
    };
    return pts.filter((p) => inside(p) && alone(p)).map((p) => p.index);
}""" % PLOT

# Every point as [global index, id, class]: what the map holds.
_MAP_POINTS_JS = """() => {
    const m = document.querySelector('%s').__rmap, out = [];
    for (let i = 0; i < m.n; i++) { const p = m.point(i); out.push([p.index, p.id, p.label]); }
    return out;
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


@contextlib.contextmanager
def app_page(folder: Path | None = None, *, width: int = 1400, height: int = 1100, timeout_ms: int = 600_000) -> Iterator:
    """The app on `folder` (default sample_data/) on a free port, and a headless chromium
    page of `width` × `height` with its first map drawn; everything closed afterwards
    (the screenshot scripts)."""
    from playwright.sync_api import sync_playwright

    from retrieval_app.paths import sample_data_dir
    from retrieval_app.ui.launch import launch_app

    port = free_port()
    demo = launch_app(folder=folder or sample_data_dir(), port=port, open_browser=False, block=False)
    try:
        with sync_playwright() as p:
            browser = launch_chromium(p)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"http://127.0.0.1:{port}")
            wait_for_map(page, timeout_ms=timeout_ms)
            yield page
            browser.close()
    finally:
        demo.close()


def screenshot_between(page, out: Path, top_selector: str, bottom_selector: str, width: int) -> None:
    """A full-page screenshot from the top of one element to the bottom of another
    (bounding boxes are relative to the viewport; the clip to the page)."""
    scroll = page.evaluate("window.scrollY")
    top, bottom = page.locator(top_selector).first.bounding_box(), page.locator(bottom_selector).bounding_box()
    clip = {"x": 0, "y": scroll + top["y"] - 8, "width": width, "height": bottom["y"] + bottom["height"] - top["y"] + 16}
    out.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(out), full_page=True, clip=clip)


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


def map_points(page) -> list[list]:
    """[global index, id, class] of every point on the map."""
    return page.evaluate(_MAP_POINTS_JS)


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
    """Until the map marks `point` as the query (★) with `n_neighbours` rings (the page's
    overlay layer above the points: `gd.__rmapOverlay` holds what it drew)."""
    page.wait_for_function(
        """([x, y, n]) => {
            const gd = document.querySelector('%s'), drawn = gd && gd.__rmapOverlay;
            const q = drawn && drawn.query, r = drawn && drawn.neighbours;
            return !!(q && r && q.x[0] === x && q.y[0] === y && r.x.length === n && gd.__rmapReady);
        }""" % PLOT,
        arg=[point["data_x"], point["data_y"], n_neighbours], timeout=timeout_ms, polling="raf",
    )


def overlay_names(page) -> list[str]:
    """The highlight overlays drawn above the map's points (e.g. "neighbours", "query")."""
    return page.evaluate("() => Object.keys(document.querySelector('%s').__rmapOverlay || {})" % PLOT)


def wait_for_star(page, timeout_ms: int = 30_000) -> None:
    """Until the map shows a query star (a clicked point or a dropped image)."""
    page.wait_for_function("() => { const o = document.querySelector('%s').__rmapOverlay; return !!(o && o.query && o.query.x.length === 1); }" % PLOT, timeout=timeout_ms)


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
