"""The download stage end to end against the loopback server: accounting, shards, resume, retry."""

from __future__ import annotations

import collections
import csv
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds

from pipeline.stages.download import LayoutError, Options, failed_rejects, plan_download, run_download
from shards import status
from shards.reader import iter_samples
from shards.writer import read_shard
from tests.shards.cases import download_cases, write_records
from tests.shards.conftest import IMAGES
from tests.shards.loopback import LoopbackServer

REPO = Path(__file__).resolve().parents[2]
FAST = dict(allow_loopback=True, timeout=1.0, retries=1, backoff_base=0.01, backoff_max=0.05,
            retry_after_max=2.0, processes=0)


def _sidecars(out: Path) -> list[dict]:
    return [r for p in sorted(out.glob("*.parquet")) for r in pq.read_table(p).to_pylist()]


def _path(url: str) -> str:
    return urlsplit(url).path


def _digests(out: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(out.iterdir()) if p.suffix in (".tar", ".parquet")}


@pytest.fixture(scope="module")
def full_run(server, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dl")
    cases = download_cases(server, "full", IMAGES / "ocelot.jpg")
    table = write_records(tmp / "in", [u for u, _ in cases])
    stats = run_download(tmp / "in", tmp / "out", Options(shard_size=5, **FAST), progress=False)
    return cases, table, stats, tmp / "out"


def test_every_image_is_accounted_for_with_its_reason(full_run):
    cases, table, stats, out = full_run
    expected = collections.Counter(r for _, r in cases if r is not None)
    assert stats["attempted"] == len(cases) == stats["ok"] + stats["failed_total"]
    assert stats["ok"] == sum(1 for _, r in cases if r is None)
    assert stats["failed"] == dict(expected)
    by_url = {r["url"]: r for r in _sidecars(out)}
    assert len(by_url) == len(cases)
    for url, reason in cases:
        row = by_url[url]
        assert row["reason"] == reason, url
        assert row["status"] == (status.OK if reason is None else status.FAILED)
        assert row["reason"] is None or row["reason"] in status.REASONS


def test_shards_read_back_with_webdataset(full_run):
    cases, table, stats, out = full_run
    ok_keys = {r["key"] for r in _sidecars(out) if r["status"] == status.OK}
    tars = sorted(str(p) for p in out.glob("*.tar"))
    assert [Path(t).name for t in tars][:2] == ["train-000000.tar", "train-000001.tar"]
    raw = list(wds.WebDataset(tars, shardshuffle=False, empty_check=False))
    assert {s["__key__"] for s in raw} == ok_keys
    assert len(raw) == len(ok_keys)
    records = {r["record_id"]: r for r in table.to_pylist()}
    for sample in iter_samples(out, shardshuffle=False):
        rec = records[sample["key"]]
        assert sample["json"]["license"] == "cc-by-4.0"
        assert sample["json"]["rights_holder"] == rec["rights_holder"]
        assert sample["txt"] == rec["caption"]
        assert sample["cls"] == rec["cls"]
        assert max(sample["image"].size) <= 256
        assert sample["json"]["download"]["width"] == sample["image"].size[0]


def test_sidecar_rows_carry_hashes_and_sizes(full_run, served_images):
    cases, table, stats, out = full_run
    rows = {_path(r["url"]): r for r in _sidecars(out)}
    big = rows["/img/big8000.jpg"]
    assert (big["width"], big["height"]) == (8000, 8000)
    assert (big["stored_width"], big["stored_height"]) == (256, 256)
    assert big["sha256"] == hashlib.sha256(served_images["big8000.jpg"]).hexdigest()
    assert len(big["phash"]) == 16
    bomb = rows["/img/bomb.jpg"]
    assert (bomb["width"], bomb["height"]) == (16000, 12500)
    assert bomb["stored_width"] is None
    small = rows["/img/small.jpg"]
    assert small["stored_bytes"] == small["bytes"] == len(served_images["small.jpg"])  # kept as is
    assert rows["/img/small.png"]["format"] == "png"
    assert rows["/always429"]["attempts"] == 2 and rows["/always429"]["http_status"] == 429


def test_small_originals_are_stored_byte_for_byte(full_run, served_images):
    cases, table, stats, out = full_run
    stored = {}
    for tar in out.glob("*.tar"):
        with tarfile.open(tar) as tf:
            for m in tf:
                stored[m.name] = tf.extractfile(m).read()
    keyed = {_path(r["url"]): r["key"] for r in _sidecars(out)}
    assert stored[f"{keyed['/img/small.jpg']}.jpg"] == served_images["small.jpg"]
    assert stored[f"{keyed['/img/small.png']}.png"] == served_images["small.png"]
    names = [m for m in stored]
    assert all(n.count(".") == 1 for n in names)


def test_retry_after_was_waited_for(full_run, server):
    times = server.hit_times["/retry429/small.jpg?n=1&after=1&t=full"]
    assert len(times) == 2
    assert times[1] - times[0] >= 0.9


def test_user_agent_is_descriptive(full_run, server):
    assert any(ua.startswith("biocorpus/") for ua in server.user_agents)


def test_rerun_does_nothing_and_keeps_bytes(full_run, tmp_path, capsys):
    """A rerun with nothing to do says so (stderr, as the other stages do) and writes nothing the
    shards' readers look at, the layout record included (a read-only finished folder stays usable)."""
    cases, table, stats, out = full_run
    before = _digests(out)
    layout = (out / "_layout.json").stat().st_mtime_ns
    capsys.readouterr()
    again = run_download(out.parent / "in", out, Options(shard_size=5, **FAST), progress=False)
    assert again["processed_this_run"] == 0
    assert again["attempted"] == stats["attempted"]
    assert _digests(out) == before
    assert (out / "_layout.json").stat().st_mtime_ns == layout
    assert not (out / "_partial").exists()
    assert re.search(r"download: .*/out already complete for this input and options \(\d+ shards?\); nothing to do",
                     capsys.readouterr().err)


def _url_list(path: Path, keys: list[str], server) -> None:
    pq.write_table(pa.table({"url": [server.url(f"/img/small.jpg?layout={k}") for k in keys], "key": keys}), path)


def test_a_folder_made_from_other_rows_stops_the_download_before_a_fetch(server, tmp_path):
    """Finished shards are skipped by name: with a row added to the input, another shard_size, or
    rows taken away, they would keep other images than the plan gives them (some left out, some
    twice). The run stops naming them, fetches nothing, and leaves the folder as it was."""
    keys = [f"k{i}" for i in range(6)]
    urls, out, opts = tmp_path / "urls.parquet", tmp_path / "out", Options(shard_size=2, **FAST)
    _url_list(urls, keys, server)
    assert run_download(urls, out, opts, progress=False)["ok"] == 6
    before, hits = _digests(out), sum(server.hits.values())
    _url_list(urls, ["a0", *keys], server)  # a key planned first: every shard moves on by one
    with pytest.raises(LayoutError, match=r"holds 3 shards made from other rows than this plan gives them "
                                          r"\(train-000000, train-000001, train-000002\).*Move this folder aside and download again with "
                                          r"--reuse-from pointing at it"):
        run_download(urls, out, opts, progress=False)
    _url_list(urls, keys, server)
    with pytest.raises(LayoutError, match=r"holds 2 shards made from other rows .* and 1 shard that this plan does "
                                          r"not have \(train-000002\)"):
        run_download(urls, out, Options(shard_size=3, **FAST), progress=False)
    _url_list(urls, keys[:2], server)
    with pytest.raises(LayoutError, match=r"holds 2 shards that this plan does not have"):
        run_download(urls, out, opts, progress=False)
    assert sum(server.hits.values()) == hits and _digests(out) == before
    _url_list(urls, keys, server)  # the input of the first run: nothing left to do
    assert run_download(urls, out, opts, progress=False)["processed_this_run"] == 0


def test_a_folder_made_before_the_layout_record_is_checked_by_its_sidecars(server, tmp_path):
    """Without a record the sidecars tell what each shard holds. A run with nothing to do writes
    no record; one that makes shards does, but cannot know the image options of the shards made
    before, so it records none (and reuse from the folder is refused) rather than claim its own."""
    keys = [f"k{i}" for i in range(4)]
    urls, out, opts = tmp_path / "urls.parquet", tmp_path / "out", Options(shard_size=2, **FAST)
    _url_list(urls, keys, server)
    run_download(urls, out, opts, progress=False)
    record = json.loads((out / "_layout.json").read_text())
    assert sorted(record["shards"]) == ["train-000000", "train-000001"] and record["image"]["size"] == 256
    (out / "_layout.json").unlink()
    assert run_download(urls, out, opts, progress=False)["processed_this_run"] == 0
    assert not (out / "_layout.json").exists()  # nothing to do: nothing written
    _url_list(urls, ["a0", *keys[1:]], server)  # train-000000 planned as a0, k1: it holds k0, k1
    with pytest.raises(LayoutError, match=r"holds 1 shard made from other rows than this plan gives it "
                                          r"\(train-000000\):"):
        run_download(urls, out, opts, progress=False)
    _url_list(urls, [*keys, "k4"], server)  # a shard more: made now, the record written
    assert run_download(urls, out, opts, progress=False)["processed_this_run"] == 1
    record = json.loads((out / "_layout.json").read_text())
    assert sorted(record["shards"]) == ["train-000000", "train-000001", "train-000002"]
    assert record["image"] is None
    with pytest.raises(ValueError, match=r"reuse_from .*/out: its image options are unknown"):
        run_download(urls, tmp_path / "b", Options(reuse_from=str(out), **FAST), progress=False)


@pytest.mark.parametrize("change, named", [
    ({"size": 64}, r"made with size = 256; this run makes size = 64\."),
    ({"resize_mode": "none"}, r"made with resize_mode = 'longest'; this run makes resize_mode = 'none'\."),
    ({"quality": 50, "keep_original": False},
     r"made with keep_original = True, quality = 90; this run makes keep_original = False, quality = 50\."),
], ids=["size", "resize_mode", "quality+keep_original"])
def test_a_folder_made_with_other_image_options_stops_the_download_before_a_fetch(server, tmp_path, change, named):
    """Finished shards are skipped by name, so other image options would leave the old images in
    them: the run stops naming both, fetches nothing, and leaves the folder and its record as they
    were (so reuse from it with the new options is still refused)."""
    keys = [f"k{i}" for i in range(3)]
    urls, out = tmp_path / "urls.parquet", tmp_path / "out"
    _url_list(urls, keys, server)
    run_download(urls, out, Options(shard_size=2, **FAST), progress=False)
    before, layout, hits = _digests(out), (out / "_layout.json").read_bytes(), sum(server.hits.values())
    with pytest.raises(LayoutError, match=r"/out holds shards whose images were " + named +
                       r".*download into another folder \(--output\), or move this one aside .*"
                       r"--reuse-from cannot take images from it: reuse needs the same image options"):
        run_download(urls, out, Options(shard_size=2, **change, **FAST), progress=False)
    assert sum(server.hits.values()) == hits and _digests(out) == before
    assert (out / "_layout.json").read_bytes() == layout
    with pytest.raises(ValueError, match="reuse needs the same image options"):
        run_download(urls, tmp_path / "b", Options(shard_size=2, reuse_from=str(out), **change, **FAST),
                     progress=False)
    # other options, the same images: kept
    assert run_download(urls, out, Options(shard_size=2, host_rate=5, **FAST), progress=False)["processed_this_run"] == 0


def test_a_key_given_another_url_counts_as_a_changed_shard(server, tmp_path):
    """A finished shard whose keys the input now gives other URLs would keep the old URLs' images:
    refused by the record, by the sidecars of a folder made before the record, and by the sidecars
    of one whose record has no URLs (version 1); moved aside, it lends the images whose URL is the
    same and only the changed one is fetched."""
    keys = [f"k{i}" for i in range(4)]
    urls, out, opts = tmp_path / "urls.parquet", tmp_path / "out", Options(shard_size=2, **FAST)
    _url_list(urls, keys, server)
    run_download(urls, out, opts, progress=False)
    record = json.loads((out / "_layout.json").read_text())
    before, hits = _digests(out), sum(server.hits.values())
    moved = [server.url(f"/img/small.jpg?layout={k}{'&v=2' if k == 'k2' else ''}") for k in keys]
    pq.write_table(pa.table({"url": moved, "key": keys}), urls)
    message = (r"holds 1 shard whose keys this plan gives other URLs \(train-000001\): the input gives some of its "
               r"keys other URLs now .*Move this folder aside and download again with --reuse-from")
    with pytest.raises(LayoutError, match=message):
        run_download(urls, out, opts, progress=False)
    (out / "_layout.json").write_text(json.dumps({"version": 1, "image": record["image"],
                                                  "shards": record["shards"]}))
    with pytest.raises(LayoutError, match=message):
        run_download(urls, out, opts, progress=False)
    (out / "_layout.json").unlink()
    with pytest.raises(LayoutError, match=message):
        run_download(urls, out, opts, progress=False)
    assert sum(server.hits.values()) == hits and _digests(out) == before
    (out / "_layout.json").write_text(json.dumps(record))
    out.rename(tmp_path / "old")
    again = run_download(urls, out, Options(shard_size=2, reuse_from=str(tmp_path / "old"), **FAST), progress=False)
    assert again["reused_this_run"] == 3 and again["ok"] == 4 and sum(server.hits.values()) == hits + 1
    assert {r["key"]: r["url"] for r in _sidecars(out)}["k2"].endswith("&v=2")


def test_an_unfinished_shard_is_checked_by_its_spool(tmp_path):
    """A spool (a shard being made when a run stopped) must hold keys of the shard the plan gives:
    by the layout recorded when it was planned, or, without one, by its keys."""
    from pipeline.stages.download import _spool_root, check_layout, make_plan
    from shards.writer import ShardSpool

    urls, out = tmp_path / "urls.parquet", tmp_path / "out"
    opts = Options(shard_size=2, **FAST)

    def plan(keys, moved=()):
        pq.write_table(pa.table({"url": [f"http://127.0.0.1:9/{k}{'-v2' if k in moved else ''}.jpg" for k in keys],
                                 "key": keys}), urls)
        return make_plan(str(urls), opts)

    spool = ShardSpool(_spool_root(str(out)) / "train-000000")
    spool.add({"key": "k0", "url": "http://127.0.0.1:9/k0.jpg", "status": status.FAILED, "reason": status.HTTP_404})
    assert check_layout(str(out), plan(["k0", "k1"]), _spool_root(str(out)))  # k0 is planned there: kept
    with pytest.raises(LayoutError, match=r"1 shard made from other rows .*\(train-000000\)"):  # by the record
        check_layout(str(out), plan(["a0", "k0", "k1"]), _spool_root(str(out)))
    with pytest.raises(LayoutError, match=r"1 shard whose keys this plan gives other URLs \(train-000000\)"):
        check_layout(str(out), plan(["k0", "k1"], moved={"k1"}), _spool_root(str(out)))
    (out / "_layout.json").unlink()
    with pytest.raises(LayoutError, match=r"1 shard made from other rows"):  # by the spool's keys
        check_layout(str(out), plan(["a0", "a1", "k0"]), _spool_root(str(out)))
    with pytest.raises(LayoutError, match=r"other URLs \(train-000000\)"):  # by the spool's URLs
        check_layout(str(out), plan(["a0", "k0"], moved={"k0"}), _spool_root(str(out)))
    # k1's URL is not in the spool: nothing fetched from the old one
    assert check_layout(str(out), plan(["k0", "k1"], moved={"k1"}), _spool_root(str(out)))
    (out / "_layout.json").unlink()
    # without a record, k0 is among the keys train-000000 gets (a0, k0): kept
    assert check_layout(str(out), plan(["a0", "k0", "k1"]), _spool_root(str(out)))


def _captioned_list(path: Path, rows: list[tuple[str, str, str]]) -> None:
    pq.write_table(pa.table({"key": [k for k, _, _ in rows], "url": [u for _, u, _ in rows],
                             "caption": [c for _, _, c in rows]}), path)


def test_a_new_folder_reuses_the_images_an_earlier_download_holds(server, tmp_path):
    """The input changed (a row gone, one added, a caption changed): downloaded into a new folder
    with reuse_from, every image the earlier folder holds with the same key and URL is copied from
    it, only the others are fetched (the failed one again), and the shards are those a fresh
    download writes, byte for byte."""
    names = ["ocelot.jpg", "small.jpg", "small.png", "vehicle.jpg"]
    first = [(f"k{i}", server.url(f"/img/{names[i % 4]}?reuse={i}"), f"image {i}") for i in range(6)]
    first.append(("k9", server.url("/img/missing.jpg?reuse=9"), "gone"))
    _captioned_list(tmp_path / "a.parquet", first)
    assert run_download(tmp_path / "a.parquet", tmp_path / "a", Options(shard_size=3, **FAST), progress=False)["ok"] == 6
    second = [*first[1:2], ("k2", first[2][1], "a new caption"), *first[3:], ("k7", server.url("/img/ocelot.jpg?reuse=7"), "new")]
    _captioned_list(tmp_path / "b.parquet", second)
    hits = sum(server.hits.values())
    reused = run_download(tmp_path / "b.parquet", tmp_path / "b",
                          Options(shard_size=3, reuse_from=str(tmp_path / "a"), **FAST), progress=False)
    assert sum(server.hits.values()) - hits == 2  # k7, and k9 that failed
    assert reused["reused_this_run"] == 5 and reused["processed_this_run"] == 7 and reused["ok"] == 6
    fresh = run_download(tmp_path / "b.parquet", tmp_path / "c", Options(shard_size=3, **FAST), progress=False)
    assert fresh["reused_this_run"] == 0
    assert _digests(tmp_path / "b") == _digests(tmp_path / "c")
    samples = {s["key"]: s for s in iter_samples(tmp_path / "b", "train", shardshuffle=False)}
    assert samples["k2"]["txt"] == "a new caption"


def test_reuse_needs_an_earlier_folder_of_the_same_image_options(server, tmp_path):
    _captioned_list(tmp_path / "in.parquet", [("k0", server.url("/img/small.jpg?opts=0"), "c")])
    run_download(tmp_path / "in.parquet", tmp_path / "a", Options(**FAST), progress=False)
    with pytest.raises(ValueError, match=r"reuse_from .*/a: its images were made with .*'size': 256.*'size': 128"):
        run_download(tmp_path / "in.parquet", tmp_path / "b", Options(size=128, reuse_from=str(tmp_path / "a"), **FAST),
                     progress=False)
    with pytest.raises(ValueError, match=r"reuse_from .*/gone does not exist; give the shards folder of an earlier "
                                         r"download"):
        run_download(tmp_path / "in.parquet", tmp_path / "b", Options(reuse_from=str(tmp_path / "gone"), **FAST),
                     progress=False)
    assert not (tmp_path / "b").exists()  # told before planning
    (tmp_path / "a" / "_layout.json").unlink()
    with pytest.raises(ValueError, match=r"no _layout.json there"):
        run_download(tmp_path / "in.parquet", tmp_path / "b", Options(reuse_from=str(tmp_path / "a"), **FAST),
                     progress=False)
    with pytest.raises(ValueError, match="is the output folder itself"):
        run_download(tmp_path / "in.parquet", tmp_path / "a", Options(reuse_from=str(tmp_path / "a"), **FAST),
                     progress=False)


def test_failed_rejects_use_the_download_reason(full_run):
    cases, table, stats, out = full_run
    rejects = failed_rejects(out)
    assert rejects.num_rows == stats["failed_total"]
    assert set(rejects["reason"].to_pylist()) == {"download_failed"}
    assert collections.Counter(rejects["detail"].to_pylist()) == collections.Counter(stats["failed"])


def test_plan_is_deterministic_and_dedups_keys(tmp_path):
    keys = ["b", "a", "c", "a", "d"]
    urls = [f"http://h/{i}" for i in range(len(keys))]
    pq.write_table(pa.table({"url": urls, "key": keys}), tmp_path / "a.parquet")
    pq.write_table(pa.table({"url": urls[::-1], "key": keys[::-1]}), tmp_path / "b.parquet")
    first = plan_download(str(tmp_path / "a.parquet"), Options(shard_size=2))
    second = plan_download(str(tmp_path / "b.parquet"), Options(shard_size=2))
    assert [[i["key"] for i in s.items] for s in first] == [[i["key"] for i in s.items] for s in second]
    assert [s.name for s in first] == ["train-000000", "train-000001", "train-000002"]
    keys = [i["key"] for s in first for i in s.items]
    assert keys == ["a", "a-dup1", "b", "c", "d"]
    assert [i["dup"] for s in first for i in s.items] == [False, True, False, False, False]


def test_an_input_planned_in_buckets_gets_the_same_images_and_records(full_run, server, tmp_path):
    """The full run's input again, planned in buckets of 4 rows (spilled, planned bucket by
    bucket, read back per shard): every key gets the same sidecar row and the same members as
    in the in-memory run, shards hold at most shard_size, and the plan files are gone at the end."""
    cases, table, stats, out = full_run
    bucketed = run_download(out.parent / "in", tmp_path / "out", Options(shard_size=5, plan_bucket_rows=4, **FAST),
                            progress=False)
    assert {k: bucketed[k] for k in ("attempted", "ok", "failed")} == {k: stats[k] for k in ("attempted", "ok", "failed")}
    assert bucketed["shards"] > stats["shards"]  # each bucket's last shard of a split is short
    volatile = ("shard", "attempts", "http_status")  # the server's stateful routes (429, then ok) moved on

    def rows(folder):
        return {r["key"]: {k: v for k, v in r.items() if k not in volatile} for r in _sidecars(folder)}

    assert rows(tmp_path / "out") == rows(out)

    def members(folder):
        return {k: m for tar in sorted(folder.glob("*.tar")) for k, m in read_shard(str(tar)).items()}

    assert members(tmp_path / "out") == members(out) != {}
    assert all(len(pq.read_table(p)) <= 5 for p in (tmp_path / "out").glob("*.parquet"))
    assert not (tmp_path / "out" / "_plan").exists()


def test_url_list_csv(server, tmp_path):
    path = tmp_path / "urls.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["url", "caption", "key", "photographer"])
        w.writerow([server.url("/img/ocelot.jpg"), "an ocelot", "000001", "WCS"])
        w.writerow([server.url("/img/vehicle.jpg"), "a truck", "img.2", "NACTI"])
        w.writerow([server.url("/img/small.jpg"), "same key", "000001", "x"])
        w.writerow([server.url("/img/missing.jpg"), "", "", ""])
    stats = run_download(path, tmp_path / "out", Options(**FAST), progress=False)
    assert stats["attempted"] == 4
    assert stats["failed"] == {status.HTTP_404: 1, status.DUPLICATE_KEY: 1}
    samples = {s["key"]: s for s in iter_samples(tmp_path / "out", "train", shardshuffle=False)}
    assert set(samples) == {"000001", "img_2"}
    assert samples["000001"]["txt"] == "an ocelot"  # the first of (key, url) wins; the other is a dup
    assert samples["img_2"]["json"]["photographer"] == "NACTI"
    assert (tmp_path / "out" / "train-000000.tar").exists()


def test_url_list_parquet_and_txt(server, tmp_path):
    urls = [server.url("/img/small.jpg"), server.url("/img/small.png")]
    pq.write_table(pa.table({"url": urls}), tmp_path / "urls.parquet")
    (tmp_path / "urls.txt").write_text("\n".join(urls) + "\n\n")
    a = run_download(tmp_path / "urls.parquet", tmp_path / "a", Options(**FAST), progress=False)
    b = run_download(tmp_path / "urls.txt", tmp_path / "b", Options(**FAST), progress=False)
    assert a["ok"] == b["ok"] == 2
    assert _digests(tmp_path / "a") == _digests(tmp_path / "b")


@pytest.mark.parametrize("text_members", [True, False])
def test_curated_rows_carry_bioclips_text_types_unless_turned_off(tmp_path, text_members):
    pq.write_table(pa.table({
        "record_id": ["r1", "r2"], "identifier": ["http://127.0.0.1:9/a.jpg", "http://127.0.0.1:9/b.jpg"],
        "split": ["train", "val"], "caption": ["c1", "c2"], "caption_sci": ["a photo of Quercus robur.", None],
        "caption_taxonTag_com": ["t1", "t2"], "common_name": ["pedunculate oak", "oak"], "cls": [0, 1]}),
        tmp_path / "chunk.parquet")
    rows = {r["key"]: r for s in plan_download(str(tmp_path / "chunk.parquet"), Options(text_members=text_members))
            for r in s.items}
    if text_members:
        assert rows["r1"]["texts"] == {"sci": "a photo of Quercus robur.", "taxonTag_com": "t1",
                                       "common_name": "pedunculate oak"}
        assert rows["r2"]["texts"] == {"taxonTag_com": "t2", "common_name": "oak"}  # no member for a null
    else:
        assert rows["r1"]["texts"] == rows["r2"]["texts"] == {}
    assert rows["r1"]["caption"] == "c1" and json.loads(rows["r1"]["record"])["caption_sci"].endswith("robur.")


def test_input_without_urls_is_a_clear_error(tmp_path):
    pq.write_table(pa.table({"name": ["x"]}), tmp_path / "x.parquet")
    with pytest.raises(ValueError, match="identifier"):
        plan_download(str(tmp_path / "x.parquet"), Options())


def test_an_input_without_rows_says_so(tmp_path):
    """A folder with no Parquet file (curated/ after a curate that kept nothing) has no columns either."""
    (tmp_path / "curated").mkdir()
    with pytest.raises(ValueError, match=r"curated holds no rows: nothing to download.*FROM rejects"):
        plan_download(str(tmp_path / "curated"), Options())


@pytest.mark.parametrize("name, data, message", [
    ("urls.csv", b"url,key\nhttp://127.0.0.1:9/a.jpg,1\nhttp://127.0.0.1:9/b.jpg,2,extra\n",
     r"urls.csv: CSV parse error: Expected 2 columns, got 3.*fix that line"),
    ("urls.txt", b"http://127.0.0.1:9/a.jpg\nhttp://127.0.0.1:9/caf\xe9.jpg\n",
     r"urls.txt is not UTF-8 text \(byte 0xe9 at offset 47\); re-encode it"),
    ("urls.parquet", b"url\nhttp://127.0.0.1:9/a.jpg\n", r"urls.parquet: .*give a curated folder, a Parquet dataset"),
    ("urls.csv", b"", r"urls.csv is empty \(0 bytes\); a CSV or TSV URL list needs a header line naming its columns"),
    ("urls.tsv", b"", r"urls.tsv is empty \(0 bytes\)"),
])
def test_an_unreadable_url_list_is_a_clear_error_naming_it(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(ValueError, match=message):
        plan_download(str(tmp_path / name), Options())


def test_retry_failed_redoes_only_failures(server, tmp_path):
    urls = [server.url("/img/ocelot.jpg"), server.url("/img/small.jpg"),
            server.url("/retry429/small.png?n=2&after=0&t=retry")]
    write_records(tmp_path / "in", urls, splits=("train",))
    opts = Options(**FAST)
    first = run_download(tmp_path / "in", tmp_path / "out", opts, progress=False)
    assert first["failed"] == {status.HTTP_429_EXHAUSTED: 1}
    hits_before = dict(server.hits)
    second = run_download(tmp_path / "in", tmp_path / "out", opts.model_copy(update={"retry_failed": True}),
                          progress=False)
    assert second["ok"] == 3 and second["failed_total"] == 0
    assert second["processed_this_run"] == 1
    assert server.hits["/img/ocelot.jpg"] == hits_before.get("/img/ocelot.jpg")  # not fetched again
    keys = {s["key"] for s in iter_samples(tmp_path / "out", shardshuffle=False)}
    assert len(keys) == 3


_KILLABLE = textwrap.dedent("""
    import sys
    from pipeline.stages.download import Options, run_download
    if __name__ == "__main__":
        opts = Options(allow_loopback=True, shard_size=10, host_concurrency=2, host_rate=0, processes=1)
        run_download(sys.argv[1], sys.argv[2], opts, progress=False)
""")


@pytest.mark.slow
def test_resume_after_sigkill_gives_the_uninterrupted_output(served_images, tmp_path):
    names = ["ocelot.jpg", "american_black_bear.jpg", "small.jpg", "small.png", "vehicle.jpg", "truncated.jpg"]
    with LoopbackServer(served_images, latency_ms=(60, 60)) as srv:
        urls = [srv.url(f"/img/{names[i % len(names)]}?i={i}") for i in range(60)]
        urls += [srv.url("/img/missing.jpg?i=x")]
        write_records(tmp_path / "in", urls)
        script = tmp_path / "run.py"
        script.write_text(_KILLABLE)
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, str(script), str(tmp_path / "in"), str(tmp_path / "killed")],
                                env=env, cwd=REPO)
        deadline = time.monotonic() + 60
        partial = tmp_path / "killed" / "_partial"
        while time.monotonic() < deadline:
            done = sum(len(p.read_bytes().splitlines()) for p in partial.glob("*/_status.jsonl")) \
                if partial.exists() else 0
            finished = len(list((tmp_path / "killed").glob("*.parquet")))
            if done >= 5 and finished >= 1:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert len(list((tmp_path / "killed").glob("*.parquet"))) < 7, "the run finished before the kill"
        hits_at_kill = sum(srv.hits.values())
        resumed = run_download(tmp_path / "in", tmp_path / "killed", Options(**{**FAST, "shard_size": 10}),
                               progress=False)
        refetched = sum(srv.hits.values()) - hits_at_kill
        clean = run_download(tmp_path / "in", tmp_path / "clean", Options(**{**FAST, "shard_size": 10}),
                             progress=False)
    assert resumed["attempted"] == clean["attempted"] == len(urls)
    assert refetched < len(urls)  # finished images were not fetched again
    assert _digests(tmp_path / "killed") == _digests(tmp_path / "clean")
    keys = [s["key"] for s in iter_samples(tmp_path / "killed", shardshuffle=False, decode=None)]
    assert len(keys) == len(set(keys)) == resumed["ok"]


