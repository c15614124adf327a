"""Exploring the map in a real browser (Debian's chromium through Playwright): a lasso
and a box dragged with the mouse fill the selection grid with exactly the points inside
them (computed from the page's own decoded map positions), shift adds, a double-click on
empty map clears, the CSV export lists the selection; the legend hides a class (a click;
another shows it again) and isolates one (a double-click; isolating browses the class);
an image is found by its file name; the points are coloured by the core's neighbour
agreement."""

from __future__ import annotations

import csv
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

import ui_helpers  # noqa: E402
from synthetic import copy_sample_photos, isolated_app_dirs  # noqa: E402

if not ui_helpers.CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

from retrieval_app.retrieval.agreement import neighbour_agreement  # noqa: E402
from retrieval_app.retrieval.selection import find_images, select_ids, selection_csv  # noqa: E402
from retrieval_app.ui.launch import launch_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PLOT = ui_helpers.PLOT
CLASSES = ("Leopards", "pizza", "sunflower", "watch", "cup")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-explore")
    folder = copy_sample_photos(base / "photos", CLASSES, 8)
    with isolated_app_dirs(base):
        yield {"base": base, "folder": folder}


@pytest.fixture(scope="module")
def server(env):
    port = ui_helpers.free_port()
    demo = launch_app(folder=None, port=port, open_browser=False, block=False)
    yield {"url": f"http://127.0.0.1:{port}", "folder": env["folder"]}
    demo.close()


def open_app(page, server) -> None:
    """The folder loaded with a PCA map (a UMAP map would replace the quick PCA one under
    the mouse; PCA is the map from the start)."""
    page.goto(server["url"])
    page.wait_for_selector("#load-folder")
    page.wait_for_timeout(1000)  # the page's lists are filled when it opens
    page.get_by_role("radio", name="PCA").check()
    page.fill("#folder-path textarea, #folder-path input", str(server["folder"]))
    page.click("#load-folder")
    ui_helpers.wait_for_method(page, "PCA")
    page.locator("#embedding-plot").scroll_into_view_if_needed()
    ui_helpers.wait_for_map(page)


# ----------------------------------------------------------- page geometry
_SCREEN_POINTS_JS = """() => {
    const gd = document.querySelector('%s'), m = gd.__rmap, fl = gd._fullLayout, box = gd.getBoundingClientRect();
    const out = [];
    for (let i = 0; i < m.n; i++) {
        const p = m.point(i);
        out.push({index: i, id: p.id, label: p.label, x: box.left + fl.xaxis._offset + fl.xaxis.l2p(p.x), y: box.top + fl.yaxis._offset + fl.yaxis.l2p(p.y)});
    }
    return {points: out, area: {left: box.left + fl.xaxis._offset, top: box.top + fl.yaxis._offset, width: fl.xaxis._length, height: fl.yaxis._length}};
}""" % PLOT


def screen_points(page) -> tuple[list[dict], dict]:
    """Every point's id and screen position, from the page's decoded map and its axes."""
    data = page.evaluate(_SCREEN_POINTS_JS)
    return data["points"], data["area"]


def inside_polygon(x: float, y: float, polygon) -> bool:
    """Ray casting."""
    inside = False
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        if (y1 > y) != (y2 > y) and x < x1 + (y - y1) * (x2 - x1) / (y2 - y1):
            inside = not inside
    return inside


def distance_to_edges(x: float, y: float, polygon) -> float:
    best = float("inf")
    for (x1, y1), (x2, y2) in zip(polygon, polygon[1:] + polygon[:1]):
        dx, dy = x2 - x1, y2 - y1
        t = max(0.0, min(1.0, ((x - x1) * dx + (y - y1) * dy) / (dx * dx + dy * dy)))
        best = min(best, float(np.hypot(x - x1 - t * dx, y - y1 - t * dy)))
    return best


def lassos(n: int = 400):
    """Random pentagons around random centres, in fractions of the plot area."""
    rng = np.random.default_rng(0)
    for _ in range(n):
        cx, cy, r = rng.uniform(0.25, 0.75), rng.uniform(0.25, 0.75), rng.uniform(0.12, 0.3)
        angles = np.sort(rng.uniform(0, 2 * np.pi, 5))
        yield [(cx + r * np.cos(a), cy + r * np.sin(a) * rng.uniform(0.6, 1.0)) for a in angles]


