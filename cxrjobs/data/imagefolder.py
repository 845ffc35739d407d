"""ROOT/<class>/*.png|jpg folders (secondary test sets), with a class-name mapping."""

from __future__ import annotations

import os
import re

import pandas as pd

from cxrjobs.data.source import RECORD_COLUMNS, Source
from cxrjobs.errors import DataError

IMAGE_EXTS = (".png", ".jpg", ".jpeg")


def parse_class_map(text: str | None, labels: list[str] | None) -> dict[str, str] | None:
    """'COVID=1,covid=1,NORMAL=0' or 'covid=COVID-19,...' -> {folder(lower): label name}.
    Integers index into `labels`."""
    if not text:
        return None
    out: dict[str, str] = {}
    for item in text.split(","):
        folder, sep, target = item.partition("=")
        if not sep or not folder.strip() or not target.strip():
            raise DataError(f"--class-map item {item!r}: expected FOLDER=LABEL (e.g. covid=1)")
        target = target.strip()
        if target.isdigit():
            if not labels or int(target) >= len(labels):
                raise DataError(f"--class-map {item!r}: index {target} needs --labels with "
                                f"at least {int(target) + 1} names (e.g. --labels non-COVID,COVID-19)")
            target = labels[int(target)]
        out[folder.strip().lower()] = target
    return out


def read_imagefolder(root: str, class_map: dict[str, str] | None = None,
                     labels: list[str] | None = None, patient_regex: str | None = None) -> Source:
    if not os.path.isdir(root):
        raise DataError(f"{root}: not a directory; expected ROOT/<class>/*.png")
    folders = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    if not folders:
        raise DataError(f"{root}: no class folders; expected ROOT/<class>/*.png")
    if labels is None:
        labels = sorted(set(class_map.values())) if class_map else folders
    pattern = re.compile(patient_regex) if patient_regex else None
    rows, rejects = [], []
    for folder in folders:
        label = class_map.get(folder.lower()) if class_map else folder
        for dirpath, dirs, files in os.walk(os.path.join(root, folder)):
            dirs.sort()
            for name in sorted(files):
                path = os.path.join(dirpath, name)
                if not name.lower().endswith(IMAGE_EXTS):
                    continue
                if label is None or label not in labels:
                    rejects.append((path, f"folder {folder!r} has no class in --class-map / --labels {labels}"))
                    continue
                stem = os.path.splitext(name)[0]
                # Without a patient id in the file name each image counts as its own patient.
                m = pattern.search(name) if pattern else None
                patient = m.group(1) if m else stem
                rows.append((f"{folder}__{name}", patient, path, label, ""))
    records = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    return Source(format="imagefolder", root=root, records=records, label_names=list(labels),
                  findings=list(labels), rejects=rejects,
                  params={"class_map": class_map, "patient_regex": patient_regex})
