"""Regenerates docs/screenshot.png: the app on sample_data/ after clicking a point.

    python scripts/ui_screenshot.py [--out docs/screenshot.png] [--query-class Leopards]

Runs the app in-process on a free port and drives Debian's chromium headless."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import ui_helpers  # noqa: E402


def take(out: Path, query_class: str, width: int, height: int) -> None:
    from playwright.sync_api import sync_playwright

    from retrieval_app.paths import sample_data_dir
    from retrieval_app.ui.launch import launch_app

    port = ui_helpers.free_port()
    demo = launch_app(folder=sample_data_dir(), port=port, open_browser=False, block=False)
    try:
        with sync_playwright() as p:
            browser = ui_helpers.launch_chromium(p)
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"http://127.0.0.1:{port}")
            ui_helpers.wait_for_map(page, timeout_ms=600_000)
            ui_helpers.wait_for_method(page, "UMAP", timeout_ms=600_000)
            candidates = [ui_helpers.point_position(page, i) for i in ui_helpers.isolated_points(page, radius_px=3.0)]
            point = next((c for c in candidates if c["label"] == query_class), candidates[0])
            ui_helpers.click_point(page, point["index"])
            ui_helpers.wait_for_query_result(page, f"{point['id']} (class")
            k = int(page.input_value("#k-slider input[type=number]"))
            ui_helpers.wait_for_gallery(page, k)
            ui_helpers.wait_for_highlight(page, point, k)
            page.wait_for_function("() => [...document.querySelectorAll('#neighbour-gallery img')].every(i => i.complete && i.naturalWidth > 0)")
            page.mouse.move(point["x"] + 40, point["y"] + 40)
            page.mouse.move(point["x"], point["y"], steps=5)  # hover the query: its thumbnail tip
            page.wait_for_timeout(800)
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            browser.close()
    finally:
        demo.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--query-class", default="Leopards")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()
    take(args.out, args.query_class, args.width, args.height)
    print(args.out)


if __name__ == "__main__":
    main()