def boxes(n: int = 400):
    rng = np.random.default_rng(1)
    for _ in range(n):
        x, y, w, h = rng.uniform(0.02, 0.6), rng.uniform(0.02, 0.6), rng.uniform(0.1, 0.38), rng.uniform(0.1, 0.38)
        yield [(x, y), (x + w, y), (x + w, y + h), (x, y + h)]


def clear_region(points, area, shapes, wanted=lambda inside: len(inside) >= 3, fits=lambda polygon: True) -> list[tuple[float, float]]:
    """The first of `shapes` (polygons in fractions of the plot area) with no point within
    4 px of its outline (a point on the line could go either way) whose ids inside are
    `wanted`."""
    for shape in shapes:
        polygon = [(area["left"] + fx * area["width"], area["top"] + fy * area["height"]) for fx, fy in shape]
        inside = {p["id"] for p in points if inside_polygon(p["x"], p["y"], polygon)}
        if all(distance_to_edges(p["x"], p["y"], polygon) > 4 for p in points) and wanted(inside) and fits(polygon):
            return polygon
    raise AssertionError("no test region found clear of points")


def choose_tool(page, tool: str) -> None:
    """The mode bar's "lasso" or "select" (box) button."""
    page.locator(f'#embedding-plot .modebar-btn[data-val="{tool}"]').click()
    page.wait_for_function("(t) => document.querySelector('%s')._fullLayout.dragmode === t" % PLOT, arg=tool)


def drag(page, path, *, shift: bool = False) -> None:
    """Mouse down at the path's first point, through the others, up. A lasso's path ends
    where it started; a box's is two opposite corners."""
    if shift:
        page.keyboard.down("Shift")
    page.mouse.move(*path[0])
    page.mouse.down()
    for x, y in path[1:]:
        page.mouse.move(x, y, steps=6)
    page.mouse.up()
    if shift:
        page.keyboard.up("Shift")


def wait_for_selection_text(page, text: str) -> None:
    page.wait_for_function("(t) => document.querySelector('#selection-text').innerText.includes(t)", arg=text, timeout=60_000)


def grid_ids(page) -> list[str]:
    """The ids on every page of the selection grid ("class · id" captions), paging with
    the Next button."""
    ids = []
    while True:
        ids += [c.inner_text().split(" · ", 1)[1] for c in page.query_selector_all("#selection-grid .caption-label")]
        words = page.inner_text("#selection-text")
        number, total = map(int, re.search(r"page (\d+) of (\d+)", words).groups())
        if number == total:
            return ids
        page.click("#selection-next")
        wait_for_selection_text(page, f"page {number + 1} of {total}")
        page.wait_for_function("(n) => document.querySelectorAll('#selection-grid .caption-label').length > 0", arg=0, timeout=30_000)


def selected(page, n: int) -> list[str]:
    """The grid's ids once it shows a selection of `n` images."""
    page.wait_for_function("(n) => new RegExp('(^|[^0-9])' + n + ' images? selected').test(document.querySelector('#selection-text').innerText)", arg=n, timeout=60_000)
    page.wait_for_function("(n) => document.querySelectorAll('#selection-grid .caption-label').length === n", arg=min(n, 24), timeout=60_000)
    return grid_ids(page)


