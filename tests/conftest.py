"""Shared fixtures: a real S3 endpoint (moto's server on 127.0.0.1), a local Ray instance."""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
