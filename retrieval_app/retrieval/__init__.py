"""Embedding extraction and caching, nearest-neighbour search, 2-D maps and export."""

from .cache import cached_embeddings
from .embed import EmbeddingResult, embed_images, embed_records
from .export import FORMATS, export_embeddings, export_map_html, map_figure
from .gallery import Gallery, Neighbour
from .projection import METHODS, Projection, compute_projection
from .search import ExactIndex, FaissIndex, build_index

__all__ = [
    "EmbeddingResult", "ExactIndex", "FORMATS", "FaissIndex", "Gallery", "METHODS", "Neighbour", "Projection",
    "build_index", "cached_embeddings", "compute_projection", "embed_images", "embed_records",
    "export_embeddings", "export_map_html", "map_figure",
]