# ------------------------------------------------------------------- tests
def test_lasso_box_shift_and_double_click_with_the_mouse(page, server, core_gallery):
    open_app(page, server)
    points, area = screen_points(page)
    # a lasso (a pentagon) and a box (a rectangle), each clear of points on its outline
    # more than one class inside, not everything
    lasso = clear_region(points, area, lassos(), wanted=lambda ids: len({i.split("/")[0] for i in ids}) >= 2 and 3 <= len(ids) <= 20)
    inside = sorted(p["id"] for p in points if inside_polygon(p["x"], p["y"], lasso))
    choose_tool(page, "lasso")
    drag(page, lasso + lasso[:1])
    assert sorted(selected(page, len(inside))) == inside
    # the histogram: images per class of the selection, in class order
    bars = page.evaluate("() => { const d = document.querySelector('#selection-histogram .js-plotly-plot').data[0]; return [Array.from(d.x), Array.from(d.y)]; }")
    counts = {name: sum(core_gallery.records[core_gallery.index_of_id(i)].class_name == name for i in inside) for name in core_gallery.classes}
    assert bars == [[n for n, c in counts.items() if c], [c for c in counts.values() if c]]

    # shift + a box adds to it
    box = clear_region(points, area, boxes(), wanted=lambda ids: len(ids - set(inside)) >= 2 and len(set(inside) - ids) >= 1)
    in_box = {p["id"] for p in points if inside_polygon(p["x"], p["y"], box)}
    union = sorted(set(inside) | in_box)
    choose_tool(page, "select")
    drag(page, [box[0], box[2]], shift=True)
    assert sorted(selected(page, len(union))) == union

    # the CSV export lists the selection, as the core writes it
    with page.expect_download() as download:
        page.click("#selection-export")
    text = Path(download.value.path()).read_text()
    assert text == selection_csv(core_gallery, select_ids(core_gallery, union))
    assert sorted(row["id"] for row in csv.DictReader(io.StringIO(text))) == union

    drawn = [lasso, box]
    outside = lambda x, y: all(not inside_polygon(x, y, s) and distance_to_edges(x, y, s) > 12 for s in drawn)  # noqa: E731

    # a double-click on empty map (20 px from every point, outside every selection) clears it
    spot = next((x, y) for x in np.linspace(area["left"] + 10, area["left"] + area["width"] - 10, 25) for y in np.linspace(area["top"] + 10, area["top"] + area["height"] - 10, 25)
                if min(np.hypot(p["x"] - x, p["y"] - y) for p in points) > 20 and outside(x, y))
    # the export button scrolled the page: the spot moves with the map
    page.locator("#embedding-plot").scroll_into_view_if_needed()
    ui_helpers.wait_for_map(page)
    _, now = screen_points(page)
    page.mouse.dblclick(spot[0] + now["left"] - area["left"], spot[1] + now["top"] - area["top"])
    wait_for_selection_text(page, "Nothing selected")
    assert page.query_selector_all("#selection-grid .caption-label") == []
    # the map's own marks of the selection are gone: no outline, no dimmed points
    page.wait_for_function("() => { const gd = document.querySelector('%s'); return gd.data.every((t) => !t.selectedpoints) && !(gd.layout.selections || []).length && gd.__rmapReady; }" % PLOT, timeout=30_000)


def test_a_double_click_on_a_point_is_a_query_not_a_clear(page, server):
    """Two quick clicks on points stay queries: only a double-click on empty map clears."""
    open_app(page, server)
    first, second = ui_helpers.isolated_points(page)[:2]
    page.locator("#class-pick input").click()
    page.get_by_role("option", name="pizza", exact=True).click()
    page.click("#class-browse")
    selected(page, 8)
    choose_tool(page, "lasso")  # plotly sends no click in this mode: the page does
    a = ui_helpers.point_position(page, first)
    page.mouse.dblclick(a["x"], a["y"])
    ui_helpers.wait_for_query_result(page, a["id"])
    b = ui_helpers.click_point(page, second)
    ui_helpers.wait_for_query_result(page, b["id"])
    time.sleep(1.0)
    assert "8 images selected" in page.inner_text("#selection-text")


def legend_item(page, name: str):
    return page.locator("#embedding-plot .legend .traces").filter(has_text=re.compile(f"^{re.escape(name)}$")).locator(".legendtoggle")


def visibility(page) -> dict:
    return page.evaluate("() => Object.fromEntries(document.querySelector('%s').data.map((t) => [t.name, t.visible]))" % PLOT)


def test_legend_isolates_a_class_and_browses_it(page, server, core_gallery):
    open_app(page, server)
    names = [t.text_content() for t in page.query_selector_all("#embedding-plot .legend .traces .legendtext")]
    assert names == core_gallery.classes == ["cup", "Leopards", "pizza", "sunflower", "watch"]  # natural order
    # a double-click shows only that class, and its images fill the grid
    ui_helpers.wait_for_map(page)
    legend_item(page, "pizza").dblclick()
    page.wait_for_function("() => document.querySelector('%s').data.filter((t) => t.visible === true).length === 1" % PLOT, timeout=30_000)
    assert visibility(page) == {n: (True if n == "pizza" else "legendonly") for n in names}
    expected = sorted(r.id for r in core_gallery.records if r.class_name == "pizza")
    assert sorted(selected(page, len(expected))) == expected
    assert "class pizza" in page.inner_text("#selection-text")
    # the class picker browses a class too
    page.locator("#class-pick input").click()
    page.get_by_role("option", name="watch", exact=True).click()
    page.click("#class-browse")
    expected = sorted(r.id for r in core_gallery.records if r.class_name == "watch")
    wait_for_selection_text(page, "class watch")
    assert sorted(selected(page, len(expected))) == expected


