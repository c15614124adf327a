"""On-disk embedding cache.

Layout: `<cache_dir>/embeddings/<model key>/<folder key>.npz`, where
- model key = `model_fingerprint` (only the backbone for `output="features"`, so a
  feature cache survives any change of the head) + output kind + the eval transform;
- folder key = hash of the folder's absolute path (ids are relative to it).
Each `.npz` holds `ids` (str), `sizes` (int64), `mtimes` (int64 ns) and `vectors`
(float32, N × D). A file is reused when its id, size and mtime all match; added or
changed files are embedded alone; removed files drop out when the store is rewritten.
Stores are replaced atomically (temp file + rename), and one that cannot be read is
ignored with a warning and rebuilt. Nothing is ever written into the image folder."""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import Sequence

import numpy as np

from ..atomic import atomic_numpy_save
from ..data.scan import ImageRecord, ScanResult
from ..networks import model_fingerprint
from ..paths import cache_dir as default_cache_dir
from .embed import EmbeddingResult, ProgressFn, embed_records

log = logging.getLogger(__name__)


def model_cache_key(net, output: str) -> str:
    part = "backbone" if output == "features" else "all"
    transform = repr(net.eval_transform())
    extra = hashlib.sha256(f"{output}|{transform}".encode()).hexdigest()[:8]
    return f"{net.spec.name}-{model_fingerprint(net, part=part)}-{output}-{extra}"


def store_path(net, root: Path, output: str, cache_dir: Path | None = None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    folder_key = hashlib.sha256(str(Path(root).resolve()).encode()).hexdigest()[:16]
    return base / "embeddings" / model_cache_key(net, output) / f"{folder_key}.npz"


def _root_of(records: Sequence[ImageRecord]) -> Path:
    first = records[0]
    depth = len(Path(first.id).parts)
    return Path(first.path).parents[depth - 1]


def _read_store(path: Path) -> dict[str, tuple[int, int, np.ndarray]]:
    if not path.is_file():
        return {}
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, sizes, mtimes, vectors = data["ids"], data["sizes"], data["mtimes"], data["vectors"]
            if not (len(ids) == len(sizes) == len(mtimes) == len(vectors)):
                raise ValueError("arrays of different lengths")
            return {str(i): (int(s), int(m), v) for i, s, m, v in zip(ids, sizes, mtimes, vectors)}
    except Exception as exc:  # torn, truncated or foreign file: rebuild rather than fail
        log.warning("ignoring unreadable embedding cache %s (%s); it will be rebuilt", path, exc)
        return {}


def cached_embeddings(net, scan_or_records: ScanResult | Sequence[ImageRecord], *, cache_dir: Path | None = None, output: str = "embeddings", batch_size: int = 32, num_workers: int | None = None, device=None, progress: ProgressFn | None = None, cancel: threading.Event | None = None) -> EmbeddingResult:
    """Embeddings of every record, from the cache where the file is unchanged.

    The store afterwards mirrors exactly the records asked for, so pass a whole folder."""
    records = list(scan_or_records.records if isinstance(scan_or_records, ScanResult) else scan_or_records)
    if not records:
        return embed_records(net, records, output=output)
    path = store_path(net, _root_of(records), output, cache_dir)
    stored = _read_store(path)
    hits, misses = [], []
    for row, record in enumerate(records):
        entry = stored.get(record.id)
        if entry is not None and entry[0] == record.size and entry[1] == record.mtime_ns:
            hits.append(row)
        else:
            misses.append(row)
    fresh = embed_records(net, [records[i] for i in misses], batch_size=batch_size, num_workers=num_workers, device=device, cancel=cancel, output=output,
                          progress=None if progress is None else (lambda done, _total: progress(len(hits) + done, len(records)))) if misses else None
    dim = fresh.embeddings.shape[1] if fresh is not None else len(next(iter(stored.values()))[2])
    result = EmbeddingResult(np.zeros((len(records), dim), dtype=np.float32), np.zeros(len(records), dtype=bool), n_cached=len(hits), n_computed=len(misses))
    for row in hits:
        result.embeddings[row] = stored[records[row].id][2]
        result.ok[row] = True
    if fresh is not None:
        result.embeddings[misses] = fresh.embeddings
        result.ok[misses] = fresh.ok
        result.failures = fresh.failures
    current = {r.id for r in records}
    result.n_removed = sum(1 for key in stored if key not in current)
    if misses or result.n_removed:
        _write_store(path, records, result)
    if progress is not None:
        progress(len(records), len(records))
    return result


def _write_store(path: Path, records: Sequence[ImageRecord], result: EmbeddingResult) -> None:
    good = np.flatnonzero(result.ok)  # failed files are not cached: retried next time
    atomic_numpy_save(
        path,
        ids=np.asarray([records[i].id for i in good], dtype=str),
        sizes=np.asarray([records[i].size for i in good], dtype=np.int64),
        mtimes=np.asarray([records[i].mtime_ns for i in good], dtype=np.int64),
        vectors=result.embeddings[good],
    )
