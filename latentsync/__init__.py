"""LatentSync lip-sync: an open serving stack for ByteDance's LatentSync 1.5 / 1.6 models."""

__version__ = "0.1.0"
