"""`retrieval-app --help` and argument errors answer without importing torch,
torchvision, gradio or umap (each costs seconds), and the light choice lists the parsers
are built from name exactly what the heavy registries accept."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("torch", "torchvision", "gradio", "umap")

# Each argv ends in SystemExit inside argparse: help printed, or a bad argument refused.
ARGVS = [
    ["--help"],
    ["train", "--help"],
    ["train", "FOLDER", "--mining", "nonsense"],
    ["train", "FOLDER", "--backbone", "vgg"],
    ["eval", "--help"],
    ["embed", "--help"],
    ["search", "--help"],
    ["map", "FOLDER", "--method", "mds"],
    ["export", "FOLDER", "--format", "xml", "--out", "x"],
    ["ui", "--help"],
    ["verify", "--help"],
    ["verify", "A", "B", "--far", "7"],
    ["calibrate", "--help"],
    ["search", "Q", "--gallery", "G", "--reject-unknown", "--far", "x"],
    ["train", "FOLDER", "--preset", "vggface"],
    ["frobnicate"],
]

# Runs main(argv) for each argv and reports which heavy modules each one left loaded.
PROBE = """
import json, sys
from retrieval_app.cli import main
heavy = {heavy!r}
found = {{}}
for argv in json.loads(sys.argv[1]):
    try:
        main(argv)
    except SystemExit:
        pass
    found[" ".join(argv)] = sorted(m for m in heavy if m in sys.modules)
print(json.dumps(found))
"""


def test_help_and_argument_errors_import_nothing_heavy():
    probe = PROBE.format(heavy=HEAVY)
    out = subprocess.run([sys.executable, "-c", probe, json.dumps(ARGVS)], capture_output=True, text=True, timeout=120)
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found == {" ".join(argv): [] for argv in ARGVS}
    assert "Traceback" not in out.stderr


def test_console_script_help_imports_nothing_heavy():
    """The installed `retrieval-app` entry point itself, with Python's import log."""
    exe = Path(sys.executable).with_name("retrieval-app")
    for argv in (["--help"], ["train", "--help"], ["train", "x", "--mining", "nonsense"]):
        out = subprocess.run([str(exe), *argv], capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
        imported = {line.rsplit("|", 1)[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
        assert "retrieval_app.cli" in imported  # the log is really there
        assert not {name for name in imported if name.split(".")[0] in HEAVY}, argv
        assert out.returncode == (0 if "--help" in argv else 2)


def test_choice_lists_match_the_registries():
    from retrieval_app import choices
    from retrieval_app.losses import DISTANCES, MINING_STRATEGIES
    from retrieval_app.networks import DEFAULT_BACKBONE, list_models
    from retrieval_app.retrieval import BACKENDS, FORMATS, METHODS
    from retrieval_app.training.config import MODES, REDUCTIONS

    assert tuple(list_models()) == choices.BACKBONES and DEFAULT_BACKBONE == choices.DEFAULT_BACKBONE
    assert tuple(DISTANCES) == choices.DISTANCES and tuple(MINING_STRATEGIES) == choices.MINING_STRATEGIES
    assert tuple(MODES) == choices.TRAIN_MODES and tuple(REDUCTIONS) == choices.REDUCTIONS
    assert (METHODS, FORMATS, BACKENDS) == (choices.PROJECTION_METHODS, choices.EXPORT_FORMATS, choices.SEARCH_BACKENDS)


@pytest.mark.parametrize("head", ["linear", "mlp"])
def test_every_head_choice_builds(head):
    from retrieval_app import choices
    from retrieval_app.networks import create_model

    assert head in choices.HEADS
    assert create_model("small_cnn", dim=8, pretrained=False, head=head).dim == 8


def test_defaults_come_from_the_choices():
    """The command line, TrainConfig and the app's form start from the same values."""
    from retrieval_app import choices
    from retrieval_app.cli import build_parser
    from retrieval_app.training import TrainConfig

    args = build_parser().parse_args(["train", "folder"])
    config = TrainConfig(folder="folder", out_dir="out")
    for name, default in (("backbone", choices.DEFAULT_BACKBONE), ("distance", choices.DEFAULT_DISTANCE), ("mining", choices.DEFAULT_MINING),
                          ("reduction", choices.DEFAULT_REDUCTION), ("mode", choices.DEFAULT_TRAIN_MODE)):
        assert getattr(args, name) == getattr(config, name) == default, name
