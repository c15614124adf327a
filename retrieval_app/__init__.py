"""retrieval-app: image similarity search with triplet-loss metric learning."""

__version__ = "0.1.0"
