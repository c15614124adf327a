"""Click → neighbour-gallery latency of the Gradio app, measured in headless chromium.

Builds a 2,000-image folder (Fashion-MNIST, 10 classes × 200, or synthetic shapes when the
dataset is not beside the repository), opens the app on it, waits for the UMAP map, then
clicks real plotted points one after another and times each click until the page shows
that point's neighbours (gallery and caption), then until the map marks the query and its
neighbours. Prints p50 / p95 / max in milliseconds.

    python bench/bench_ui_click.py [--points 2000] [--clicks 40] [--k 10] [--work DIR]

The first run embeds the folder (a few minutes on 2 CPU cores); later runs reuse the
embedding and map caches under --work."""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "test-artifacts"
sys.path.insert(0, str(ROOT / "tests"))

import ui_helpers  # noqa: E402  (tests/ui_helpers.py: shared with the browser tests)


def make_folder(work: Path, points: int) -> Path:
    """A class-per-folder copy of `points` small images (made once, then reused)."""
    import numpy as np
    from PIL import Image

    folder = work / f"images-{points}"
    if folder.is_dir() and sum(1 for _ in folder.rglob("*.png")) + sum(1 for _ in folder.rglob("*.jpg")) == points:
        return folder
    npz = ROOT.parent / "shared" / "datasets" / "fashion_mnist.npz"
    if npz.is_file():
        data = np.load(npz)
        images, labels, names = data["x_train"], data["y_train"], [str(n) for n in data["class_names"]]
        per_class = points // len(names)
        rng = np.random.default_rng(0)
        for label, name in enumerate(names):
            (folder / name).mkdir(parents=True, exist_ok=True)
            count = per_class + (1 if label < points - per_class * len(names) else 0)
            for i in rng.choice(np.flatnonzero(labels == label), size=count, replace=False):
                Image.fromarray(images[i]).save(folder / name / f"{i:05d}.png")
    else:
        from synthetic import write_class_folder

        write_class_folder(folder, n_classes=20, per_class=points // 20, size=64)
    return folder


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def run(points: int, clicks: int, k: int, work: Path) -> dict:
    from playwright.sync_api import sync_playwright

    from retrieval_app.ui.launch import launch_app

    work.mkdir(parents=True, exist_ok=True)
    os.environ["RETRIEVAL_APP_CACHE_DIR"] = str(work / "cache")
    os.environ["RETRIEVAL_APP_MODELS_DIR"] = str(work / "models")
    folder = make_folder(work, points)
    port = ui_helpers.free_port()
    started = time.perf_counter()
    demo = launch_app(folder=folder, port=port, open_browser=False, block=False)
    try:
        with sync_playwright() as p:
            browser = ui_helpers.launch_chromium(p)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"http://127.0.0.1:{port}")
            ui_helpers.wait_for_map(page, timeout_ms=900_000)
            ui_helpers.wait_for_method(page, "UMAP", timeout_ms=900_000)
            ready_s = time.perf_counter() - started
            ui_helpers.set_k(page, k)
            n_drawn = page.evaluate("() => document.querySelector('%s').data.reduce((n, t) => n + (t.customdata ? t.customdata.length : 0), 0)" % ui_helpers.PLOT)
            candidates = ui_helpers.isolated_points(page, radius_px=2.0)
            chosen = random.Random(0).sample(candidates, min(clicks + 1, len(candidates)))
            latencies, highlight_latencies = [], []
            try:
                for n, index in enumerate(chosen):
                    ui_helpers.wait_for_map(page)
                    point = ui_helpers.point_position(page, index)
                    page.mouse.move(point["x"], point["y"])
                    t0 = time.perf_counter()
                    page.mouse.click(point["x"], point["y"])
                    ui_helpers.wait_for_query_result(page, f"{point['id']} (class")
                    ui_helpers.wait_for_gallery(page, k)
                    t1 = time.perf_counter()
                    ui_helpers.wait_for_highlight(page, point, k)  # before the next click
                    if n > 0:  # the first click warms caches up; not counted
                        latencies.append(1000 * (t1 - t0))
                        highlight_latencies.append(1000 * (time.perf_counter() - t0))
            except Exception:
                ARTIFACTS.mkdir(exist_ok=True)
                page.screenshot(path=str(ARTIFACTS / "bench_ui_click.png"), full_page=True)
                print("query result:", page.inner_text("#query-result"), "| clicked:", point, file=sys.stderr)
                raise
            browser.close()
    finally:
        demo.close()
    return {
        "points_drawn": n_drawn, "clicks": len(latencies), "k": k, "ready_s": round(ready_s, 1),
        "p50_ms": round(percentile(latencies, 50), 1), "p95_ms": round(percentile(latencies, 95), 1),
        "mean_ms": round(statistics.mean(latencies), 1), "max_ms": round(max(latencies), 1),
        "highlight_p50_ms": round(percentile(highlight_latencies, 50), 1),
        "highlight_p95_ms": round(percentile(highlight_latencies, 95), 1),
        "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=2000)
    parser.add_argument("--clicks", type=int, default=40)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "retrieval-bench-ui")
    args = parser.parse_args()
    print(json.dumps(run(args.points, args.clicks, args.k, args.work), indent=2))


if __name__ == "__main__":
    main()
