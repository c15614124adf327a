"""One folder embedded by several processes (`torchrun ... -m retrieval_app embed`, and
quick mode's backbone features under `torchrun ... train`).

Each rank embeds every world_size-th record (its shard) through the ordinary cache,
which writes what it computes as part files and leaves the store alone; once every
rank is done, rank 0 opens the whole folder, which reads the store and all the ranks'
parts and merges them into one store (atomically, as every cache write). Nothing new is
needed to combine shards: a cache folder already is "a store plus parts, newest wins".
With a single process this is `cached_embeddings`."""

from __future__ import annotations

from typing import Sequence

from ..data.scan import ImageRecord
from ..distributed import Distributed
from .cache import cached_embeddings
from .embed import EmbeddingResult


def sharded_cached_embeddings(net, records: Sequence[ImageRecord], distributed: Distributed, *, everyone: bool = True, progress=None, **options) -> EmbeddingResult | None:
    """Embeddings of every record, computed a shard per rank and merged into the cache
    by rank 0 (unreadable images, never cached, are tried again there and listed in its
    `failures`). `everyone`: every rank gets the whole result (read from the merged
    cache); else only rank 0 does and the others get None. `progress(done, total)`
    follows this rank's shard. `n_computed` counts the vectors all ranks computed,
    `n_cached` the rest of the readable images."""
    records = list(records)
    if not distributed.enabled:
        return cached_embeddings(net, records, progress=progress, **options)
    shard = cached_embeddings(net, distributed.shard(records), merge=False, progress=progress, **options)
    computed = distributed.total(shard.n_ok - shard.n_cached)  # vectors, not failed attempts
    distributed.barrier()  # every shard's parts are written
    result = cached_embeddings(net, records, **options) if distributed.is_main else None  # merges the parts
    distributed.barrier()  # the store holds the whole folder
    if everyone and not distributed.is_main:
        result = cached_embeddings(net, records, **options)  # all from the store
    if result is not None:
        result.n_computed = computed
        result.n_cached = result.n_ok - computed
    return result
