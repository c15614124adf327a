"""The FaceNet use on an identity-style set: each of the 48 Caltech-101 classes of
../shared/datasets/caltech101_dev plays one person. 36 identities train a FaceNet-preset
model (quick mode, EfficientNet-Lite0 features); 12 more identities are never shown to it.
(sample_data/'s 10 classes were tried first: with 7 training identities the folds see too
few impostor identity pairs, and the threshold let 85 % of the pairs of three similar new
identities - cup, helicopter, watch - through.) The calibrated threshold must
separate genuine from impostor pairs of those new identities far better than chance,
and open-set search must reject their images as unknown while naming the known ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from retrieval_app.cli import main

CALTECH = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "caltech101_dev"
pytestmark = pytest.mark.skipif(not CALTECH.is_dir(), reason="needs ../shared/datasets/caltech101_dev")
GALLERY_PER_ID, PROBES_PER_ID, NEW_PER_ID = 8, 2, 6


def sample_data_dir() -> Path:
    return CALTECH


def _people() -> tuple[list[str], list[str]]:
    """Every fourth identity (alphabetically) is new: 36 known, 12 new."""
    ids = sorted(p.name for p in CALTECH.iterdir() if p.is_dir())
    return [n for i, n in enumerate(ids) if i % 4 != 3], ids[3::4]


def _copy(source: Path, names, target: Path) -> list[Path]:
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names:
        shutil.copy2(source / name, target / name)
        out.append(target / name)
    return out


@pytest.fixture(scope="module")
def identities(tmp_path_factory):
    """gallery/ (known identities), probes of known identities not in the gallery, new/
    (identities the model never saw), and the FaceNet model trained on gallery/."""
    root = tmp_path_factory.mktemp("faces")
    probes = {}
    KNOWN, NEW = _people()
    for person in KNOWN:
        files = sorted(p.name for p in (sample_data_dir() / person).iterdir())
        _copy(sample_data_dir() / person, files[:GALLERY_PER_ID], root / "gallery" / person)
        probes[person] = _copy(sample_data_dir() / person, files[GALLERY_PER_ID:GALLERY_PER_ID + PROBES_PER_ID], root / "probes" / person)
    for person in NEW:
        files = sorted(p.name for p in (sample_data_dir() / person).iterdir())
        _copy(sample_data_dir() / person, files[:NEW_PER_ID], root / "new" / person)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RETRIEVAL_APP_CACHE_DIR", str(root / "cache"))
        patch.setenv("RETRIEVAL_APP_MODELS_DIR", str(root / "models"))
        from retrieval_app.training import TrainConfig, Trainer

        # --blend 1: keep the FaceNet head even where the guard would keep the backbone.
        result = Trainer(TrainConfig(folder=str(root / "gallery"), out_dir=str(root / "models" / "facenet"), preset="facenet", blend=1.0, epochs=30)).run()
        yield {"root": root, "probes": probes, "result": result, "model": str(root / "models" / "facenet")}


def _run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()  # what the test printed before is not the command's output
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_training_stores_a_calibration_that_separates_held_out_pairs(identities):
    from retrieval_app.training.checkpoint import checkpoint_verification, load_checkpoint

    result = identities["result"]
    assert result.model_path is not None and result.verification is not None
    cal = checkpoint_verification(identities["model"])
    assert cal == result.verification
    assert load_checkpoint(identities["model"])["train"]["preset"] == "facenet"
    assert cal.distance == "squared_euclidean" and set(cal.sets) == {"held-out images", "held-out identities"}
    # Chance is EER 0.5: the held-out pairs are separated by a wide margin.
    assert cal.eer < 0.2 and all(report.eer < 0.25 for report in cal.sets.values())
    assert cal.tar_at_far["0.01"] > 0.5
    summary = json.loads((Path(identities["model"]) / "summary.json").read_text())
    assert summary["verification"]["threshold"] == pytest.approx(cal.threshold)
    print("calibration:", cal.summary(), {k: (v.eer, v.tar_at_far) for k, v in cal.sets.items()}, cal.open_set)


def test_the_threshold_separates_identities_the_model_never_saw(identities, capsys):
    """Independent of the calibration's own pairs: every pair of the three new identities."""
    from retrieval_app.data import scan_folder
    from retrieval_app.retrieval import Gallery
    from retrieval_app.training.checkpoint import checkpoint_verification, load_embedder
    from retrieval_app.verification import all_pairs

    cal = checkpoint_verification(identities["model"])
    gallery = Gallery.build(scan_folder(identities["root"] / "new"), load_embedder(identities["model"]))
    genuine, impostor = all_pairs(gallery.embeddings, gallery.labels, cal.distance)
    tar, far = np.mean(genuine <= cal.threshold), np.mean(impostor <= cal.threshold)
    print(f"new identities at the calibrated threshold: TAR {tar:.3f}, FAR {far:.3f}")
    assert tar - far > 0.6  # chance: TAR = FAR
    # The CLI's calibrate on the same folder (images the model never saw) agrees.
    code, out, _ = _run_cli(capsys, "calibrate", identities["root"] / "new", "--model", identities["model"], "--json")
    assert code == 0
    fresh = json.loads(out)
    assert fresh["n_genuine"] == len(genuine) and fresh["n_impostor"] == len(impostor) and fresh["eer"] < 0.25


