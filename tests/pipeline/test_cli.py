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


DATA = Path(__file__).resolve().parents[1] / "data"
ECOTAXA = DATA / "plankton" / "ecotaxa"
NO_IMAGE = "[sources.ecotaxa]\nrequire_image = false\n"


def _err(res) -> str:
    return res.output + (res.stderr if res.stderr_bytes is not None else "")


def test_a_mistyped_option_is_an_error_not_a_beam_argument(tmp_path):
    res = cli.invoke(app, ["curate", "--data", str(tmp_path), "--forse"])
    assert res.exit_code == 2 and "No such option: --forse" in _err(res)
    res = cli.invoke(app, ["resolve", "--data", str(tmp_path), "--runnr", "beam"])
    assert res.exit_code == 2 and "--runnr" in _err(res)


def test_beam_arguments_after_the_separator_reach_the_config_and_the_local_runner_says_it_ignores_them(tmp_path):
    res = cli.invoke(app, ["curate", "--data", str(tmp_path), "--", "--runner=DataflowRunner", "--project=p"])
    out = _err(res)
    assert "the local runner ignores the Beam arguments after `--` (--runner=DataflowRunner --project=p)" in out
    assert "resolved does not exist; run `biocorpus resolve` first" in out


def test_a_bad_flag_value_is_said_to_come_from_the_command_line(tmp_path):
    res = cli.invoke(app, ["curate", "--data", str(tmp_path), "--runner", "spark"])
    assert res.exit_code == 2 and "`runner.name`, given on the command line" in _err(res)


def test_an_unwritable_data_root_is_a_message_not_a_traceback(tmp_path):
    import errno

    from pipeline.cli import _os_error

    (tmp_path / "afile").write_text("x")
    res = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(ECOTAXA / "example_table_ifcb.tsv"),
                           "--data", str(tmp_path / "afile" / "root")])
    assert res.exit_code == 2 and "Traceback" not in _err(res) and "Not a directory" in _err(res)
    assert "choose a writable data root" in _os_error(OSError(errno.EROFS, "Read-only file system", "/r/.staging"))
    assert "free some space" in _os_error(OSError(errno.ENOSPC, "No space left on device", "/r/x"))


def test_two_inputs_of_one_name_do_not_replace_each_other(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(NO_IMAGE)
    for sub, name in (("a", "ecotaxa_table_with_classification.tsv"), ("b", "example_table_ifcb.tsv")):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "export.tsv").write_bytes((ECOTAXA / name).read_bytes())
    common = ["-c", str(cfg), "--data", str(tmp_path / "d")]
    first = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "a" / "export.tsv"), *common])
    assert first.exit_code == 0, _err(first)
    res = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "b" / "export.tsv"), *common])
    assert res.exit_code == 2 and "holds the records of" in _err(res) and "--dataset NAME" in _err(res)
    res = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "b" / "export.tsv"), "--dataset", "b",
                           *common])
    assert res.exit_code == 0, _err(res)
    rerun = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "a" / "export.tsv"), *common])
    assert rerun.exit_code == 0 and "already complete" in _err(rerun)
    from pipeline.io import read_dataset

    raw = tmp_path / "d" / "raw" / "source=ecotaxa"
    assert read_dataset(raw / "dataset=export").num_rows == 9 and read_dataset(raw / "dataset=b").num_rows == 2
    forced = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "b" / "export.tsv"), "--force", *common])
    assert forced.exit_code == 0 and read_dataset(raw / "dataset=export").num_rows == 2
    (tmp_path / "b").rename(tmp_path / "moved")  # the input moved: the same one, not a second
    moved = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "moved" / "export.tsv"), *common])
    assert moved.exit_code == 0 and read_dataset(raw / "dataset=export").num_rows == 2, _err(moved)


def test_a_url_for_a_source_that_reads_files_says_so_and_file_urls_are_paths(tmp_path):
    res = cli.invoke(app, ["ingest", "eol", "--input", "https://eol.org/api/pages/1.0/328598.json",
                           "--data", str(tmp_path)])
    assert res.exit_code == 2 and "the eol source reads local files only" in _err(res)
    res = cli.invoke(app, ["ingest", "ifcb", "--input", "https://ifcb.example.org/x/D2022.zip", "--data", str(tmp_path)])
    assert res.exit_code == 2 and "ifcb_dashboard" in _err(res)
    store = DATA / "eol" / "publishing_store" / "store-328598.json"
    res = cli.invoke(app, ["ingest", "eol", "--input", store.as_uri(), "--data", str(tmp_path)])
    assert res.exit_code == 0, _err(res)


def test_an_input_that_gives_nothing_is_warned_about(tmp_path):
    (tmp_path / "empty.tsv").write_bytes(b"")
    res = cli.invoke(app, ["ingest", "ecotaxa", "--input", str(tmp_path / "empty.tsv"), "--data", str(tmp_path / "d")])
    assert "gave no records and no rejects" in _err(res)


