"""Pictures a person would rather look at than read: training curves, mask montages."""
from __future__ import annotations

import io

import numpy as np


def training_curves_png(history: list[dict], title: str = "training") -> bytes:
    """Loss and Dice per epoch (train and validation), with learning-rate drops marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [h for h in history if "epoch" in h and "val_dice_hard" in h]
    epochs = [h["epoch"] + 1 for h in rows]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), dpi=100)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "dice_hard", "Dice")):
        for prefix, style in (("train_", "-"), ("val_", "--")):
            values = [h.get(prefix + key) for h in rows]
            if any(v is not None for v in values):
                ax.plot(epochs, values, style, marker="o", markersize=3, label=f"{prefix[:-1]} {label}")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    lrs = [h.get("learning_rate") for h in rows]
    for i in range(1, len(lrs)):
        if lrs[i] is not None and lrs[i - 1] is not None and lrs[i] < lrs[i - 1]:
            for ax in axes:
                ax.axvline(epochs[i], color="grey", lw=0.8, ls=":")
    best = max(rows, key=lambda h: h["val_dice_hard"], default=None)
    if best:
        axes[1].axvline(best["epoch"] + 1, color="green", lw=0.8)
        axes[1].set_title(f"best val Dice {best['val_dice_hard']:.3f} at epoch {best['epoch'] + 1}")
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def display_slice(plane: np.ndarray) -> np.ndarray:
    """A canonical (R, A) slice indexed [i, j] -> a radiological view [row, col]: anterior at the
    top, the patient's right (+i in RAS) on the viewer's left."""
    return np.asarray(plane)[::-1, ::-1].T
