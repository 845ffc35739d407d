"""Preprocessing: decode + resize each image once into memory-mappable uint8 shards.

Layout under the output prefix:
  plan.json                       what every slice agreed to produce (num_shards, params)
  shards/shard-NNNNN.npy          uint8 [n, S, S]
  shards/shard-NNNNN.csv          index rows of that shard; written last, so it marks the shard done
  index.csv, rejects.csv, manifest.json   written by merge once every shard is done

Shard k holds planned records [k*shard_size, (k+1)*shard_size); slice i of n processes the shards
with k % n == i, so the pods of an Indexed Job split the work without talking to each other.

A rerun into the same output resumes (finished shards are skipped) only when plan.json says it was
made with the same output-affecting options and the same planned records; anything else is
refused, or replaced with `overwrite`. The source is a local folder or a store prefix
(cxrjobs.data.files): from a store, each slice downloads only its own shards' images.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing as mp
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd

from cxrjobs import progress
from cxrjobs.data.decode import DecodeError, decode_data, decode_file
from cxrjobs.data.files import open_files, printable
from cxrjobs.data.source import Source
from cxrjobs.data.splits import assign_splits, check_patient_disjoint
from cxrjobs.errors import DataError
from cxrjobs.procfs import ignore_sigint
from cxrjobs.specs.preprocess import PreprocessSpec
from cxrjobs.storage import ObjectStore, join_key

INDEX_COLUMNS = ["image_id", "patient_id", "split", "labels", "view", "shard", "offset", "source", "sha256"]
REJECT_COLUMNS = ["path", "reason"]


def read_source(spec: PreprocessSpec) -> Source:
    files = open_files(spec.source)
    if spec.format == "nih":
        from cxrjobs.data.nih import read_nih
        src = read_nih(files, spec.csv)
    elif spec.format == "covid":
        from cxrjobs.data.covid import FRONTAL_VIEWS, read_covid
        src = read_covid(files, tuple(spec.views or FRONTAL_VIEWS), spec.csv)
    else:
        from cxrjobs.data.imagefolder import parse_class_map, read_imagefolder
        src = read_imagefolder(files, parse_class_map(spec.class_map, spec.labels),
                               spec.labels, spec.patient_regex)
    src.files = files
    return src


def _reasons(rejects: list[tuple[str, str]], top: int = 3) -> str:
    counts = pd.Series([r for _, r in rejects], dtype=object).value_counts()
    return "; ".join(f"{n} x {reason}" for reason, n in counts.head(top).items())


def plan(spec: PreprocessSpec) -> tuple[Source, pd.DataFrame]:
    """Records with split, shard and position; identical in every slice (pure function of input)."""
    src = read_source(spec)
    if spec.strict and src.rejects:
        path, reason = src.rejects[0]
        raise DataError(f"{path}: {reason} (--strict stops at the first bad input)")
    if len(src.records) == 0:
        raise NoImages(src, f"{spec.source}: no image to preprocess ({spec.format} format): "
                            + (f"all {len(src.rejects)} were rejected, most often: {_reasons(src.rejects)}"
                               if src.rejects else "the label table lists no rows and no images were found")
                            + ". Fix the dataset (or --format / --csv) and run again")
    rec = src.records.copy()
    if rec["image_id"].duplicated().any():  # every reader rejects duplicates; never shard one twice
        raise DataError(f"{spec.source}: duplicate image ids after reading: "
                        f"{rec.loc[rec['image_id'].duplicated(), 'image_id'].head().tolist()}")
    negative = "No Finding" if src.format == "nih" else src.label_names[0]
    rec["split"] = assign_splits(rec, spec.seed, spec.fractions, negative, src.official_split).values
    check_patient_disjoint(rec)
    # Grouping by split keeps each split's images contiguous: evaluation reads shards in order.
    order = {s: i for i, s in enumerate(("train", "val", "test"))}
    rec = rec.sort_values(["split", "image_id"], key=lambda c: c.map(order) if c.name == "split" else c)
    rec = rec.reset_index(drop=True)
    rec["shard"] = rec.index // spec.resolved_shard_size()
    return src, rec


class NoImages(DataError):
    """Nothing was accepted: the run stops with this message (rejects.csv still lists why)."""

    def __init__(self, src: Source, message: str):
        super().__init__(message)
        self.rejects = src.rejects


# What a preprocessing output consists of; --overwrite deletes exactly these (never other files
# that happen to share the folder).
OUTPUT_FILES = ("index.csv", "rejects.csv", "manifest.json", "ingest-rejects.csv")


def _plan_doc(spec: PreprocessSpec, src: Source, rec: pd.DataFrame) -> dict:
    # The digest catches a source whose files changed between runs made with the same options.
    digest = hashlib.sha256(_csv_bytes(rec[["image_id", "patient_id", "split", "labels", "shard"]])).hexdigest()
    return {"num_shards": int(rec["shard"].max()) + 1, "records": len(rec), "spec": spec.model_dump(),
            "format": src.format, "label_names": src.label_names, "findings": src.findings,
            "excluded": src.excluded, "records_sha256": digest}


def _differences(old: dict, spec: PreprocessSpec) -> list[str]:
    """Output-affecting options that differ between a stored plan and `spec`."""
    try:
        stored = PreprocessSpec.model_validate(old.get("spec", {})).output_options()
    except ValueError:
        return ["spec (the stored plan.json is not a valid spec)"]
    now = spec.output_options()
    return [f"{k}: {stored.get(k)!r} there, {now.get(k)!r} now" for k in now if stored.get(k) != now.get(k)]


def _mixed(where: str, diff: list[str]) -> DataError:
    return DataError(f"{where} already holds a preprocessing output made with different options ("
                     + "; ".join(diff) + "). Resuming into it would mix the two: choose a new --out "
                     "(submit preprocess: --output; a spec file: `output`), or pass --overwrite (a spec file: "
                     "`overwrite: true`) to replace it")


def _output_exists(store: ObjectStore, prefix: str) -> bool:
    return any(store.exists(join_key(prefix, name)) for name in ("plan.json", "manifest.json")) or \
        next(iter(store.list(join_key(prefix, "shards"))), None) is not None


def _foreign_objects(store: ObjectStore, prefix: str, most: int = 3) -> list[str]:
    """Up to `most` objects under `prefix` that no preprocessing run writes (another dataset's
    files, say): an output is only ever made where there are none."""
    base = prefix.strip("/")
    ours = {*OUTPUT_FILES, "plan.json"}
    found = []
    for o in store.list(base + "/" if base else ""):
        rel = o.key[len(base):].lstrip("/") if base else o.key
        if rel not in ours and not rel.startswith("shards/"):
            found.append(rel)
            if len(found) == most:
                break
    return found


def clear_output(store: ObjectStore, prefix: str) -> None:
    """Delete a preprocessing output (plan.json last: a delete cut short is redone by a rerun)."""
    keys = [o.key for o in store.list(join_key(prefix, "shards"))]
    keys += [join_key(prefix, n) for n in (*OUTPUT_FILES, "plan.json")]
    for key in keys:
        store.delete(key)


def _claim_output(spec: PreprocessSpec, src: Source, rec: pd.DataFrame, store: ObjectStore, prefix: str,
                  shard_index: int, overwrite: bool, wait: float) -> dict:
    """Write plan.json, or check that the one there is this run's: resuming is only safe when
    every output-affecting option (and the planned records) is identical. With `overwrite`,
    slice 0 replaces a different output and the other slices wait up to `wait` s for its plan."""
    where = f"{store.url}/{prefix}".rstrip("/")
    new = _plan_doc(spec, src, rec)
    key = join_key(prefix, "plan.json")
    deadline = time.monotonic() + wait
    first = True  # later rounds find what an overwrite cleared: the user's own files there stay
    while True:
        old = json.loads(store.get_text(key)) if store.exists(key) else None
        if old is None and not _output_exists(store, prefix):
            foreign = _foreign_objects(store, prefix) if first else []
            if foreign:
                raise DataError(f"{where} holds files that no preprocessing run wrote ({', '.join(foreign)}"
                                f"{' ...' if len(foreign) == 3 else ''}): the output would be mixed into them. "
                                "Choose a new or empty --out (submit preprocess: --output; a spec file: `output`)")
            # Claimed exclusively: of two runs starting together (other options, one output),
            # the one that finds the other's plan compares and refuses before it writes a shard.
            if store.create(key, json.dumps(new, indent=1, sort_keys=True).encode("utf-8")):
                return new
            first = False
            continue
        first = False
        if old is None and store.exists(key):
            continue  # another slice wrote its plan (and a shard) since we looked: compare with it
        if old is not None:
            diff = _differences(old, spec)
            if not diff and old.get("records_sha256", new["records_sha256"]) != new["records_sha256"]:
                diff = [f"the source's files ({old.get('records')} images planned there, {new['records']} now, "
                        "or other ids, patients or labels): the dataset changed since that run"]
            if not diff:
                if "records_sha256" not in old:  # made before plans carried a digest
                    store.put_text(key, json.dumps(new, indent=1, sort_keys=True))
                return new
        else:
            diff = ["files of a preprocessing run without plan.json"]
        if overwrite and shard_index == 0:
            clear_output(store, prefix)
            continue
        if overwrite and time.monotonic() < deadline:
            time.sleep(0.5)  # slice 0 is replacing the old output
            continue
        if overwrite:
            raise DataError(f"{where}: slice {shard_index} waited {wait:.0f}s for slice 0 to replace the "
                            "old output; run slice 0 (--shard-index 0) with --overwrite first")
        raise _mixed(where, diff)


def _shard_key(prefix: str, k: int, ext: str) -> str:
    return join_key(prefix, f"shards/shard-{k:05d}.{ext}")


def _csv_bytes(df: pd.DataFrame) -> bytes:
    # Readers reject names that are not UTF-8; a path that slipped through is escaped, not fatal.
    return df.to_csv(index=False).encode("utf-8", "backslashreplace")


def _work(args):
    item, size, fit = args
    try:
        if isinstance(item, DecodeError):  # the fetch failed
            raise item
        arr, digest = decode_data(item, size, fit) if isinstance(item, bytes) else decode_file(item, size, fit)
        return arr, digest, None
    except DecodeError as e:
        return None, None, str(e)


class _Window:
    """At most `n` items handed out and not yet consumed (the feeder blocks until `took`)."""

    def __init__(self, n: int):
        self._free, self._closed = threading.Semaphore(n), False

    def feed(self, items):
        for item in items:
            self._free.acquire()
            if self._closed:
                return
            yield item

    def took(self) -> None:
        self._free.release()

    def close(self) -> None:
        self._closed = True
        # Wake the one feeder if it is blocked, so the pool can shut down; it returns on waking.
        # (Semaphore.release(n) notifies n times in a Python loop: a large n cost 0.3 s a slice.)
        self._free.release()


@dataclass
class SliceResult:
    shards_done: int
    shards_skipped: int
    images: int
    rejected: int
    seconds: float


def run_slice(spec: PreprocessSpec, store: ObjectStore, prefix: str, workers: int = 1,
              shard_index: int = 0, num_shards: int = 1, show_progress: bool = True,
              overwrite: bool = False, wait: float = 0.0) -> SliceResult:
    """Preprocess slice `shard_index` of `num_shards` into `prefix`. An existing output is resumed
    (finished shards skipped) only if it was made with the same options; otherwise this refuses,
    or with `overwrite` replaces it (see _claim_output)."""
    if not 0 <= shard_index < num_shards:
        raise DataError(f"--shard-index {shard_index} must be in [0, --num-shards {num_shards})")
    t0 = time.perf_counter()
    where = f"{store.url}/{prefix}".rstrip("/")
    old_key = join_key(prefix, "plan.json")
    if not overwrite and store.exists(old_key):  # cheap check first: no need to plan to refuse
        diff = _differences(json.loads(store.get_text(old_key)), spec)
        if diff:
            raise _mixed(where, diff)
    try:
        src, rec = plan(spec)
    except NoImages as e:
        if shard_index == 0:  # the full list of reasons, where the user looks for it
            store.put_bytes(join_key(prefix, "rejects.csv"), _rejects_csv(e.rejects))
        raise DataError(f"{e} (every reason: {where}/rejects.csv)") from None
    _claim_output(spec, src, rec, store, prefix, shard_index, overwrite, wait)
    total_shards = int(rec["shard"].max()) + 1
    if shard_index == 0:
        store.put_bytes(join_key(prefix, "ingest-rejects.csv"), _rejects_csv(src.rejects))
    mine = [k for k in range(total_shards) if k % num_shards == shard_index]
    todo = [k for k in mine if not store.exists(_shard_key(prefix, k, "csv"))]
    todo_rec = rec[rec["shard"].isin(todo)]
    images = rejected = 0
    files = src.files
    # A local folder: decoding processes open the files. A store: this process downloads only
    # these shards' images (threads, in order) and the processes decode the bytes.
    items = todo_rec["path"] if files is None or files.in_workers else files.fetch(todo_rec["path"])
    # Pool.imap reads its input as fast as it can: a window bounds the images (bytes, from a
    # store) waiting in memory for a decoder.
    window = _Window(max(64, 16 * workers))
    tasks = ((item, spec.size, spec.fit) for item in window.feed(items))
    pool = mp.get_context("fork").Pool(workers, initializer=ignore_sigint) if workers > 1 else None
    results = pool.imap(_work, tasks, chunksize=4) if pool else map(_work, tasks)
    # Each shard's images go straight into an array (a list of images and np.stack would copy
    # every image twice, into a new 64 MiB each time). One writer thread writes (or uploads) shard
    # k while shard k+1 decodes: two arrays take turns, and one is filled again only once its
    # write has finished.
    largest = int(todo_rec.groupby("shard").size().max()) if len(todo_rec) else 0
    stacks = [np.empty((largest, spec.size, spec.size), np.uint8) for _ in range(2)]
    writes: list[Future | None] = [None, None]
    writer = ThreadPoolExecutor(1, thread_name_prefix="shard-writer")
    try:
        with progress.bar(len(todo_rec), f"preprocess {spec.size}px", show_progress) as pbar:
            for turn, (k, group) in enumerate(todo_rec.groupby("shard", sort=True)):
                stack = stacks[turn % 2]
                if writes[turn % 2] is not None:
                    writes[turn % 2].result()  # that write is done; its error, if any, raises here
                rows, rejects = [], []
                for row in group.itertuples(index=False):
                    arr, digest, err = next(results)
                    window.took()
                    pbar.advance()
                    if err is not None:
                        if spec.strict:
                            raise DataError(f"{row.path}: {err} (--strict stops at the first bad input)")
                        rejects.append((row.path, err))
                        continue
                    stack[len(rows)] = arr
                    rows.append((row.image_id, row.patient_id, row.split, row.labels, row.view,
                                 k, len(rows), row.path, digest))
                writes[turn % 2] = writer.submit(_write_shard, store, prefix, k, stack[:len(rows)], rows, rejects)
                images += len(rows)
                rejected += len(rejects)
            for write in writes:
                if write is not None:
                    write.result()
    finally:
        window.close()
        if pool:
            pool.terminate()
        writer.shutdown(wait=True)  # a write under way ends (each file is atomic) before we return
    return SliceResult(len(todo), len(mine) - len(todo), images, rejected, time.perf_counter() - t0)


def _rejects_csv(rejects: list[tuple[str, str]]) -> bytes:
    return _csv_bytes(pd.DataFrame([(printable(p), r) for p, r in rejects], columns=REJECT_COLUMNS))


def _write_shard(store, prefix, k, stack, rows, rejects) -> None:
    store.put_stream(_shard_key(prefix, k, "npy"), lambda f: np.save(f, stack))
    store.put_bytes(_shard_key(prefix, k, "rejects.csv"), _rejects_csv(rejects))
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
    store.put_bytes(join_key(prefix, "rejects.csv"), _csv_bytes(rejects))
    if len(index) == 0:
        raise DataError(f"{store.url}/{prefix}: 0 images accepted, all {len(rejects)} rejected (most often: "
                        f"{_reasons(list(rejects.itertuples(index=False, name=None)))}); every reason is in "
                        f"{store.url}/{join_key(prefix, 'rejects.csv')}. Fix the dataset and run again")
    if index["image_id"].duplicated().any():
        raise DataError(f"{store.url}/{prefix}: image ids {index.loc[index['image_id'].duplicated(), 'image_id'].head().tolist()} "
                        "are in more than one shard; preprocess again into a new --out (or --overwrite)")
    store.put_bytes(join_key(prefix, "index.csv"), _csv_bytes(index))
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
               show_progress: bool = True, overwrite: bool = False) -> tuple[SliceResult, dict]:
    """The whole dataset in this process: one slice covering every shard, then merge."""
    result = run_slice(spec, store, prefix, workers, 0, 1, show_progress, overwrite=overwrite)
    return result, merge(store, prefix)
