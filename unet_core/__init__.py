"""The domain of U-Net segmentation: volumes, I/O, preprocessing, the model, inference.

Nothing in this package imports Ray; every piece runs as plain Python on numpy arrays and bytes.
"""
from __future__ import annotations

__version__ = "0.1.0"