def test_verify_cli_answers_same_and_different(identities, capsys):
    probes = identities["probes"]
    first, second = (probes[name] for name in list(probes)[:2])
    code, out, _ = _run_cli(capsys, "verify", first[0], first[1], "--model", identities["model"], "--json")
    same = json.loads(out)
    assert code == 0 and same["distance"] == pytest.approx(_distance(identities, first[:2]), rel=1e-4)
    assert same["same"] == (same["distance"] <= same["threshold"]) and same["distance_name"] == "squared_euclidean"
    code, out, _ = _run_cli(capsys, "verify", first[0], second[0], "--model", identities["model"], "--json")
    other = json.loads(out)
    code, out, _ = _run_cli(capsys, "verify", first[0], second[0], "--model", identities["model"])
    words = "same identity" if other["same"] else "different identities"
    assert code == 0 and out.startswith(f"{words}: distance {other['distance']:.4f}") and f"threshold {other['threshold']:.4f} (squared_euclidean" in out
    code, out, _ = _run_cli(capsys, "verify", first[0], second[0], "--model", identities["model"], "--threshold", "100", "--json")
    assert json.loads(out)["same"] is True and json.loads(out)["threshold"] == 100
    for argv, message in (
        (["verify", "missing.jpg", second[0], "--model", identities["model"]], "error: image missing.jpg does not exist"),
        (["verify", second[0], identities["root"] / "models" / "facenet" / "summary.json", "--model", identities["model"]], "not a recognised image file"),
        (["verify", second[0], second[1], "--model", "efficientnet_lite0"], "no verification threshold for efficientnet_lite0"),
        (["verify", second[0], second[1], "--model", identities["model"], "--far", "2"], None),
    ):
        if message is None:
            with pytest.raises(SystemExit):
                main([str(a) for a in argv])
            assert "a rate must be between 0 and 1" in capsys.readouterr().err
            continue
        code, out, err = _run_cli(capsys, *argv)
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and message in err


def _distance(identities, pair) -> float:
    from retrieval_app.retrieval.embed import embed_images
    from retrieval_app.training.checkpoint import load_embedder

    a, b = embed_images(load_embedder(identities["model"]), pair)
    return float(np.sum((a - b) ** 2))


