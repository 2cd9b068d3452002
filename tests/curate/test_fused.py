"""The fused curate gives the staged ``biocorpus curate`` its chunks, rejects and step counts, to the row."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import load_config
from pipeline.curate.fused import STEPS, curate_fused
from pipeline.io import atomic_write_parquet, read_dataset
from pipeline.jobs import curate_staged
from pipeline.runners import make_runner
from schemas import REJECT_SCHEMA, make_record_id
from schemas.record import extra_json, from_rows
from tests.curate.conftest import dwca_rows, search_rows

REJECT_KEY = ["record_id", "stage", "reason", "detail"]


def sample_records() -> pa.Table:
    """The real samples, plus a re-ingested record and one photo reached from two sources."""
    rows = dwca_rows() + search_rows()
    rows.append(dict(rows[-1]))
    rows.append(dict(rows[-3], record_id="eol-0123456789abcdef", source="eol", photo_key="p-1",
                     extra=extra_json({"eol_page": 1})))
    rows[-4] = dict(rows[-4], photo_key="p-1")
    return from_rows(rows)


def generated_records(n: int = 3000, seed: int = 1) -> pa.Table:
    """The real sample rows re-drawn with skewed taxon counts (rare and capped taxa), record ids
    listed twice with different richness, and photos shared across sources with provenance."""
    rng = random.Random(seed)
    base = [r for r in dwca_rows() + search_rows() if r.get("taxon_id")]
    weights = [1.0 / (i + 1) ** 1.2 for i in range(len(base))]
    rows = []
    for i in range(n):
        r = dict(rng.choices(base, weights)[0])
        r.update(record_id=make_record_id("gbif", f"gen/{i}"), media_id=f"gen/{i}",
                 occurrence_id=f"occ-{i // 3}", photo_key=f"photo-{i}",
                 identifier=f"https://example.org/img/{i}.jpg")
        rows.append(r)
        if i % 17 == 0:  # re-ingested: same record id, one copy richer
            rows.append(dict(r, vernacular_name="twice listed", creator="someone"))
        if i % 19 == 0:  # re-ingested as rich as before but changed: the row content decides
            rows.append(dict(r, identifier=f"https://example.org/img/{i}.jpeg"))
        if i % 23 == 0:  # same photo from another source, each with its own extra
            rows.append(dict(r, record_id=make_record_id("eol", f"gen/{i}"), source="eol",
                             extra=extra_json({"eol_page": i, "merged_from": []})))
        if i % 29 == 0:  # same photo reached three times, all equally rich
            for src in ("inaturalist", "bioscan"):
                rows.append(dict(r, record_id=make_record_id(src, f"gen/{i}"), source=src))
    rng.shuffle(rows)
    return from_rows(rows)


def _root(tmp_path, name: str, table: pa.Table, part_rows: int):
    root = tmp_path / name
    for i, start in enumerate(range(0, table.num_rows, part_rows)):
        atomic_write_parquet(table.slice(start, part_rows), root / "resolved" / f"part-{i:04d}.parquet")
    return root


def _config(root, **curate_options):
    return load_config(overrides={"data": str(root), **{f"curate.{k}": v for k, v in curate_options.items()}})


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns (captions) decoded: the two paths number a dictionary in their own row order."""
    cols = [pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(cols, names=table.column_names)


def _chunks(root) -> dict[str, pa.Table]:
    return {str(p.relative_to(root / "curated")): _plain(pq.read_table(p))
            for p in sorted((root / "curated").rglob("chunk-*.parquet"))}


def _rejects(root, key: str) -> pa.Table:
    table = read_dataset(root / "rejects" / f"stage={key}", REJECT_SCHEMA)
    return table.select(REJECT_KEY).sort_by([(k, "ascending") for k in REJECT_KEY])


CASES = {
    "samples": (sample_records, 350, dict(min_per_taxon=2, max_per_taxon=40, chunk_size=50, seed=3,
                                          unseen_fraction=0.1)),
    "generated": (generated_records, 700, dict(min_per_taxon=5, max_per_taxon=80, chunk_size=300, seed=7,
                                               splits={"train": 0.8, "val": 0.1, "test": 0.1})),
    "no-dedup": (generated_records, 1000, dict(min_per_taxon=1, dedup_records=False, dedup_photos=False,
                                               chunk_size=500, quality_grades=None)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_fused_matches_staged_curate(tmp_path, case):
    make, part_rows, options = CASES[case]
    table = make()
    staged_root = _root(tmp_path, "staged", table, part_rows)
    fused_root = _root(tmp_path, "fused", table, part_rows)
    cfg = _config(staged_root, **options)
    staged = curate_staged(cfg, make_runner("local", workers=1, progress=False))
    fused_cfg = _config(fused_root, **options)
    fused = curate_fused(fused_root / "resolved", fused_root, fused_cfg.curate, config=fused_cfg)

    staged_chunks, fused_chunks = _chunks(staged_root), _chunks(fused_root)
    assert staged_chunks, "the case must curate something"
    assert fused_chunks.keys() == staged_chunks.keys()
    for name, chunk in staged_chunks.items():
        assert fused_chunks[name].schema == chunk.schema, name
        assert fused_chunks[name].equals(chunk), name
    for name in ("_classes.json",):
        assert (fused_root / "curated" / name).read_text() == (staged_root / "curated" / name).read_text()

    n_rejects = 0
    for key in STEPS:
        assert _rejects(fused_root, key).equals(_rejects(staged_root, key)), key
        n_rejects += fused[key]["rejected"]
        for count in ("in", "out", "rejected", "rejected_by_reason"):
            assert fused[key][count] == staged[key][count], (key, count)
    assert n_rejects + fused["curate-split"]["in"] == table.num_rows
    assert fused["balance"] == staged["balance"]
    for count in ("in", "splits", "chunks", "classes"):
        assert fused["curate-split"][count] == staged["curate-split"][count], count
    runs = [json.loads(p.read_text()) for p in sorted((fused_root / "runs").glob("*/run.json"))]
    assert sorted(r["stage"] for r in runs) == sorted(STEPS)
    assert all(r["counts"]["in"] == fused[r["stage"]]["in"] and r["config"]["curate"] for r in runs)
    if case == "generated":  # every piece had work to do
        assert all(fused[k]["rejected"] for k in STEPS)
        merged = [json.loads(e) for t in fused_chunks.values() for e in t.column("extra").to_pylist() if e]
        assert any(len(m.get("merged_from", [])) == 2 for m in merged)


@pytest.mark.parametrize("case", sorted(CASES))
def test_curated_rows_past_the_bucket_size_give_the_same_chunks(tmp_path, case):
    """Past ``chunk_bucket_rows`` both paths label file by file and spill by the shuffle's hash
    (several buckets here): the chunks, classes and counts are those of the run held whole."""
    make, part_rows, options = CASES[case]
    table = make()
    whole_root = _root(tmp_path, "whole", table, part_rows)
    whole_cfg = _config(whole_root, **options)
    whole = curate_fused(whole_root / "resolved", whole_root, whole_cfg.curate, config=whole_cfg)
    expected = _chunks(whole_root)
    bucket_rows = max(1, whole["curate-split"]["in"] // 5)
    for name, run in (("fused", lambda cfg, root: curate_fused(root / "resolved", root, cfg.curate, config=cfg)),
                      ("staged", lambda cfg, root: curate_staged(cfg, make_runner("local", workers=1, progress=False)))):
        root = _root(tmp_path, name, table, part_rows)
        cfg = _config(root, **options, chunk_bucket_rows=bucket_rows)
        stats = run(cfg, root)
        assert stats["curate-split"]["buckets"] == 8, name
        got = _chunks(root)
        assert got.keys() == expected.keys(), name
        for chunk, rows in expected.items():
            assert got[chunk].schema == rows.schema, (name, chunk)
            assert got[chunk].equals(rows), (name, chunk)
        assert (root / "curated" / "_classes.json").read_text() == (whole_root / "curated" / "_classes.json").read_text()
        for count in ("in", "splits", "chunks", "classes"):
            assert stats["curate-split"][count] == whole["curate-split"][count], (name, count)
        assert not [p for p in (root / ".staging").rglob("*") if p.is_file()], name  # the spill is removed


def test_fused_rerun_is_skipped_and_force_redoes(tmp_path):
    root = _root(tmp_path, "fused", sample_records(), 350)
    options = _config(root, min_per_taxon=2).curate
    first = curate_fused(root / "resolved", root, options)
    assert "skipped" not in first
    assert curate_fused(root / "resolved", root, options)["skipped"] is True
    assert "skipped" not in curate_fused(root / "resolved", root, options, force=True)
    other = _config(root, min_per_taxon=3).curate
    assert "skipped" not in curate_fused(root / "resolved", root, other)


def test_a_new_hash_definition_redoes_the_curate(tmp_path, monkeypatch):
    """Seeded choices follow the hash: chunks made with an older definition are not reused."""
    import pipeline.curate.fused as fused_mod

    root = _root(tmp_path, "fused", sample_records(), 350)
    options = _config(root, min_per_taxon=2).curate
    curate_fused(root / "resolved", root, options)
    assert curate_fused(root / "resolved", root, options)["skipped"] is True
    monkeypatch.setattr(fused_mod, "HASH_VERSION", fused_mod.HASH_VERSION + 1)
    assert "skipped" not in curate_fused(root / "resolved", root, options)


def test_fused_empty_input(tmp_path):
    root = tmp_path / "empty"
    (root / "resolved").mkdir(parents=True)
    stats = curate_fused(root / "resolved", root, _config(root).curate)
    assert stats["curate-filter"]["in"] == 0 and stats["curate-split"]["classes"] == 0
    assert not list((root / "curated").rglob("chunk-*.parquet"))
    with pytest.raises(FileNotFoundError):
        curate_fused(root / "missing", root, _config(root).curate)


@pytest.mark.parametrize("keys, shared", [
    (["a", "b", "a", "c", "b"], [0, 1, 2, 4]),
    (["x", "y", "z"], []),
    ([], []),
])
def test_shared_keys_finds_exactly_the_repeated_keys(keys, shared):
    from pipeline.curate.fused import _shared_keys

    assert _shared_keys(pa.array(keys, pa.string())).tolist() == shared


def test_a_run_too_large_for_this_machine_says_so_first(capsys, monkeypatch):
    import pipeline.curate.fused as fused_mod

    monkeypatch.setattr(fused_mod.os, "sysconf", lambda name: {"SC_PHYS_PAGES": 1 << 20, "SC_PAGE_SIZE": 4096}[name])
    fused_mod._warn_if_too_large(1_000_000)  # ~0.4 GiB of 4 GiB: nothing to say
    assert capsys.readouterr().err == ""
    fused_mod._warn_if_too_large(50_000_000)
    err = capsys.readouterr().err
    assert "50,000,000 records need about 20 GiB" in err and "--runner beam" in err
