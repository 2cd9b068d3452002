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
