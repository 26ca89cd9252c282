"""`unet train`'s post-processing decision, on the driver, once the best weights are known: the
prepared data's validation cases (manifest.json's `cases.val`, their sources from prepare's case
summaries) predicted whole by the trained model, then nnU-Net's largest-component rule
(unet_core/training/postprocess_decision.py). The result is the bundle's `postprocessing`.
"""
from __future__ import annotations

import json

from jobs.output import log, safe
from jobs.prepare import MANIFEST, case_summary_uri
from unet_core.bundle import BundleInfo
from unet_core.io import storage
from unet_core.training.cases import Case
from unet_core.training.postprocess_decision import TruthRule, decide_on_validation, keras_predictor


def postprocessing_on_validation(model, info: BundleInfo, data: str | None) -> dict:
    """The bundle's `postprocessing` for `model` trained on the prepared data at `data`: {} when
    there is no manifest there (a bundle written from a checkpoint alone)."""
    if not data or not storage.exists(storage.join(data, MANIFEST)):
        return {}
    manifest = json.loads(storage.read_bytes(storage.join(data, MANIFEST)))
    cases = []
    for case_id in manifest.get("cases", {}).get("val", []):
        summary = json.loads(storage.read_bytes(case_summary_uri(data, case_id)))
        cases.append(Case(case_id, summary["image"], summary["mask"]))
    foreground = manifest.get("foreground_labels")
    rule = TruthRule(binary=bool(manifest.get("binary", True)),
                     foreground_labels=tuple(foreground) if foreground else None)
    classes = info.model.num_classes if info.model else max(len(info.label_names) - 1, 1)
    n_labels = 2 if classes == 1 else classes
    decision = decide_on_validation(keras_predictor(model), info.preprocess, info.threshold, n_labels, cases, rule,
                                    on_skip=lambda error: log.warning(safe(f"post-processing decision: {error}")))
    return decision.to_dict()
