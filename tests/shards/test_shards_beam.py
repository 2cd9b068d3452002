"""The Beam download (FnApiRunner) writes the same shards as the local runner."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.stages.download import LayoutError, Options, download_beam, run_download
from shards import status
from shards.reader import iter_samples
from tests.shards.cases import write_records

pytestmark = pytest.mark.beam

FAST = dict(allow_loopback=True, timeout=1.0, retries=1, backoff_base=0.01, backoff_max=0.05,
            retry_after_max=2.0, processes=0, shard_size=3)


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.suffix in (".tar", ".parquet")}


def test_beam_matches_local(server, tmp_path):
    urls = [server.url(p) for p in ("/img/ocelot.jpg", "/img/vehicle.jpg", "/img/small.jpg", "/img/small.png",
                                    "/img/missing.jpg", "/html", "/img/bomb.jpg", "/img/truncated.jpg")]
    write_records(tmp_path / "in", urls)
    local = run_download(tmp_path / "in", tmp_path / "local", Options(**FAST), progress=False)
    beam = download_beam(tmp_path / "in", str(tmp_path / "beam"), Options(**FAST, beam_workers_per_host=2),
                         ["--runner=FnApiRunner"])
    assert beam["attempted"] == local["attempted"] == len(urls)
    assert beam["failed"] == local["failed"] == {status.HTTP_404: 1, status.NOT_AN_IMAGE: 1,
                                                 status.DECOMPRESSION_BOMB: 1, status.TRUNCATED_IMAGE: 1}
    assert _digests(tmp_path / "beam") == _digests(tmp_path / "local")
    assert len(list(iter_samples(tmp_path / "beam", shardshuffle=False))) == 4
    assert not (tmp_path / "beam" / "_plan").exists()  # the workers' plan file is gone once the shards are in
    again = download_beam(tmp_path / "in", str(tmp_path / "beam"), Options(**FAST), [])
    assert again["processed_this_run"] == 0


def test_beam_reads_a_bucketed_plan_as_the_local_runner_does(server, tmp_path):
    """An input planned in buckets: Beam's workers read their shard's rows from the bucket plan
    files, and write the same shards as the local runner from the same plan."""
    urls = [server.url(p) for p in ("/img/ocelot.jpg", "/img/vehicle.jpg", "/img/small.jpg", "/img/small.png",
                                    "/img/missing.jpg", "/html", "/img/american_black_bear.jpg")]
    write_records(tmp_path / "in", urls)
    options = Options(**{**FAST, "shard_size": 2}, plan_bucket_rows=3)
    local = run_download(tmp_path / "in", tmp_path / "local", options, progress=False)
    beam = download_beam(tmp_path / "in", str(tmp_path / "beam"), options, ["--runner=FnApiRunner"])
    assert beam["attempted"] == local["attempted"] == len(urls) and beam["ok"] == local["ok"] == 5
    assert _digests(tmp_path / "beam") == _digests(tmp_path / "local")
    assert not (tmp_path / "beam" / "_plan").exists() and not (tmp_path / "local" / "_plan").exists()


def test_beam_retry_failed_keeps_good_images(server, tmp_path):
    urls = [server.url("/img/ocelot.jpg"), server.url("/retry429/small.jpg?n=2&after=0&t=beam")]
    write_records(tmp_path / "in", urls, splits=("train",))
    first = download_beam(tmp_path / "in", f"file://{tmp_path / 'out'}", Options(**FAST), [])
    assert first["failed"] == {status.HTTP_429_EXHAUSTED: 1}
    second = download_beam(tmp_path / "in", f"file://{tmp_path / 'out'}",
                           Options(**FAST, retry_failed=True), [])
    assert second["ok"] == 2 and second["processed_this_run"] == 1
    rows = pq.read_table(tmp_path / "out" / "train-000000.parquet").to_pylist()
    assert [r["status"] for r in rows] == [status.OK, status.OK]


def test_beam_stops_before_its_pipeline_when_the_folder_was_made_from_other_rows(server, tmp_path):
    urls = [server.url(f"/img/small.jpg?beam-layout={i}") for i in range(4)]
    write_records(tmp_path / "in", urls)
    download_beam(tmp_path / "in", str(tmp_path / "out"), Options(**FAST), ["--runner=FnApiRunner"])
    before, hits = _digests(tmp_path / "out"), sum(server.hits.values())
    with pytest.raises(LayoutError, match="made from other rows"):
        download_beam(tmp_path / "in", str(tmp_path / "out"), Options(**{**FAST, "shard_size": 1}), [])
    assert _digests(tmp_path / "out") == before and sum(server.hits.values()) == hits


def test_beam_says_reuse_is_for_the_local_runner(tmp_path):
    write_records(tmp_path / "in", ["http://127.0.0.1:9/a.jpg"])
    with pytest.raises(ValueError, match="reuse_from works with the local runner"):
        download_beam(tmp_path / "in", str(tmp_path / "out"), Options(**FAST, reuse_from=str(tmp_path / "x")), [])
