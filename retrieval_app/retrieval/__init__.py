"""Embedding extraction and caching, nearest-neighbour search, 2-D maps and export.

Importing this package is cheap: umap-learn, scikit-learn, faiss, plotly and pyarrow are
imported only by the functions that need them."""

from .cache import cached_embeddings
from .embed import EmbeddingCancelled, EmbeddingResult, embed_images, embed_records
from .export import FORMATS, export_embeddings, export_map_html, map_figure
from .gallery import Gallery, Neighbour
from .projection import METHODS, Projection, compute_projection
from .index_store import IndexReport, open_index
from .search import BACKENDS, ExactIndex, NearestNeighbourIndex, build_index

__all__ = [
    "BACKENDS", "EmbeddingCancelled", "EmbeddingResult", "ExactIndex", "FORMATS", "Gallery", "IndexReport", "METHODS",
    "NearestNeighbourIndex", "Neighbour", "Projection", "build_index", "cached_embeddings", "compute_projection",
    "embed_images", "embed_records", "export_embeddings", "export_map_html", "map_figure", "open_index",
]
