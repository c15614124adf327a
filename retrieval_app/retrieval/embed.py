"""Batched embedding extraction over image records, and embedding of query images.

Pipeline: a DataLoader decodes (JPEGs DCT-downscaled to `net.spec.decode_max_side`
while decoding) and transforms the images; the forward pass runs in `inference_mode`,
channels-last on CPU, fp16 autocast on CUDA, into a preallocated (N, D) float32 array.
Decoded images are never held beyond the batch being embedded.

Where decoding runs is chosen by measurement (bench/bench_embedding.py). With more than 2
cores, one DataLoader worker process per core (bounded memory: each worker holds at most
`PREFETCH_BATCHES` decoded batches, whatever the folder's size). On 2 cores, worker processes only add
inter-process copies for CPU the forward pass already uses, so the loader runs without
workers in a background *thread* that decodes the next batches while the forward pass
runs: Pillow's decoder and resizer and torch's kernels release the GIL, so the two
overlap without any inter-process traffic.

Small inputs (≤ 64 px, e.g. 28×28 PNGs for the small CNN) are a different workload: the
network runs thousands of images a second on one core, so (measured on 20,000
Fashion-MNIST PNGs, bench/bench_embed_small.py) the costs that matter are per image and
per thread, not the forward pass. The forward pass runs on one intra-op thread
(`threads.network_workload`: more threads only fight the decoding thread and each other),
and images are decoded to uint8 pixels that are normalised a whole batch at a time
(`SmallEvalPixels` + `PixelNormaliser`: the eval transform's values)."""

from __future__ import annotations

import os
import queue
import threading
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset, collate_skip_bad, load_image
from ..data.dataset import Batch
from ..data.scan import ImageRecord
from ..device import select_device
from ..errors import RetrievalAppError, TrainingCancelled
from ..networks.transforms import PixelNormaliser, SmallEvalPixels, has_small_input
from ..threads import available_cores, network_workload, workload_threads

OUTPUTS = ("embeddings", "features")
ProgressFn = Callable[[int, int], None]
PREFETCH_BATCHES = 2  # batches decoded ahead of the forward pass


class EmbeddingCancelled(TrainingCancelled):
    """The caller set the `cancel` event while images were being embedded."""


@dataclass
class EmbeddingResult:
    """`embeddings` (N, D) float32 in record order; rows whose file could not be read are
    zero and `ok` is False there, with (path, reason) in `failures`. The counts say
    where the rows came from when a cache was used."""

    embeddings: np.ndarray
    ok: np.ndarray
    failures: list[tuple[str, str]] = field(default_factory=list)
    n_cached: int = 0
    n_computed: int = 0
    n_removed: int = 0

    @property
    def n_ok(self) -> int:
        return int(self.ok.sum())


class EmbeddedBatch(NamedTuple):
    """One batch of results: `rows` (positions in the records), their `vectors`, and
    `failures` as (row, path, reason)."""

    rows: np.ndarray
    vectors: np.ndarray
    failures: list[tuple[int, str, str]]


def default_workers(device: torch.device | None = None) -> int:
    """Decoding worker processes: none on ≤ 2 cores (a decoding thread is faster there,
    see the module docstring), else one per core. Decoding (JPEG, resizing) is what
    holds a large-photo pipeline back, and workers that get ahead only wait: each holds at
    most `PREFETCH_BATCHES` decoded batches, so on a CPU-only machine they yield the cores
    to the forward pass once it is the slower side."""
    cores = available_cores()
    return 0 if cores <= 2 else cores


def output_dim(net, output: str) -> int | None:
    """Length of the vectors `output` gives, when the network says (None: ask a batch)."""
    spec = getattr(net, "spec", None)
    if output == "features":
        return getattr(spec, "feature_dim", None)
    return getattr(net, "embedding_dim", None)


def _check_output(output: str) -> None:
    if output not in OUTPUTS:
        raise RetrievalAppError(f"output must be one of {', '.join(OUTPUTS)}, not {output!r}")


def _forward_fn(net, output: str) -> Callable[[torch.Tensor], torch.Tensor]:
    if output == "features":
        if not hasattr(net, "features"):
            raise RetrievalAppError(f"{type(net).__name__} has no backbone features to extract")
        return net.features
    return net


def _decode_max_side(net) -> int | None:
    return getattr(getattr(net, "spec", None), "decode_max_side", None)


def _resolve_device(device) -> torch.device:
    """None → the best available; a name goes through `select_device` (clear errors)."""
    if device is None or isinstance(device, str):
        return select_device(device or "auto")
    return torch.device(device)


@contextmanager
def _eval_mode(net, device: torch.device):
    """Eval mode on `device` for the duration; the caller's train/eval mode is restored."""
    was_training = net.training
    net.eval().to(device)
    try:
        yield
    finally:
        net.train(was_training)


