"""Checkpoints in `models/<name>/` and the one function that turns a model spec (a
checkpoint or a bare backbone name) into a ready embedding network.

Files (all written atomically):
- `model.pt`   the kept model: config, weights, class names, metrics (no optimizer);
- `last.pt`    the latest epoch with optimizer state and history, for resuming;
- `history.json`, `summary.json`  human-readable metrics.
Every `.pt` is loaded with `torch.load(weights_only=True)`: a checkpoint is data, never code.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..atomic import atomic_torch_save
from ..errors import CheckpointError, ModelError
from ..paths import models_dir
from .dial import Dial, gate_applies

CHECKPOINT_FORMAT = 1
MODEL_FILE = "model.pt"
LAST_FILE = "last.pt"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.json"


def save_model(path: str | Path, net, *, classes: list[str], train_config: dict, metrics: dict, epoch: int,
               head_only: bool = False, extra: dict | None = None) -> Path:
    """The kept model. `head_only` (quick mode, frozen pretrained backbone): store the head
    and a fingerprint of the backbone instead of 18+ MB of weights everyone already has;
    loading rebuilds the pretrained backbone and refuses it if the fingerprint differs."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": "model",
        "config": net.config(),
        "state_dict": _head_state_dict(net) if head_only else _cpu_state_dict(net),
        "classes": list(classes),
        "train": dict(train_config),
        "metrics": dict(metrics),
        "epoch": int(epoch),
        "saved_at": time.time(),
        **(extra or {}),
    }
    if head_only:
        from ..networks import model_fingerprint

        payload["backbone"] = {"fingerprint": model_fingerprint(net, part="backbone"), "weights": train_config.get("weights")}
    return atomic_torch_save(payload, path)


def save_training_state(path: str | Path, net, optimizer, *, epoch: int, history: list[dict], best: dict, train_config: dict, classes: list[str], extra: dict | None = None) -> Path:
    payload = {
        "format": CHECKPOINT_FORMAT,
        "kind": "training_state",
        "config": net.config(),
        "state_dict": _cpu_state_dict(net),
        "optimizer": optimizer.state_dict(),
        "epoch": int(epoch),
        "history": history,
        "best": best,
        "train": dict(train_config),
        "classes": list(classes),
        "saved_at": time.time(),
        **(extra or {}),
    }
    return atomic_torch_save(payload, path)


