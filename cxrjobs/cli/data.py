"""`cxrjobs data ...`: phantom data, preprocessing, merge, upload, inspect."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from pydantic import ValidationError
from rich.table import Table

from cxrjobs.cli.common import out, print_json, validation_error
from cxrjobs.errors import ConfigError
from cxrjobs.storage import STORE_SCHEME, LocalStore, ObjectStore, open_location, open_store

app = typer.Typer(no_args_is_help=True, help="Dataset commands: synth, preprocess, merge, upload, inspect.")


def _dest(dest: str) -> tuple[ObjectStore, str]:
    """A local folder, or store://datasets/NAME in the configured object store."""
    if dest.startswith(STORE_SCHEME):
        return open_location(dest)
    return LocalStore(dest), ""


def _left_out(excluded: dict | None) -> str:
    """Rows a filter left out (views, modality): not rejects, but a user counting files asks."""
    parts = [f"{n} {why}" for why, n in (excluded or {}).items() if n]
    return f"; left out by the filters: {', '.join(parts)}" if parts else ""


def _fractions(text: str) -> tuple[float, ...]:
    try:
        parts = tuple(float(x) for x in text.split(","))
        if len(parts) != 3:
            raise ValueError(text)
        return parts
    except ValueError:
        raise ConfigError(f"--fractions {text!r}: expected three numbers train,val,test that sum to 1, "
                          "e.g. 0.7,0.1,0.2") from None


@app.command()
def synth(kind: str = typer.Argument(..., help="nih or covid"),
          out_dir: Path = typer.Option(..., "--out", help="folder to create"),
          count: int = typer.Option(500, help="number of images"),
          size: int = typer.Option(1024, help="image side in pixels"),
          seed: int = typer.Option(0, min=0, max=2**32 - 1),
          from_csv: Optional[Path] = typer.Option(None, exists=True, dir_okay=False,
                                                  help="nih: key images to real rows of this Data_Entry CSV"),
          workers: int = typer.Option(1, help="processes")):
    """Write a phantom dataset in the real on-disk layout (CSV + PNGs, with some RGBA, 16-bit and
    corrupt files) whose images carry learnable, class-dependent patterns.

    Example: cxrjobs data synth nih --out /tmp/nih --count 1000 --size 1024
    """
    from cxrjobs.data import synth as s

    if kind == "nih":
        summary = s.synth_nih(out_dir, count, size=size, seed=seed, from_csv=from_csv, workers=workers)
    elif kind == "covid":
        if from_csv is not None:
            raise typer.BadParameter("only for nih: a covid phantom set has no real table to follow",
                                     param_hint="--from-csv")
        summary = s.synth_covid(out_dir, count, size=size, seed=seed, workers=workers)
    else:
        raise typer.BadParameter(f"{kind!r}: choose nih or covid", param_hint="KIND")
    out.print(summary.line())


@app.command()
def preprocess(source: str = typer.Argument(..., help="dataset folder, or store://raw/NAME / s3://BUCKET/PREFIX"),
               format: str = typer.Option(..., "--format", help="nih | covid | imagefolder"),
               size: int = typer.Option(224, help="output side S (images become S x S)"),
               out_dest: str = typer.Option(..., "--out", help="local folder, or store://datasets/NAME"),
               fit: str = typer.Option("pad", help="pad (aspect kept, zero-padded; the paper's) | crop"),
               workers: int = typer.Option(1, help="decoding processes"),
               strict: bool = typer.Option(False, help="stop at the first bad file instead of listing it in rejects.csv"),
               seed: int = typer.Option(0, min=0, max=2**32 - 1, help="seed of the patient-wise split"),
               fractions: str = typer.Option("0.7,0.1,0.2", help="train,val,test fractions of patients"),
               shard_size: Optional[int] = typer.Option(None, help="images per shard (default: ~64 MiB shards)"),
               shard_index: int = typer.Option(0, help="this slice (an Indexed Job pod's JOB_COMPLETION_INDEX)"),
               num_shards: int = typer.Option(1, min=1, help="number of slices; >1 skips the merge"),
               csv: Optional[str] = typer.Option(None, help="label CSV, if not in the usual place"),
               views: Optional[str] = typer.Option(None, help="covid: comma-separated views to keep"),
               class_map: Optional[str] = typer.Option(None, help="imagefolder: e.g. COVID=1,covid=1,NORMAL=0"),
               labels: Optional[str] = typer.Option(None, help="imagefolder: class names in order, e.g. non-COVID,COVID-19"),
               patient_regex: Optional[str] = typer.Option(None, help="imagefolder: regex whose group 1 is the patient id"),
               overwrite: bool = typer.Option(False, "--overwrite", help="replace an output made with other options (else refused)")):
    """Decode, resize (longer side S, zero-pad to S x S) and pack images into uint8 shards with
    index.csv, rejects.csv and manifest.json. Resumable: finished shards are skipped when the
    output was made with the same options; an output made with other options is refused unless
    --overwrite. The source may be a store prefix uploaded with `data upload DIR --name raw/NAME`.

    Example: cxrjobs data preprocess ../shared/data/nih-sample --format nih --size 224 --out /tmp/nih-224
    """
    from cxrjobs.data.preprocess import PreprocessSpec, merge, run_slice
    from cxrjobs.specs.preprocess import normalize_source

    try:
        spec = PreprocessSpec(
            source=normalize_source(source), format=format, size=size, fit=fit, strict=strict, seed=seed,
            fractions=_fractions(fractions), shard_size=shard_size, csv=csv,
            views=views.split(",") if views else None, class_map=class_map,
            labels=labels.split(",") if labels else None, patient_regex=patient_regex)
    except ValidationError as e:
        raise validation_error(e, "preprocess options") from None
    store, prefix = _dest(out_dest)
    res = run_slice(spec, store, prefix, workers, shard_index, num_shards, overwrite=overwrite)
    where = f"{store.url}/{prefix}".rstrip("/")
    if num_shards == 1:
        m = merge(store, prefix)
        out.print(f"preprocessed {m['images']} images ({m['rejected']} rejected, see rejects.csv"
                  f"{_left_out(m.get('excluded'))}) into {m['num_shards']} shards at {size}px in "
                  f"{res.seconds:.1f}s -> {where}")
    else:
        out.print(f"slice {shard_index}/{num_shards}: {res.images} images, {res.rejected} rejected, "
                  f"{res.shards_skipped} shards already done, {res.seconds:.1f}s -> {where}; "
                  "run `cxrjobs data merge` when all slices are done")


