"""Where full-mode training batches come from (decoded, augmented images unless
`TrainConfig.resolved_augment()` says otherwise), and the one
cached pass of the backbone over a folder that both modes start from."""

from __future__ import annotations

import contextlib
import threading
from typing import Callable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from ..data import ImageDataset, collate_skip_bad
from ..data.sampler import PKSampler
from ..data.triplets import sample_random_triplets
from ..distributed import Distributed
from ..errors import RetrievalAppError, TrainingCancelled
from ..metrics import retrieval_metrics
from .config import FROM_SCRATCH_BACKBONES, TrainConfig

VALIDATION_SETS = ("val_seen", "val_unseen")


# A pass over images (backbone features, validation) → its `(done, total)` progress callback.
PassProgressFactory = Callable[[str], Callable[[int, int], None]]
# Validation images per forward pass on a CPU: a cancel waits for at most one batch.
CPU_VALIDATION_BATCH = 16


def _no_progress(_label: str) -> None:
    return None


class _Source:
    def __init__(self, *, config: TrainConfig, net, split, device: torch.device, cancel: threading.Event, on_phase: Callable[[str], None],
                 on_pass: PassProgressFactory = _no_progress, distributed: Distributed | None = None) -> None:
        self.config = config
        self.dist = distributed or Distributed()
        self.net = net
        self.split = split
        self.device = device
        self.cancel = cancel
        self.on_phase = on_phase
        self.on_pass = on_pass  # progress of each pass over images, batch by batch
        # Augmentation and random triplets: each rank its own stream (rank 0's is the single process's).
        self.generator = torch.Generator().manual_seed(config.seed + 1_000_003 * self.dist.rank)
        self.train_labels = torch.as_tensor([r.label for r in split.train], dtype=torch.long)
        self._features: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None

    # Pretrained features of every split, computed once through the embedding cache.
    def pretrained_features(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        if self._features is None:
            self._features = self._extract_features()
        return self._features

    def _extract_features(self) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """One cached pass over the whole folder (so the cache mirrors the folder),
        then sliced into the splits; unreadable files drop out here."""
        parts = {name: getattr(self.split, name) for name in ("train", *VALIDATION_SETS)}
        records, features = extract_features(self.net, [r for part in parts.values() for r in part], device=self.device, cancel=self.cancel,
                                             num_workers=self.config.num_workers, on_phase=self.on_phase, progress=self.on_pass("backbone features"))
        row_of = {r.id: i for i, r in enumerate(records)}
        out = {}
        for name, part in parts.items():
            rows = torch.as_tensor([row_of[r.id] for r in part if r.id in row_of], dtype=torch.long)
            labels = torch.as_tensor([r.label for r in part if r.id in row_of], dtype=torch.long)
            out[name] = (features[rows], labels)
        return out

    def train_features(self) -> torch.Tensor:
        return self.pretrained_features()["train"][0]

    def backbone_metrics(self, distance: str) -> dict:
        """Retrieval of the bare pretrained features on the validation sets."""
        if self.config.backbone in FROM_SCRATCH_BACKBONES:
            return {}
        out: dict = {}
        for set_name in VALIDATION_SETS:
            features, labels = self.pretrained_features()[set_name]
            if len(labels) >= 2:
                normalised = torch.nn.functional.normalize(features, dim=1).numpy()
                metrics = retrieval_metrics(normalised, labels.numpy(), distance=distance)
                if metrics.get("n_queries", 0):
                    out[set_name] = metrics
        for key in ("precision_at_1", "map_at_r"):
            values = [out[s][key] for s in VALIDATION_SETS if s in out]
            out[key] = float(np.mean(values)) if values else None
        return out

    def _pk_sampler(self, labels: torch.Tensor, batches_per_epoch: int | None = None) -> PKSampler:
        k = self.config.samples_per_class
        p = max(2, self.config.batch_size // k)
        return PKSampler(labels.tolist(), p, k, seed=self.config.seed, batches_per_epoch=batches_per_epoch, rank=self.dist.rank, world_size=self.dist.world_size)

    def _random_triplet_batches(self, labels: torch.Tensor, n_batches: int) -> Iterator[list[int]]:
        per_batch = max(1, self.config.batch_size // 3)
        for _ in range(n_batches):
            triplets = sample_random_triplets(labels, per_batch, self.generator)
            # [anchors | positives | negatives], split again by the trainer.
            yield triplets.t().reshape(-1).tolist()

    def grad_scaler(self):
        return torch.amp.GradScaler("cuda", enabled=self._use_amp())

    def autocast(self):
        if self._use_amp():
            return torch.autocast(device_type="cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _use_amp(self) -> bool:
        return self.config.amp and self.device.type == "cuda"


class FullSource(_Source):
    """End to end: decoded, augmented images through the whole network."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        transform = self.net.train_transform() if self.config.resolved_augment() else self.net.eval_transform()
        self.train_set = ImageDataset(self.split.train, transform, max_side=self.net.spec.decode_max_side)
        self.reported_failures: set[str] = set()
        self.decoded = self._decode_small_images()

    def pretrained_features(self):
        if self.config.backbone in FROM_SCRATCH_BACKBONES:
            raise RetrievalAppError(f"{self.config.backbone} has no pretrained features")
        return super().pretrained_features()

    def steps_per_epoch(self) -> int:
        return len(self._pk_sampler(self.train_labels))

    def _decode_small_images(self):
        """Small inputs (e.g. 28×28): every image decoded once into memory (see
        `decoded.py`); None for photo-sized inputs, which stream from disk."""
        from .decoded import DecodedImages, fits_in_memory

        records = [*self.split.train, *self.split.val_seen, *self.split.val_unseen]
        if not fits_in_memory(self.net.spec, len(records)):
            return None
        self.on_phase(f"decoding {len(records)} small images into memory")
        decoded = DecodedImages(records, self.net.spec, cancel=self.cancel)
        for path, reason in decoded.failures:
            self._report_failures([(None, path, reason)])
        self.decoded_rows = {record.id: row for row, record in enumerate(records)}
        return decoded

    def _decoded_batches(self, batch_sampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for indices in batch_sampler:
            rows = torch.as_tensor([self.decoded_rows[self.split.train[i].id] for i in indices])
            good = torch.from_numpy(self.decoded.ok[rows.numpy()])
            if self.config.mining == "random" and not bool(good.all()):
                continue  # a triplet with an unreadable image cannot be formed
            rows, labels = rows[good], self.train_labels[torch.as_tensor(indices)][good]
            if len(labels) < 2:  # several ranks: one rank out of batches ends the epoch for all (trainer)
                continue
            images = self.decoded.batch(rows, augment=self.config.resolved_augment(), generator=self.generator).to(self.device)
            yield images, labels.to(self.device)

    def batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        steps = self.steps_per_epoch()
        if self.config.mining == "random":
            batch_sampler = list(self._random_triplet_batches(self.train_labels, steps))
        else:
            batch_sampler = self._pk_sampler(self.train_labels)
            _set_epoch(batch_sampler, epoch)
        if self.decoded is not None:
            yield from self._decoded_batches(batch_sampler)
            return
        loader = DataLoader(
            self.train_set, batch_sampler=batch_sampler, collate_fn=collate_skip_bad,
            num_workers=_workers(self.config), pin_memory=self.device.type == "cuda",
            # several ranks: per-rank worker seeds (the ranks share the global RNG's state)
            generator=torch.Generator().manual_seed(self.config.seed * 1_000_003 + 7919 * self.dist.rank + epoch) if self.dist.enabled else None,
        )
        for batch in loader:
            self._report_failures(batch.failures)
            if self.config.mining == "random" and batch.failures:
                continue  # a triplet with an unreadable image cannot be formed
            if len(batch.labels) < 2:
                continue
            images = batch.images.to(self.device, non_blocking=True)
            if self.device.type == "cpu":
                images = images.contiguous(memory_format=torch.channels_last)
            yield images, batch.labels.to(self.device)

    def _report_failures(self, failures) -> None:
        for _index, path, reason in failures:
            if str(path) not in self.reported_failures:
                self.reported_failures.add(str(path))
                self.on_phase(f"skipped unreadable image {path}: {reason}")

    def embed(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs)

    def embed_now(self, records) -> np.ndarray:
        """`records` embedded by the network as it is now, in eval mode, and the network
        put back in the mode it was in (called between training steps, e.g. for a live
        map frame). Small inputs come from memory; unreadable images give zero rows."""
        from ..retrieval.embed import embed_records

        was_training = self.net.training
        self.net.eval()
        try:
            if self.decoded is not None:
                rows = torch.as_tensor([self.decoded_rows[r.id] for r in records], dtype=torch.long)
                with torch.inference_mode():
                    return torch.cat([self.net(self.decoded.batch(rows[i:i + 512], augment=False).to(self.device)).float().cpu()
                                      for i in range(0, len(rows), 512)]).numpy()
            result = embed_records(self.net, records, device=self.device, cancel=self.cancel, num_workers=0, batch_size=CPU_VALIDATION_BATCH if self.device.type == "cpu" else 64)
            return np.where(np.asarray(result.ok, dtype=bool)[:, None], result.embeddings, 0.0).astype(np.float32)
        finally:
            self.net.train(was_training)

    def validation_embeddings(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        from ..retrieval.embed import embed_records

        out = {}
        # One count over both sets, reported after every batch; a cancel stops at the next batch.
        total, done, report = sum(len(getattr(self.split, name)) for name in VALIDATION_SETS), 0, self.on_pass("validation images")
        if report is not None:
            report(0, total)
        for set_name in VALIDATION_SETS:
            records = getattr(self.split, set_name)
            if not records:
                out[set_name] = (np.empty((0, 1)), np.empty(0, dtype=np.int64))
                continue
            if self.decoded is not None:
                out[set_name] = self._decoded_embeddings(records)
                continue
            progress = None if report is None else (lambda d, _t, offset=done: report(offset + d, total))
            batch = CPU_VALIDATION_BATCH if self.device.type == "cpu" else 32
            result = embed_records(self.net, records, device=self.device, cancel=self.cancel, num_workers=self.config.num_workers, progress=progress, batch_size=batch)
            done += len(records)
            ok = np.asarray(result.ok, dtype=bool)
            labels = np.asarray([r.label for r in records], dtype=np.int64)[ok]
            out[set_name] = (result.embeddings[ok], labels)
        return out


    @torch.inference_mode()
    def _decoded_embeddings(self, records) -> tuple[np.ndarray, np.ndarray]:
        rows = torch.as_tensor([self.decoded_rows[r.id] for r in records])
        rows = rows[torch.from_numpy(self.decoded.ok[rows.numpy()])]
        labels = np.asarray([r.label for r in records], dtype=np.int64)[self.decoded.ok[[self.decoded_rows[r.id] for r in records]]]
        self.net.eval()
        chunks = []
        for start in range(0, len(rows), 512):
            if self.cancel.is_set():
                raise TrainingCancelled("training was cancelled")
            chunks.append(self.net(self.decoded.batch(rows[start:start + 512], augment=False).to(self.device)).float().cpu())
        return torch.cat(chunks).numpy(), labels


def extract_features(net, records, *, device, cancel, num_workers, on_phase, progress=None, distributed: Distributed | None = None) -> tuple[list, torch.Tensor]:
    """The backbone's pooled features of `records` through the on-disk embedding cache:
    (the readable records, their features as one float32 tensor). Unreadable files are
    reported through `on_phase` and left out; `progress(done, total)` follows every
    batch, and a set `cancel` stops the pass at the next batch. Under `torchrun` each rank
    computes a shard and every rank gets the whole (`retrieval.sharded`)."""
    from ..retrieval.sharded import sharded_cached_embeddings

    on_phase(f"extracting backbone features of {len(records)} images (cached after the first run)")
    result = sharded_cached_embeddings(net, records, distributed or Distributed(), output="features", device=device, cancel=cancel, num_workers=num_workers, progress=progress)
    for path, reason in result.failures:
        on_phase(f"skipped unreadable image {path}: {reason}")
    ok = np.asarray(result.ok, dtype=bool)
    kept = [record for record, good in zip(records, ok) if good]
    return kept, torch.from_numpy(np.ascontiguousarray(result.embeddings[ok])).float()


def _set_epoch(sampler, epoch: int) -> None:
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)


def _workers(config: TrainConfig) -> int:
    if config.num_workers is not None:
        return config.num_workers
    return min(2, torch.get_num_threads())
