"""On-disk embedding cache: re-opening an unchanged folder reads vectors instead of
running the network; added or changed files are embedded alone; removed files drop out.

Layout (never inside the image folder):

    <cache_dir>/embeddings/<model key>/<folder key>/store.npz
    <cache_dir>/embeddings/<model key>/<folder key>/part-<time ns>-<pid>.npz   (pending)

- `<cache_dir>` is `paths.cache_dir()` unless given (env `RETRIEVAL_APP_CACHE_DIR`).
- model key = `<backbone name>-<model_fingerprint>-<output>-<transform hash>`: the
  fingerprint hashes the architecture and every weight (only the backbone's for
  `output="features"`, so a feature cache survives any change of the head); the
  transform hash covers the eval transform's description and the JPEG decode size, so
  anything that changes the pixels the network sees changes the key.
- folder key = first 16 hex digits of SHA-256 of the folder's absolute path (image ids
  are relative to it).
- Each `.npz` (plain NumPy, no pickles) holds `ids` (str, the image id = POSIX path
  relative to the folder), `sizes` (int64 bytes), `mtimes` (int64 ns) and `vectors`
  (float32, N × D), plus `format` (int, 1). A file's vector is reused only when its id,
  size and mtime all match.
- While a run computes, every `FLUSH_ROWS` new vectors, and whatever was computed when
  `FLUSH_SECONDS` have passed since the last write (and whatever is done when it is
  cancelled or fails), are written as a `part-*.npz`, so a killed or cancelled run
  keeps its work (a kill loses at most the last ~10 s); at the end everything is merged into `store.npz`, which then holds
  exactly the records asked for, and the parts are deleted. Readers merge the store and
  then the parts in name (time) order.
- Files are written column by column in row chunks (`chunked_npz`, `STORE_CHUNK_ROWS`
  rows at a time, straight from the records and the vectors) and ids are matched against
  the store with a sorted search of its id array: a run holds no Python object, list,
  set or dict per image beyond the scan's own records (their bookkeeping is a few int64
  and bool arrays of one entry per image).
- Every file is written atomically (temp file + fsync + rename): a killed process
  leaves the old file or the new one, never a torn one, plus a temp file that the next
  open of the same cache folder removes (`atomic.remove_stale_temp_files`: only when its
  writer process is gone or it is older than 10 minutes, since another process may be
  writing). A file that cannot be read anyway (foreign, truncated by other means) is
  skipped with a warning and rebuilt.
- Unreadable images are not cached (they are retried next time)."""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from ..atomic import remove_stale_temp_files
from ..chunked_npz import Column, atomic_save_columns
from ..data.scan import ImageRecord, ScanResult
from ..networks import model_fingerprint
from ..paths import cache_dir as default_cache_dir
from .embed import EmbeddingResult, ProgressFn, _check_output, _decode_max_side, iter_embedded_batches, output_dim, store_batch

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STORE_NAME = "store.npz"
PART_PREFIX = "part-"
FLUSH_ROWS = 1024  # new vectors per pending part file (≈ 25 s of CPU embedding)
FLUSH_SECONDS = 10.0  # ...or sooner: at most this much work is lost to a kill
STORE_CHUNK_ROWS = 8192  # rows converted at a time when writing a file or matching ids


# ----------------------------------------------------------------------------- keys
def model_cache_key(net, output: str) -> str:
    """What the cached vectors depend on besides the files: weights, output, transform."""
    _check_output(output)
    spec = getattr(net, "spec", None)
    name = getattr(spec, "name", type(net).__name__)
    part = "backbone" if output == "features" and hasattr(net, "backbone") else "all"
    fingerprint = model_fingerprint(net, part=part)
    pixels = f"{net.eval_transform()!r}|max_side={_decode_max_side(net)}|format={CACHE_FORMAT}"
    transform = hashlib.sha256(pixels.encode()).hexdigest()[:8]
    return f"{name}-{fingerprint}-{output}-{transform}"


def folder_key(root: str | os.PathLike) -> str:
    # fsencode: a path that is not valid UTF-8 hashes by its bytes (plain `.encode()` fails).
    return hashlib.sha256(os.fsencode(Path(root).resolve())).hexdigest()[:16]


def store_dir(net, root: str | os.PathLike, output: str = "embeddings", cache_dir: str | os.PathLike | None = None) -> Path:
    """The folder holding the cache of `root`'s images under `net` and `output`."""
    base = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return base / "embeddings" / model_cache_key(net, output) / folder_key(root)


