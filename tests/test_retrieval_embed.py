"""Embedding extraction: batching, outputs, progress, cancel, bad files, query images."""

from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from retrieval_app.data import scan_folder
from retrieval_app.errors import ImageDecodeError, RetrievalAppError, TrainingCancelled
from retrieval_app.networks import create_model
from retrieval_app.retrieval.embed import EmbeddingCancelled, embed_images, embed_records, iter_embedded_batches
from synthetic import write_class_folder


class MeanColour(nn.Module):
    """A stand-in network: the mean of each channel plus a learnable offset, so tests can
    predict the embedding of a flat-coloured image exactly."""

    def __init__(self) -> None:
        super().__init__()
        self.offset = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3)) + self.offset

    def eval_transform(self):
        from torchvision import transforms as T

        return T.Compose([T.Resize((8, 8)), T.ToTensor()])


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_class_folder(tmp_path_factory.mktemp("embed") / "images", n_classes=3, per_class=5, size=40)


@pytest.fixture(scope="module")
def small_net():
    torch.manual_seed(0)
    return create_model("small_cnn", dim=16, pretrained=False)


def flat_images(root, colours):
    root.mkdir(parents=True, exist_ok=True)
    for c, colour in enumerate(colours):
        (root / f"c{c}").mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), colour).save(root / f"c{c}" / "a.png")
        Image.new("RGB", (20, 20), colour).save(root / f"c{c}" / "b.png")
    return root


def test_stand_in_network_gives_exact_vectors(tmp_path):
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    scan = scan_folder(flat_images(tmp_path / "flat", colours))
    result = embed_records(MeanColour(), scan.records, batch_size=4, device="cpu")
    assert result.embeddings.shape == (6, 3) and result.embeddings.dtype == np.float32 and result.ok.all()
    expected = np.asarray([np.asarray(colours[r.label]) / 255.0 for r in scan.records], dtype=np.float32)
    np.testing.assert_allclose(result.embeddings, expected, atol=1e-6)
    assert result.n_computed == 6 and result.failures == []


def test_batches_and_workers_agree_and_cover_every_record(folder, small_net):
    records = scan_folder(folder).records
    one_batch = embed_records(small_net, records, batch_size=64, num_workers=0, device="cpu")
    small_batches = embed_records(small_net, records, batch_size=4, num_workers=0, device="cpu")
    in_workers = embed_records(small_net, records, batch_size=4, num_workers=1, device="cpu")
    assert one_batch.embeddings.shape == (15, 16) and one_batch.ok.all()
    np.testing.assert_allclose(small_batches.embeddings, one_batch.embeddings, atol=1e-5)
    np.testing.assert_allclose(in_workers.embeddings, one_batch.embeddings, atol=1e-5)
    assert len(np.unique(one_batch.embeddings.round(5), axis=0)) == 15  # rows are not copies


def test_features_output_is_the_backbone_before_the_head(folder, small_net):
    records = scan_folder(folder).records[:6]
    features = embed_records(small_net, records, output="features", device="cpu")
    embeddings = embed_records(small_net, records, device="cpu")
    assert features.embeddings.shape == (6, small_net.spec.feature_dim)
    with torch.no_grad():
        from_features = small_net.eval().embed_features(torch.from_numpy(features.embeddings)).numpy()
    np.testing.assert_allclose(from_features, embeddings.embeddings, atol=1e-5)
    with pytest.raises(RetrievalAppError, match="output must be"):
        embed_records(small_net, records, output="logits")


def test_progress_reports_every_batch_and_mode_is_restored(folder, small_net):
    records = scan_folder(folder).records
    calls = []
    small_net.train()
    embed_records(small_net, records, batch_size=4, device="cpu", progress=lambda done, total: calls.append((done, total)))
    assert small_net.training  # left as it came
    assert [done for done, _ in calls] == [4, 8, 12, 15]
    assert {total for _, total in calls} == {15}
    small_net.eval()


