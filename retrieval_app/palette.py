"""Distinct colours for classes: up to ~60 classes, no two alike.

Plotly's 10 (or D3's 20) colours repeat: with 40 classes, two share one blue. Here the
first ten are plotly's familiar ones and every further colour is the sRGB colour
farthest (CIELAB distance, ΔE*76, a perceptual space) from all those chosen before it
(greedy farthest-point sampling over a 15-step sRGB grid). Lightness stays within
[30, 85], so every colour shows on the map's near-white background and none is taken
for the black-and-white query star. For 60 classes the closest two colours are ΔE ≈ 23
apart (a just-noticeable difference is about 2; tested). The list is computed, not
stored: the same `n` gives the same colours, and beyond 60 they keep coming, closer."""

from __future__ import annotations

import numpy as np

FIRST = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")
LIGHTNESS = (30.0, 85.0)  # L* range of the colours added after the first ten
GRID_STEP = 15  # sRGB candidates: every 15th level per channel (18³ colours)
_D65 = np.array([0.95047, 1.0, 1.08883])
_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375], [0.2126729, 0.7151522, 0.0721750], [0.0193339, 0.1191920, 0.9503041]])


def hex_to_rgb(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[i:i + 2], 16) for i in (1, 3, 5))


def rgb_to_hex(rgb) -> str:
    return "#" + "".join(f"{int(v):02x}" for v in rgb)


def srgb_to_lab(rgb) -> np.ndarray:
    """sRGB (0-255, shape (..., 3)) → CIELAB under D65."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65
    f = np.where(xyz > (6 / 29) ** 3, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    return np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]), 200 * (f[..., 1] - f[..., 2])], axis=-1)


def class_colours(n: int) -> list[str]:
    """`n` distinct colours as "#rrggbb", the i-th one the same for every n > i."""
    n = max(0, int(n))
    chosen = list(FIRST[:n])
    if n <= len(FIRST):
        return chosen
    levels = np.arange(0, 256, GRID_STEP)
    grid = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(-1, 3)
    lab = srgb_to_lab(grid)
    keep = (lab[:, 0] >= LIGHTNESS[0]) & (lab[:, 0] <= LIGHTNESS[1])
    grid, lab = grid[keep], lab[keep]
    taken = srgb_to_lab([hex_to_rgb(c) for c in chosen])
    nearest = np.linalg.norm(lab[:, None, :] - taken[None, :, :], axis=2).min(axis=1)
    while len(chosen) < n:
        j = int(np.argmax(nearest))
        chosen.append(rgb_to_hex(grid[j]))
        nearest = np.minimum(nearest, np.linalg.norm(lab - lab[j], axis=1))
    return chosen


def min_colour_distance(colours) -> float:
    """The smallest CIELAB distance (ΔE*76) between two of `colours` (inf for fewer than two)."""
    if len(colours) < 2:
        return float("inf")
    lab = srgb_to_lab([hex_to_rgb(c) for c in colours])
    d = np.linalg.norm(lab[:, None, :] - lab[None, :, :], axis=2)
    np.fill_diagonal(d, np.inf)
    return float(d.min())
