"""Shard writing: deterministic tar, sidecar, atomic finalise, per-image spool resume."""

from __future__ import annotations

import itertools
import json
import tarfile

import pyarrow.parquet as pq
import pytest
import webdataset as wds
from hypothesis import given
from hypothesis import strategies as st

from shards import status
from shards.reader import iter_samples, open_dataset
from shards.writer import (
    ShardSpool,
    check_key,
    read_shard,
    safe_key,
    sample_members,
    shard_finished,
    shard_name,
    write_shard,
)


def _samples(real_images, n=6):
    names = sorted(real_images)
    out, rows = {}, []
    for i in range(n):
        key = f"k{i:03d}"
        out[key] = sample_members(key, real_images[names[i % len(names)]], "jpg",
                                  {"license": "cc0-1.0", "i": i}, caption=f"caption {i}", cls=i % 2)
        rows.append({"key": key, "split": "train", "shard": "train-000000", "status": status.OK})
    return out, rows


def test_same_samples_same_bytes_in_any_order(real_images, tmp_path):
    samples, rows = _samples(real_images)
    write_shard(str(tmp_path / "a.tar"), samples, rows)
    write_shard(str(tmp_path / "b.tar"), dict(reversed(list(samples.items()))), list(reversed(rows)))
    assert (tmp_path / "a.tar").read_bytes() == (tmp_path / "b.tar").read_bytes()
    assert (tmp_path / "a.parquet").read_bytes() == (tmp_path / "b.parquet").read_bytes()
    with tarfile.open(tmp_path / "a.tar") as tf:
        members = tf.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert names[:4] == ["k000.cls", "k000.jpg", "k000.json", "k000.txt"]
    assert {(m.mtime, m.uid, m.gid, m.mode) for m in members} == {(0, 0, 0, 0o644)}
    assert not list(tmp_path.glob("*.tmp"))
    assert shard_finished(str(tmp_path / "a.tar"))


def test_written_shard_reads_back_with_webdataset(real_images, tmp_path):
    samples, rows = _samples(real_images)
    write_shard(str(tmp_path / "train-000000.tar"), samples, rows)
    raw = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False, empty_check=False).decode())
    assert [s["__key__"] for s in raw] == sorted(samples)
    assert raw[1]["cls"] == 1 and raw[1]["txt"] == "caption 1" and raw[1]["json"]["i"] == 1
    assert pq.read_table(tmp_path / "train-000000.parquet").num_rows == len(rows)
    assert read_shard(str(tmp_path / "train-000000.tar"))["k002"]["jpg"] == samples["k002"]["jpg"]


def test_text_types_are_members_of_the_same_sample(real_images, tmp_path):
    # BioCLIP's TreeOfLife shards: {key}.sci.txt, {key}.taxonTag_com.txt, {key}.common_name.txt ...
    image = real_images[sorted(real_images)[0]]
    texts = {"sci": "a photo of Quercus robur.", "taxonTag_com": "a photo of kingdom Plantae species robur "
             "with common name pedunculate oak.", "common_name": "pedunculate oak", "com": None}
    samples = {"k0": sample_members("k0", image, "jpg", {"i": 0}, caption="c0", texts=texts),
               "k1": sample_members("k1", image, "jpg", {"i": 1}, caption="c1")}
    assert "com.txt" not in samples["k0"]  # a type without text gets no member
    write_shard(str(tmp_path / "train-000000.tar"), samples, [
        {"key": k, "split": "train", "shard": "train-000000", "status": status.OK} for k in samples])
    raw = list(wds.WebDataset(str(tmp_path / "train-000000.tar"), shardshuffle=False, empty_check=False).decode())
    assert [s["__key__"] for s in raw] == ["k0", "k1"]  # the dotted members did not scatter the sample
    # webdataset lowercases extensions (BioCLIP's loaders ask for "taxontag_com.txt")
    assert raw[0]["sci.txt"] == texts["sci"] and raw[0]["taxontag_com.txt"] == texts["taxonTag_com"]
    ours = list(iter_samples(tmp_path, "train", shardshuffle=False, decode=None))
    assert ours[0]["texts"] == {k.lower(): v for k, v in texts.items() if v is not None} and ours[0]["txt"] == "c0"
    assert ours[1]["texts"] == {}


@pytest.mark.parametrize("name", ["sci.com", "", "a/b", "taxon tag"])
def test_a_text_type_that_would_break_the_member_name_is_refused(real_images, name):
    with pytest.raises(ValueError, match="text type"):
        sample_members("k0", b"x", "jpg", None, texts={name: "text"})