def store_path(net, root: str | os.PathLike, output: str = "embeddings", cache_dir: str | os.PathLike | None = None) -> Path:
    """The consolidated store file (see the module docstring)."""
    return store_dir(net, root, output, cache_dir) / STORE_NAME


def root_of(records: Sequence[ImageRecord]) -> Path:
    """The scanned folder: each record's path is root / id."""
    first = records[0]
    depth = len(Path(first.id).parts)
    return Path(first.path).parents[depth - 1]


# ----------------------------------------------------------------------------- reading
@dataclass
class StoredVectors:
    """Cached rows merged from the store and its parts: `position[id]` indexes the arrays."""

    ids: np.ndarray
    sizes: np.ndarray
    mtimes: np.ndarray
    vectors: np.ndarray
    files: list[Path]  # every file read or found unreadable (deleted after a merge)
    damaged: bool = False

    @property
    def dim(self) -> int | None:
        return self.vectors.shape[1] if len(self.vectors) else None

    def positions(self) -> dict[str, int]:
        # Later rows (newer parts) win: dict assignment keeps the last position of an id.
        return {key: i for i, key in enumerate(self.ids.tolist())}


def _read_file(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    with np.load(path, allow_pickle=False) as data:
        ids, sizes, mtimes, vectors = (data[key] for key in ("ids", "sizes", "mtimes", "vectors"))
    if not (len(ids) == len(sizes) == len(mtimes) == len(vectors)) or vectors.ndim != 2:
        raise ValueError("arrays of inconsistent shapes")
    # copy=False: a store already in these types (every one this module writes) is not copied again.
    return ids.astype(str, copy=False), sizes.astype(np.int64, copy=False), mtimes.astype(np.int64, copy=False), vectors.astype(np.float32, copy=False)


def read_store(folder: Path) -> StoredVectors:
    """Everything cached in `folder`; unreadable files are skipped with a warning."""
    names = [STORE_NAME] + sorted(p.name for p in folder.glob(f"{PART_PREFIX}*.npz")) if folder.is_dir() else []
    arrays, files, damaged, dim = [], [], False, None
    for name in names:
        path = folder / name
        if not path.is_file():
            continue
        files.append(path)
        try:
            ids, sizes, mtimes, vectors = _read_file(path)
            if len(vectors) and dim is not None and vectors.shape[1] != dim:
                raise ValueError(f"{vectors.shape[1]}-d vectors among {dim}-d ones")
        except Exception as exc:  # torn, truncated or foreign: rebuild rather than fail
            log.warning("ignoring unreadable embedding cache file %s (%s); it will be rebuilt", path, exc)
            damaged = True
            continue
        if len(vectors):
            dim = vectors.shape[1]
            arrays.append((ids, sizes, mtimes, vectors))
    if not arrays:
        return StoredVectors(np.zeros(0, dtype=str), np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 0), np.float32), files, damaged)
    # One file (the usual re-open): its arrays as they are, no concatenated copy.
    ids, sizes, mtimes, vectors = arrays[0] if len(arrays) == 1 else (np.concatenate(column) for column in zip(*arrays))
    return StoredVectors(ids, sizes, mtimes, vectors, files, damaged)


# ----------------------------------------------------------------------------- writing
def _chunks(n: int) -> Iterator[slice]:
    return (slice(start, min(start + STORE_CHUNK_ROWS, n)) for start in range(0, n, STORE_CHUNK_ROWS))


def _store_columns(records: Sequence[ImageRecord], rows: np.ndarray, vectors: np.ndarray, positions: np.ndarray | None = None) -> dict:
    """The file's columns for `records[rows]`, whose vectors are `vectors[positions]`
    (`vectors` itself, in order, when None), each made a chunk at a time when written."""
    n, dim = len(rows), vectors.shape[1]
    # A `.npy` header holds the string width before any row: one pass for the longest id.
    width = max((len(records[i].id) for i in rows), default=1) or 1

    def ids():
        return (np.asarray([records[i].id for i in rows[part]], dtype=f"<U{width}") for part in _chunks(n))

    def ints(field: str):
        return lambda: (np.fromiter((getattr(records[i], field) for i in rows[part]), np.int64, count=len(rows[part])) for part in _chunks(n))

    def vector_chunks():
        return (vectors[part] if positions is None else vectors[positions[part]] for part in _chunks(n))

    return {
        "ids": Column(np.dtype(f"<U{width}"), (n,), ids),
        "sizes": Column(np.dtype(np.int64), (n,), ints("size")),
        "mtimes": Column(np.dtype(np.int64), (n,), ints("mtime_ns")),
        "vectors": Column(np.dtype(np.float32), (n, dim), vector_chunks),
        "format": np.int64(CACHE_FORMAT),
    }


