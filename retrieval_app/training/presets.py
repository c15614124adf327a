"""Named training recipes: a preset fills the `TrainConfig` settings it names.

A setting the user changed from its default is kept: a preset only fills the settings
left at their defaults (on the command line, a flag given with its default value counts
as left alone). The preset's name is recorded in the config (`TrainConfig.preset`), so a
checkpoint says which recipe it came from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..choices import PRESETS as PRESET_NAMES
from ..errors import RetrievalAppError


@dataclass(frozen=True)
class Preset:
    name: str
    description: str
    settings: dict[str, Any]


PRESETS: dict[str, Preset] = {
    preset.name: preset
    for preset in (
        # Schroff, Kalenichenko, Philbin, "FaceNet: A Unified Embedding for Face
        # Recognition and Clustering" (CVPR 2015): embeddings on the unit hypersphere in
        # 128 dimensions, the loss summed over triplets of squared Euclidean distances
        # with margin α = 0.2, negatives mined online among the semi-hard ones.
        Preset(
            "facenet",
            "FaceNet: unit-norm 128-d embeddings, squared Euclidean distance, margin 0.2, loss summed over semi-hard triplets",
            {"head": "linear", "dim": 128, "normalize": True, "distance": "squared_euclidean", "margin": 0.2, "reduction": "sum", "mining": "semi_hard"},
        ),
    )
}
assert tuple(PRESETS) == PRESET_NAMES, "choices.PRESETS and training.presets.PRESETS must list the same presets"


def get_preset(name: str) -> Preset:
    if name not in PRESETS:
        raise RetrievalAppError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    return PRESETS[name]


def preset_settings(name: str, defaults: dict[str, Any], given: dict[str, Any]) -> dict[str, Any]:
    """`given` with the preset's values in place of every setting still at its default."""
    out = dict(given)
    for key, value in get_preset(name).settings.items():
        if out.get(key, defaults.get(key)) == defaults.get(key):
            out[key] = value
    return out