@pytest.mark.parametrize("workers", [0, 1])
def test_cancel_stops_between_batches(folder, small_net, workers):
    records = scan_folder(folder).records
    cancel = threading.Event()
    seen = []

    def progress(done, total):
        seen.append(done)
        cancel.set()  # cancel after the first batch

    with pytest.raises(EmbeddingCancelled):
        embed_records(small_net, records, batch_size=4, num_workers=workers, device="cpu", progress=progress, cancel=cancel)
    assert seen == [4]
    assert issubclass(EmbeddingCancelled, TrainingCancelled)
    alive = [t for t in threading.enumerate() if t.name == "embedding-decoder"]
    for thread in alive:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in alive)  # the decoding thread stopped too


def test_unreadable_files_are_reported_not_raised(tmp_path, small_net):
    root = write_class_folder(tmp_path / "images", n_classes=2, per_class=4, size=32)
    scan = scan_folder(root)
    broken = root / "class_01" / "img_002.jpg"
    broken.write_bytes(b"not a jpeg any more")
    result = embed_records(small_net, scan.records, batch_size=3, device="cpu")
    row = [r.path for r in scan.records].index(broken)
    assert not result.ok[row] and result.ok.sum() == 7
    assert np.all(result.embeddings[row] == 0)
    assert len(result.failures) == 1 and result.failures[0][0] == str(broken)


def test_a_batch_of_only_bad_files_does_not_stop_the_run(tmp_path, small_net):
    root = write_class_folder(tmp_path / "images", n_classes=2, per_class=3, size=32)
    scan = scan_folder(root)
    for record in scan.records[:3]:
        record.path.write_bytes(b"")
    result = embed_records(small_net, scan.records, batch_size=3, device="cpu")
    assert result.ok.tolist() == [False] * 3 + [True] * 3 and len(result.failures) == 3


class Abort(BaseException):
    """Not a per-file failure (those become BadSamples): must reach the caller."""


def test_errors_in_the_decoding_thread_reach_the_caller(folder):
    class Exploding(MeanColour):
        def eval_transform(self):
            def boom(image):
                raise Abort("stop")
            return boom

    with pytest.raises(Abort):
        embed_records(Exploding(), scan_folder(folder).records, batch_size=2, num_workers=0, device="cpu")


def test_iterator_closed_early_releases_the_network(folder, small_net):
    small_net.train()
    batches = iter_embedded_batches(small_net, scan_folder(folder).records, batch_size=2, num_workers=0, device="cpu")
    first = next(batches)
    assert len(first.rows) == 2 and not small_net.training
    batches.close()
    assert small_net.training
    small_net.eval()


def test_query_images_in_every_form_match_the_folder_embedding(folder, small_net):
    records = scan_folder(folder).records
    reference = embed_records(small_net, records[:2], device="cpu").embeddings
    path = records[0].path
    as_pil = Image.open(path)
    queries = embed_images(small_net, [path, str(path), path.read_bytes(), io.BytesIO(path.read_bytes()), as_pil, records[1].path], device="cpu")
    assert queries.shape == (6, 16)
    for row in range(5):
        np.testing.assert_allclose(queries[row], reference[0], atol=1e-5)
    np.testing.assert_allclose(queries[5], reference[1], atol=1e-5)
    single = embed_images(small_net, path, device="cpu")
    assert single.shape == (1, 16)
    assert embed_images(small_net, [], device="cpu").shape == (0, 16)
    with pytest.raises(ImageDecodeError):
        embed_images(small_net, [b"garbage"], device="cpu")


def test_bad_batch_size_is_a_clear_error(folder, small_net):
    with pytest.raises(RetrievalAppError, match="batch size"):
        embed_records(small_net, scan_folder(folder).records, batch_size=0)


def test_empty_record_list(small_net):
    result = embed_records(small_net, [], device="cpu")
    assert result.embeddings.shape == (0, 16) and result.ok.shape == (0,)


