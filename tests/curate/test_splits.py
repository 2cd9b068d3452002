"""Splits by occurrence (stable, occurrences kept whole), unseen taxa, class indices, seeded chunks."""

from __future__ import annotations

import random
from collections import defaultdict

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.curate.splits import (
    UNSEEN_SPLIT,
    ChunkSpill,
    assign_classes,
    assign_splits,
    chunk_buckets,
    chunk_path,
    class_list,
    make_chunks,
    write_chunks,
)
from pipeline.stages.curate import Options
from schemas.record import from_rows
from tests.curate.conftest import dwca_rows, plain_text, search_rows


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    idx = list(range(table.num_rows))
    random.Random(seed).shuffle(idx)
    return table.take(pa.array(idx, pa.int64()))


@pytest.fixture(scope="module")
def table() -> pa.Table:
    return from_rows(search_rows() + dwca_rows())


def test_occurrences_stay_in_one_split(table):
    splits = assign_splits(table, Options(splits={"train": 0.5, "val": 0.25, "test": 0.25})).to_pylist()
    by_occ = defaultdict(set)
    for occ, s in zip(table.column("occurrence_id").to_pylist(), splits, strict=True):
        by_occ[occ].add(s)
    multi = [o for o, _ in by_occ.items() if table.column("occurrence_id").to_pylist().count(o) > 1]
    assert len(multi) > 100  # the search sample has occurrences with up to 5 photos
    assert all(len(s) == 1 for s in by_occ.values())
    assert set(splits) == {"train", "val", "test"}


def test_fractions_roughly_respected(table):
    splits = assign_splits(table, Options(splits={"train": 0.8, "val": 0.2})).to_pylist()
    assert 0.65 < splits.count("train") / len(splits) < 0.95


def test_split_is_stable_when_records_are_added(table):
    opts = Options()
    small = table.slice(0, 200)
    before = dict(zip(small.column("record_id").to_pylist(), assign_splits(small, opts).to_pylist(), strict=True))
    grown = shuffled(table, 3)
    after = dict(zip(grown.column("record_id").to_pylist(), assign_splits(grown, opts).to_pylist(), strict=True))
    assert all(after[r] == s for r, s in before.items())


def test_unseen_split_holds_whole_taxa(table):
    opts = Options(unseen_fraction=0.3)
    splits = assign_splits(table, opts).to_pylist()
    taxa_splits = defaultdict(set)
    for t, s in zip(table.column("taxon_id").to_pylist(), splits, strict=True):
        taxa_splits[t].add(s)
    unseen = {t for t, s in taxa_splits.items() if UNSEEN_SPLIT in s}
    assert unseen and all(taxa_splits[t] == {UNSEEN_SPLIT} for t in unseen)
    assert len(unseen) < len(taxa_splits)


def test_classes_are_sorted_taxon_ids(table):
    classes = class_list([table])
    assert classes == sorted(set(classes))
    cls = assign_classes(table, classes).to_pylist()
    ids = table.column("taxon_id").to_pylist()
    assert all(classes[c] == t for c, t in zip(cls, ids, strict=True) if t)


def test_chunks_deterministic_by_seed_and_order_free(table):
    opts = Options(chunk_size=100, seed=5)
    a = make_chunks(table, opts)
    b = make_chunks(shuffled(table, 9), opts)
    assert [c.column("record_id").to_pylist() for c in a] == [c.column("record_id").to_pylist() for c in b]
    assert [c.num_rows for c in a] == [100] * (table.num_rows // 100) + [table.num_rows % 100]
    other = make_chunks(table, Options(chunk_size=100, seed=6))
    assert a[0].column("record_id").to_pylist() != other[0].column("record_id").to_pylist()
    flat = [r for c in a for r in c.column("record_id").to_pylist()]
    assert sorted(flat) == sorted(table.column("record_id").to_pylist())


def test_write_chunks_layout(tmp_path, table):
    opts = Options(chunk_size=300)
    written = write_chunks({"train": table, "val": table.slice(0, 10)}, tmp_path, opts)
    assert chunk_path("train", 2) == "split=train/chunk-00002.parquet"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*.parquet")) == [
        "split=train/chunk-00000.parquet", "split=train/chunk-00001.parquet", "split=train/chunk-00002.parquet",
        "split=train/chunk-00003.parquet", "split=val/chunk-00000.parquet"]
    assert sum(pq.read_metadata(p).num_rows for p in written) == table.num_rows + 10
    assert not list(tmp_path.rglob(".*tmp*"))


