"""Preprocessing: decode + resize each image once into memory-mappable uint8 shards.

Layout under the output prefix:
  plan.json                       what every slice agreed to produce (num_shards, params)
  shards/shard-NNNNN.npy          uint8 [n, S, S]
  shards/shard-NNNNN.csv          index rows of that shard; written last, so it marks the shard done
  index.csv, rejects.csv, manifest.json   written by merge once every shard is done

Shard k holds planned records [k*shard_size, (k+1)*shard_size); slice i of n processes the shards
with k % n == i, so the pods of an Indexed Job split the work without talking to each other.
"""

from __future__ import annotations

import io
import json
import multiprocessing as mp
import os
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrjobs import progress
from cxrjobs.data.decode import DecodeError, decode_file
from cxrjobs.data.source import Source
from cxrjobs.data.splits import assign_splits, check_patient_disjoint
from cxrjobs.errors import DataError
from cxrjobs.specs.preprocess import PreprocessSpec
from cxrjobs.storage import ObjectStore, join_key

INDEX_COLUMNS = ["image_id", "patient_id", "split", "labels", "view", "shard", "offset", "source", "sha256"]
REJECT_COLUMNS = ["path", "reason"]


def read_source(spec: PreprocessSpec) -> Source:
    if not os.path.isdir(spec.source):
        raise DataError(f"{spec.source}: dataset folder not found")
    if spec.format == "nih":
        from cxrjobs.data.nih import read_nih
        return read_nih(spec.source, spec.csv)
    if spec.format == "covid":
        from cxrjobs.data.covid import FRONTAL_VIEWS, read_covid
        return read_covid(spec.source, tuple(spec.views or FRONTAL_VIEWS), spec.csv)
    from cxrjobs.data.imagefolder import parse_class_map, read_imagefolder
    return read_imagefolder(spec.source, parse_class_map(spec.class_map, spec.labels),
                            spec.labels, spec.patient_regex)


def plan(spec: PreprocessSpec) -> tuple[Source, pd.DataFrame]:
    """Records with split, shard and position; identical in every slice (pure function of input)."""
    src = read_source(spec)
    if spec.strict and src.rejects:
        path, reason = src.rejects[0]
        raise DataError(f"{path}: {reason} (--strict stops at the first bad input)")
    rec = src.records.copy()
    negative = "No Finding" if src.format == "nih" else src.label_names[0]
    rec["split"] = assign_splits(rec, spec.seed, spec.fractions, negative, src.official_split).values
    check_patient_disjoint(rec)
    # Grouping by split keeps each split's images contiguous: evaluation reads shards in order.
    order = {s: i for i, s in enumerate(("train", "val", "test"))}
    rec = rec.sort_values(["split", "image_id"], key=lambda c: c.map(order) if c.name == "split" else c)
    rec = rec.reset_index(drop=True)
    rec["shard"] = rec.index // spec.resolved_shard_size()
    return src, rec


def _shard_key(prefix: str, k: int, ext: str) -> str:
    return join_key(prefix, f"shards/shard-{k:05d}.{ext}")


def _csv_bytes(df: pd.DataFrame) -> bytes:
    return df.to_csv(index=False).encode()


def _work(args):
    path, size, fit = args
    try:
        arr, digest = decode_file(path, size, fit)
        return arr, digest, None
    except DecodeError as e:
        return None, None, str(e)


@dataclass
class SliceResult:
    shards_done: int
    shards_skipped: int
    images: int
    rejected: int
    seconds: float


def run_slice(spec: PreprocessSpec, store: ObjectStore, prefix: str, workers: int = 1,
              shard_index: int = 0, num_shards: int = 1, show_progress: bool = True) -> SliceResult:
    if not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    t0 = time.perf_counter()
    src, rec = plan(spec)
    total_shards = int(rec["shard"].max()) + 1 if len(rec) else 0
    plan_doc = {"num_shards": total_shards, "records": len(rec), "spec": spec.model_dump(),
                "format": src.format, "label_names": src.label_names, "findings": src.findings,
                "excluded": src.excluded}
    store.put_text(join_key(prefix, "plan.json"), json.dumps(plan_doc, indent=1, sort_keys=True))
    if shard_index == 0:
        store.put_bytes(join_key(prefix, "ingest-rejects.csv"),
                        _csv_bytes(pd.DataFrame(src.rejects, columns=REJECT_COLUMNS)))
    mine = [k for k in range(total_shards) if k % num_shards == shard_index]
    todo = [k for k in mine if not store.exists(_shard_key(prefix, k, "csv"))]
    todo_rec = rec[rec["shard"].isin(todo)]
    images = rejected = 0
    tasks = ((p, spec.size, spec.fit) for p in todo_rec["path"])
    pool = mp.get_context("fork").Pool(workers) if workers > 1 else None
    results = pool.imap(_work, tasks, chunksize=4) if pool else map(_work, tasks)
    try:
        with progress.bar(len(todo_rec), f"preprocess {spec.size}px", show_progress) as pbar:
            for k, group in todo_rec.groupby("shard", sort=True):
                arrays, rows, rejects = [], [], []
                for row in group.itertuples(index=False):
                    arr, digest, err = next(results)
                    pbar.advance()
                    if err is not None:
                        if spec.strict:
                            raise DataError(f"{row.path}: {err} (--strict stops at the first bad input)")
                        rejects.append((row.path, err))
                        continue
                    rows.append((row.image_id, row.patient_id, row.split, row.labels, row.view,
                                 k, len(arrays), row.path, digest))
                    arrays.append(arr)
                _write_shard(store, prefix, k, spec.size, arrays, rows, rejects)
                images += len(rows)
                rejected += len(rejects)
    finally:
        if pool:
            pool.terminate()
    return SliceResult(len(todo), len(mine) - len(todo), images, rejected, time.perf_counter() - t0)


