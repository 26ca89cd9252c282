"""Model bundles for tests, made in one place, plus the small training recipe.

`tiny_bundle` saves an untrained U-Net (deterministic weights) where learning is not what a test
checks: the pipeline, the tables and the geometry are. A trained bundle comes from the session
fixture `trained_bundle` (tests/conftest.py)."""
from __future__ import annotations

# An 8-filter U-Net needs batch norm and light dropout to learn reliably (with the seed's 0.5 it
# collapses to an all-background output on this phantom).
SMALL_MODEL = ["--base-filters", "8", "--depth", "3", "--batch-size", "4", "--loss", "bce_dice", "--batch-norm",
               "--dropout", "0.1"]


def tiny_bundle(path: str, size: int = 32, base_filters: int = 4, depth: int = 2, name: str = "tiny",
                modality: str = "CT", label_names: list[str] | None = None, seed: int = 0) -> str:
    """An untrained U-Net bundle at `path` (local or s3://), the same weights for the same arguments."""
    import keras

    from unet_core.bundle import BundleInfo, save_bundle
    from unet_core.config import ModelConfig, PreprocessConfig
    from unet_core.model import build_unet

    keras.utils.set_random_seed(seed)
    cfg = ModelConfig(input_size=size, base_filters=base_filters, depth=depth)
    save_bundle(path, build_unet(cfg), BundleInfo(preprocess=PreprocessConfig(input_size=size, modality=modality),
                                                  model=cfg, label_names=label_names or ["background", "target"],
                                                  name=name))
    return path


def put(uri: str, data: bytes) -> str:
    from unet_core.io import storage

    storage.write_bytes(uri, data)
    return uri
