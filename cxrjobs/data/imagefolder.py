"""ROOT/<class>/*.png|jpg folders (secondary test sets), with a class-name mapping."""

from __future__ import annotations

import os
import re

import pandas as pd

from cxrjobs.data.files import Files, as_files, printable, utf8_ok
from cxrjobs.data.source import NOT_UTF8, RECORD_COLUMNS, Source, reject_duplicate_ids
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
        elif labels and target not in labels:  # else its folder's images are all rejected
            raise DataError(f"--class-map {item!r}: {target!r} is neither an index into --labels nor one "
                            f"of them ({labels}); e.g. {folder.strip()}=1 or {folder.strip()}={labels[-1]}")
        out[folder.strip().lower()] = target
    return out


def read_imagefolder(root: str | Files, class_map: dict[str, str] | None = None,
                     labels: list[str] | None = None, patient_regex: str | None = None) -> Source:
    if isinstance(root, str) and not os.path.isdir(root):
        raise DataError(f"{root}: not a directory; expected ROOT/<class>/*.png")
    files = as_files(root)
    folders = files.top_dirs()
    if not folders:
        raise DataError(f"{files.base}: no class folders; expected ROOT/<class>/*.png")
    if labels is None:
        labels = sorted(set(class_map.values())) if class_map else folders
    pattern = re.compile(patient_regex) if patient_regex else None
    rows, rejects, matched = [], [], 0
    by_folder: dict[str, list[str]] = {}
    for rel in files.walk():
        if "/" in rel:
            by_folder.setdefault(rel.split("/", 1)[0], []).append(rel)
    for folder in folders:
        label = class_map.get(folder.lower()) if class_map else folder
        for rel in by_folder.get(folder, []):
            name = rel.rsplit("/", 1)[-1]
            if name.startswith("."):  # hidden files (.DS_Store, editors' files): no one's data
                continue
            path = files.locate(rel)
            if not name.lower().endswith(IMAGE_EXTS):
                rejects.append((printable(path), f"not an image file ({', '.join(IMAGE_EXTS)})"))
                continue
            if not utf8_ok(rel):
                rejects.append((printable(path), NOT_UTF8))
                continue
            if label is None or label not in labels:
                rejects.append((path, f"folder {folder!r} has no class in --class-map / --labels {labels}"))
                continue
            stem = os.path.splitext(name)[0]
            # Without a patient id in the file name each image counts as its own patient.
            m = pattern.search(name) if pattern else None
            patient = m.group(1) if m and m.group(1) else stem
            matched += bool(m and m.group(1))
            # The id is the path below the root, so equal names in nested folders stay distinct.
            rows.append((rel.replace("/", "__"), patient, path, label, ""))
    if pattern and rows and not matched:  # else every image is its own patient: image-wise splits
        raise DataError(f"--patient-regex {patient_regex!r} matched none of the {len(rows)} file names "
                        f"(e.g. {rows[0][0].rsplit('__', 1)[-1]!r}), so every image would count as its own "
                        "patient; fix it, or leave it out to say that the file names carry no patient id")
    records = pd.DataFrame(rows, columns=RECORD_COLUMNS)
    records = reject_duplicate_ids(records, rejects, files.base, "file")
    return Source(format="imagefolder", root=files.base, records=records, label_names=list(labels),
                  findings=list(labels), rejects=rejects,
                  params={"class_map": class_map, "patient_regex": patient_regex})