@pytest.mark.parametrize("bad", [{"train": 0.5}, {"train": 0.5, "unseen": 0.5}, {"a/b": 1.0}, {}])
def test_bad_split_options_fail_early(bad):
    with pytest.raises(ValueError):
        Options(splits=bad)


@given(st.lists(st.tuples(st.one_of(st.none(), st.text(max_size=5)), st.one_of(st.none(), st.integers(-9, 9)),
                          st.sampled_from(["a", "b", None]), st.text("xyz", max_size=2)), min_size=1, max_size=60),
       st.integers(1, 4), st.integers(1, 7), st.integers(1, 3), st.data())
def test_written_chunks_equal_arrow_take(rows, pieces, size, per_block, data):
    """The chunk writer (dictionary codes, gathered a block of chunks at a time, dictionaries cut to
    what a chunk uses) writes exactly ``make_chunks``'s ``Table.take`` of the shuffled rows: any
    rows, chunked columns, nulls, all-null columns, dictionary columns; one schema in every file."""
    n = len(rows)
    table = pa.table({
        "record_id": pa.array([f"r{i}" for i in range(n)], pa.string()),
        "s": pa.array([r[0] for r in rows], pa.string()),
        "i": pa.array([r[1] for r in rows], pa.int64()),
        "d": pa.array([r[2] for r in rows], pa.string()).dictionary_encode(),
        "genus": pa.array([r[3] for r in rows], pa.string()),
        "null": pa.nulls(n, pa.string()),
    })
    cut = sorted(data.draw(st.lists(st.integers(0, n), max_size=pieces)))
    bounds = [0, *cut, n]
    table = pa.concat_tables([table.slice(a, b - a) for a, b in zip(bounds, bounds[1:], strict=False)])
    opts = Options(chunk_size=size, seed=data.draw(st.integers(0, 3)))
    import tempfile

    import pipeline.curate.splits as splits_mod

    with tempfile.TemporaryDirectory() as root, pytest.MonkeyPatch.context() as mp:
        mp.setattr(splits_mod, "CHUNK_BLOCK_ROWS", size * per_block)
        written = write_chunks({"train": table}, root, opts)
        got = [pq.read_table(p) for p in written]
    expected = make_chunks(table, opts)
    assert len(got) == len(expected) == -(-n // size)
    assert len({t.schema for t in got}) == 1
    for g, e in zip(got, expected, strict=True):
        assert plain_text(g).equals(plain_text(e))


@given(st.lists(st.tuples(st.one_of(st.none(), st.sampled_from(["r1", "r2", "r3"]), st.text("abc", max_size=4)),
                          st.sampled_from(["train", "val", "test"]), st.sampled_from(["a", "b", None]),
                          st.one_of(st.none(), st.integers(-9, 9))), min_size=1, max_size=80),
       st.sampled_from([1, 2, 4, 8, 16]), st.integers(1, 9), st.integers(0, 5), st.data())
def test_spilled_chunks_equal_the_chunks_written_whole(rows, buckets, size, parts, data):
    """The bucketed chunk writer, given the splits part by part in row order (dictionary columns
    with each part's own dictionaries, repeated and null record ids, all-null columns), writes the
    files ``write_chunks`` writes from whole splits: same names, schema and rows in the same order,
    and removes its spill."""
    import tempfile
    from pathlib import Path

    n = len(rows)
    table = pa.table({
        "record_id": pa.array([r[0] for r in rows], pa.string()),
        "split": pa.array([r[1] for r in rows], pa.string()),
        "genus": pa.array([r[2] for r in rows], pa.string()),
        "i": pa.array([r[3] for r in rows], pa.int64()),
        "null": pa.nulls(n, pa.string()),
        "order": pa.array(range(n), pa.int64()),  # tells apart rows whose other values are equal
    })
    cut = sorted(data.draw(st.lists(st.integers(0, n), max_size=parts)))
    bounds = [0, *cut, n]
    seed = data.draw(st.integers(0, 3))
    opts = Options(chunk_size=size, seed=seed)
    whole = {s: table.filter(pa.compute.equal(table.column("split"), s))
             for s in sorted(set(table.column("split").to_pylist()))}
    with tempfile.TemporaryDirectory() as tmp:
        a, b = Path(tmp) / "whole", Path(tmp) / "spilled"
        expected = write_chunks(whole, a, opts)
        spill = ChunkSpill(Path(tmp) / "spill", buckets, seed)
        for lo, hi in zip(bounds, bounds[1:], strict=False):
            part = table.slice(lo, hi - lo)
            # each part's repeating text as a dictionary of its own, as the fused path reads it
            part = part.set_column(2, "genus", part.column("genus").combine_chunks().dictionary_encode())
            for s in sorted(set(part.column("split").to_pylist())):
                spill.add(s, part.filter(pa.compute.equal(part.column("split"), s)))
        got = spill.write(b, opts)
        spill.remove()
        assert [Path(p).relative_to(b) for p in got] == [Path(p).relative_to(a) for p in expected]
        assert spill.rows == {s: t.num_rows for s, t in whole.items()}
        for p, q in zip(got, expected, strict=True):
            g, e = pq.read_table(p), pq.read_table(q)
            assert g.schema == e.schema
            assert plain_text(g).equals(plain_text(e))
        assert not (Path(tmp) / "spill").exists()


@pytest.mark.parametrize("rows, bucket_rows, buckets", [(0, 10, 1), (10, 10, 1), (11, 10, 2), (40, 10, 4),
                                                         (41, 10, 8), (5_000_000, 2_000_000, 4)])
def test_chunk_buckets_hold_at_most_the_bucket_rows_on_average(rows, bucket_rows, buckets):
    assert chunk_buckets(rows, bucket_rows) == buckets


def test_spill_buckets_must_be_a_power_of_two(tmp_path):
    with pytest.raises(ValueError, match="power of two"):
        ChunkSpill(tmp_path, 3, 0)


def test_a_spill_left_by_a_killed_run_is_not_read_again(tmp_path, table):
    """A killed run's bucket file is not read with the new one's: the rerun's rows are spilled again."""
    import numpy as np

    from pipeline.curate.hashing import hash_strings

    opts = Options(chunk_size=2, seed=2)
    rows = table.slice(0, 3)
    used = set((hash_strings(rows.column("record_id").combine_chunks(), seed="chunk:2") >> np.uint64(60)).tolist())
    empty = min(set(range(16)) - used)
    stale = tmp_path / "spill" / "split=train" / f"bucket-{empty:05d}.arrow"
    stale.parent.mkdir(parents=True)
    old = ChunkSpill(tmp_path / "old", 1, 2)  # a killed run's bucket: an Arrow stream of the same rows
    old.add("train", rows)
    old.close()
    stale.write_bytes((tmp_path / "old" / "split=train" / "bucket-00000.arrow").read_bytes())
    spill = ChunkSpill(tmp_path / "spill", 16, opts.seed)
    assert not stale.exists()  # removed at the start, not only left unread
    spill.add("train", rows)
    written = spill.write(tmp_path / "out", opts)
    spill.remove()
    assert sum(pq.read_table(p).num_rows for p in written) == 3
