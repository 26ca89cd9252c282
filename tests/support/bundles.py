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


# The phantom's target organ is 110 HU among tissue (40), fat, lung, air and bone (700):
# unet_core/synthetic.py. Windowed to [75, 145] HU it is the band 0.1..0.9 of the model input.
ORGAN_WINDOW = (75.0, 145.0)


def analytic_bundle(path: str, size: int = 64, name: str = "phantom") -> str:
    """A bundle whose model segments the phantom's target organ exactly by its intensity band, with
    fixed weights (no training): relu(v - 0.1) and relu(v - 0.9) of the windowed input v, then
    sigmoid(40 a - 400 b - 1). For tests of the pipeline, the tables and the geometry, where what a
    model learnt is not what is checked (training has its own tests in the e2e tier)."""
    import keras
    import numpy as np

    from unet_core.bundle import BundleInfo, save_bundle
    from unet_core.config import ModelConfig, PreprocessConfig

    band = keras.layers.Conv2D(2, 1, activation="relu", name="band")
    head = keras.layers.Conv2D(1, 1, activation="sigmoid", name="head")
    model = keras.Sequential([keras.Input((size, size, 1)), band, head])
    band.set_weights([np.array([1.0, 1.0], np.float32).reshape(1, 1, 1, 2), np.array([-0.1, -0.9], np.float32)])
    head.set_weights([np.array([40.0, -400.0], np.float32).reshape(1, 1, 2, 1), np.array([-1.0], np.float32)])
    pre = PreprocessConfig(input_size=size, window=None, window_lower=ORGAN_WINDOW[0], window_upper=ORGAN_WINDOW[1])
    save_bundle(path, model, BundleInfo(preprocess=pre, model=ModelConfig(input_size=size),
                                        label_names=["background", "target"], name=name))
    return path
