"""The command line as a user meets it: help, config errors, queries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipeline.cli import app

STAGES = ["ingest", "resolve", "curate", "download", "train", "query", "report", "run"]
cli = CliRunner()


def test_help_lists_every_stage():
    out = cli.invoke(app, ["--help"]).output
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_every_stage_has_help(stage):
    res = cli.invoke(app, [stage, "--help"])
    assert res.exit_code == 0 and "Usage" in res.output


def test_bad_config_fails_at_once_naming_the_key(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text("[runner]\nworkerz = 2\n")
    res = cli.invoke(app, ["resolve", "--config", str(cfg), "--data", str(tmp_path)])
    assert res.exit_code == 2 and "runner.workerz" in res.output


def test_unknown_source_lists_known_ones(tmp_path):
    res = cli.invoke(app, ["ingest", "nosuch", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "unknown source" in res.output


def test_console_script_runs():
    exe = Path(sys.executable).with_name("biocorpus")
    out = subprocess.run([str(exe), "--help"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "ingest" in out.stdout


def test_query_over_an_empty_root_says_what_to_do(tmp_path):
    res = cli.invoke(app, ["query", "SELECT 1", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "run a stage first" in res.output


def test_query_over_a_root_whose_path_has_a_quote(tmp_path):
    import pyarrow as pa

    from pipeline.io import atomic_write_parquet

    root = tmp_path / "o'brien's data"
    atomic_write_parquet(pa.table({"record_id": ["a", "b"], "family": ["Ursidae", "Ursidae"]}),
                         root / "raw/source=gbif/dataset=x/part-00000.parquet")
    res = cli.invoke(app, ["query", "SELECT family, count(*) AS n FROM records GROUP BY 1", "--data", str(root),
                           "--format", "csv"])
    assert res.exit_code == 0, res.output
    assert res.output.splitlines()[1:] == ['"Ursidae",2']


@pytest.mark.parametrize("source", ["ifcb", "gbif", "eol", "ecotaxa"])
def test_ingest_of_a_folder_with_nothing_to_read_says_so(tmp_path, source):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a source file")
    res = cli.invoke(app, ["ingest", source, "--input", str(tmp_path / "empty"), "--data", str(tmp_path / "d")])
    assert res.exit_code == 2, res.output
    assert f"ingest {source}: nothing to read in" in res.output and "check INPUT" in res.output


def test_an_api_query_with_nothing_new_runs_to_zero_records(tmp_path):
    """Only a local INPUT with nothing to read is an error: a dashboard or API window without new
    items (a daily pull) is an ingest of 0 records."""
    from pipeline.execute import run_ingest
    from pipeline.runners import make_runner
    from sources.ifcb_dashboard import CONNECTOR, IfcbDashboardOptions

    class NothingNew(type(CONNECTOR)):
        def tasks(self, input, options):
            return []

    result = run_ingest(NothingNew(), IfcbDashboardOptions(), "https://ifcb.example.org/api/export_metadata/x",
                        tmp_path, make_runner("local", workers=1, progress=False), "x")
    assert result.stats["in"] == 0 and result.stats["tasks"] == 0
