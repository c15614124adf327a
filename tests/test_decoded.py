"""Small images decoded once into memory for full-mode training (training/decoded.py)."""

from __future__ import annotations

import torch
from PIL import Image

from retrieval_app.data import scan_folder
from retrieval_app.networks import create_model, get_spec
from retrieval_app.training import decoded
from retrieval_app.training.decoded import DecodedImages, fits_in_memory, random_resized_crop
from synthetic import write_class_folder


def test_decoded_batches_equal_the_eval_transform(tmp_path):
    folder = write_class_folder(tmp_path / "data", n_classes=3, per_class=4, size=40)
    records = scan_folder(folder).records
    records[0].path.write_bytes(b"not an image any more")  # broken after the scan
    spec = get_spec("small_cnn")
    images = DecodedImages(records, spec)
    assert images.pixels.shape == (len(records), 1, 28, 28)
    assert list(images.ok.nonzero()[0]) == list(range(1, len(records)))
    assert len(images.failures) == 1 and images.failures[0][0] == str(records[0].path)
    transform = create_model("small_cnn").eval_transform()
    good = torch.as_tensor(images.ok.nonzero()[0])
    expected = torch.stack([transform(Image.open(records[i].path)) for i in good.tolist()])
    # PIL's resize inside the transform and ours agree up to uint8 rounding
    assert torch.allclose(images.batch(good, augment=False), expected, atol=2 / 255 / 0.5)


def test_random_resized_crop_is_the_identity_at_full_scale_and_varies_otherwise(monkeypatch):
    images = torch.rand(5, 1, 28, 28)
    monkeypatch.setattr(decoded, "CROP_SCALE", (1.0, 1.0))
    monkeypatch.setattr(decoded, "CROP_RATIO", (1.0, 1.0))
    assert torch.allclose(random_resized_crop(images), images, atol=1e-5)
    monkeypatch.setattr(decoded, "CROP_SCALE", (0.5, 0.6))
    cropped = random_resized_crop(images, torch.Generator().manual_seed(0))
    assert cropped.shape == images.shape
    assert not torch.allclose(cropped, images, atol=1e-2)
    # a crop magnifies: the image's own pixels, resampled, stay within its range
    assert cropped.min() >= images.min() - 1e-6 and cropped.max() <= images.max() + 1e-6


def test_only_small_inputs_that_fit_are_held_in_memory():
    assert fits_in_memory(get_spec("small_cnn"), 60_000)
    assert not fits_in_memory(get_spec("small_cnn"), 10**7)
    assert not fits_in_memory(get_spec("efficientnet_lite0"), 100)


def test_full_mode_crops_training_images_only_when_augmenting(tmp_path):
    """From scratch the default trains on the plain images (a crop slowed a small CNN's
    learning on Fashion-MNIST); `augment=True` crops them, and a pretrained backbone's
    default does."""
    import threading

    from retrieval_app.data.split import split_records
    from retrieval_app.training import TrainConfig
    from retrieval_app.training.sources import FullSource

    folder = write_class_folder(tmp_path / "data", n_classes=3, per_class=6, size=40)
    records = scan_folder(folder).records
    split = split_records(records, val_fraction=0.2, unseen_class_fraction=0.0, seed=0)
    assert TrainConfig(folder="", out_dir="").resolved_augment() is True  # the pretrained default
    for augment, crops in ((None, False), (True, True)):
        config = TrainConfig(folder=str(folder), out_dir="", backbone="small_cnn", augment=augment, batch_size=6, samples_per_class=2)
        assert config.resolved_augment() is crops
        net = create_model("small_cnn", dim=8, head="linear", pretrained=False)
        source = FullSource(config=config, net=net, split=split, device=torch.device("cpu"), cancel=threading.Event(), on_phase=lambda _: None)
        images, _labels = next(iter(source.batches(0)))
        row_of = {r.id: row for row, r in enumerate([*split.train, *split.val_seen, *split.val_unseen])}
        plain = torch.stack([source.decoded.batch(torch.as_tensor([row_of[r.id]]), augment=False)[0] for r in split.train])
        # every training image in the batch is one of the plain images exactly, or none is
        matches = [(plain - image).abs().flatten(1).max(1).values.min() < 1e-6 for image in images]
        assert all(matches) is not crops and any(matches) is not crops


def test_the_cli_passes_the_augment_choice_through():
    from retrieval_app.cli import build_parser

    parser = build_parser()
    assert parser.parse_args(["train", "x"]).augment is None  # the per-backbone default
    assert parser.parse_args(["train", "x", "--augment"]).augment is True
    assert parser.parse_args(["train", "x", "--no-augment"]).augment is False
