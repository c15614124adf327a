"""Regenerates docs/live_map.png: the fine-tune panel during a real quick-mode run on
sample_data/: the status, the mining diagnostics and the live map, a few frames in.

    python scripts/live_map_screenshot.py [--out docs/live_map.png] [--budget 40] [--frames 5]

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

LIVE_PLOT = "#live-map [data-testid=plotly]"
# Distinct live map titles drawn while the run is going (one per frame): enough of them,
# or at least two once the first fold (the stretch the live map shows first) is over.
FRAMES_SEEN_JS = """([plot, wanted]) => {
    const gd = document.querySelector(plot), status = document.querySelector('#train-status');
    const seen = (window.__liveTitles = window.__liveTitles || new Set());
    const title = gd && gd.layout && gd.layout.title && gd.layout.title.text;
    if (title && status.innerText.includes('running')) seen.add(title);
    return seen.size >= wanted || (seen.size >= 2 && /fold [2-9]/.test(status.innerText));
}"""


def take(out: Path, width: int, height: int, budget: float, frames: int) -> None:
    with ui_helpers.app_page(width=width, height=height) as page:
        page.get_by_text("4 · Fine-tune with a triplet loss").click()
        page.get_by_label("Time budget, s (optional)").fill(f"{budget:g}")
        page.get_by_label("Model name (optional)").fill("sample-live")
        page.locator("#train-start").click()
        page.wait_for_function(FRAMES_SEEN_JS, arg=[LIVE_PLOT, frames], polling=100, timeout=600_000)
        page.wait_for_timeout(350)  # the last transition
        ui_helpers.screenshot_between(page, out, "#train-status", "#live-map", width)
        page.locator("#train-cancel").click()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "live_map.png")
    parser.add_argument("--width", type=int, default=1400)
    parser.add_argument("--height", type=int, default=1100)
    parser.add_argument("--budget", type=float, default=40.0)
    parser.add_argument("--frames", type=int, default=5, help="frames drawn before the picture is taken")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as models:
        os.environ["RETRIEVAL_APP_MODELS_DIR"] = models
        take(args.out, args.width, args.height, args.budget, args.frames)
    print(args.out)


if __name__ == "__main__":
    main()
