"""The download job in a data root (``pipeline.jobs.download``): where its rejects go, and what it says
when its input is missing or empty."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import jobs
from pipeline.config import load_config
from pipeline.stages.download import rejects_part_name

FAST = {"allow_loopback": True, "timeout": 1.0, "retries": 1, "backoff_base": 0.01, "backoff_max": 0.05,
        "processes": 0}


def _config(root: Path):
    return load_config(overrides={"data": str(root), **{f"download.{k}": v for k, v in FAST.items()}})


def _url_list(path: Path, prefix: str, server) -> Path:
    """Three rows: two URLs of the same bytes (one is a curate-dedup-bytes reject), one that fails."""
    keys = [f"{prefix}1", f"{prefix}2", f"{prefix}3"]
    urls = [server.url(f"/img/small.jpg?job={prefix}1"), server.url(f"/img/small.jpg?job={prefix}2"),
            server.url(f"/img/missing.jpg?job={prefix}3")]
    pq.write_table(pa.table({"url": urls, "key": keys}), path)
    return path


def _rejects(root: Path, stage: str) -> tuple[list[str], list[str]]:
    """The part files of a stage's rejects and the record ids in them."""
    parts = sorted((root / "rejects" / f"stage={stage}").glob("part-*.parquet"))
    return [p.name for p in parts], sorted(r for p in parts for r in pq.read_table(p)["record_id"].to_pylist())


def test_two_shards_folders_of_one_name_keep_their_own_rejects(server, tmp_path):
    """``data/shards`` and ``elsewhere/shards`` each write their own part of the download and the
    curate-dedup-bytes rejects; a rerun into a folder replaces its own part. A part named as an
    earlier version named it (the base name alone) is removed by the rerun of the folder it holds
    the keys of, and kept by another folder's."""
    root, cfg = tmp_path / "data", _config(tmp_path / "data")
    a, b = _url_list(tmp_path / "a.parquet", "a", server), _url_list(tmp_path / "b.parquet", "b", server)
    here, elsewhere = root / "shards", tmp_path / "elsewhere" / "shards"
    assert jobs.download(cfg, urls=a, output=here)["dedup_bytes"]["rejected"] == 1
    jobs.download(cfg, urls=b, output=elsewhere)
    parts, ids = _rejects(root, "download")
    assert parts == sorted([rejects_part_name(here), rejects_part_name(elsewhere)]) and ids == ["a3", "b3"]
    assert all(p.startswith("part-shards-") for p in parts)
    dedup_parts, dedup_ids = _rejects(root, "curate-dedup-bytes")
    assert dedup_parts == parts and [i[0] for i in dedup_ids] == ["a", "b"]
    jobs.download(cfg, urls=a, output=here)  # a rerun: its own part replaced, not a second one
    assert _rejects(root, "download") == (parts, ids)
    assert _rejects(root, "curate-dedup-bytes") == (dedup_parts, dedup_ids)

    for stage in ("download", "curate-dedup-bytes"):  # as an earlier version left them, elsewhere run last
        folder = root / "rejects" / f"stage={stage}"
        (folder / rejects_part_name(here)).unlink()
        (folder / rejects_part_name(elsewhere)).rename(folder / "part-shards.parquet")
    jobs.download(cfg, urls=a, output=here)  # the old part holds elsewhere's keys: kept
    assert _rejects(root, "download") == (sorted(["part-shards.parquet", rejects_part_name(here)]), ids)
    jobs.download(cfg, urls=b, output=elsewhere)  # elsewhere's rerun: its own part instead
    assert _rejects(root, "download") == (parts, ids)
    assert _rejects(root, "curate-dedup-bytes") == (dedup_parts, dedup_ids)


def test_an_empty_curated_folder_says_curate_kept_no_record(tmp_path):
    root = tmp_path / "data"
    (root / "curated").mkdir(parents=True)
    (root / "curated" / "_curate_stats.json").write_text(json.dumps({"curate-filter": {"in": 382, "out": 0}}))
    with pytest.raises(ValueError, match=r"curated holds no rows \(curate kept 0 of 382 records\): nothing to "
                                         r"download. `biocorpus query .*FROM rejects.*` says why"):
        jobs.download(_config(root))
    assert not (root / "shards").exists()


def test_a_missing_url_list_is_named_as_the_one_given(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"download: --urls .*/nonexist.csv does not exist; check the path$"):
        jobs.download(_config(tmp_path / "data"), urls=tmp_path / "nonexist.csv")