class _PendingWriter:
    """Collects freshly computed rows and writes them as a part file once `flush_rows`
    are pending or `flush_seconds` have passed since the last write (or the start)."""

    def __init__(self, folder: Path, records: Sequence[ImageRecord], flush_rows: int, flush_seconds: float = FLUSH_SECONDS, clock=time.monotonic) -> None:
        self.folder, self.records, self.flush_rows = folder, records, flush_rows
        self.flush_seconds, self.clock = flush_seconds, clock
        self.last_write = clock()
        self.rows: list[np.ndarray] = []
        self.vectors: list[np.ndarray] = []
        self.written: list[Path] = []

    def add(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if len(rows):
            self.rows.append(rows)
            self.vectors.append(vectors)
        overdue = self.clock() - self.last_write >= self.flush_seconds
        if sum(len(r) for r in self.rows) >= self.flush_rows or overdue:
            self.flush()

    def flush(self) -> None:
        if not self.rows:
            return
        self.last_write = self.clock()
        rows, vectors = np.concatenate(self.rows), np.concatenate(self.vectors)
        self.rows, self.vectors = [], []
        path = self.folder / f"{PART_PREFIX}{time.time_ns():020d}-{os.getpid()}.npz"
        try:
            atomic_save_columns(path, _store_columns(self.records, rows, vectors))
            self.written.append(path)
        except OSError as exc:  # a full or read-only cache costs speed, never the result
            log.warning("could not write embedding cache file %s: %s", path, exc)


def _merge(folder: Path, records: Sequence[ImageRecord], result: EmbeddingResult, superseded: Sequence[Path]) -> None:
    """Write the store for exactly `records` (those embedded), then delete the files it replaces."""
    good = np.flatnonzero(result.ok)
    # All rows good (the usual case): the array's rows in order, no gather at all.
    positions = None if len(good) == len(records) else good
    try:
        atomic_save_columns(folder / STORE_NAME, _store_columns(records, good, result.embeddings, positions))
    except OSError as exc:
        log.warning("could not write embedding cache %s: %s", folder / STORE_NAME, exc)
        return
    for path in superseded:
        if path.name != STORE_NAME:
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the cache
def cached_embeddings(
    net,
    scan_or_records: ScanResult | Sequence[ImageRecord],
    *,
    cache_dir: str | os.PathLike | None = None,
    output: str = "embeddings",
    batch_size: int = 32,
    num_workers: int | None = None,
    device=None,
    progress: ProgressFn | None = None,
    cancel: threading.Event | None = None,
    flush_rows: int = FLUSH_ROWS,
    flush_seconds: float = FLUSH_SECONDS,
    merge: bool = True,
) -> EmbeddingResult:
    """Embeddings of every record (in order), read from the cache where the file is
    unchanged and computed (then cached) where it is new or changed.

    The result's `n_cached`, `n_computed` and `n_removed` (cached files no longer among
    the records) say what happened. Afterwards the store mirrors exactly these records,
    so pass a whole folder. Work done before a cancel or crash stays cached.

    `merge=False` leaves the store alone and only adds part files: for one shard of a
    folder embedded by one of several processes (`sharded.py`), whose parts the next
    whole-folder call merges."""
    _check_output(output)
    records = scan_or_records.records if isinstance(scan_or_records, ScanResult) else scan_or_records
    if not isinstance(records, (list, tuple)):  # indexable, and no second list of a scan's records
        records = list(records)
    if not records:
        return EmbeddingResult(np.zeros((0, output_dim(net, output) or 0), np.float32), np.zeros(0, bool))
    folder = store_dir(net, root_of(records), output, cache_dir)
    remove_stale_temp_files(folder)
    stored = read_store(folder)
    hits, sources, misses, n_removed = _match(records, stored)
    if _store_is_the_result(hits, sources, len(records), stored):
        # The usual re-open (nothing changed): the store's rows are the records' in order,
        # so its array is the result; a copy would hold the vectors twice at the peak.
        result = EmbeddingResult(stored.vectors, np.ones(len(records), dtype=bool), n_cached=len(hits))
    else:
        result = EmbeddingResult(
            np.zeros((len(records), stored.dim or output_dim(net, output) or 0), dtype=np.float32), np.zeros(len(records), dtype=bool),
            n_cached=len(hits), n_computed=len(misses),
        )
    if len(hits) and not result.ok.all():
        if result.embeddings.shape[1] != stored.dim:
            result.embeddings = np.zeros((len(records), stored.dim), dtype=np.float32)
        copy_rows(result.embeddings, hits, stored.vectors, sources)
        result.ok[hits] = True
    result.n_removed = n_removed
    if progress is not None:
        progress(len(hits), len(records))
    writer = _PendingWriter(folder, records, flush_rows, flush_seconds)
    if len(misses):
        _compute_misses(net, records, misses, result, writer, batch_size=batch_size, num_workers=num_workers, device=device, progress=progress, cancel=cancel, output=output, n_hits=len(hits))
    merged_already = [p.name for p in stored.files] == [STORE_NAME]
    if merge and (len(misses) or result.n_removed or stored.damaged or (stored.files and not merged_already)):
        _merge(folder, records, result, [*stored.files, *writer.written])
    return result


def _store_is_the_result(hits: np.ndarray, sources: np.ndarray, n_records: int, stored: StoredVectors) -> bool:
    """Every record is served, by the stored row of the same position."""
    return len(hits) == n_records == len(stored.vectors) and bool((sources == np.arange(n_records)).all())


COPY_ROWS = 8192  # rows gathered at a time: no temporary the size of the whole store


def copy_rows(out: np.ndarray, rows: np.ndarray, source: np.ndarray, positions: np.ndarray) -> None:
    """`out[rows] = source[positions]` in bounded chunks."""
    for start in range(0, len(rows), COPY_ROWS):
        out[rows[start:start + COPY_ROWS]] = source[positions[start:start + COPY_ROWS]]


def _match(records: Sequence[ImageRecord], stored: StoredVectors) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """(rows served from the cache, their positions in `stored`, rows to compute, number
    of cached ids that are not among the records).

    Ids are looked up by binary search in the store's id array (sorted through an index,
    not copied), a chunk of records at a time: no dict or set of every id. Where an id
    occurs more than once (a part newer than the store), the last row, the newest, wins."""
    if not len(stored.ids):  # nothing cached (a first run)
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.arange(len(records), dtype=np.int64), 0
    order = np.argsort(stored.ids, kind="stable")  # equal ids keep file order: newest last
    hits, sources, misses, n_present = [], [], [], 0
    for part in _chunks(len(records)):
        chunk = records[part]
        rows = np.arange(part.start, part.stop, dtype=np.int64)
        position, present = _find(stored.ids, order, [r.id for r in chunk])
        sizes = np.fromiter((r.size for r in chunk), np.int64, count=len(chunk))
        mtimes = np.fromiter((r.mtime_ns for r in chunk), np.int64, count=len(chunk))
        unchanged = present & (stored.sizes[position] == sizes) & (stored.mtimes[position] == mtimes)
        hits.append(rows[unchanged])
        sources.append(position[unchanged])
        misses.append(rows[~unchanged])
        n_present += int(present.sum())
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0, np.int64)  # noqa: E731
    return join(hits), join(sources), join(misses), _distinct(stored.ids, order) - n_present


