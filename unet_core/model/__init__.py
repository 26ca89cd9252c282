"""The U-Net, its losses and metrics, and pretrained-weight loading (Keras 3, never `tf.keras`)."""
from __future__ import annotations

from unet_core.model.unet import build_unet, encoder_layer_names

__all__ = ["build_unet", "encoder_layer_names"]