def test_a_single_click_on_a_legend_entry_hides_its_class_and_another_shows_it(page, server):
    open_app(page, server)
    names = [t.text_content() for t in page.query_selector_all("#embedding-plot .legend .traces .legendtext")]
    hidden = "() => document.querySelector('%s').data.find((t) => t.name === 'pizza').visible === 'legendonly'" % PLOT
    legend_item(page, "pizza").click()
    page.wait_for_function(hidden, timeout=30_000)
    assert visibility(page) == {n: ("legendonly" if n == "pizza" else True) for n in names}  # that class only
    ui_helpers.wait_for_map(page)
    page.wait_for_timeout(600)  # past the page's double-click window: a second, separate click
    legend_item(page, "pizza").click()
    page.wait_for_function("() => document.querySelector('%s').data.every((t) => t.visible === true)" % PLOT, timeout=30_000)
    assert visibility(page) == {n: True for n in names}


def test_find_an_image_by_file_name_shows_it_like_a_click(page, server, core_gallery):
    open_app(page, server)
    ui_helpers.set_k(page, 4)
    name = core_gallery.records[11].id.rsplit("/", 1)[1]  # e.g. image_0004.jpg: in several classes
    found = find_images(core_gallery, name)
    target = core_gallery.records[found[0]]
    page.fill("#find-text textarea, #find-text input", name)
    page.click("#find-button")
    ui_helpers.wait_for_query_result(page, target.id)
    ui_helpers.wait_for_gallery(page, 4)
    expected = [n.id for n in core_gallery.neighbours_of_index(found[0], 4)]
    assert [re.search(r"· (\S+)$", c).group(1) for c in ui_helpers.gallery_captions(page)] == expected
    ui_helpers.wait_for_highlight(page, ui_helpers.point_position(page, found[0]), 4)
    words = page.inner_text("#find-status")
    assert target.id in words and (len(found) == 1 or f"{len(found) - 1} more match" in words)
    # an exact id finds that image; a name that matches nothing says so
    other = core_gallery.records[len(core_gallery) - 1]
    page.fill("#find-text textarea, #find-text input", other.id)
    page.click("#find-button")
    ui_helpers.wait_for_query_result(page, other.id)
    page.fill("#find-text textarea, #find-text input", "no-such-image.jpg")
    page.click("#find-button")
    page.get_by_text("No image id or file name matches 'no-such-image.jpg'").first.wait_for(timeout=30_000)


def test_colour_by_neighbour_agreement_shows_the_cores_values(page, server, core_gallery):
    open_app(page, server)
    ui_helpers.set_k(page, 5)
    page.get_by_label("neighbour agreement").check()
    read = """() => { const gd = document.querySelector('%s'); const out = {};
        gd.data.forEach((t) => { if (t.marker.colorscale) Array.from(t.customdata).forEach((i, j) => { out[i] = t.marker.color[j]; }); });
        return out; }""" % PLOT
    page.wait_for_function("() => document.querySelector('%s').data.every((t) => !!t.marker.colorscale) && document.querySelector('%s').__rmapReady" % (PLOT, PLOT), timeout=60_000)
    shown = page.evaluate(read)
    ids = [row[1] for row in ui_helpers.map_points(page)]
    expected = neighbour_agreement(core_gallery, 5)
    assert len(shown) == len(ids) == len(core_gallery)
    assert [shown[str(i)] for i in range(len(ids))] == pytest.approx([float(expected[core_gallery.index_of_id(id_)]) for id_ in ids])
    assert "k = 5" in page.evaluate("() => document.querySelector('%s').__rmapColouring.title" % PLOT)
    # a new k recolours; back to class colours
    ui_helpers.set_k(page, 2)
    page.wait_for_function("() => document.querySelector('%s').__rmapColouring.title.includes('k = 2') && document.querySelector('%s').__rmapReady" % (PLOT, PLOT), timeout=60_000)
    shown = page.evaluate(read)
    expected = neighbour_agreement(core_gallery, 2)
    assert [shown[str(i)] for i in range(len(ids))] == pytest.approx([float(expected[core_gallery.index_of_id(id_)]) for id_ in ids])
    page.get_by_label("class", exact=True).check()
    page.wait_for_function("() => document.querySelector('%s').data.every((t) => typeof t.marker.color === 'string')" % PLOT, timeout=60_000)
