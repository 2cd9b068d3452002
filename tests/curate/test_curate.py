"""The whole curate stage: the in-memory reference and the runners give the same tables."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from pipeline.execute import run_table_stage
from pipeline.io import atomic_write_parquet, parquet_files, read_dataset
from pipeline.runners import make_runner
from pipeline.stages.curate import (
    BALANCE_STAGE,
    DEDUP_PHOTO_STAGE,
    DEDUP_RECORD_STAGE,
    FILTER_STAGE,
    Options,
    curate_table,
    write_splits,
)
from schemas import Reason
from schemas.record import from_rows
from tests.curate.conftest import dwca_rows, search_rows

OPTIONS = Options(min_per_taxon=2, max_per_taxon=40, chunk_size=50, seed=3, unseen_fraction=0.1)


def records() -> pa.Table:
    rows = dwca_rows() + search_rows()
    # a re-ingested record and a photo reached twice, so both dedup layers have work
    rows.append(dict(rows[-1]))
    rows.append(dict(rows[-3], record_id="eol-0123456789abcdef", source="eol", photo_key="p-1"))
    rows[-4] = dict(rows[-4], photo_key="p-1")
    return from_rows(rows)


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    idx = list(range(table.num_rows))
    random.Random(seed).shuffle(idx)
    return table.take(pa.array(idx, pa.int64()))


def test_every_record_accounted_for_and_stats_per_reason():
    table = records()
    curated, rejects, stats = curate_table(table, OPTIONS)
    out_ids = [r for t in curated.values() for r in t.column("record_id").to_pylist()]
    assert len(out_ids) + rejects.num_rows == table.num_rows == stats["in"]
    assert set(out_ids) | set(rejects.column("record_id").to_pylist()) == set(table.column("record_id").to_pylist())
    assert stats["rejected"] == dict(Counter(rejects.column("reason").to_pylist()))
    for reason in (Reason.LICENSE_POLICY, Reason.LINEAGE_DEPTH, Reason.DUPLICATE_RECORD, Reason.DUPLICATE_PHOTO,
                   Reason.RARE_TAXON, Reason.TAXON_CAP):
        assert stats["rejected"][reason] > 0, reason
    assert stats["taxa_capped"] >= 1 and stats["taxa_dropped_rare"] >= 1
    assert set(curated) <= {"train", "val", "test", "unseen"}


def test_output_columns_and_zero_species_merged():
    curated, _, stats = curate_table(records(), OPTIONS)
    train = curated["train"]
    for col in ("split", "cls", "caption", "caption_sci", "caption_com", "caption_taxon", "caption_taxonTag",
                "caption_sci_com", "caption_taxon_com", "caption_taxonTag_com", "scientific_name"):
        assert col in train.column_names
    everything = pa.concat_tables(curated.values())
    taxa = pc.unique(everything.column("taxon_id")).to_pylist()
    binomials = pc.unique(everything.column("species")).to_pylist()
    assert len(taxa) == len(binomials) == stats["taxa"] == len(pc.unique(everything.column("cls")))


def test_same_result_whatever_the_input_order():
    table = records()
    first = curate_table(table, OPTIONS)
    again = curate_table(shuffled(table, 11), OPTIONS)
    assert first[0].keys() == again[0].keys()
    for split in first[0]:
        assert _plain(first[0][split]).equals(_plain(again[0][split]))
    assert first[1].sort_by("record_id").equals(again[1].sort_by("record_id"))
    assert json.dumps(first[2], sort_keys=True) == json.dumps(again[2], sort_keys=True)


def _run_stages(tmp_path, runner_name: str):
    table = shuffled(records(), 5)
    root = tmp_path / runner_name
    for i, start in enumerate(range(0, table.num_rows, 350)):
        atomic_write_parquet(table.slice(start, 350), root / "resolved" / f"part-{i}.parquet")
    # one in-process worker for local: the pool start-up would dominate this small input
    runner = make_runner(runner_name, workers=1 if runner_name == "local" else 2)
    src = root / "resolved"
    for stage in (FILTER_STAGE, DEDUP_RECORD_STAGE, DEDUP_PHOTO_STAGE, BALANCE_STAGE):
        dst = root / "work" / stage.name
        run_table_stage(stage, OPTIONS, root, src, dst, runner, key=stage.name)
        src = dst
    stats = write_splits(src, root / "curated", OPTIONS)
    rejects = pa.concat_tables([read_dataset(p) for p in sorted((root / "rejects").iterdir())])
    return root, stats, rejects


def _curated_from_disk(root) -> dict[str, pa.Table]:
    out = {}
    for d in sorted((root / "curated").glob("split=*")):
        out[d.name.split("=", 1)[1]] = pa.concat_tables([read_dataset(f) for f in parquet_files(d)])
    return out


def _plain(table: pa.Table) -> pa.Table:
    """Dictionary columns (captions) decoded: two runs may number a dictionary differently."""
    cols = [pc.cast(c, c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns]
    return pa.table(cols, names=table.column_names)


def _compare(root, rejects, ref_curated, ref_rejects):
    disk = _curated_from_disk(root)
    assert disk.keys() == ref_curated.keys()
    for split, table in ref_curated.items():
        assert disk[split].column("record_id").to_pylist() == table.column("record_id").to_pylist()
        assert _plain(disk[split].select(table.column_names)).equals(_plain(table))
    key = ["record_id", "stage", "reason", "detail"]
    assert rejects.select(key).sort_by([(k, "ascending") for k in key]).equals(
        ref_rejects.select(key).sort_by([(k, "ascending") for k in key]))


def test_local_runner_matches_reference(tmp_path):
    ref_curated, ref_rejects, ref_stats = curate_table(records(), OPTIONS)
    root, stats, rejects = _run_stages(tmp_path, "local")
    _compare(root, rejects, ref_curated, ref_rejects)
    assert stats["splits"] == ref_stats["splits"] and stats["classes"] == ref_stats["taxa"]
    assert json.loads((root / "curated" / "_classes.json").read_text())["classes"]
    assert write_splits(root / "work" / BALANCE_STAGE.name, root / "curated", OPTIONS)["skipped"] is True


@pytest.mark.beam
@pytest.mark.slow
def test_beam_runner_matches_reference(tmp_path):
    ref_curated, ref_rejects, _ = curate_table(records(), OPTIONS)
    root, _, rejects = _run_stages(tmp_path, "beam")
    _compare(root, rejects, ref_curated, ref_rejects)


def test_options_validation():
    with pytest.raises(ValueError):
        Options(max_per_taxon=1, min_per_taxon=5)
    with pytest.raises(ValueError):
        Options(disabled_filters=("no_such_filter",))
    with pytest.raises(ValueError):
        Options(caption_type="haiku")
    with pytest.raises(ValueError):
        Options(unknown_field=1)
