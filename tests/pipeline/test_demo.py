"""`make demo` end to end on the bundled samples: every stage runs, nothing is lost, a rerun does no work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.query import connect

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_root(tmp_path_factory):
    pytest.importorskip("torch")
    # run from another folder with a relative data root, as `make demo` passes `--data data`
    work = tmp_path_factory.mktemp("demo")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "pipeline.demo", "--data", "data"], cwd=work, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work / "data", proc


def _success(path: Path) -> dict:
    return json.loads((path / "_SUCCESS").read_text())


def test_every_stage_ran_and_accounts_for_every_record(demo_root):
    root, _ = demo_root
    con = connect(root)
    n_raw = con.execute("SELECT count(*) FROM raw").fetchone()[0]
    ingest_rejects = con.execute("SELECT count(*) FROM rejects WHERE stage = 'ingest'").fetchone()[0]
    ingest_in = sum(_success(p)["in"] for p in (root / "raw").glob("source=*/dataset=*"))
    assert ingest_in == n_raw + ingest_rejects
    assert {r[0] for r in con.execute("SELECT DISTINCT source FROM raw").fetchall()} == {
        "gbif", "inaturalist", "eol", "ifcb", "folders"}
    resolved = _success(root / "resolved")
    assert resolved["in"] == n_raw == resolved["out"] + resolved["rejected"]
    curated = con.execute("SELECT count(*) FROM curated").fetchone()[0]
    curate_rejects = con.execute("SELECT count(*) FROM rejects WHERE stage LIKE 'curate%' AND stage <> 'curate_dedup_bytes'").fetchone()[0]
    assert n_raw == curated + curate_rejects
    dl = json.loads((root / "shards" / "_stats.json").read_text())
    assert dl["attempted"] == curated == dl["ok"] + dl["failed_total"]
    metrics = json.loads((root / "train" / "metrics.json").read_text())
    assert metrics["completed"] and metrics["eval"]["val"]["samples"] > 0
    assert (root / "report" / "index.html").stat().st_size > 10_000
    assert (root / "report" / "card.md").is_file() and (root / "croissant.json").is_file()


def test_demo_shards_read_back_with_webdataset(demo_root):
    import webdataset as wds

    root, _ = demo_root
    tars = sorted(str(p) for p in (root / "shards").glob("*.tar"))
    samples = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert len(samples) == json.loads((root / "shards" / "_stats.json").read_text())["ok"]
    assert all("json" in s and "txt" in s and ("jpg" in s or "png" in s) for s in samples)
    plankton = list(wds.WebDataset(sorted(str(p) for p in (root / "shards-plankton").glob("*.tar")),
                                   shardshuffle=False, empty_check=False))
    assert len(plankton) == 33  # every IFCB region of interest and class-folder image
    # the class folders hold the published PNGs of 7 IFCB134 ROIs that the bin also yields: layer 3
    # finds them as near-duplicates of the ROIs cut from the .roi bytes
    dups = json.loads((root / "shards-plankton" / "_duplicates.json").read_text())["keys"]
    assert len(dups) == 7


def test_demo_shards_carry_bioclips_text_types_from_the_chunks(demo_root):
    from pipeline.curate.captions import CAPTION_COLUMNS, NAME_COLUMNS
    from pipeline.io import read_dataset
    from shards.reader import iter_samples

    root, _ = demo_root
    chunks = read_dataset(root / "curated")
    columns = [*CAPTION_COLUMNS, *NAME_COLUMNS]
    by_key = {r["record_id"]: r for r in chunks.select(["record_id", "caption", *columns]).to_pylist()}
    samples = list(iter_samples(root / "shards", shardshuffle=False, decode=None))
    assert samples and len(samples) == json.loads((root / "shards" / "_stats.json").read_text())["ok"]
    for s in samples:
        row = by_key[s["key"]]
        # all ten, as TreeOfLife's (webdataset lowercases the extensions: taxonTag -> taxontag)
        assert s["texts"] == {c.removeprefix("caption_").lower(): row[c] for c in columns}
        assert s["txt"] == row["caption"] == row["caption_taxon_com"]  # the configured type, for OpenCLIP
    assert len(set(chunks.column("caption_taxonTag").to_pylist())) > 1


def test_demo_rerun_does_no_work(demo_root):
    root, _ = demo_root
    before = {p: p.stat().st_mtime_ns for p in (root / "resolved").glob("*.parquet")}
    proc = subprocess.run([sys.executable, "-m", "pipeline.demo", "--data", str(root)], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("nothing to do") >= 9
    assert {p: p.stat().st_mtime_ns for p in (root / "resolved").glob("*.parquet")} == before


def _readme_queries() -> list[str]:
    import re

    text = (REPO / "README.md").read_text()
    return re.findall(r'^biocorpus query "([^"]+)"', text, flags=re.M)


def test_readme_query_examples_work_on_the_demo(demo_root):
    from io import StringIO

    from pipeline.query import run_query

    root, _ = demo_root
    queries = _readme_queries()
    assert len(queries) >= 4
    for sql in queries:
        out = StringIO()
        run_query(root, sql, "csv", out)
        assert len(out.getvalue().splitlines()) >= 2, sql  # a header and at least one row
    con = connect(root)
    families = dict(con.execute("SELECT family, count(*) FROM records GROUP BY 1").fetchall())
    assert families.get("Apidae") == 53
