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


def test_the_local_runner_takes_the_staged_plan_when_the_fused_one_would_not_fit(tmp_path, capsys, monkeypatch):
    """``local_plan = auto``: the fused plan when its decisions fit in memory, else the staged
    chain (bounded memory), with a word why; both give the same chunks."""
    import pipeline.curate.fused as fused_mod
    from pipeline import jobs

    make, part_rows, options = CASES["samples"]
    table = make()
    fused_root = _root(tmp_path, "fits", table, part_rows)
    jobs.curate(_config(fused_root, **options), make_runner("local", workers=1, progress=False))
    assert not (fused_root / "work" / "curate").exists() and "staged plan" not in capsys.readouterr().err
    monkeypatch.setattr(fused_mod.os, "sysconf", lambda name: {"SC_PHYS_PAGES": 16, "SC_PAGE_SIZE": 4096}[name])
    root = _root(tmp_path, "tight", table, part_rows)
    jobs.curate(_config(root, **options), make_runner("local", workers=1, progress=False))
    assert "would need about" in capsys.readouterr().err and (root / "work" / "curate" / "balanced").exists()
    assert _chunks(root) == _chunks(fused_root)
    forced = _root(tmp_path, "forced", table, part_rows)
    jobs.curate(_config(forced, **options, local_plan="fused"), make_runner("local", workers=1, progress=False))
    assert not (forced / "work" / "curate").exists() and _chunks(forced) == _chunks(fused_root)


@pytest.mark.parametrize("runner", ["local", "beam"])
def test_global_stages_cut_more_buckets_for_more_rows_and_decide_the_same(tmp_path, monkeypatch, runner):
    """The dedup and balance stages spread a large input over more buckets (each decide task holds
    its bucket whole); every key still meets in one bucket, so chunks and rejects do not change."""
    import pipeline.execute as execute

    make, part_rows, options = CASES["generated"]
    table = make()
    whole_root = _root(tmp_path, "eight", table, part_rows)
    curate_staged(_config(whole_root, **options), make_runner("local", workers=1, progress=False))
    monkeypatch.setattr(execute, "GLOBAL_BUCKET_ROWS", 100)  # ~3,400 rows: 35 buckets instead of 8
    root = _root(tmp_path, "many", table, part_rows)
    stats = curate_staged(_config(root, **options), make_runner(runner, workers=1, progress=False))
    parts = {p.name for p in (root / "work" / "curate" / "dedup-record").rglob("*.parquet")}
    assert any(int(name[len("part-b"):-len(".parquet")]) >= 8 for name in parts), sorted(parts)
    expected = _chunks(whole_root)
    assert _chunks(root).keys() == expected.keys()
    for name, chunk in _chunks(root).items():
        assert chunk.equals(expected[name]), name
    for key in STEPS:
        assert _rejects(root, key).equals(_rejects(whole_root, key)), key
    assert stats["curate-split"]["in"] == json.loads((whole_root / "curated" / "_curate_stats.json").read_text())[
        "curate-split"]["in"]