def test_reader_shuffles_and_resamples(real_images, tmp_path):
    for n in range(3):
        samples, rows = _samples(real_images, 4)
        samples = {f"s{n}x{k}": {e: v for e, v in m.items()} for k, m in samples.items()}
        write_shard(str(tmp_path / f"train-{n:06d}.tar"), samples, [dict(r, key=f"s{n}x{r['key']}") for r in rows])
    ordered = [s["key"] for s in iter_samples(tmp_path, "train", shardshuffle=False, decode=None)]
    assert ordered == sorted(ordered) and len(ordered) == 12
    shuffled = [s["key"] for s in iter_samples(tmp_path, "train", shuffle=12, seed=3, decode=None)]
    assert sorted(shuffled) == ordered and shuffled != ordered
    again = [s["key"] for s in iter_samples(tmp_path, "train", shuffle=12, seed=3, decode=None)]
    assert again == shuffled
    drawn = [s["key"] for s in itertools.islice(open_dataset(tmp_path, "train", resampled=True, decode=None), 30)]
    assert len(drawn) == 30 and set(drawn) <= set(ordered)
    first = next(iter_samples(tmp_path, "train", shardshuffle=False))
    assert first["image"].size[0] > 0 and first["json"]["license"] == "cc0-1.0"
    assert list(iter_samples(tmp_path, "val", empty_check=False)) == []


def test_dotted_key_refused():
    with pytest.raises(ValueError, match="dot"):
        check_key("a.b")
    with pytest.raises(ValueError):
        shard_name("tr.ain", 0)
    assert shard_name("val", 12) == "val-000012"


@given(st.text(max_size=30))
def test_safe_key_is_always_a_valid_key(raw):
    assert check_key(safe_key(raw))


def test_spool_resumes_and_ignores_a_torn_line(real_images, tmp_path):
    spool = ShardSpool(tmp_path / "s")
    spool.add({"key": "a", "split": "train", "shard": "train-000000", "status": status.OK},
              {"jpg": real_images["ocelot.jpg"]})
    spool.add({"key": "b", "split": "train", "shard": "train-000000", "status": status.FAILED,
               "reason": status.HTTP_404})
    with open(tmp_path / "s" / "_status.jsonl", "ab") as f:
        f.write(b'{"key": "c", "sta')  # killed mid-write
    (tmp_path / "s" / "d.jpg.part").write_bytes(b"half")  # killed before the rename
    resumed = ShardSpool(tmp_path / "s")
    assert set(resumed.done) == {"a", "b"}
    resumed.add({"key": "c", "split": "train", "shard": "train-000000", "status": status.OK},
                {"jpg": real_images["vehicle.jpg"]})
    resumed.finalise(str(tmp_path / "train-000000.tar"))
    assert not (tmp_path / "s").exists()
    assert set(read_shard(str(tmp_path / "train-000000.tar"))) == {"a", "c"}
    assert pq.read_table(tmp_path / "train-000000.parquet")["key"].to_pylist() == ["a", "b", "c"]


def test_spool_drops_an_image_whose_member_is_missing(real_images, tmp_path):
    spool = ShardSpool(tmp_path / "s")
    spool.add({"key": "a", "split": "train", "shard": "x", "status": status.OK}, {"jpg": b"x"})
    (tmp_path / "s" / "a.sample").unlink()
    assert ShardSpool(tmp_path / "s").done == {}


def test_spool_keeps_a_sample_in_one_file_whatever_its_members(real_images, tmp_path):
    members = sample_members("a", real_images["ocelot.jpg"], "jpg", {"i": 0}, caption="c", cls=3,
                             texts={t: f"text {t}" for t in ("sci", "com", "taxonTag_com", "common_name")})
    spool = ShardSpool(tmp_path / "s")
    spool.add({"key": "a", "split": "train", "shard": "train-000000", "status": status.OK}, members)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["_status.jsonl", "a.sample"]
    resumed = ShardSpool(tmp_path / "s")  # a rerun finds it done and writes it back byte for byte
    assert set(resumed.done) == {"a"}
    resumed.finalise(str(tmp_path / "train-000000.tar"))
    assert read_shard(str(tmp_path / "train-000000.tar"))["a"] == members


def test_spool_of_an_earlier_version_a_file_per_member_still_resumes(real_images, tmp_path):
    spool_dir = tmp_path / "s"
    spool_dir.mkdir()
    (spool_dir / "a.jpg").write_bytes(real_images["ocelot.jpg"])
    (spool_dir / "a.txt").write_bytes(b"caption a")
    row = {"key": "a", "split": "train", "shard": "train-000000", "status": status.OK, "_members": ["jpg", "txt"]}
    (spool_dir / "_status.jsonl").write_text(json.dumps(row) + "\n")
    resumed = ShardSpool(spool_dir)
    assert set(resumed.done) == {"a"}
    resumed.add({"key": "b", "split": "train", "shard": "train-000000", "status": status.OK}, {"jpg": b"b"})
    resumed.finalise(str(tmp_path / "train-000000.tar"))
    assert read_shard(str(tmp_path / "train-000000.tar")) == {
        "a": {"jpg": real_images["ocelot.jpg"], "txt": b"caption a"}, "b": {"jpg": b"b"}}


@given(st.dictionaries(st.from_regex(r"[a-z]{1,5}(\.[a-z]{1,4})?\Z"), st.binary(max_size=300), max_size=6))
def test_pack_round_trips_any_members(members):
    import tempfile
    from pathlib import Path

    from shards.writer import pack_members, read_pack

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "k.sample"
        path.write_bytes(pack_members(members))
        assert read_pack(path) == members
        if members and any(members.values()):
            path.write_bytes(pack_members(members)[:-1])
            with pytest.raises(ValueError, match="cut short"):
                read_pack(path)