def _find(ids: np.ndarray, order: np.ndarray, wanted: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """For each wanted id: its last row in `ids` (some valid row where absent) and whether present."""
    # An id longer than the stored width cannot be stored; cast to that width, it would be cut.
    width = ids.dtype.itemsize // 4
    fits = np.fromiter((len(w) <= width for w in wanted), bool, count=len(wanted))
    keys = np.asarray([w if ok else "" for w, ok in zip(wanted, fits)], dtype=ids.dtype)
    after = np.searchsorted(ids, keys, side="right", sorter=order)
    position = order[np.maximum(after - 1, 0)]
    return position, fits & (after > 0) & (ids[position] == keys)


def _distinct(ids: np.ndarray, order: np.ndarray) -> int:
    """Number of different ids, counted along the sorted order a chunk at a time."""
    changes = 0
    for part in _chunks(max(len(order) - 1, 0)):
        run = ids[order[part.start:part.stop + 1]]
        changes += int((run[1:] != run[:-1]).sum())
    return changes + (1 if len(order) else 0)


def _compute_misses(net, records, misses: np.ndarray, result: EmbeddingResult, writer: _PendingWriter, *, n_hits: int, progress, **options) -> None:
    """Embed the missing rows into `result`, handing each batch to `writer`; whatever was
    computed is flushed to disk even when the run is cancelled or fails."""
    subset = [records[i] for i in misses]
    done = n_hits
    batches = iter_embedded_batches(net, subset, **options)
    try:
        with closing(batches):
            for batch in batches:
                store_batch(result, batch, records, row_of=misses)
                writer.add(misses[batch.rows], batch.vectors)
                done += len(batch.rows) + len(batch.failures)
                if progress is not None:
                    progress(done, len(records))
    finally:
        writer.flush()
