"""The resolve stage (contract, accounting, report) and the ``names`` CLI on the real CoL slice."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from pipeline.stage import StageContext, check_accounting
from pipeline.stages import resolve as stage
from schemas import RECORD_SCHEMA, conform
from schemas.record import from_rows
from taxonomy.backbone import build_backbone, fetch_backbone
from taxonomy.cli import build_backbone_cli, names_app

COL = Path(__file__).resolve().parents[1] / "data" / "taxonomy" / "col_coldp_vespoidea"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    build_backbone("coldp", COL, root, version="4.1", name="col")
    return root


def _batch():
    names = ["Vespa crabro Linnaeus, 1758", "Acarepipona curvirufolineata", "vespa crabo", "detritus",
             "tail<Vespa", "Vespa cincta", "Nothing here", None]
    rows = [{"record_id": f"t-{i}", "source": "test", "identifier": f"file:///{i}.jpg", "verbatim_name": n}
            for i, n in enumerate(names)]
    return from_rows(rows)


def test_stage_fills_columns_and_rejects_nothing(data_root):
    ctx = StageContext("resolve", stage.Options(backbone="col", data_root=str(data_root)))
    resources = stage.STAGE.setup(ctx)
    ctx = StageContext("resolve", ctx.options, resources)
    batch = _batch()
    out = stage.STAGE.fn(batch, ctx)
    check_accounting("resolve", batch.num_rows, out.out.num_rows, out.rejects.num_rows)
    assert out.rejects.num_rows == 0
    assert out.out.column_names == batch.column_names
    records, rejects = conform(out.out, "resolve")
    assert rejects.num_rows == 0 and records.schema.equals(RECORD_SCHEMA, check_metadata=False)
    got = out.out.to_pylist()
    assert [r["match_type"] for r in got] == ["exact", "synonym", "fuzzy", "non_living", "exact", "none", "none", "none"]
    assert got[1]["genus"] == "Allodynerus" and got[1]["species"] == "Allodynerus curvirufolineata"
    assert got[4]["qualifier"] == "tail" and got[4]["species"] is None and got[4]["genus"] == "Vespa"
    assert all(r["backbone"] == "col" and r["backbone_version"] == "4.1" for r in got)
    assert [r["record_id"] for r in got] == [f"t-{i}" for i in range(8)]

    report = stage.unresolved_report(out.out).to_pylist()
    reasons = {r["reason"]: r["records"] for r in report}
    assert reasons == {"ambiguous_homonym": 1, "not_in_backbone": 1, "empty_name": 1}


def test_stage_options_are_strict():
    with pytest.raises(ValueError):
        stage.Options(bogus=1)
    with pytest.raises(ValueError):
        stage.Options(fuzzy_threshold=2)


def test_stage_missing_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no backbone"):
        stage.setup(StageContext("resolve", stage.Options(backbone="absent", data_root=str(tmp_path))))


def test_names_parse_cli_from_stdin():
    res = CliRunner().invoke(names_app, ["parse"], input="Vespa crabro Linnaeus, 1758\ntail<Appendicularia\n")
    assert res.exit_code == 0, res.output
    lines = [ln.split("\t") for ln in res.output.strip().split("\n")]
    assert lines[0][:4] == ["input", "canonical", "authorship", "rank"]
    assert lines[1][:4] == ["Vespa crabro Linnaeus, 1758", "Vespa crabro", "Linnaeus, 1758", "species"]
    assert lines[2][1] == "Appendicularia"


def test_names_resolve_cli_from_file(data_root, tmp_path):
    f = tmp_path / "labels.txt"
    f.write_text("Polistes dominula\nPolistes dominulus\nbubble\n")
    res = CliRunner().invoke(names_app, ["resolve", str(f), "--backbone", "col", "--data-root", str(data_root)])
    assert res.exit_code == 0, res.output
    rows = [ln.split("\t") for ln in res.output.strip().split("\n")]
    head = rows[0]
    assert head[:4] == ["input", "canonical", "authorship", "rank"] and "taxon_id" in head and "note" in head
    by = {r[0]: dict(zip(head, r, strict=True)) for r in rows[1:]}
    assert by["Polistes dominula"]["match_type"] == "exact"
    assert by["Polistes dominulus"]["match_type"] == "synonym"
    assert by["Polistes dominulus"]["taxon_id"] == by["Polistes dominula"]["taxon_id"]
    assert by["bubble"]["match_type"] == "non_living"
    bad = CliRunner().invoke(names_app, ["resolve", str(f), "--backbone", "nope", "--data-root", str(tmp_path)])
    assert bad.exit_code == 2


def test_build_backbone_cli(tmp_path):
    folder = build_backbone_cli("coldp", COL, tmp_path, "4.1")
    assert json.loads((folder / "manifest.json").read_text())["kind"] == "coldp"


class _RangeHandler(BaseHTTPRequestHandler):
    body = bytes(range(256)) * 4000
    fail_once = True

    def do_GET(self):  # noqa: N802
        start = 0
        rng = self.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
        chunk = self.body[start:]
        if _RangeHandler.fail_once and not rng:
            # send half, then drop the connection: the client must resume with a Range request
            _RangeHandler.fail_once = False
            self.send_response(200)
            self.send_header("Content-Length", str(len(chunk)))
            self.end_headers()
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            self.connection.close()
            return
        self.send_response(206 if rng else 200)
        self.send_header("Content-Length", str(len(chunk)))
        self.end_headers()
        self.wfile.write(chunk)

    def log_message(self, *args):
        pass


def test_fetch_backbone_resumes_on_loopback(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RangeHandler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    try:
        dest = fetch_backbone(f"http://127.0.0.1:{server.server_port}/backbone.zip", tmp_path / "b.zip", timeout=5)
        assert dest.read_bytes() == _RangeHandler.body
        assert not (tmp_path / "b.zip.part").exists()
    finally:
        server.shutdown()
        server.server_close()
        t.join(timeout=5)


def test_empty_batch_passes_through(data_root):
    ctx = StageContext("resolve", stage.Options(backbone="col", data_root=str(data_root)))
    empty = pa.Table.from_pylist([], schema=RECORD_SCHEMA)
    out = stage.resolve_batch(empty, ctx)
    assert out.out.num_rows == 0 and out.rejects.num_rows == 0


def test_resolve_job_reports_the_unresolved_names_of_every_part(data_root, tmp_path):
    """The job's report reads only the unresolved rows, part by part: it equals the report of the
    whole resolved table (counts summed over parts, sorted by count)."""
    import shutil

    import pyarrow.parquet as pq

    from pipeline import jobs
    from pipeline.config import load_config
    from pipeline.io import atomic_write_parquet, read_dataset
    from pipeline.runners import make_runner

    root = tmp_path / "root"
    shutil.copytree(data_root / "backbones", root / "backbones")
    batch = _batch()
    for i in range(3):  # the same names in three parts: each unresolved name counted three times
        ids = pa.array([f"t-{i}-{k}" for k in range(batch.num_rows)])
        atomic_write_parquet(batch.set_column(0, "record_id", ids), root / "raw" / "source=test" / f"part-{i}.parquet")
    cfg = load_config(overrides={"data": str(root), "resolve.backbone": "col"})
    result = jobs.resolve(cfg, make_runner("local", workers=1, progress=False))
    written = pq.read_table(root / "reports" / "unresolved.parquet")
    expected = stage.unresolved_report(read_dataset(root / "resolved"))
    assert written.equals(expected) and result.stats["unresolved_names"] == 3
    assert {r["reason"]: r["records"] for r in written.to_pylist()} == {
        "ambiguous_homonym": 3, "not_in_backbone": 3, "empty_name": 3}


# --- backbone inputs of the wrong kind, damaged zips, versions, non-UTF-8 name lists -----------

TAXONOMY = COL.parent
SINGLE_FILES = {  # each real slice as the single file a user passes
    "coldp": TAXONOMY / "col_coldp_vespoidea" / "NameUsage.tsv",
    "inat": TAXONOMY / "inat_taxonomy_tree" / "taxonomy.csv",
    "inat-open-data": TAXONOMY / "inat_open_data" / "taxa.csv",
}
WRONG = [(kind, name) for kind in ("gbif", "coldp", "inat", "inat-dwca") for name in SINGLE_FILES
         if kind != name.split("-open")[0]]


@pytest.mark.parametrize("kind,name", WRONG, ids=[f"{k}<-{n}" for k, n in WRONG])
def test_a_single_file_of_another_kind_is_refused_naming_its_kind(tmp_path, kind, name):
    from taxonomy.backbone import BackboneSourceError

    path = SINGLE_FILES[name]
    looks = name.split("-open")[0]
    with pytest.raises(BackboneSourceError, match=rf"is not .*it looks like .*`biocorpus backbone {looks} --input"):
        build_backbone(kind, path, tmp_path, version="v1")
    assert not (tmp_path / "backbones").exists() or not any((tmp_path / "backbones").rglob("backbone.parquet"))


def test_a_wrong_kind_never_replaces_a_good_version(tmp_path):
    """The QA reproduction: a good build, then the wrong kind for the same (default) version."""
    from pipeline.cli import app

    good = build_backbone("coldp", COL, tmp_path, version="2026-01-01")
    before = (good / "backbone.parquet").read_bytes()
    res = CliRunner().invoke(app, ["backbone", "coldp", "--input", str(SINGLE_FILES["inat"]), "--data", str(tmp_path),
                                   "--version", "2026-01-01"])
    assert res.exit_code == 2, res.output
    assert "looks like an iNaturalist taxa table" in res.output and "Traceback" not in res.output
    assert (good / "backbone.parquet").read_bytes() == before


def test_a_backbone_without_usable_names_is_not_written(tmp_path):
    import polars as pl

    from taxonomy.backbone import BackboneSourceError, write_backbone

    # the real slice's header with its rows' names emptied: right kind, nothing to match on
    lines = (COL / "NameUsage.tsv").read_text(encoding="utf-8").splitlines()
    head = lines[0].split("\t")
    col = head.index("scientificName")
    rows = [r.split("\t") for r in lines[1:50]]
    for r in rows:
        r[col] = ""
    path = tmp_path / "NameUsage.tsv"
    path.write_text("\n".join("\t".join(r) for r in [head, *rows]) + "\n", encoding="utf-8")
    with pytest.raises(BackboneSourceError, match="no usable names"):
        build_backbone("coldp", path, tmp_path, version="v1")
    assert not (tmp_path / "backbones" / "coldp" / "v1").exists()
    with pytest.raises(BackboneSourceError, match="no usable names"):
        write_backbone(pl.DataFrame(schema={"key": pl.String, "status": pl.String}), tmp_path, "x", "v1", "coldp")


def test_a_truncated_backbone_zip_is_one_line(tmp_path):
    import zipfile

    from pipeline.cli import app

    whole = tmp_path / "col.zip"
    with zipfile.ZipFile(whole, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.write(COL / "NameUsage.tsv", "NameUsage.tsv")
    cut = tmp_path / "col-trunc.zip"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    assert build_backbone("coldp", whole, tmp_path, version="whole").is_dir()
    res = CliRunner().invoke(app, ["backbone", "coldp", "--input", str(cut), "--data", str(tmp_path)])
    assert res.exit_code == 2
    assert "not a complete zip archive" in res.output and "fetch it again" in res.output
    assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1


def _set_created(folder: Path, created: str | None) -> None:
    manifest = json.loads((folder / "manifest.json").read_text())
    if created is None:
        manifest.pop("created")
    else:
        manifest["created"] = created
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_newest_version_is_the_latest_build_not_the_last_name(tmp_path, capsys):
    from taxonomy.backbone import find_backbone, load_backbone

    inat = SINGLE_FILES["inat"]
    for version in ("demo", "2026-12-08", "v10", "v9"):
        build_backbone("inat", inat, tmp_path, version=version)
    root = tmp_path / "backbones" / "inat"
    _set_created(root / "demo", "2026-12-01T10:00:00+00:00")
    _set_created(root / "2026-12-08", "2026-12-08T10:00:00+00:00")
    _set_created(root / "v9", "2026-12-02T10:00:00+00:00")
    _set_created(root / "v10", "2026-12-03T10:00:00+00:00")
    capsys.readouterr()
    assert find_backbone("inat", tmp_path) == root / "2026-12-08"
    said = capsys.readouterr().err
    assert "4 versions, using the newest, 2026-12-08 (built 2026-12-08T10:00:00+00:00" in said
    # workers load it quietly; the same choice
    assert load_backbone("inat", tmp_path).version == "2026-12-08" and capsys.readouterr().err == ""
    _set_created(root / "v10", "2026-12-09T00:00:00+00:00")
    assert find_backbone("inat", tmp_path, announce=False) == root / "v10"
    # manifests without a build time (older builds) come first, ordered by name among themselves
    for version in ("demo", "2026-12-08", "v10", "v9"):
        _set_created(root / version, None)
    assert find_backbone("inat", tmp_path, announce=False) == root / "v9"
    _set_created(root / "2026-12-08", "2026-12-08T10:00:00+00:00")
    assert find_backbone("inat", tmp_path, announce=False) == root / "2026-12-08"


def test_resolve_job_uses_and_says_the_newest_build(data_root, tmp_path, capsys):
    import shutil

    from pipeline import jobs
    from pipeline.config import load_config
    from pipeline.io import atomic_write_parquet, read_dataset
    from pipeline.runners import make_runner

    root = tmp_path / "root"
    shutil.copytree(data_root / "backbones", root / "backbones")  # col/4.1, built first
    build_backbone("coldp", COL, root, version="2019", name="col")  # "2019" < "4.1" by name
    atomic_write_parquet(_batch(), root / "raw" / "source=test" / "part-0.parquet")
    cfg = load_config(overrides={"data": str(root), "resolve.backbone": "col"})
    capsys.readouterr()
    jobs.resolve(cfg, make_runner("local", workers=1, progress=False))
    assert "backbone col: 2 versions, using the newest, 2019" in capsys.readouterr().err
    assert set(read_dataset(root / "resolved").column("backbone_version").to_pylist()) == {"2019"}


BAD_UTF8 = b"Vespa crabro\nVespa \xe9crabro\n"


@pytest.mark.parametrize("command", [["parse"], ["resolve", "--backbone", "col"]])
def test_names_read_non_utf8_stdin_as_a_file_is_read(data_root, tmp_path, command):
    """The same undecodable bytes from stdin and from a file: the same output, one warning line, no
    traceback (stdin crashed with UnicodeEncodeError)."""
    import subprocess
    import sys

    if command[0] == "resolve":
        command = [*command, "--data-root", str(data_root)]
    path = tmp_path / "names.txt"
    path.write_bytes(BAD_UTF8)
    run = [sys.executable, "-c", "from pipeline.cli import main; main()", "names", *command]
    repo = Path(__file__).resolve().parents[2]
    piped = subprocess.run(run, input=BAD_UTF8, capture_output=True, cwd=repo, timeout=120)
    filed = subprocess.run([*run[:-len(command)], *command[:1], str(path), *command[1:]], capture_output=True,
                           cwd=repo, timeout=120)
    for proc, where in ((piped, "stdin"), (filed, str(path))):
        err = proc.stderr.decode()
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        assert err.count("warning:") == 1 and f"{where} is not valid UTF-8" in err and "line 2" in err
    assert piped.stdout == filed.stdout
    rows = piped.stdout.decode("utf-8").splitlines()
    assert rows[2].startswith("Vespa \ufffdcrabro\t")