def run_forward(forward: Callable, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """One batch through the network → float32 numpy (B, D)."""
    images = images.to(device, non_blocking=True)
    if device.type == "cuda":
        with torch.autocast("cuda", dtype=torch.float16):
            return forward(images).float().cpu().numpy()
    if device.type == "cpu" and images.dim() == 4:
        images = images.contiguous(memory_format=torch.channels_last)  # oneDNN's fast layout
    return forward(images).float().cpu().numpy()


def iter_embedded_batches(
    net,
    records: Sequence[ImageRecord],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    device=None,
    cancel: threading.Event | None = None,
    output: str = "embeddings",
) -> Iterator[EmbeddedBatch]:
    """Embed `records` batch by batch (the building block of `embed_records` and of the
    cache, which saves each batch as it comes). Raises `EmbeddingCancelled` at the next
    batch boundary once `cancel` is set. Close the iterator (or exhaust it) to restore
    the network's mode."""
    _check_output(output)
    if batch_size < 1:
        raise RetrievalAppError(f"batch size must be at least 1, not {batch_size}")
    device = _resolve_device(device)
    workers = default_workers(device) if num_workers is None else num_workers
    transform, collate = batch_pipeline(net)
    dataset = ImageDataset(records, transform, max_side=_decode_max_side(net))
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate,
        pin_memory=device.type == "cuda", prefetch_factor=PREFETCH_BATCHES if workers else None,
    )
    forward = _forward_fn(net, output)
    batches = iter(loader) if workers else _prefetch_in_thread(loader, PREFETCH_BATCHES)
    try:
        with _eval_mode(net, device), torch.inference_mode(), workload_threads(embedding_workload(net)):
            for batch in batches:
                _raise_if_cancelled(cancel)
                failures = [(int(i), path, reason) for i, path, reason in batch.failures]
                if len(batch.indices):
                    yield EmbeddedBatch(batch.indices.numpy(), run_forward(forward, batch.images, device), failures)
                else:
                    yield EmbeddedBatch(np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32), failures)
    finally:
        # The decoding thread stops when its generator closes; a worker-process iterator
        # shuts its workers down when it is released.
        if hasattr(batches, "close"):
            batches.close()
        del batches


def embedding_workload(net) -> str:
    """The `threads` workload of `net`'s forward pass: by its input size."""
    spec = getattr(net, "spec", None)
    return network_workload(spec.input_size) if spec is not None else "network"


def batch_pipeline(net) -> tuple[Callable, Callable]:
    """(per-image transform, collate function) for embedding with `net`: its eval transform
    and `collate_skip_bad`; for a small-input network, uint8 pixels per image and one
    normalisation per batch (the same values, see `SmallEvalPixels`)."""
    spec = getattr(net, "spec", None)
    if spec is None or not has_small_input(spec):
        return net.eval_transform(), collate_skip_bad
    return SmallEvalPixels(spec), NormalisingCollate(PixelNormaliser(spec))