@app.command()
def merge(dest: str = typer.Argument(..., help="local folder, or store://datasets/NAME")):
    """Join the slices of a sliced preprocessing run into one dataset.

    Example: cxrjobs data merge /tmp/nih-224
    """
    from cxrjobs.data.preprocess import merge as merge_slices

    store, prefix = _dest(dest)
    m = merge_slices(store, prefix)
    out.print(f"merged {m['num_shards']} shards: {m['images']} images, {m['rejected']} rejected -> "
              f"{store.url}/{prefix}".rstrip("/"))


@app.command()
def upload(directory: Path = typer.Argument(..., help="raw or preprocessed dataset folder"),
           name: Optional[str] = typer.Option(None, help="NAME or datasets/NAME (preprocessed, the default), "
                                                          "raw/NAME (a raw folder to preprocess from the store)"),
           workers: int = typer.Option(8, help="parallel uploads")):
    """Upload a dataset folder to the configured store: a preprocessed one under datasets/NAME,
    a raw one under raw/NAME (then `cxrjobs submit preprocess store://raw/NAME ...`). Resumable:
    objects whose size and checksum already match are skipped; a name that holds another dataset is
    refused. Credentials come from the environment.

    Example: CXRJOBS_STORE=s3://cxr/data cxrjobs data upload ../shared/data/covid-xray --name raw/covid
    """
    from cxrjobs.storage.sync import check_upload, dataset_prefix, upload_dir

    if not directory.is_dir():
        raise typer.BadParameter(f"{directory} is not a folder", param_hint="DIRECTORY")
    prefix = dataset_prefix(name or directory.resolve().name)
    store = open_store()
    check_upload(directory, store, prefix)
    summary = upload_dir(directory, store, prefix, workers=workers)
    out.print(f"{summary.line()} -> {store.url}/{prefix}")


@app.command()
def inspect(dest: str = typer.Argument(..., help="preprocessed dataset: local folder, datasets/NAME or "
                                                  "store://datasets/NAME"),
            as_json: bool = typer.Option(False, "--json", help="print JSON")):
    """Counts per label, split and view; patients per split; reject reasons.

    Example: cxrjobs data inspect /tmp/nih-224
    """
    from cxrjobs.data.inspect import inspect_dataset
    from cxrjobs.specs.train import dataset_ref

    if not dest.startswith(STORE_SCHEME) and Path(dest).exists() and not Path(dest).is_dir():
        raise ConfigError(f"{dest}: a file, not a dataset folder; give the folder a preprocessing run wrote")
    if not dest.startswith(STORE_SCHEME) and not Path(dest).is_dir():
        # As the jobs' --data: a name that is no local folder is the store's dataset of that name.
        try:
            key = dataset_ref(dest)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        found = open_store()
        if not found.exists(f"{key.strip('/')}/manifest.json"):
            raise ConfigError(f"{dest}: neither a local folder nor a dataset in store {found.url} (expected "
                              f"{key.strip('/')}/manifest.json); `cxrjobs data preprocess ... --out "
                              "store://datasets/NAME` makes one")
        dest = STORE_SCHEME + key
    store, prefix = _dest(dest)
    root = store.local_path(prefix)
    if root is None:
        from cxrjobs.config import load_settings
        from cxrjobs.storage.sync import materialize
        root = materialize(store, prefix, load_settings().local_cache)
    info = inspect_dataset(root)
    if as_json:
        print_json(info)
        return
    out.print(f"[bold]{info['dataset']}[/] ({info['format']}, {info['image_size']}px): "
              f"{info['images']} images, {info['rejected']} rejected{_left_out(info['excluded'])}")
    t = Table("split", "images", "patients")
    for s, v in info["splits"].items():
        t.add_row(s, str(v["images"]), str(v["patients"]))
    out.print(t)
    t = Table("label", "train", "val", "test")
    for name, v in info["labels"].items():
        t.add_row(name, *(str(v.get(s, 0)) for s in ("train", "val", "test")))
    out.print(t)
    out.print("views: " + ", ".join(f"{k} {v}" for k, v in info["views"].items()))
    if info["reject_reasons"]:
        t = Table("reject reason", "files")
        for r, n in info["reject_reasons"].items():
            t.add_row(r, str(n))
        out.print(t)
