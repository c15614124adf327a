"""The names users choose from (backbones, distances, mining strategies, ...), in a
module that imports nothing, so the command line can build its parsers, print `--help`
and reject a bad argument without importing torch (which costs seconds).

Each tuple here is the one list of its kind: the modules that implement the choices
take their names from it (`retrieval/export.py`, `retrieval/projection.py` and
`retrieval/search.py` do), and `tests/test_cli_startup.py` checks that the torch-side
registries (`networks.list_models()`, `losses.DISTANCES`, `losses.MINING_STRATEGIES`,
`training.config.MODES` / `REDUCTIONS`) offer exactly these names. The defaults are here
too, so the command line, the app's form and `TrainConfig` start from the same values."""

from __future__ import annotations

# networks/registry.py registers a backbone under each of these names.
BACKBONES = ("efficientnet_lite0", "resnet18", "resnet50", "small_cnn")
DEFAULT_BACKBONE = "efficientnet_lite0"
# networks/heads.py builds each; "identity" (full dimension, starts as the backbone) is the default.
HEADS = ("identity", "linear", "mlp")
DEFAULT_HEAD = "identity"

# losses/: distances.DISTANCES, miners.MINERS and reducers.REDUCERS register each of these.
DISTANCES = ("euclidean", "squared_euclidean", "cosine", "linf")
DEFAULT_DISTANCE = "euclidean"
MINING_STRATEGIES = ("batch_all", "batch_hard", "semi_hard", "random")
DEFAULT_MINING = "batch_all"
REDUCTIONS = ("mean", "sum")
DEFAULT_REDUCTION = "mean"

# training/config.py
TRAIN_MODES = ("auto", "quick", "full")
DEFAULT_TRAIN_MODE = "auto"

# training/runners.py: where a run of the app goes (its own process, or a thread of the server).
TRAINING_RUNNERS = ("process", "thread")
DEFAULT_TRAINING_RUNNER = "process"

# retrieval/
PROJECTION_METHODS = ("umap", "pca", "tsne")
EXPORT_FORMATS = ("npz", "csv", "parquet", "projector")
# retrieval/indexes.py registers each backend; "auto" picks one by the data size.
SEARCH_BACKENDS = ("auto", "exact", "ivf_flat", "hnsw", "ivf_pq")

# training/presets.py: a preset fills the TrainConfig fields it names (recipes from papers).
PRESETS = ("facenet",)
# data/scan.py: how a folder is read (auto: class folders, or no labels for a flat folder)
FOLDER_LAYOUTS = ("auto", "classes", "unlabelled")
