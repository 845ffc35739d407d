"""`-o` paths of the wrong kind (a folder where a file goes, a file where a folder goes): a clear
error naming -o, exit 2, no traceback, nothing left behind."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from cxrjobs.cli import app
from cxrjobs.errors import ConfigError


def test_report_into_a_folder_is_refused_before_any_work(local_env, tmp_path):
    from cxrjobs.report.html import write_report

    folder = tmp_path / "reports"
    folder.mkdir()
    # Refused before the report is built: the run need not even exist.
    with pytest.raises(ConfigError, match=r"-o .*reports: is a folder; give the report's file name, e\.g\. .*report\.html"):
        write_report(local_env, ["no-such-run"], folder)
    assert not list(tmp_path.glob("*.tmp")) and not list(folder.iterdir())


@pytest.mark.parametrize("where", ["a-file", "a-file/sub"])
def test_collect_into_a_file_is_refused(local_env, tmp_path, where):
    local_env.put_text("runs/r1/spec.json", '{"kind": "train"}')
    (tmp_path / "a-file").write_text("keep me")
    res = CliRunner().invoke(app, ["collect", "r1", "-o", str(tmp_path / where)])
    assert isinstance(res.exception, ConfigError), res.output  # main() prints it, exit 2
    assert f"-o {tmp_path / where}: cannot make this folder" in str(res.exception)
    assert (tmp_path / "a-file").read_text() == "keep me"
