"""The trainer's verification calibration: a distance threshold from pairs the kept model
never trained on (see `verification.py` for the measures, `identification.py` for the
open-set report).

- Quick mode refits the head on every image, so no image is held out from the model the
  user gets. Its calibration uses the class folds instead, as the dial does: each fold's
  head at the kept point (its step and blend) embeds that fold's held-out images of its
  trained classes ("held-out images") and the images of the fold's classes it never saw
  ("held-out identities"); the pairs of all folds form the ROC. The refit trains the same
  recipe for the same length on more data, so the fold heads are its honest stand-ins.
- Full mode: the kept epoch's network on the split's held-out images and classes.
- When the backbone is kept (nothing saved), the same pairs measure the bare backbone's
  L2-normalised features: what the user verifies with then."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from ..identification import empty_scores, open_set_report, open_set_scores
from ..verification import Calibration, verification_distance

SET_NAMES = {"val_seen": "held-out images", "val_unseen": "held-out identities"}


def _calibrate(per_fold: list[dict[str, tuple[np.ndarray, np.ndarray]]], distance: str, source: str, seed: int) -> Calibration | None:
    """Pairs within each fold's sets (never across folds: another fold's head is another
    model), pooled per set; the open-set report on each fold's held-out images."""
    from ..verification import all_pairs, calibrate_pairs

    pooled: dict[str, tuple[list, list]] = {}
    scores = empty_scores()
    for number, sets in enumerate(per_fold):
        for name, (emb, labels) in sets.items():
            genuine, impostor = all_pairs(emb, labels, distance, seed=seed + number)
            pooled.setdefault(SET_NAMES.get(name, name), ([], []))
            pooled[SET_NAMES.get(name, name)][0].append(genuine)
            pooled[SET_NAMES.get(name, name)][1].append(impostor)
        held_out = [v for v in sets.values() if len(v[1])]
        if held_out:
            scores = scores.extend(open_set_scores(np.concatenate([e for e, _ in held_out]), np.concatenate([l for _, l in held_out]), distance, seed=seed + number))
    pairs = {name: (np.concatenate(g), np.concatenate(i)) for name, (g, i) in pooled.items()}
    if not any(len(g) and len(i) for g, i in pairs.values()):
        return None
    calibration = calibrate_pairs(pairs, distance, source=source)
    if len(scores.known_distance) and len(scores.unknown_distance):
        calibration.open_set = open_set_report(scores, threshold=calibration.threshold).to_dict()
    return calibration


@torch.no_grad()
def calibrate_quick(protocol, chosen, net, config) -> Calibration | None:
    """Quick mode (see the module's note). `chosen`: the dial's kept point, or None when
    the backbone was kept; `net`: the refitted network, or None."""
    distance = verification_distance(config.distance if net is not None else "euclidean")
    folds = protocol._folds()
    table = protocol.table
    per_fold = []
    for number, fold in enumerate(folds, start=1):
        if net is None:  # the bare backbone, as the trainer's baseline measures it
            embed: Callable = lambda features: F.normalize(features, dim=1)  # noqa: E731
        else:
            snapshot = protocol.snapshots.get((number, chosen.step)) if chosen is not None else None
            if snapshot is None:
                per_fold = []
                break
            fold_net = protocol.make_net()
            fold_net.head.load_state_dict(snapshot)
            fold_net.eval()
            fold_net.set_blend(chosen.blend)
            embed = fold_net.embed_features
        sets = {}
        for name in SET_NAMES:
            rows = table.rows(getattr(fold, name))
            if len(rows) >= 2:
                sets[name] = (embed(table.features[rows]).float().cpu().numpy(), table.labels[rows].cpu().numpy())
        per_fold.append(sets)
    if per_fold:
        who = "the bare backbone" if net is None else "the head"
        return _calibrate(per_fold, distance, f"{who} of each of {len(folds)} class folds at the kept point, on its held-out images and held-out identities", config.seed)
    if net is None:
        return None
    # No fold heads to stand in (too few images to hold any out, or a head that cannot
    # be blended keeps no snapshots): the refitted head on every image, which it saw.
    embeddings = net.embed_features(table.features).float().cpu().numpy()
    return _calibrate([{"all images": (embeddings, table.labels.cpu().numpy())}], distance, "every image, all seen in training: optimistic", config.seed)


def calibrate_full(net, source, config) -> Calibration | None:
    """Full mode: `net` (holding the kept epoch's weights) on the split's held-out sets."""
    net.eval()
    sets = {name: (emb, labels) for name, (emb, labels) in source.validation_embeddings().items() if len(labels) >= 2}
    if not sets:
        return None
    return _calibrate([sets], verification_distance(config.distance), "the kept epoch's network on its held-out images and held-out identities", config.seed)


def calibrate_labelled(embeddings: np.ndarray, labels: np.ndarray, distance: str, *, seed: int = 0, source: str = "") -> Calibration:
    """Every pair of one labelled set of embeddings the model did not train on (for a bare
    backbone, any folder), with the open-set report on the same images: what
    `retrieval-app calibrate` and the app's "calibrate on this folder" do."""
    calibration = _calibrate([{"folder": (np.asarray(embeddings), np.asarray(labels))}], distance, source, seed)
    if calibration is None:
        from ..errors import RetrievalAppError

        raise RetrievalAppError("cannot calibrate: the folder needs an identity with two images and two identities")
    return calibration