# ------------------------------------------------- small inputs: pixels per image, threads
def test_small_input_pixels_normalised_per_batch_equal_the_eval_transform(small_net, tmp_path):
    from retrieval_app.networks.transforms import PixelNormaliser, SmallEvalPixels

    rng = np.random.default_rng(0)
    images = [
        Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), "L"),  # Fashion-MNIST as stored
        Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8), "RGB"),  # resized, not 28×28
        Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8), "RGBA"),
        Image.fromarray(rng.integers(0, 256, (12, 9), dtype=np.uint8), "L").convert("P"),
    ]
    spec = small_net.spec
    reference = torch.stack([small_net.eval_transform()(image) for image in images])
    pixels = torch.stack([SmallEvalPixels(spec)(image) for image in images])
    assert pixels.dtype == torch.uint8 and pixels.shape == (4, 1, 28, 28)
    assert torch.equal(PixelNormaliser(spec)(pixels), reference)  # the same values, bit for bit


def test_small_inputs_embed_as_the_eval_transform_does(small_net, tmp_path):
    folder = write_class_folder(tmp_path / "png", n_classes=2, per_class=6, size=28)
    records = scan_folder(folder).records
    batched = embed_records(small_net, records, batch_size=5, num_workers=0, device="cpu").embeddings
    one_by_one = embed_images(small_net, [r.path for r in records], device="cpu")  # eval_transform per image
    np.testing.assert_allclose(batched, one_by_one, atol=1e-6)
    in_worker = embed_records(small_net, records, batch_size=5, num_workers=1, device="cpu").embeddings
    np.testing.assert_allclose(in_worker, one_by_one, atol=1e-6)


class ThreadProbe(nn.Module):
    """Wraps a network: records, per forward pass, the calling thread, its intra-op
    thread count and when it ran (sleeping a little, as a real network computes)."""

    def __init__(self, net: nn.Module, sleep_s: float = 0.05) -> None:
        super().__init__()
        self.net, self.spec, self.sleep_s = net, net.spec, sleep_s
        self.calls: list[tuple[int, int, float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        threads = torch.get_num_threads()
        time.sleep(self.sleep_s)
        out = self.net(x)
        self.calls.append((threading.get_ident(), threads, start, time.perf_counter()))
        return out

    def eval_transform(self):
        return self.net.eval_transform()


def test_small_network_embeds_on_one_thread_while_decoding_runs_beside_it(small_net, tmp_path, monkeypatch):
    import retrieval_app.networks.transforms as transforms_module

    decodes: list[tuple[int, float]] = []
    original = transforms_module.SmallEvalPixels.__call__

    def recording(self, image):
        decodes.append((threading.get_ident(), time.perf_counter()))
        return original(self, image)

    monkeypatch.setattr(transforms_module.SmallEvalPixels, "__call__", recording)
    folder = write_class_folder(tmp_path / "png", n_classes=2, per_class=12, size=28)
    probe = ThreadProbe(small_net)
    torch.set_num_threads(2)  # what an idle 2-core machine starts with
    result = embed_records(probe, scan_folder(folder).records, batch_size=4, num_workers=0, device="cpu")
    assert result.ok.all() and len(probe.calls) == 6
    assert {threads for _, threads, _, _ in probe.calls} == {1}  # the forward pass: one intra-op thread
    assert torch.get_num_threads() == 2  # restored afterwards
    forward_thread = probe.calls[0][0]
    assert decodes and all(thread != forward_thread for thread, _ in decodes)  # decoded elsewhere,
    overlapping = [t for _, t in decodes if any(start < t < end for _, _, start, end in probe.calls)]
    assert overlapping, "no image was decoded while a forward pass ran"  # and at the same time


def test_a_network_on_full_size_inputs_keeps_every_core(tmp_path):
    from retrieval_app.threads import threads_for

    torch.manual_seed(0)
    probe = ThreadProbe(create_model("efficientnet_lite0", pretrained=False, head=None), sleep_s=0.0)
    folder = write_class_folder(tmp_path / "jpg", n_classes=2, per_class=2, size=40)
    embed_records(probe, scan_folder(folder).records, batch_size=4, num_workers=0, device="cpu")
    assert {threads for _, threads, _, _ in probe.calls} == {threads_for("network")}
