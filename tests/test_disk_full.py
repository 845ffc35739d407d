"""A full disk while preprocessing or writing a checkpoint: a clear error that names the path and
the free space (exit 2), and no partial file left behind. The full disk is real: a 1 MiB tmpfs."""

from __future__ import annotations

import subprocess
import tempfile
from pathlib import Path

import pytest

from cxrjobs.errors import CxrError, StoreError
from cxrjobs.storage import LocalStore


@pytest.fixture
def tiny_fs(tmp_path):
    """A 1 MiB file system (tmpfs), mounted for this test. Mounting needs root (CAP_SYS_ADMIN)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs to fill a disk for real (needs root / CAP_SYS_ADMIN): "
                    f"{res.stderr.strip() or res.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


def test_preprocessing_into_a_full_disk_names_path_and_free_space(tiny_fs, tmp_path):
    from cxrjobs.data.preprocess import preprocess
    from cxrjobs.data.synth import synth_nih
    from cxrjobs.specs.preprocess import PreprocessSpec

    s = synth_nih(tmp_path / "nih", 40, size=256, seed=2, special=False)
    spec = PreprocessSpec(source=str(s.out), format="nih", size=256, shard_size=8)  # 512 KiB shards
    with pytest.raises(StoreError) as e:
        preprocess(spec, LocalStore(tiny_fs / "out"), "", show_progress=False)
    msg = str(e.value)
    assert isinstance(e.value, CxrError)  # the CLI prints it and exits 2
    assert "no space left" in msg and str(tiny_fs / "out" / "shards") in msg
    assert " free of 1.0 MB" in msg and "another --out" in msg
    assert leftovers(tiny_fs) == []
    # the shards finished before the disk filled are kept: a rerun elsewhere is not needed to resume
    assert list((tiny_fs / "out" / "shards").glob("shard-00000.csv"))


def test_checkpoint_into_a_full_disk_names_path_and_free_space(tiny_fs):
    import torch

    from cxrjobs.train.checkpoint import save

    store = LocalStore(tiny_fs / "store")
    with pytest.raises(StoreError) as e:  # torch.save itself only says "unexpected pos"
        save(store, "runs/r/checkpoints/latest.pt", {"model": torch.zeros(1 << 19)})  # 2 MiB
    msg = str(e.value)
    assert "no space left" in msg and "runs/r/checkpoints/latest.pt" in msg and "free of" in msg
    assert leftovers(tiny_fs) == [] and not (tiny_fs / "store/runs/r/checkpoints/latest.pt").exists()


def test_checkpoint_to_s3_with_a_full_temp_dir(tiny_fs, s3_env, monkeypatch):
    import torch

    from cxrjobs.train.checkpoint import save

    monkeypatch.setattr(tempfile, "tempdir", str(tiny_fs))  # S3 uploads are staged in TMPDIR
    with pytest.raises(StoreError) as e:
        save(s3_env, "runs/r/checkpoints/latest.pt", {"model": torch.zeros(1 << 19)})
    assert "no space left" in str(e.value) and str(tiny_fs) in str(e.value) and "TMPDIR" in str(e.value)
    assert leftovers(tiny_fs) == [] and not s3_env.exists("runs/r/checkpoints/latest.pt")