def test_verify_cli_decisions_match_the_pairs_of_new_identities(identities, capsys):
    """verify's decisions over pairs of the new identities: most genuine accepted, most
    impostor pairs refused."""
    root = identities["root"] / "new"
    people = sorted(p for p in root.iterdir() if p.is_dir())[:3]
    images = [sorted(p.iterdir())[:2] for p in people]
    genuine = [_verdict(capsys, identities, a, b) for a, b in images]
    impostor = [_verdict(capsys, identities, images[i][0], images[j][1]) for i in range(3) for j in range(3) if i != j]
    print(f"verify on new identities: {sum(genuine)}/3 genuine accepted, {sum(impostor)}/6 impostor accepted")
    assert sum(genuine) >= 2 and sum(impostor) <= 2


def _verdict(capsys, identities, a, b) -> bool:
    code, out, _ = _run_cli(capsys, "verify", a, b, "--model", identities["model"], "--json")
    assert code == 0
    return json.loads(out)["same"]


def test_open_set_search_rejects_unknown_identities(identities, capsys):
    root = identities["root"]
    known = [p for files in identities["probes"].values() for p in files]
    unknown = sorted((root / "new").rglob("*.jpg"))
    code, out, _ = _run_cli(capsys, "search", *known, *unknown, "--gallery", root / "gallery", "--model", identities["model"], "--reject-unknown", "--json", "-k", "3")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    named = {row["query"]: row["identity"] for row in rows}
    right = np.mean([named[str(p)] == p.parent.name for p in known])
    rejected = np.mean([named[str(p)] == "unknown" for p in unknown])
    known_rejected = np.mean([named[str(p)] == "unknown" for p in known])
    print(f"open-set search at false-alarm rate 0.01: known probes identified {right:.3f} (rejected {known_rejected:.3f}), unknown probes rejected {rejected:.3f}")
    # The threshold comes from small held-out sets, so where the operating point lands on a
    # bigger gallery varies from run to run (measured: unknown rejected 0.69-0.99, known
    # identified 0.58-0.86); what must hold is that it tells unknown from known people.
    assert rejected >= 0.5 and rejected - known_rejected >= 0.4 and right >= 0.15
    assert all(row["nearest_distance"] > row["threshold"] for row in rows if row["identity"] == "unknown")
    code, out, _ = _run_cli(capsys, "search", *known, *unknown, "--gallery", root / "gallery", "--model", identities["model"], "--reject-unknown", "--far", "0.1", "--json", "-k", "1")
    looser = {row["query"]: row["identity"] for row in map(json.loads, out.splitlines())}
    right_10 = np.mean([looser[str(p)] == p.parent.name for p in known])
    rejected_10 = np.mean([looser[str(p)] == "unknown" for p in unknown])
    print(f"open-set search at false-alarm rate 0.1: known probes identified {right_10:.3f}, unknown probes rejected {rejected_10:.3f}")
    # A looser point names more known people and rejects fewer strangers. (How many fewer:
    # the folds measured their thresholds on small galleries, see the README; at "0.1"
    # this gallery of 288 images let 94 % of the strangers through.)
    assert right_10 >= right and rejected_10 <= rejected
    code, out, _ = _run_cli(capsys, "search", unknown[0], "--gallery", root / "gallery", "--model", identities["model"], "--reject-unknown", "--threshold", "1000")
    assert code == 0 and "identity: " in out and "identity: unknown" not in out


def test_calibrate_a_bare_backbone_into_a_file_and_verify_with_it(identities, capsys, tmp_path):
    root = identities["root"]
    cal_file = tmp_path / "cal.json"
    code, out, _ = _run_cli(capsys, "calibrate", root / "new", "--model", "efficientnet_lite0", "--out", cal_file)
    assert code == 0 and "EER" in out and "DIR" in out and cal_file.is_file()
    first = next(iter(identities["probes"].values()))
    code, out, _ = _run_cli(capsys, "verify", first[0], first[1], "--calibration", cal_file, "--json")
    verdict = json.loads(out)
    assert code == 0 and verdict["distance_name"] == "euclidean" and verdict["threshold"] == pytest.approx(json.loads(cal_file.read_text())["threshold"])
    code, _, err = _run_cli(capsys, "calibrate", root / "new", "--model", "efficientnet_lite0", "--save")
    assert code == 2 and "bare backbone" in err
