"""split_records: held-out images of trained classes and whole held-out classes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from retrieval_app.data import ImageRecord, Split, scan_folder, split_records
from retrieval_app.paths import sample_data_dir


def fake_records(counts: dict[str, int]) -> list[ImageRecord]:
    """Records without files: splitting never opens images."""
    classes = sorted(counts)
    return [
        ImageRecord(f"{name}/{i:04d}.jpg", Path("/data") / name / f"{i:04d}.jpg", classes.index(name), name, 1000, 0)
        for name in classes
        for i in range(counts[name])
    ]


def classes_of(records) -> set[str]:
    return {r.class_name for r in records}


def assert_partition(split: Split, records: list[ImageRecord]) -> None:
    parts = [split.train, split.val_seen, split.val_unseen]
    ids = [r.id for part in parts for r in part]
    assert sorted(ids) == sorted(r.id for r in records) and len(set(ids)) == len(ids)
    for part in parts:
        assert [r.id for r in part] == sorted(r.id for r in part)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_partition_unseen_classes_and_held_out_images(seed):
    records = fake_records({f"c{i}": 10 for i in range(8)})
    split = split_records(records, seed=seed)
    assert_partition(split, records)
    unseen = classes_of(split.val_unseen)
    assert len(unseen) == 2  # round(0.2 × 8)
    assert Counter(r.class_name for r in split.val_unseen) == {name: 10 for name in unseen}
    assert not unseen & (classes_of(split.train) | classes_of(split.val_seen))
    held = Counter(r.class_name for r in split.val_seen)
    assert held == {name: 2 for name in classes_of(split.train)}  # round(0.2 × 10) each
    assert split.unseen_classes == sorted(unseen)


def test_deterministic_for_a_seed_and_different_across_seeds():
    records = fake_records({f"c{i}": 12 for i in range(10)})
    split = split_records(records, seed=3)
    assert split_records(list(reversed(records)), seed=3) == split  # input order does not matter
    others = [split_records(records, seed=s) for s in range(4, 9)]
    assert any(o.val_unseen != split.val_unseen for o in others)
    assert any(o.val_seen != split.val_seen for o in others)


def test_adding_images_does_not_reshuffle_other_classes():
    before = split_records(fake_records({f"c{i}": 10 for i in range(6)}), unseen_class_fraction=0)
    after = split_records(fake_records({f"c{i}": 10 for i in range(6)} | {"c0": 15}), unseen_class_fraction=0)
    untouched = lambda part: [r.id for r in part if r.class_name != "c0"]  # noqa: E731
    assert untouched(after.val_seen) == untouched(before.val_seen)


@pytest.mark.parametrize("counts, fraction, n_unseen", [
    ({f"c{i}": 5 for i in range(4)}, 0.2, 0),  # fewer than 5 classes: none held out
    ({f"c{i}": 5 for i in range(5)}, 0.2, 1),
    ({f"c{i}": 5 for i in range(5)}, 0.01, 1),  # at least one
    ({f"c{i}": 5 for i in range(6)}, 0.9, 4),  # always 2 classes left to train on
    ({f"c{i}": 5 for i in range(10)}, 0.0, 0),  # 0 disables
    ({**{f"c{i}": 5 for i in range(4)}, "s1": 1, "s2": 1, "s3": 1}, 0.5, 0),  # singletons are not eligible
    ({**{f"c{i}": 5 for i in range(5)}, "s1": 1}, 0.5, 2),  # round(0.5 × 5), singletons uncounted
])
def test_number_of_unseen_classes(counts, fraction, n_unseen):
    records = fake_records(counts)
    split = split_records(records, unseen_class_fraction=fraction)
    assert_partition(split, records)
    unseen = classes_of(split.val_unseen)
    assert len(unseen) == n_unseen
    assert all(counts[name] >= 2 for name in unseen)
    assert len([c for c in classes_of(split.train) if counts[c] >= 2]) >= 2


@pytest.mark.parametrize("n, fraction, n_val", [
    (3, 0.5, 0),  # < 4 images: nothing held out
    (4, 0.2, 1),
    (4, 0.5, 2),
    (5, 0.9, 3),  # keeps 2 for training
    (10, 0.2, 2),
    (10, 0.0, 0),
    (20, 0.02, 0),  # round(0.4) = 0
    (40, 0.2, 8),
])
def test_held_out_images_per_class(n, fraction, n_val):
    records = fake_records({"a": n, "b": 6})
    split = split_records(records, val_fraction=fraction, unseen_class_fraction=0)
    assert Counter(r.class_name for r in split.val_seen)["a"] == n_val
    assert Counter(r.class_name for r in split.train)["a"] == n - n_val


def test_bad_fractions_are_refused():
    with pytest.raises(ValueError, match="val_fraction"):
        split_records(fake_records({"a": 5, "b": 5}), val_fraction=1.0)
    with pytest.raises(ValueError, match="unseen_class_fraction"):
        split_records(fake_records({"a": 5, "b": 5}), unseen_class_fraction=-0.1)


def test_summary_names_sizes_and_unseen_classes():
    split = split_records(fake_records({f"c{i}": 10 for i in range(5)}), seed=0)
    (unseen,) = split.unseen_classes
    text = split.summary()
    assert "train: 32 images of 4 classes" in text
    assert "8 held-out images of 4 classes" in text
    assert f"10 images of 1 classes ({unseen})" in text
    assert "unseen classes: none" in split_records(fake_records({"a": 4, "b": 4})).summary()


def test_sample_data_split():
    records = scan_folder(sample_data_dir()).records
    split = split_records(records)
    assert_partition(split, records)
    assert len(split.unseen_classes) == 2 and len(split.val_unseen) == 40
    assert len(split.val_seen) == 8 * 4 and len(split.train) == 8 * 16