class NormalisingCollate:
    """`collate_skip_bad`, then the batch's uint8 pixels normalised (runs where the batch
    is decoded: the decoding thread or a worker process)."""

    def __init__(self, normalise: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.normalise = normalise

    def __call__(self, items) -> Batch:
        batch = collate_skip_bad(items)
        return batch._replace(images=self.normalise(batch.images)) if len(batch.indices) else batch


def _raise_if_cancelled(cancel: threading.Event | None) -> None:
    if cancel is not None and cancel.is_set():
        raise EmbeddingCancelled("embedding was cancelled")


def _prefetch_in_thread(iterable: Iterable, depth: int) -> Iterator:
    """Iterate `iterable` in a daemon thread, `depth` items ahead of the consumer.
    Exceptions in the thread are re-raised in the consumer; closing the returned
    generator stops the thread at its next item."""
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        # No thread count is set here: `torch.set_num_threads` is partly process-wide (it
        # also clears oneDNN's primitive cache), and one call in this thread slowed the
        # forward pass in the other by a third (EfficientNet-Lite0, measured).
        try:
            for item in iterable:
                if not _put(items, (item, None), stop):
                    return
        except BaseException as exc:  # handed to the consumer, which re-raises it
            _put(items, (None, exc), stop)
            return
        _put(items, (done, None), stop)

    def consume() -> Iterator:
        # Started on the first `next`, so a generator that is never run leaves no thread.
        thread = threading.Thread(target=produce, name="embedding-decoder", daemon=True)
        thread.start()
        try:
            while True:
                item, error = items.get()
                if error is not None:
                    raise error
                if item is done:
                    return
                yield item
        finally:
            stop.set()
            _drain(items)
            thread.join(timeout=10)

    return consume()


def _put(items: queue.Queue, item, stop: threading.Event) -> bool:
    """Put `item`, waiting for room unless the consumer has gone (then False)."""
    while not stop.is_set():
        try:
            items.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def _drain(items: queue.Queue) -> None:
    while True:
        try:
            items.get_nowait()
        except queue.Empty:
            return


def embed_records(
    net,
    records: Sequence[ImageRecord],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    device=None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    output: str = "embeddings",
) -> EmbeddingResult:
    """Embed every record: `output="embeddings"` (the network's output) or `"features"`
    (the backbone's pooled features, what quick-mode training caches).

    `net` is any module callable on an image batch with an `eval_transform()` (an
    `EmbeddingNet`); it is moved to `device` (default: the best available) and left in
    the train/eval mode it came in. Unreadable files are reported in `failures`, never
    raised. `progress(done, total)` is called after each batch; setting `cancel` stops at
    the next batch with `EmbeddingCancelled`."""
    _check_output(output)
    records = list(records)
    result = EmbeddingResult(_empty_rows(len(records), output_dim(net, output)), np.zeros(len(records), dtype=bool), n_computed=len(records))
    if not records:
        return result
    done = 0
    batches = iter_embedded_batches(net, records, batch_size=batch_size, num_workers=num_workers, device=device, cancel=cancel, output=output)
    with closing(batches):
        for batch in batches:
            store_batch(result, batch, records)
            done += len(batch.rows) + len(batch.failures)
            if progress is not None:
                progress(done, len(records))
    return result


def _empty_rows(n: int, dim: int | None) -> np.ndarray:
    return np.zeros((n, dim if dim is not None else 0), dtype=np.float32)


def store_batch(result: EmbeddingResult, batch: EmbeddedBatch, records: Sequence[ImageRecord], row_of: np.ndarray | None = None) -> None:
    """Copy a batch into `result` (rows mapped through `row_of` when the batch was
    computed over a subset); the array is allocated on the first batch when the
    network did not say its output size."""
    rows = batch.rows if row_of is None else row_of[batch.rows]
    if len(rows):
        if result.embeddings.shape[1] == 0:
            result.embeddings = np.zeros((len(result.ok), batch.vectors.shape[1]), dtype=np.float32)
        elif result.embeddings.shape[1] != batch.vectors.shape[1]:
            raise RetrievalAppError(f"the network gave {batch.vectors.shape[1]}-d vectors where {result.embeddings.shape[1]}-d ones were expected")
        result.embeddings[rows] = batch.vectors
        result.ok[rows] = True
    for row, path, reason in batch.failures:
        record = records[row if row_of is None else row_of[row]]
        result.failures.append((str(record.path) if path is None else path, reason))


def embed_images(net, images, *, device=None, output: str = "embeddings", batch_size: int = 32) -> np.ndarray:
    """Embed query images (paths, bytes, binary file objects or PIL images; one or a
    list) → (M, D) float32. Decoded in this thread: queries are few. An unreadable
    image raises `ImageDecodeError` naming it."""
    _check_output(output)
    if isinstance(images, (str, bytes, bytearray, os.PathLike)) or hasattr(images, "read") or hasattr(images, "getpixel"):
        images = [images]
    images = list(images)
    device = _resolve_device(device)
    transform, max_side, forward = net.eval_transform(), _decode_max_side(net), _forward_fn(net, output)
    chunks = []
    with _eval_mode(net, device), torch.inference_mode(), workload_threads(embedding_workload(net)):
        for start in range(0, len(images), batch_size):
            tensors = [transform(load_image(image, max_side=max_side)) for image in images[start:start + batch_size]]
            chunks.append(run_forward(forward, torch.stack(tensors), device))
    return np.concatenate(chunks) if chunks else _empty_rows(0, output_dim(net, output))


def embeddings_from_features(net, features: np.ndarray, *, batch_size: int = 4096, device=None) -> np.ndarray:
    """Backbone features (N, feature_dim) → the network's embeddings (N, D) float32: its
    head and normalisation only (`net.embed_features`), no image is decoded. For a head
    on a frozen backbone this equals embedding the images (`forward` = `embed_features`
    of `features`), at the cost of a matrix product."""
    features = np.asarray(features, dtype=np.float32)
    if not hasattr(net, "embed_features"):
        raise RetrievalAppError(f"{type(net).__name__} cannot embed backbone features")
    device = _resolve_device(device)
    chunks = []
    with _eval_mode(net, device), torch.inference_mode():
        for start in range(0, len(features), batch_size):
            chunk = torch.from_numpy(features[start:start + batch_size]).to(device)
            chunks.append(net.embed_features(chunk).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else _empty_rows(0, output_dim(net, "embeddings"))
