"""The dataset's fingerprint: what the native recipe's plan is decided from (nnU-Net's 2D scheme).

Per training case: the canonical grid's shape (i, j, k) and voxel spacing in mm, the voxel count
of every class, and a seeded sample of the image's intensities under the foreground (mask > 0,
the mask as it will be trained: binary or labels). Pooled over the training cases: the
foreground's mean, standard deviation and 0.5 / 99.5 percentiles, and each class's voxel
fraction.

Only training cases feed the fingerprint, never validation cases: the normalisation the model
learns with must not have seen the cases it is judged on.

The sample is bounded: at most `MAX_SAMPLES` (10^7) values in all, `MAX_SAMPLES // n_cases` per
case, drawn without replacement with a generator seeded from (seed, case id), so the statistics
are a pure function of the data and the seed whatever order the cases are processed in. nnU-Net
draws about 10^8 / n_cases; 10^7 keeps the driver's memory at 40 MB of float32 and moves the
percentiles by far less than a Hounsfield unit on CT.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field

import numpy as np

from unet_core.errors import ConfigError

MAX_SAMPLES = 10_000_000


@dataclass(frozen=True)
class CaseFingerprint:
    """One training case. `sample` is float32 (n,) foreground intensities (not stored in JSON)."""

    case_id: str
    shape: tuple[int, int, int]  # canonical (i, j, k)
    spacing: tuple[float, float, float]  # mm along i, j, k
    class_voxels: tuple[int, ...]  # voxels of label 0, 1, ..., max label
    n_foreground: int
    sample: np.ndarray = field(repr=False, compare=False)

    def to_dict(self) -> dict:
        return {"case_id": self.case_id, "shape": list(self.shape), "spacing": list(self.spacing),
                "class_voxels": list(self.class_voxels), "n_foreground": self.n_foreground}


@dataclass(frozen=True)
class IntensityStats:
    """Foreground intensity statistics of one channel, pooled over the training cases' samples."""

    channel: str
    mean: float
    std: float
    p005: float  # 0.5th percentile
    p995: float  # 99.5th percentile
    n_samples: int


@dataclass(frozen=True)
class Fingerprint:
    cases: list[dict]  # CaseFingerprint.to_dict of each training case, sorted by case id
    intensity: list[IntensityStats]  # one per channel (one channel is supported); empty without foreground
    class_fractions: list[float]  # voxel fraction of label 0, 1, ... over the training cases
    seed: int
    max_samples: int = MAX_SAMPLES

    @property
    def in_plane_spacings(self) -> np.ndarray:
        """(n_cases, 2) float64: the canonical (i, j) spacing of each training case, mm."""
        return np.array([c["spacing"][:2] for c in self.cases], dtype=np.float64).reshape(-1, 2)

    def median_in_plane_spacing(self) -> float:
        """The median over the training cases of their in-plane spacings (both axes pooled), mm."""
        if not self.cases:
            raise ConfigError("the fingerprint has no training cases: no median spacing")
        return float(np.median(self.in_plane_spacings))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "Fingerprint":
        try:
            return cls(cases=list(d["cases"]), intensity=[IntensityStats(**s) for s in d["intensity"]],
                       class_fractions=[float(f) for f in d["class_fractions"]], seed=int(d["seed"]),
                       max_samples=int(d.get("max_samples", MAX_SAMPLES)))
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"a fingerprint needs cases, intensity, class_fractions and seed ({exc})") from exc


def samples_per_case(n_cases: int, max_samples: int = MAX_SAMPLES) -> int:
    """The per-case cap of the foreground sample: the total stays within `max_samples`."""
    if n_cases < 1:
        raise ConfigError("the fingerprint needs at least one training case")
    return max(1, max_samples // n_cases)


def case_seed(seed: int, case_id: str) -> int:
    """A generator seed that depends on the case only, not on the order cases are processed in."""
    return int(hashlib.sha256(f"fingerprint:{seed}:{case_id}".encode()).hexdigest()[:16], 16)


def case_fingerprint(case_id: str, voxels: np.ndarray, labels: np.ndarray, spacing: tuple[float, float, float],
                     per_case: int, seed: int) -> CaseFingerprint:
    """The fingerprint of one case on its canonical grid.

    voxels: (i, j, k) intensities (HU for CT), any float or int dtype; labels: (i, j, k) integer
    labels 0..255 on the same grid, foreground = labels > 0. At most `per_case` foreground values
    are sampled, without replacement, seeded by (seed, case_id); all of them when fewer.
    """
    if voxels.shape != labels.shape:
        raise ConfigError(f"case {case_id}: image {voxels.shape} and mask {labels.shape} differ in shape")
    lab = np.asarray(labels)
    fg = lab > 0
    values = np.asarray(voxels)[fg].astype(np.float32)
    if values.size > per_case:
        rng = np.random.default_rng(case_seed(seed, case_id))
        values = values[np.sort(rng.choice(values.size, per_case, replace=False))]
    counts = np.bincount(lab.astype(np.int64).ravel(), minlength=2)
    return CaseFingerprint(case_id=case_id, shape=tuple(int(n) for n in voxels.shape),  # type: ignore[arg-type]
                           spacing=tuple(float(s) for s in spacing),  # type: ignore[arg-type]
                           class_voxels=tuple(int(c) for c in counts), n_foreground=int(fg.sum()), sample=values)


def intensity_stats(sample: np.ndarray, channel: str = "0") -> IntensityStats:
    """Mean, std (population, ddof 0), and 0.5 / 99.5 percentiles (numpy's linear interpolation)
    of a float sample, computed in float64."""
    x = np.asarray(sample, dtype=np.float64).ravel()
    if x.size == 0:
        raise ConfigError("no foreground voxels in the training cases: the masks are empty, so the foreground "
                          "statistics (and --normalization ct_foreground) cannot be computed")
    p005, p995 = np.percentile(x, [0.5, 99.5])
    return IntensityStats(channel=channel, mean=float(x.mean()), std=float(x.std()), p005=float(p005),
                          p995=float(p995), n_samples=int(x.size))


def pool(cases: list[CaseFingerprint], seed: int, channel: str = "0",
         max_samples: int = MAX_SAMPLES) -> Fingerprint:
    """The dataset's fingerprint from its training cases' fingerprints (any order)."""
    if not cases:
        raise ConfigError("the fingerprint needs at least one training case")
    ordered = sorted(cases, key=lambda c: c.case_id)
    sample = np.concatenate([c.sample for c in ordered])
    # No foreground at all (empty masks): no intensity statistics; a plan that needs them says so.
    stats = [intensity_stats(sample, channel)] if sample.size else []
    k = max(len(c.class_voxels) for c in ordered)
    totals = np.zeros(k, dtype=np.int64)
    for c in ordered:
        totals[: len(c.class_voxels)] += c.class_voxels
    fractions = (totals / max(int(totals.sum()), 1)).tolist()
    return Fingerprint(cases=[c.to_dict() for c in ordered], intensity=stats, class_fractions=fractions, seed=seed,
                       max_samples=max_samples)


__all__ = ["MAX_SAMPLES", "CaseFingerprint", "Fingerprint", "IntensityStats", "case_fingerprint",
           "intensity_stats", "pool", "samples_per_case"]