def test_query_has_an_empty_rejects_view_and_refuses_an_unknown_format(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text(NO_IMAGE)
    cli.invoke(app, ["ingest", "ecotaxa", "--input", str(ECOTAXA / "example_table_ifcb.tsv"), "-c", str(cfg),
                     "--data", str(tmp_path)])
    res = cli.invoke(app, ["query", "SELECT count(*) AS n FROM rejects", "--data", str(tmp_path), "-f", "csv"])
    assert res.exit_code == 0 and res.output.splitlines()[1:] == ["0"], _err(res)
    res = cli.invoke(app, ["query", "SELECT 1", "--data", str(tmp_path), "-f", "xml"])
    assert res.exit_code == 2 and "unknown --format 'xml'" in _err(res)


def test_config_of_a_file_prints_toml_that_loads_back(tmp_path):
    import tomllib

    from pipeline.config import load_config

    demo = Path(__file__).resolve().parents[2] / "pipeline" / "demo.toml"
    res = cli.invoke(app, ["config", "-c", str(demo)])
    assert res.exit_code == 0
    (tmp_path / "again.toml").write_text(res.output)
    assert load_config(tmp_path / "again.toml") == load_config(demo)
    assert tomllib.loads(res.output)["curate"]["min_rank"] == load_config(demo).curate.min_rank
    assert "# [download.hosts]" in cli.invoke(app, ["config"]).output  # an empty table of the user's keys is named


def test_report_of_a_missing_data_root_says_so(tmp_path):
    res = cli.invoke(app, ["report", "--data", str(tmp_path / "typo")])
    assert res.exit_code == 2 and "no data root at" in _err(res) and not (tmp_path / "typo").exists()


def test_run_help_shows_the_plan_format():
    assert "[[ingest]]" in cli.invoke(app, ["run", "--help"]).output


@pytest.mark.parametrize("raised", [RuntimeError("KeyboardInterrupt [while running 'Key rows']"), SystemExit(130),
                                    KeyboardInterrupt()], ids=["beam", "typer", "plain"])
def test_an_interrupt_ends_with_one_line_and_code_130(monkeypatch, capsys, raised):
    import pipeline.cli as cli_mod

    def interrupted():
        raise raised

    monkeypatch.setattr(cli_mod, "app", interrupted)
    with pytest.raises(SystemExit) as exit_:
        cli_mod.main()
    assert exit_.value.code == 130
    assert capsys.readouterr().err.strip() == "interrupted; run the same command again to resume where it stopped"


def test_other_runtime_errors_are_not_taken_for_an_interrupt(monkeypatch):
    import pipeline.cli as cli_mod

    def broken():
        raise RuntimeError("a real failure")

    monkeypatch.setattr(cli_mod, "app", broken)
    with pytest.raises(RuntimeError, match="a real failure"):
        cli_mod.main()


@pytest.mark.parametrize("second, says", [
    ('source = "inat"\ninput = "x"', "entry 2: unknown source 'inat'"),
    ('source = "eol"\ninput = "nope.json"', "entry 2: input nope.json does not exist"),
    ('source = "ecotaxa"\ninput = "https://example.org/export.tsv"', "entry 2: the ecotaxa source reads local files"),
])
def test_a_plan_is_checked_whole_before_anything_is_ingested(tmp_path, second, says):
    plan = tmp_path / "plan.toml"
    plan.write_text(f'[[ingest]]\nsource = "ecotaxa"\ninput = "{ECOTAXA / "example_table_ifcb.tsv"}"\n'
                    f"[[ingest]]\n{second}\n")
    res = cli.invoke(app, ["run", "--plan", str(plan), "--data", str(tmp_path / "d")])
    assert res.exit_code == 2 and says in _err(res)
    assert not (tmp_path / "d" / "raw").exists()


@pytest.mark.parametrize("status, says", [(401, "check the credentials"), (403, "GBIF_USER"),
                                          (404, "no such resource"), (500, "check the network"),
                                          (None, "check the network")])
def test_an_api_failure_says_what_to_do_by_its_status(status, says):
    from pipeline.cli import _http_advice

    assert says in _http_advice(status)


def test_a_query_that_gives_nothing_is_warned_about(tmp_path, monkeypatch):
    from pipeline import jobs
    from pipeline.execute import StageResult

    monkeypatch.setattr(jobs, "ingest", lambda *a, **k: StageResult("ingest-gbif", {"in": 0, "out": 0}, False,
                                                                    tmp_path, "r"))
    res = cli.invoke(app, ["ingest", "gbif", "--data", str(tmp_path)])
    assert res.exit_code == 0 and "the gbif query gave no records; check its options ([sources.gbif]" in _err(res)


def test_an_api_failure_with_its_own_advice_says_that_instead():
    from pipeline.cli import _http_failure
    from sources.http import HttpError

    failed = HttpError("gbif download 1 ended FAILED", advice="run the same command again to request a new one")
    assert _http_failure("gbif", failed) == "gbif: gbif download 1 ended FAILED; run the same command again to " \
                                           "request a new one"
    assert _http_failure("inaturalist", HttpError("asked to wait 3600 s", 429, advice="")) == \
        "inaturalist: asked to wait 3600 s"
    assert "check the credentials" in _http_failure("gbif", HttpError("POST x: HTTP 401", 401))
