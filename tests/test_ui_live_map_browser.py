"""The live map in a real browser (Debian chromium through Playwright): frames arrive
while a real quick-mode run trains, and the slider replays them afterwards."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.browser
pytest.importorskip("playwright.sync_api")

import ui_helpers  # noqa: E402
from synthetic import copy_sample_photos, isolated_app_dirs  # noqa: E402

if not ui_helpers.CHROMIUM.exists():
    pytest.skip("Debian chromium is not installed (scripts/test.sh installs it)", allow_module_level=True)

from retrieval_app.ui.launch import launch_app  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ("Leopards", "pizza", "sunflower", "watch", "cup")
LIVE_PLOT = "#live-map [data-testid=plotly]"
# Every live map title the page shows while the status says the run is going: a
# redraw sets a new title ("Live map · fold 1 · step 1,234 · 3.2 s").
WATCH_JS = """([plot, wanted]) => {
    const gd = document.querySelector(plot), status = document.querySelector('#train-status');
    const seen = (window.__liveTitles = window.__liveTitles || new Set());
    const title = gd && gd.layout && gd.layout.title && gd.layout.title.text;
    if (title && status && status.innerText.includes('running')) seen.add(title + ' | ' + gd.data.length + ' traces');
    return seen.size >= wanted;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("ui-live-map")
    folder = copy_sample_photos(base / "photos", CLASSES, 8)
    with isolated_app_dirs(base):
        port = ui_helpers.free_port()
        demo = launch_app(folder=folder, port=port, open_browser=False, block=False)
        yield f"http://127.0.0.1:{port}"
        demo.close()


def live_title(page) -> str:
    return page.evaluate("(s) => { const g = document.querySelector(s); return g && g.layout && g.layout.title ? g.layout.title.text : ''; }", LIVE_PLOT)


def test_live_map_frames_arrive_during_training_and_replay_after(page, server):
    page.goto(server)
    ui_helpers.wait_for_map(page)
    page.get_by_text("4 · Fine-tune with a triplet loss").click()
    page.locator("#train-start").wait_for(state="visible")
    # The backbone already separates these photos: the run keeps it (no hand-over to wait for).
    # Many epochs within the budget: the easy photos reach loss 0 in a fraction of a second,
    # and with a budget alone the stall watch would end the run after its first frames.
    page.get_by_label("Epochs").fill("100000")
    page.get_by_label("Time budget, s (optional)").fill("8")
    page.locator("#train-start").click()
    # two different frames drawn while the run is still training
    try:
        page.wait_for_function(WATCH_JS, arg=[LIVE_PLOT, 2], polling=100, timeout=240_000)
    except Exception:  # say what the page showed
        seen = page.evaluate("() => [...(window.__liveTitles || [])]")
        pytest.fail(f"fewer than two live frames while running; seen {seen}; status now {page.inner_text('#train-status')!r}; title now {live_title(page)!r}")
    titles = page.evaluate("() => [...window.__liveTitles]")
    assert all(t.startswith("Live map · ") and t.endswith(f"| {len(CLASSES)} traces") for t in titles), titles
    points = page.evaluate("(s) => document.querySelector(s)._fullData.reduce((n, t) => n + t.x.length, 0)", LIVE_PLOT)
    assert points == len(CLASSES) * 8  # a small folder is shown whole
    assert "Live map" in page.inner_text("#live-map-text")
    # the run ends: the slider replays its frames, from the start
    slider = page.locator("#live-map-replay input[type=number]")
    slider.wait_for(state="visible", timeout=240_000)
    assert "done" in page.inner_text("#train-status")
    last = int(slider.input_value())
    assert last >= 1 and "fold 1" in live_title(page)  # at least two frames to replay
    slider.fill("0")
    slider.press("Enter")
    page.wait_for_function("(s) => { const g = document.querySelector(s); return g.layout.title.text.includes('· start ·'); }", arg=LIVE_PLOT, timeout=30_000)
    assert "move the slider to replay" in page.inner_text("#live-map-text")
