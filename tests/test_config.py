"""Settings from CXRJOBS_* and the config file: every mistake is an error that names the file or
variable and what to do (exit 2, no traceback)."""

from __future__ import annotations

import sys

import pytest

from cxrjobs.cli import main
from cxrjobs.config import load_settings
from cxrjobs.errors import ConfigError


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    for name in ("CXRJOBS_CONFIG", "CXRJOBS_STORE", "CXRJOBS_S3_ENDPOINT", "CXRJOBS_S3_SECURE",
                 "CXRJOBS_CACHE_DIR", "CXRJOBS_STATE_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    return monkeypatch


def cli(monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The real entry point, as the `cxrjobs` script runs it: (exit code, stderr)."""
    monkeypatch.setattr(sys, "argv", ["cxrjobs", *args])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


def refused(words: list[str]) -> str:
    with pytest.raises(ConfigError) as e:
        load_settings()
    msg = str(e.value)
    assert all(w in msg for w in words), msg
    return msg


@pytest.mark.parametrize("text, words", [
    # a YAML error: was a traceback; now one line that says where
    ("store: [1,2\n", ["not valid YAML", "expected ',' or ']'", "(line 2, column 1)", "fix the file"]),
    ("store: 42\n", ["store is 42 (int); it takes text"]),                      # was AttributeError
    ("cache_dir: [a, b]\n", ["cache_dir is ['a', 'b'] (list)"]),
    ("1: a\n", ["unknown settings ['1']", "known:"]),                           # was AttributeError
    ("- store\n", ["expected a mapping of settings", "got a list"]),
    ("store: ''\n", ["store is empty"]),                                        # was the working directory
    ("s3_secure: ture\n", ["s3_secure: ture", "not a yes/no setting"]),         # was TLS off, silently
    ("s3_secure: [1]\n", ["not a yes/no setting"]),
])
@pytest.mark.parametrize("where", ["CXRJOBS_CONFIG", "./cxrjobs.yaml"])
def test_a_bad_config_file_is_named(clean_env, tmp_path, capsys, text, words, where):
    path = tmp_path / ("mine.yaml" if where == "CXRJOBS_CONFIG" else "cxrjobs.yaml")
    path.write_text(text)
    if where == "CXRJOBS_CONFIG":
        clean_env.setenv("CXRJOBS_CONFIG", str(path))
    msg = refused(words)
    assert str(path) in msg and "\n" not in msg, msg  # the full path, on one line
    code, err = cli(clean_env, capsys, "runs")
    assert code == 2 and err.startswith("error: ") and "Traceback" not in err, err


def test_an_unreadable_config_file_is_named(clean_env, tmp_path):
    clean_env.setenv("CXRJOBS_CONFIG", str(tmp_path))
    refused([f"CXRJOBS_CONFIG={tmp_path}: a folder, not a file"])
    clean_env.setenv("CXRJOBS_CONFIG", str(tmp_path / "nope.yaml"))
    refused(["nope.yaml: a path that does not exist", "or unset it"])
    (tmp_path / "cxrjobs.yaml").write_bytes(b"store: \xff\n")
    clean_env.delenv("CXRJOBS_CONFIG")
    refused([str(tmp_path / "cxrjobs.yaml"), "cannot read the settings", "utf-8"])


def test_empty_and_comment_only_files_set_nothing(clean_env, tmp_path):
    for text in ("", "# nothing yet\n", "store:\n"):
        (tmp_path / "cxrjobs.yaml").write_text(text)
        assert load_settings().store == "./.cxrjobs"


@pytest.mark.parametrize("store, words", [
    ("gs://bucket/x", ["CXRJOBS_STORE=gs://bucket/x: unsupported store URL; use a local directory or s3://"]),
    ("https://host/bucket", ["unsupported store URL; use a local directory"]),
    ("store://x", ["unsupported store URL"]),
    ("S3://cxr/data", ["unsupported store URL; did you mean s3://cxr/data (lower case)?"]),
    ("s3:///x", ["CXRJOBS_STORE=s3:///x: no bucket"]),
])
def test_an_unknown_store_scheme_is_refused_not_made_a_folder(clean_env, tmp_path, capsys, store, words):
    """CXRJOBS_STORE=gs://bucket/x made a folder 'gs:' in the working directory."""
    clean_env.setenv("CXRJOBS_STORE", store)
    clean_env.setenv("CXRJOBS_S3_ENDPOINT", "127.0.0.1:9")
    refused(words)
    code, err = cli(clean_env, capsys, "data", "preprocess", "raw", "--format", "covid", "--size", "32",
                    "--out", "store://datasets/t")
    assert code == 2 and ("unsupported store URL" in err or "no bucket" in err), err
    assert not any(tmp_path.iterdir())


def test_a_store_url_from_the_file_names_the_file(clean_env, tmp_path):
    (tmp_path / "cxrjobs.yaml").write_text("store: gs://bucket/x\n")
    refused([f"{tmp_path / 'cxrjobs.yaml'}: store: gs://bucket/x: unsupported store URL"])
    # the environment wins over the file, and its message names the variable
    clean_env.setenv("CXRJOBS_STORE", "gcs://b")
    refused(["CXRJOBS_STORE=gcs://b: unsupported"])


def test_endpoint_errors_name_the_file_when_the_file_set_it(clean_env, tmp_path):
    """They said CXRJOBS_S3_ENDPOINT even when that variable was unset and the file set it."""
    (tmp_path / "cxrjobs.yaml").write_text("store: s3://b/p\ns3_endpoint: ftp://minio:9000\n")
    msg = refused([f"{tmp_path / 'cxrjobs.yaml'}: s3_endpoint: ftp://minio:9000: scheme 'ftp'"])
    assert "CXRJOBS_S3_ENDPOINT" not in msg
    (tmp_path / "cxrjobs.yaml").write_text("store: s3://b/p\ns3_endpoint: https://m:9000\ns3_secure: false\n")
    refused(["s3_endpoint: https://m:9000 says https but", "s3_secure: False says TLS off"])
    clean_env.setenv("CXRJOBS_S3_SECURE", "maybe")
    refused(["CXRJOBS_S3_SECURE=maybe: 'maybe' is not a yes/no setting"])


def test_local_paths_with_a_colon_and_s3_urls_still_work(clean_env, tmp_path):
    for local in ("./runs:2026", str(tmp_path / "a:b"), "runs", "~/x:y"):
        clean_env.setenv("CXRJOBS_STORE", local)
        assert load_settings().store == local and not load_settings().is_s3
    clean_env.setenv("CXRJOBS_STORE", "s3://bucket/prefix")
    clean_env.setenv("CXRJOBS_S3_ENDPOINT", "127.0.0.1:9000")
    assert load_settings().is_s3
    (tmp_path / "cxrjobs.yaml").write_text("s3_secure: true\n")  # a YAML boolean is fine here
    clean_env.setenv("CXRJOBS_S3_ENDPOINT", "https://127.0.0.1:9000")
    assert load_settings().s3_secure is True
    for text, want in (("s3_secure: 'yes'\n", True), ("s3_secure: 0\n", False), ("s3_secure: off\n", False)):
        (tmp_path / "cxrjobs.yaml").write_text(text)
        clean_env.setenv("CXRJOBS_S3_ENDPOINT", "127.0.0.1:9000")
        assert load_settings().s3_secure is want
