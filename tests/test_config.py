"""Settings from CXRJOBS_* and the config file: every mistake is an error that names the file or
variable and what to do (exit 2, no traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cxrjobs.cli import app
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


@pytest.mark.parametrize("text, words", [
    ("store: [1,2\n", ["cannot read the settings", "expected ',' or ']'"]),   # a YAML error: was a traceback
    ("store: 42\n", ["store is 42 (int); it takes text"]),                      # was AttributeError
    ("cache_dir: [a, b]\n", ["cache_dir is ['a', 'b'] (list)"]),
])
@pytest.mark.parametrize("where", ["CXRJOBS_CONFIG", "./cxrjobs.yaml"])
def test_a_bad_config_file_is_named(clean_env, tmp_path, text, words, where):
    path = tmp_path / ("mine.yaml" if where == "CXRJOBS_CONFIG" else "cxrjobs.yaml")
    path.write_text(text)
    if where == "CXRJOBS_CONFIG":
        clean_env.setenv("CXRJOBS_CONFIG", str(path))
    with pytest.raises(ConfigError) as e:
        load_settings()
    assert str(path.name) in str(e.value) and all(w in str(e.value) for w in words), e.value
    res = CliRunner().invoke(app, ["runs"])
    assert isinstance(res.exception, ConfigError)  # main() prints it and exits 2


@pytest.mark.parametrize("store", ["gs://bucket/x", "S3://cxr/data", "https://host/bucket", "store://x"])
def test_an_unknown_store_scheme_is_refused_not_made_a_folder(clean_env, tmp_path, store):
    """CXRJOBS_STORE=gs://bucket/x made a folder 'gs:' in the working directory."""
    clean_env.setenv("CXRJOBS_STORE", store)
    with pytest.raises(ConfigError, match="stores are not supported; use a local directory or s3://"):
        load_settings()
    assert not any(tmp_path.iterdir())


def test_local_paths_with_a_colon_and_s3_urls_still_work(clean_env, tmp_path):
    clean_env.setenv("CXRJOBS_STORE", "./runs:2026")
    assert load_settings().store == "./runs:2026"
    clean_env.setenv("CXRJOBS_STORE", "s3://bucket/prefix")
    clean_env.setenv("CXRJOBS_S3_ENDPOINT", "127.0.0.1:9000")
    assert load_settings().is_s3
    (tmp_path / "cxrjobs.yaml").write_text("s3_secure: true\n")  # a YAML boolean is fine here
    clean_env.setenv("CXRJOBS_S3_ENDPOINT", "https://127.0.0.1:9000")
    assert load_settings().s3_secure is True
