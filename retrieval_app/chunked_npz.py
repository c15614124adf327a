"""An `.npz` written column by column from row chunks, so a big table (an embedding
store of 100,000 rows) is never gathered in memory as a whole, nor as Python lists.

The file is exactly what `np.savez` writes (a ZIP of stored, uncompressed `.npy`
members, ZIP64 forced) and `np.load` reads it the same way: readers need no change.
Each column declares its dtype and full shape before its rows arrive, because a `.npy`
header precedes the data; rows that do not add up to the declared shape abort the
write. Written through `atomic.atomic_write_stream`: an aborted or killed write leaves
the previous file."""

from __future__ import annotations

import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterable, Mapping

import numpy as np

from .atomic import atomic_write_stream


@dataclass(frozen=True)
class Column:
    """A column of `shape` (rows first) and `dtype` whose rows `chunks()` yields in order.
    A callable, not an iterator: it is called when the member is written, so a column's
    chunks exist only while that member is being written."""

    dtype: np.dtype
    shape: tuple[int, ...]
    chunks: Callable[[], Iterable[np.ndarray]]


def atomic_save_columns(path: str | os.PathLike, columns: Mapping[str, Column | np.ndarray]) -> Path:
    """Write `columns` (a `Column`, or a small array written at once) as the `.npz` `path`
    atomically; raises (leaving the old file) when a column's chunks do not fit its shape."""
    return atomic_write_stream(path, lambda handle: write_columns(handle, columns))


def write_columns(handle: IO[bytes], columns: Mapping[str, Column | np.ndarray]) -> None:
    # np.savez's container: stored members, ZIP64 on each since sizes are not known up front.
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, column in columns.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                if isinstance(column, Column):
                    _write_column(member, name, column)
                else:
                    np.lib.format.write_array(member, np.asanyarray(column), allow_pickle=False)


def _write_column(member: IO[bytes], name: str, column: Column) -> None:
    dtype, shape = np.dtype(column.dtype), tuple(int(n) for n in column.shape)
    if dtype.hasobject:
        raise TypeError(f"column {name!r}: object arrays need pickles, which the cache never writes")
    header = np.lib.format.header_data_from_array_1_0(np.empty((0, *shape[1:]), dtype))
    header["shape"] = shape
    np.lib.format.write_array_header_1_0(member, header)
    rows = 0
    for chunk in column.chunks():
        chunk = np.ascontiguousarray(chunk, dtype=dtype)
        if chunk.shape[1:] != shape[1:] or rows + len(chunk) > shape[0]:
            raise ValueError(f"column {name!r}: a chunk of shape {chunk.shape} does not fit {shape} after {rows} rows")
        rows += len(chunk)
        # The chunk's own bytes (a flat uint8 view), not a `tobytes()` copy of them.
        member.write(chunk.reshape(-1).view(np.uint8).data)
    if rows != shape[0]:
        raise ValueError(f"column {name!r}: {rows} rows written, {shape[0]} declared")