def _write_shard(store, prefix, k, size, arrays, rows, rejects) -> None:
    stack = np.stack(arrays) if arrays else np.zeros((0, size, size), np.uint8)
    store.put_stream(_shard_key(prefix, k, "npy"), lambda f: np.save(f, stack))
    store.put_bytes(_shard_key(prefix, k, "rejects.csv"),
                    _csv_bytes(pd.DataFrame(rejects, columns=REJECT_COLUMNS)))
    # Written last: its presence is what marks shard k complete.
    store.put_bytes(_shard_key(prefix, k, "csv"), _csv_bytes(pd.DataFrame(rows, columns=INDEX_COLUMNS)))


def missing_shards(store: ObjectStore, prefix: str) -> list[int]:
    plan_doc = json.loads(store.get_text(join_key(prefix, "plan.json")))
    done = {o.key for o in store.list(join_key(prefix, "shards"))}
    return [k for k in range(plan_doc["num_shards"]) if _shard_key(prefix, k, "csv") not in done]


def merge(store: ObjectStore, prefix: str) -> dict:
    """Join finished shards into index.csv, rejects.csv and manifest.json."""
    if not store.exists(join_key(prefix, "plan.json")):
        raise DataError(f"{store.url}/{prefix}: no plan.json; run `cxrjobs data preprocess` first")
    plan_doc = json.loads(store.get_text(join_key(prefix, "plan.json")))
    missing = missing_shards(store, prefix)
    if missing:
        raise DataError(f"{store.url}/{prefix}: {len(missing)} of {plan_doc['num_shards']} shards are "
                        f"not finished (e.g. {missing[:5]}); run the missing slices, then merge again")
    read = lambda key: pd.read_csv(io.BytesIO(store.get_bytes(key)), dtype=str, keep_default_na=False)
    n = plan_doc["num_shards"]
    index = pd.concat([read(_shard_key(prefix, k, "csv")) for k in range(n)] or
                      [pd.DataFrame(columns=INDEX_COLUMNS)], ignore_index=True)
    rejects = pd.concat([read(join_key(prefix, "ingest-rejects.csv"))] +
                        [read(_shard_key(prefix, k, "rejects.csv")) for k in range(n)], ignore_index=True)
    check_patient_disjoint(index)
    store.put_bytes(join_key(prefix, "index.csv"), _csv_bytes(index))
    store.put_bytes(join_key(prefix, "rejects.csv"), _csv_bytes(rejects))
    spec = plan_doc["spec"]
    manifest = {
        "format": plan_doc["format"],
        "images": len(index),
        "rejected": len(rejects),
        "excluded": plan_doc["excluded"],
        "image_size": spec["size"],
        "labels": plan_doc["label_names"],
        "findings": plan_doc["findings"],
        "splits": {s: int((index["split"] == s).sum()) for s in ("train", "val", "test")},
        "patients": {s: int(index.loc[index["split"] == s, "patient_id"].nunique())
                     for s in ("train", "val", "test")},
        "num_shards": n,
        "dtype": "uint8",
        "parameters": spec,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    store.put_text(join_key(prefix, "manifest.json"), json.dumps(manifest, indent=1))
    return manifest


def preprocess(spec: PreprocessSpec, store: ObjectStore, prefix: str, workers: int = 1,
               show_progress: bool = True) -> tuple[SliceResult, dict]:
    """The whole dataset in this process: one slice covering every shard, then merge."""
    result = run_slice(spec, store, prefix, workers, 0, 1, show_progress)
    return result, merge(store, prefix)