def test_local_uri_without_localuri_module_is_a_clear_error(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kw):
        if name == "sources.localuri":
            raise ImportError("simulated")
        return real_import(name, *args, **kw)

    monkeypatch.delitem(sys.modules, "sources.localuri", raising=False)
    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr("importlib.import_module", lambda n: fake_import(n, fromlist=["x"]))
    write_records(tmp_path / "in", [(IMAGES / "ocelot.jpg").resolve().as_uri()], splits=("train",))
    with pytest.raises(RuntimeError, match="sources.localuri"):
        run_download(tmp_path / "in", tmp_path / "out", Options(**FAST), progress=False)


def test_json_member_is_the_record(full_run):
    cases, table, stats, out = full_run
    js = []
    # every shard: which rows share the first one follows their keys, hashes of URLs whose port
    # changes per run, so the first shard alone may hold only failures (it did, once in a few hundred)
    for tar in sorted(out.glob("*.tar")):
        with tarfile.open(tar) as tf:
            members = tf.getmembers()
            assert [m.name for m in members] == sorted(m.name for m in members)
            assert {m.mtime for m in members} <= {0}
            js += [json.loads(tf.extractfile(m).read()) for m in members if m.name.endswith(".json")]
    assert len(js) == stats["ok"] and all(j["source"] == "test" and "identifier" in j for j in js)
