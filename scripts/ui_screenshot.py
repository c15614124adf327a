"""Regenerates docs/screenshot.png: the app on sample_data/ after clicking a point, and
docs/dial.png: the fine-tune panel after a quick run on sample_data/ with its dial.

    python scripts/ui_screenshot.py [--out docs/screenshot.png] [--query-class Leopards] [--dial-out docs/dial.png]

Runs the app in-process on a free port and drives Debian's chromium headless. The
training run's files go to a temporary models folder, never models/."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import ui_helpers  # noqa: E402


def take(out: Path, query_class: str, width: int, height: int) -> None:
    with ui_helpers.app_page(width=width, height=height) as page:
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


def take_dial(out: Path, width: int, height: int, blend: float = 1.0) -> None:
    """A quick run with the default settings, then the dial's slider moved to `blend`."""
    with ui_helpers.app_page(width=width, height=height) as page:
        page.get_by_text("4 · Fine-tune with a triplet loss").click()
        page.get_by_label("Model name (optional)").fill("sample")
        page.locator("#train-start").click()
        page.wait_for_function("() => /Kept|nothing was saved|Error/.test(document.querySelector('#train-status').innerText)", timeout=600_000)
        box = page.locator("#dial-blend input[type=number]")
        box.fill(f"{blend:g}")
        box.press("Enter")
        page.wait_for_function("(b) => document.querySelector('#dial-text').innerText.includes('Blend ' + b)", arg=f"{blend:g}", timeout=60_000)
        page.wait_for_timeout(800)
        ui_helpers.screenshot_between(page, out, "text=4 · Fine-tune with a triplet loss", "#dial-plot", width)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--query-class", default="Leopards")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--dial-out", type=Path, default=None, help="also the fine-tune panel with its dial after a quick run")
    args = parser.parse_args()
    take(args.out, args.query_class, args.width, args.height)
    print(args.out)
    if args.dial_out is not None:
        with tempfile.TemporaryDirectory() as models:
            os.environ["RETRIEVAL_APP_MODELS_DIR"] = models
            take_dial(args.dial_out, args.width, args.height)
        print(args.dial_out)


if __name__ == "__main__":
    main()
