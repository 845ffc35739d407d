"""`cxrjobs collect RUN -o DIR` against a real S3 server (moto): artifacts, checksums, resume."""

from __future__ import annotations

import hashlib
import json

from typer.testing import CliRunner

from cxrjobs.cli import app

runner = CliRunner()

RUN_FILES = {
    "runs/r1/spec.json": b'{"kind": "nih-train"}',
    "runs/r1/metrics.jsonl": b'{"epoch": 1}\n',
    "runs/r1/artifacts/result.json": b'{"test": {}}',
    "runs/r1/eval/covid-test/results.json": b"{}",
    "runs/r1/eval/covid-test/roc.png": bytes(range(256)) * 40,
    "runs/r1/checkpoints/latest.pt": b"w" * 5000,
    "runs/r1/checkpoints/best.pt": b"b" * 5000,
    "runs/r10/metrics.jsonl": b"other run: must not be collected",
}


def _collect(*args):
    res = runner.invoke(app, ["collect", *args, "--json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_collect_downloads_verifies_and_resumes(s3_env, tmp_path):
    for key, data in RUN_FILES.items():
        s3_env.put_bytes(key, data)
    out = tmp_path / "out"
    res = _collect("r1", "-o", str(out))
    assert (res["files"], res["downloaded"], res["checkpoints_skipped"]) == (5, 5, 2)
    assert not (out / "checkpoints").exists() and (out / "eval/covid-test/roc.png").is_file()
    assert not (out / "r10").exists()
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    for rel, sha in sums.items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == sha
        assert (out / rel).read_bytes() == RUN_FILES[f"runs/r1/{rel}"]

    # Rerun: nothing to fetch. With --checkpoints: only the checkpoints. A damaged local file is
    # fetched again.
    assert _collect("r1", "-o", str(out))["downloaded"] == 0
    (out / "metrics.jsonl").write_bytes(b'{"epoch": 9}\n')
    res = _collect("r1", "-o", str(out), "--checkpoints")
    assert (res["files"], res["downloaded"], res["already_there"]) == (7, 3, 4)
    assert (out / "metrics.jsonl").read_bytes() == RUN_FILES["runs/r1/metrics.jsonl"]
    assert (out / "checkpoints/best.pt").read_bytes() == b"b" * 5000
    assert "checkpoints/best.pt" in (out / "SHA256SUMS").read_text()


def test_collect_unknown_run_is_a_clear_error(s3_env, tmp_path):
    res = runner.invoke(app, ["collect", "nope", "-o", str(tmp_path / "o")])
    assert res.exit_code != 0 and "no run 'nope'" in str(res.exception)


def test_a_corrupted_transfer_is_detected_and_not_kept(tmp_path):
    """verify=True (what collect uses): a download whose bytes do not hash to the store's sha256
    is an error naming the object, and the bad file is removed."""
    import pytest

    from cxrjobs.errors import StoreError
    from cxrjobs.storage import LocalStore
    from cxrjobs.storage.sync import download_prefix

    class Flaky(LocalStore):
        def get_file(self, key, path):
            super().get_file(key, path)
            with open(path, "ab") as f:
                f.write(b"!")  # a transfer that went wrong

    store = Flaky(tmp_path / "store")
    store.put_bytes("runs/r1/metrics.jsonl", b"{}\n")
    with pytest.raises(StoreError, match="runs/r1/metrics.jsonl: downloaded sha256"):
        download_prefix(store, "runs/r1", tmp_path / "out", progress=False, verify=True)
    assert not (tmp_path / "out" / "metrics.jsonl").exists()
