"""What a run id names, read from the run's records in the store (JSON only: light)."""

from __future__ import annotations

import json
import os

from cxrjobs.errors import CxrError, StoreError
from cxrjobs.storage.base import ObjectStore, join_key

BEST = "checkpoints/best.pt"


def search_note(store: ObjectStore, run: str) -> str | None:
    """For a hyper-parameter search given where a trained model is expected (predict, evaluate,
    transfer --from): which run holds its best trial. None for any other run."""
    try:
        spec = json.loads(store.get_text(join_key("runs", run, "spec.json")))
    except Exception:  # no such run, or not a run's record: the caller's own message applies
        return None
    if spec.get("kind") != "tune":
        return None
    try:
        best = (json.loads(store.get_text(join_key("runs", run, "artifacts", "result.json"))).get("best")
                or {}).get("run")
    except Exception:
        best = None
    if best:
        return f"{run} is a hyper-parameter search, not a trained model: give its best trial's run, {best}"
    return (f"{run} is a hyper-parameter search, not a trained model: its best trial becomes a run "
            f"when the search finishes with a result (`cxrjobs status {run}`)")


def best_run_taken(store: ObjectStore, search: str, best: str) -> str | None:
    """Why search `search` cannot export its best trial as run `best` (NAME-best): a run of that
    name exists that the search did not make (it would be overwritten, its logs and evaluations
    left beside other weights). None when the name is free or holds this search's own export."""
    prefix = join_key("runs", best)
    if next(iter(store.list(prefix + "/")), None) is None:
        return None
    try:
        made_by = json.loads(store.get_text(join_key(prefix, "artifacts", "result.json"))).get("tuned_by")
    except Exception:
        made_by = None
    if made_by == search:
        return None
    return (f"run {best} exists in {store.url} and search {search} did not make it: a search exports its "
            f"best trial as NAME-best, which would overwrite that run; pick another --name for the search")


def unfinished_note(store: ObjectStore, run: str) -> str | None:
    """Why a run named as the weights to start from (transfer --from) has none yet: a search (see
    search_note), or a run that has not finished. None when it has its best.pt, or is no run."""
    if (store.exists(join_key("runs", run, BEST))
            or not store.exists(join_key("runs", run, "spec.json"))):
        return None
    return search_note(store, run) or (f"run {run} has no checkpoints/best.pt in {store.url} yet: let it "
                                       f"finish first (`cxrjobs status {run}`)")


def epochs_if_unfinished(store: ObjectStore, run: str) -> int | None:
    """The epochs a run has recorded when it has a record but no artifacts/result.json, which
    training writes last (after the test split and the OOD detector): its best.pt is not its
    final model yet. None for a finished run, or a name with no run record."""
    if (store.exists(join_key("runs", run, "artifacts", "result.json"))
            or not store.exists(join_key("runs", run, "spec.json"))):
        return None
    return len(store.get_jsonl(join_key("runs", run, "metrics.jsonl")))


def training_note(store: ObjectStore, run: str) -> str | None:
    """Why a run's best.pt is not its final model yet (see epochs_if_unfinished); None for a
    finished run, or a name with no run record (the caller's own message applies)."""
    done = epochs_if_unfinished(store, run)
    if done is None:
        return None
    # Light: no backend is asked whether the run still runs, so both cases are named.
    return (f"run {run} has not finished training ({done} epoch(s) recorded so far; `cxrjobs status {run}` "
            "says whether it still runs): its best.pt is not its final model. Wait for a running run; "
            "resubmit a cancelled or failed one to finish it, or pass --allow-unfinished to score its "
            "best.pt so far")


def _store_key(ref: str, store: ObjectStore) -> str | None:
    """A reference as a key of `store`: s3://bucket/prefix/KEY of this store, or a plain key."""
    if ref.startswith("s3://"):
        base = store.url.rstrip("/") + "/"
        if not ref.startswith(base):
            raise CxrError(f"{ref} is outside the configured store {store.url}; upload it there "
                           "(cxrjobs data upload) or pass a local file")
        return ref[len(base):]
    return ref if not os.path.isabs(ref) else None


def locate_weights(ref: str, store: ObjectStore) -> tuple[str, str]:
    """("run", key) | ("key", key) | ("file", path) for a run id, store key, s3:// URL or path.
    Light (store lookups only): the submit-time check and the replica that loads them agree."""
    try:
        best = join_key("runs", ref, BEST)
    except StoreError:  # an absolute path or the like: no run id
        best = None
    if best is not None:
        if store.exists(best):
            return "run", best
        note = unfinished_note(store, ref)
        if note:
            raise CxrError(note)
    key = _store_key(ref, store)
    if key is not None:
        try:
            if store.exists(key):
                return "key", key
        except StoreError:  # not a valid key (e.g. '../w.pt'): try it as a file below
            pass
    if os.path.isfile(ref):
        return "file", ref
    raise CxrError(f"weights {ref!r} not found: not a finished run (runs/{ref}/{BEST}), not an "
                   f"object in store {store.url} and not a local file")
