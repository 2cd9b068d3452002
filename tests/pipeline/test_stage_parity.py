"""The real stages on both runners: ingest and resolve of the bundled samples give identical files."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import jobs
from pipeline.config import load_config
from pipeline.io import parquet_files
from pipeline.runners import make_runner
from taxonomy.cli import build_backbone_cli

DATA = Path(__file__).resolve().parents[1] / "data"
INPUTS = [("gbif", "gbif/dwca/0000066-140928181241064.zip"), ("eol", "eol/publishing_store/store-328598.json"),
          ("ifcb", "plankton/ifcb")]


def _parts(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in parquet_files(path)}


def _build(root: Path, runner_name: str) -> Path:
    build_backbone_cli("inat", DATA / "taxonomy" / "inat_taxonomy_tree" / "taxonomy.csv", root, "test")
    cfg = load_config(None, {"data": str(root), "resolve.backbone": "inat", "resolve.data_root": str(root)})
    runner = make_runner(runner_name, workers=2)
    for source, path in INPUTS:
        jobs.ingest(cfg, runner, source, str(DATA / path), jobs.dataset_slug(path, None))
    jobs.resolve(cfg, runner)
    return root


@pytest.mark.beam
def test_ingest_and_resolve_agree_across_runners(tmp_path):
    local = _build(tmp_path / "local", "local")
    beam = _build(tmp_path / "beam", "beam")
    for sub in ("raw", "resolved", "rejects"):
        assert _parts(local / sub) == _parts(beam / sub), sub
    assert len(_parts(local / "resolved")) == 3


def test_a_new_backbone_version_reruns_resolve_and_is_recorded(tmp_path):
    import json

    root = tmp_path / "root"
    tree = DATA / "taxonomy" / "inat_taxonomy_tree" / "taxonomy.csv"
    build_backbone_cli("inat", tree, root, "v1")
    cfg = load_config(None, {"data": str(root), "resolve.backbone": "inat", "resolve.data_root": str(root)})
    runner = make_runner("local", workers=1)
    jobs.ingest(cfg, runner, "eol", str(DATA / INPUTS[1][1]), "eol")
    first = jobs.resolve(cfg, runner)
    assert not first.skipped and jobs.resolve(cfg, runner).skipped
    build_backbone_cli("inat", tree, root, "v2")
    second = jobs.resolve(cfg, runner)
    assert not second.skipped
    run = json.loads((root / "runs" / second.run_id / "run.json").read_text())
    assert run["counts"]["depends_on"]["backbone"]["version"] == "v2"