def load_checkpoint(path: str | Path, *, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read a checkpoint file (weights only, never pickled code) and check its format."""
    path = Path(path)
    if path.is_dir():
        path = path / MODEL_FILE
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    not_ours = f"{path}: not a retrieval-app checkpoint (or damaged)"
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:  # the file itself cannot be read: say why
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from exc
    except Exception as exc:
        # Random bytes, a truncated file, or a pickle that would run code: torch's several
        # lines of advice (re-run with weights_only=False) must not reach a user.
        raise CheckpointError(not_ours) from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT or "state_dict" not in payload:
        raise CheckpointError(not_ours)
    return payload


def model_from_checkpoint(payload: dict[str, Any]):
    from ..networks import model_from_config

    backbone = payload.get("backbone")
    net = model_from_config(payload["config"]) if backbone is None else _with_pretrained_backbone(payload["config"], backbone)
    state = payload["state_dict"]
    try:
        if backbone is None:
            net.load_state_dict(state)
        else:
            _load_head_state(net, state)
    except RuntimeError as exc:
        raise CheckpointError(f"checkpoint weights do not fit its model config: {exc}") from exc
    return net


def _with_pretrained_backbone(config: dict[str, Any], backbone: dict[str, Any]):
    """The architecture of `config` on the pretrained backbone a head-only checkpoint
    was trained on; refuses other backbone weights (their features would differ)."""
    from ..networks import create_model, model_fingerprint

    try:
        net = create_model(config["name"], dim=int(config["dim"]), normalize=bool(config["normalize"]), pretrained=True, weights=backbone.get("weights"), head=config["head"])
    except KeyError as exc:
        raise CheckpointError(f"checkpoint config lacks {exc}") from None
    from ..networks.class_gate import with_class_gate_from_config

    with_class_gate_from_config(net, config)
    if model_fingerprint(net, part="backbone") != backbone.get("fingerprint"):
        raise CheckpointError(
            f"this head was trained on other {config['name']} weights than the ones installed here "
            "(different backbone fingerprint); retrain it, or install the weights it was trained on"
        )
    return net


def is_backbone_name(spec: str | Path) -> bool:
    from ..networks import list_models

    return isinstance(spec, str) and spec in list_models()


def resolve_checkpoint_path(spec: str | Path) -> Path:
    """A folder holding model.pt, a .pt file, or a name under models/."""
    candidates = [Path(spec).expanduser()]
    if not Path(spec).is_absolute():
        candidates.append(models_dir() / str(spec))
    for candidate in candidates:
        if candidate.is_dir() and (candidate / MODEL_FILE).is_file():
            return candidate / MODEL_FILE
        if candidate.is_file():
            return candidate
    raise ModelError(_unknown_model_message(spec))


def _unknown_model_message(spec) -> str:
    from ..networks import list_models

    return (
        f"'{spec}' is neither a checkpoint (a folder with {MODEL_FILE}, or a .pt file) "
        f"nor a backbone name ({', '.join(list_models())})"
    )


def load_embedder(spec: str | Path, *, device: str | torch.device | None = None):
    """A checkpoint → its trained network; a bare backbone name → its pretrained pooled
    features with no head, L2-normalised (the honest "before" of any fine-tuning)."""
    from ..networks import create_model

    if is_backbone_name(spec):
        net = create_model(str(spec), head=None, normalize=True, pretrained=True)
    else:
        net = model_from_checkpoint(load_checkpoint(resolve_checkpoint_path(spec)))
    net.eval()
    if device is not None:
        net.to(device)
    return net


def checkpoint_distance(spec: str | Path) -> str:
    """The distance a model was trained with (what its neighbours should be ranked by)."""
    if is_backbone_name(spec):
        return "euclidean"
    payload = load_checkpoint(resolve_checkpoint_path(spec))
    return str(payload.get("train", {}).get("distance", "euclidean"))


@dataclass
class CheckpointInfo:
    name: str
    path: Path
    metrics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)
    train: dict = field(default_factory=dict)
    created: float = 0.0


def list_checkpoints(root: str | Path | None = None) -> list[CheckpointInfo]:
    """Checkpoints under `root` (default models/), newest first; unreadable ones are skipped."""
    root = Path(root) if root is not None else models_dir()
    found = []
    if not root.is_dir():
        return found
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        try:
            payload = load_checkpoint(folder / MODEL_FILE)
        except CheckpointError:
            continue
        found.append(
            CheckpointInfo(
                name=folder.name,
                path=folder,
                metrics=payload.get("metrics", {}),
                config=payload.get("config", {}),
                train=payload.get("train", {}),
                created=float(payload.get("saved_at", folder.stat().st_mtime)),
            )
        )
    return sorted(found, key=lambda info: info.created, reverse=True)


def delete_checkpoint(path: str | Path, *, root: str | Path | None = None) -> None:
    """Remove one checkpoint folder; refuses anything that is not a folder directly in `root`."""
    root = (Path(root) if root is not None else models_dir()).resolve()
    folder = Path(path).resolve()
    if folder.parent != root or not (folder / MODEL_FILE).is_file():
        raise CheckpointError(f"refusing to delete {path}: not a checkpoint folder in {root}")
    shutil.rmtree(folder)


# What a head-only checkpoint stores: every part of the network but the frozen backbone.
HEAD_ONLY_PARTS = ("head", "class_gate")
GATE_WEIGHT_KEY = "class_gate.weight"


def _head_state_dict(net) -> dict[str, torch.Tensor]:
    state = {}
    for part in HEAD_ONLY_PARTS:
        module = getattr(net, part, None)
        if module is not None:
            state.update(_cpu_state_dict(module, prefix=f"{part}."))
    return state


def _load_head_state(net, state: dict[str, torch.Tensor]) -> None:
    unknown = [key for key in state if key.split(".", 1)[0] not in HEAD_ONLY_PARTS]
    if unknown:
        raise RuntimeError(f"unexpected keys {unknown[:3]}")
    for part in HEAD_ONLY_PARTS:
        module = getattr(net, part, None)
        prefix = f"{part}."
        entries = {key.removeprefix(prefix): value for key, value in state.items() if key.startswith(prefix)}
        if module is None:
            if entries:
                raise RuntimeError(f"weights for a {part} this model does not have")
            continue
        module.load_state_dict(entries)


def _cpu_state_dict(module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + key: value.detach().cpu().clone() for key, value in module.state_dict().items()}


def set_checkpoint_blend(path: str | Path, blend: float) -> dict[str, Any]:
    """Move a saved model along its dial: rewrite the blend of its head (0 = the head's
    start, for the identity head the bare backbone; 1 = the trained head)."""
    from ..networks.heads import get_head_spec

    path = resolve_checkpoint_path(path)
    payload = load_checkpoint(path)
    key = "head.blend"
    kind = payload.get("config", {}).get("head")
    if kind is None or not get_head_spec(kind).blendable or key not in payload["state_dict"]:
        raise CheckpointError(f"{path.parent.name}: its head ({kind}) cannot be blended")
    if not 0.0 <= float(blend) <= 1.0:
        raise CheckpointError(f"blend must be between 0 and 1, got {blend}")
    payload["state_dict"][key] = torch.tensor(float(blend))
    dial = payload.get("dial")
    if isinstance(dial, dict):
        restored = Dial.from_dict(dial)
        restored.chosen = restored.nearest(blend=float(blend))
        payload["dial"] = restored.to_dict()
        if GATE_WEIGHT_KEY in payload["state_dict"]:  # on at its own blend only; off, its part is zeros
            on = restored.gate is not None and gate_applies(restored.gate, float(blend))
            payload["state_dict"][GATE_WEIGHT_KEY] = torch.tensor(float(restored.gate["weight"]) if on else 0.0)
        if restored.chosen is not None:
            payload["metrics"] = {**payload.get("metrics", {}), **estimate_metrics(restored.chosen, restored.gate)}
    payload["saved_at"] = time.time()
    atomic_torch_save(payload, path)
    return payload


def estimate_metrics(point, gate: dict | None = None) -> dict[str, Any]:
    """A dial point as the flat metrics a checkpoint lists (fold estimates); with the class
    gate on at that point, its estimates (precision@1 was not measured with the gate)."""
    seen, unseen, seen_p1, unseen_p1 = point.seen, point.unseen, point.seen_p1, point.unseen_p1
    if gate_applies(gate, point.blend):
        seen, unseen, seen_p1, unseen_p1 = gate["seen"], gate["unseen"], None, None
    values = [v for v in (seen, unseen) if v is not None]
    p1 = [v for v in (seen_p1, unseen_p1) if v is not None]
    return {
        "map_at_r": sum(values) / len(values) if values else None, "precision_at_1": sum(p1) / len(p1) if p1 else None,
        "val_seen_map_at_r": seen, "val_unseen_map_at_r": unseen,
        "val_seen_precision_at_1": seen_p1, "val_unseen_precision_at_1": unseen_p1,
        "step": point.step, "blend": point.blend, "class_gate": gate_applies(gate, point.blend),
    }


def is_head_only(spec: str | Path) -> bool:
    """True for a checkpoint that stores a head on the pretrained backbone (quick mode):
    its images' backbone features are shared with the bare backbone and every other such
    head, so it embeds a folder from the feature cache (`Gallery.build(from_features=True)`)."""
    if is_backbone_name(spec):
        return False
    return isinstance(load_checkpoint(resolve_checkpoint_path(spec)).get("backbone"), dict)


def checkpoint_dial(spec: str | Path):
    """The dial a quick-mode checkpoint was chosen on (`training.dial.Dial`), or None."""
    if is_backbone_name(spec):
        return None
    dial = load_checkpoint(resolve_checkpoint_path(spec)).get("dial")
    if not isinstance(dial, dict):
        return None
    return Dial.from_dict(dial)


def add_to_checkpoint(path: str | Path, **entries: Any) -> dict[str, Any]:
    """Add (or replace) top-level entries of a saved checkpoint, e.g. its verification
    calibration; written atomically."""
    path = resolve_checkpoint_path(path)
    payload = load_checkpoint(path)
    payload.update(entries)
    atomic_torch_save(payload, path)
    return payload


def checkpoint_verification(spec: str | Path):
    """The verification calibration stored with a checkpoint
    (`verification.Calibration`), or None (a bare backbone, or a model trained before)."""
    if is_backbone_name(spec):
        return None
    data = load_checkpoint(resolve_checkpoint_path(spec)).get("verification")
    if not isinstance(data, dict):
        return None
    from ..verification import Calibration

    return Calibration.from_dict(data)
