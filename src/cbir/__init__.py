"""cbir: content-based image retrieval on a CPU."""

__version__ = "0.1.0"
