"""One-line metric summaries for logs and the CLI. Light (no numpy or torch), so `cxrjobs status`
prints them without loading the training stack."""

from __future__ import annotations

# Below these, a patient-bootstrap CI says little (it can even have zero width: 1 positive patient
# makes every replicate that draws it agree). Binary tasks: positive / negative patients; others:
# patients. Flagged wherever the metric is shown (eval.metrics.few_cases), like a wide CI.
MIN_CLASS_PATIENTS, MIN_PATIENTS = 10, 20


def headline(m: dict) -> str:
    """'mean_auroc 0.712 [0.650, 0.770] (val: 169 images, 27 patients)'"""
    # Multilabel: mean AUROC; binary: AUROC (accuracy hides a constant classifier); else accuracy.
    name = next(n for n in ("mean_auroc", "auroc", "accuracy") if isinstance(m.get(n), dict))
    v = m[name]
    val = "n/a" if v["value"] is None else f"{v['value']:.3f}"
    ci = f" [{v['ci'][0]:.3f}, {v['ci'][1]:.3f}]" if v["ci"] else ""
    if "replicates" in v and m.get("bootstrap") and v["replicates"] < m["bootstrap"]:
        # The mean's CI uses only replicates that can score every class (eval.metrics): a CI from
        # a part of them is conditional on the rare classes' positives being drawn; say so.
        if v["ci"]:
            ci += f" (CI from the {v['replicates']} of {m['bootstrap']} replicates that could score all {v['classes']} classes)"
        else:
            ci = f" [CI n/a: {v['replicates']} of {m['bootstrap']} replicates could score all {v['classes']} classes]"
    elif not v["ci"] and m.get("bootstrap") == 0:
        ci = " [no CI: bootstrap 0]"
    few = f"; few cases: {m['few_cases']}, the CI is not reliable" if m.get("few_cases") else ""
    return f"{name} {val}{ci} ({m['split']}: {m['images']} images, {m['patients']} patients{few})"
