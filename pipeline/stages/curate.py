"""The curate stage: resolved records -> filtered, deduplicated, balanced, split, captioned chunks.

Pieces (in ``pipeline/curate/``) are pure functions over Arrow tables; this module holds the
options, the stage objects the runners apply (``FILTER_STAGE``, ``DEDUP_RECORD_STAGE``,
``DEDUP_PHOTO_STAGE``, ``BALANCE_STAGE``, in that order: ``STAGES``), ``write_splits`` (labels,
class indices and shuffled chunks of the balanced set) and ``curate_table``, the in-memory
reference that composes them and that the runners must match.
Layer-3 dedup (bytes / perceptual hash / evaluation sets) runs after download:
``dedup_downloaded``.
"""

from __future__ import annotations

from collections import Counter
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipeline.curate import balance as balance_mod
from pipeline.curate import dedup as dedup_mod
from pipeline.curate import splits as splits_mod
from pipeline.curate.captions import CAPTION_TYPES, add_captions
from pipeline.curate.filters import apply_filters, filter_names, unknown_license_families
from pipeline.curate.hashing import HASH_VERSION
from pipeline.stage import GlobalStage, MapStage, StageContext, StageOutput, check_accounting
from schemas import RANKS, empty_rejects

STAGE = "curate"
Rank = Literal["kingdom", "phylum", "class", "order", "family", "genus", "species"]
CaptionType = Literal[tuple(CAPTION_TYPES)]  # type: ignore[valid-type]


class Options(BaseModel):
    """``[curate]`` in the config: every threshold of filtering, dedup, balance, splits, captions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    # filters
    licenses: tuple[str, ...] = Field(
        ("cc0", "public-domain", "cc-by", "cc-by-sa"),
        description="licence families allowed (code without version: cc0, public-domain, cc-by, cc-by-sa, ...); "
                    "'unknown' and missing licences are always refused")
    allow_nc: bool = Field(False, description="also allow the NonCommercial variants of the allowed families")
    allow_nd: bool = Field(False, description="also allow the NoDerivatives variants of the allowed families")
    keep_specimens: bool = Field(True, description="keep PRESERVED_SPECIMEN records (museum photos)")
    exclude_basis: tuple[str, ...] = Field(
        (), description="further basisOfRecord values to refuse (FOSSIL_SPECIMEN and MATERIAL_CITATION always are)")
    min_rank: Rank = Field("species", description="the most specific rank a record must be resolved to")
    require_all_ranks: bool = Field(
        False, description="require every rank from kingdom to min_rank (else kingdom and min_rank only)")
    keep_non_living: bool = Field(
        True, description="keep non-living plankton classes (detritus, bubbles...) as classes of their own")
    drop_zero_coordinates: bool = Field(True, description="refuse records at exactly 0,0 (a null island)")
    require_coordinates: bool = Field(False, description="refuse records without coordinates")
    annotation_statuses: tuple[str, ...] | None = Field(
        ("validated",), description="EcoTaxa annotation statuses allowed (records without one pass); null = any")
    quality_grades: tuple[str, ...] | None = Field(
        ("research",), description="iNaturalist quality grades allowed (records without one pass); null = any")
    image_formats: tuple[str, ...] = Field(
        ("image/jpeg", "image/png", "image/webp", "image/tiff", "image/gif", "image/bmp"),
        description="MIME types allowed when the source gives a format")
    min_width: int = Field(16, ge=0, description="minimum image width in pixels, when known before download")
    min_height: int = Field(16, ge=0, description="minimum image height in pixels, when known before download")
    disabled_filters: tuple[str, ...] = Field((), description=f"filters to skip, from {filter_names()}")
    # dedup
    dedup_records: bool = Field(True, description="layer 1: one row per record id")
    dedup_photos: bool = Field(True, description="layer 2: one row per photo key across sources")
    near_duplicates: bool = Field(True, description="layer 3: drop perceptual near-duplicates after download")
    hamming_threshold: int = Field(4, ge=0, le=16, description="max pHash Hamming distance of near-duplicates")
    eval_hamming_threshold: int = Field(
        6, ge=0, le=16, description="max pHash Hamming distance to an evaluation image (decontamination)")
    eval_sets: tuple[str, ...] = Field(
        (), description="evaluation sets to decontaminate against: image folders, images or webdataset .tar shards")
    # balance
    min_per_taxon: int = Field(1, ge=0, description="taxa with fewer records are dropped (rare_taxon)")
    max_per_taxon: int | None = Field(None, ge=1, description="taxa with more records are capped (taxon_cap); null = no cap")
    seed: int = Field(0, description="seed of the cap sampling, splits, unseen taxa and chunk shuffle")
    # splits and chunks
    splits: dict[str, float] = Field(
        {"train": 0.9, "val": 0.05, "test": 0.05}, description="split name -> fraction of occurrences (sum 1)")
    unseen_fraction: float = Field(
        0.0, ge=0.0, lt=1.0, description="fraction of taxa held out whole in the 'unseen' split")
    chunk_size: int = Field(10_000, ge=1, description="rows per shuffled chunk file")
    local_plan: Literal["auto", "fused", "staged"] = Field(
        "auto", description="the local runner's plan: fused (decision columns first, fastest; ~400 bytes of "
        "memory per input row), staged (the table stages Beam runs, on disk between steps: bounded memory, "
        "several times slower), or auto: fused when it fits in 80% of the machine's memory; the chunks and "
        "rejects are the same", json_schema_extra={"fingerprint": False})
    chunk_bucket_rows: int = Field(
        4_000_000, ge=1, description="more curated rows than this are labelled and shuffled into chunks in "
        "buckets of about this many (spilled to disk by the shuffle's hash, under the data root's .staging), so "
        "memory holds one bucket instead of every row; the chunks are the same",
        json_schema_extra={"fingerprint": False})
    # captions
    caption_type: CaptionType = Field(
        "taxonomic+common", description=f"the text type written to 'caption', one of {list(CAPTION_TYPES)}")

    @model_validator(mode="after")
    def _check(self) -> Options:
        if not self.splits:
            raise ValueError("splits: give at least one split")
        if abs(sum(self.splits.values()) - 1.0) > 1e-6 or any(v < 0 for v in self.splits.values()):
            raise ValueError(f"splits: fractions must be >= 0 and sum to 1, got {self.splits}")
        for name in self.splits:
            if not name or any(c in name for c in "=/\\. ") or name == splits_mod.UNSEEN_SPLIT:
                raise ValueError(f"splits: {name!r} is not a usable split name")
        if self.max_per_taxon is not None and self.max_per_taxon < self.min_per_taxon:
            raise ValueError("max_per_taxon must be >= min_per_taxon")
        if bad := unknown_license_families(self.licenses):
            raise ValueError(f"licenses: {bad} are not licence families; give each without its version "
                             "('cc-by' allows cc-by-4.0 and every other version), one of cc0, public-domain, "
                             "cc-by, cc-by-sa, cc-by-nd (NonCommercial ones with allow_nc)")
        unknown = set(self.disabled_filters) - set(filter_names())
        if unknown:
            raise ValueError(f"disabled_filters: unknown {sorted(unknown)}, known {filter_names()}")
        if self.min_rank not in RANKS:
            raise ValueError(f"min_rank must be one of {RANKS}")
        return self


# --- stage functions (the runners call these) -----------------------------------------------------

def filter_batch(batch: pa.Table, ctx: StageContext) -> StageOutput:
    kept, rejects = apply_filters(batch, ctx.options, ctx.stage)
    return StageOutput(kept, rejects)


def label_batch(batch: pa.Table, ctx: StageContext) -> StageOutput:
    """Add ``split``, the name columns and every caption column (per row, no global state)."""
    out = batch.append_column("split", splits_mod.assign_splits(batch, ctx.options)) \
        if "split" not in batch.column_names else batch
    return StageOutput(add_captions(out, ctx.options.caption_type))


def _pass_through(batch: pa.Table, ctx: StageContext) -> StageOutput:
    return StageOutput(batch)


def _unordered(ctx: StageContext) -> StageContext:
    """The runners' decisions keep their group's row order: which rows are kept or rejected never
    depends on it, and the one reordering that the output promises is the seeded chunk shuffle of
    ``write_splits``; reordering every bucket by hash first would gather each table once more."""
    return StageContext(ctx.stage, ctx.options, {**ctx.resources, "ordered": ctx.resources.get("ordered", False)})


def _decide_records(group: pa.Table, ctx: StageContext) -> StageOutput:
    return dedup_mod.decide_records(group, _unordered(ctx)) if ctx.options.dedup_records else _pass_through(group, ctx)


def _decide_photos(group: pa.Table, ctx: StageContext) -> StageOutput:
    return dedup_mod.decide_photos(group, _unordered(ctx)) if ctx.options.dedup_photos else _pass_through(group, ctx)


def _decide_balance(group: pa.Table, ctx: StageContext) -> StageOutput:
    return balance_mod.decide_balance(group, _unordered(ctx))


FILTER_STAGE = MapStage("curate_filter", filter_batch)
DEDUP_RECORD_STAGE = GlobalStage("curate_dedup_record", dedup_mod.record_keys, _decide_records)
DEDUP_PHOTO_STAGE = GlobalStage("curate_dedup_photo", dedup_mod.photo_keys, _decide_photos)
DEDUP_STAGES = (DEDUP_RECORD_STAGE, DEDUP_PHOTO_STAGE)
BALANCE_STAGE = GlobalStage("curate_balance", balance_mod.taxon_keys, _decide_balance)
LABEL_STAGE = MapStage("curate_label", label_batch)
STAGES = (FILTER_STAGE, DEDUP_RECORD_STAGE, DEDUP_PHOTO_STAGE, BALANCE_STAGE)


def finalize_splits(labelled: pa.Table, options: Options, classes: list[str] | None = None) -> dict[str, pa.Table]:
    """Add ``cls`` (index into the sorted taxon keys) and return each split's rows in chunk order."""
    return {split: rows.take(pa.array(splits_mod.shuffle_order(rows, options.seed)))
            for split, rows in split_tables(labelled, classes).items()}


def split_tables(labelled: pa.Table, classes: list[str] | None = None) -> dict[str, pa.Table]:
    """Add ``cls`` and return each split's rows in input order (``write_chunks`` shuffles them)."""
    classes = splits_mod.class_list([labelled]) if classes is None else classes
    labelled = labelled.append_column("cls", splits_mod.assign_classes(labelled, classes))
    split_col = labelled.column("split")
    names = sorted(pc.unique(split_col).to_pylist())
    return {split: labelled.filter(pc.equal(split_col, split)) if len(names) > 1 else labelled for split in names}


def curate_table(table: pa.Table, options: Options | None = None) -> tuple[dict[str, pa.Table], pa.Table, dict]:
    """The whole stage in memory: filters -> dedup 1 -> dedup 2 -> balance -> splits -> captions -> chunks.

    Returns ``(curated_by_split, rejects, stats)``. Each split's table is in shuffled chunk order
    (``make_chunks``/``write_chunks`` cut it); ``len(table) == sum(out) + len(rejects)``.
    """
    options = options or Options()
    n_in = table.num_rows
    rejects = []
    current = table
    steps = {}
    for stage in STAGES:
        before = current.num_rows
        fn = stage.fn if isinstance(stage, MapStage) else stage.decide_fn
        # the runners name each stage in its rejects' ``stage`` column; so does the reference.
        # Rows are reordered once, by the chunk shuffle, so the steps may keep input order.
        result = fn(current, StageContext(stage.name, options, {"ordered": False}))
        check_accounting(stage.name, before, result.out.num_rows, result.rejects.num_rows)
        current = result.out
        rejects.append(result.rejects)
        steps[stage.name] = {"in": before, "out": current.num_rows, "rejected": result.rejects.num_rows}
    labelled = label_batch(current, StageContext(LABEL_STAGE.name, options)).out
    curated = finalize_splits(labelled, options)
    all_rejects = pa.concat_tables(rejects) if rejects else empty_rejects()
    n_out = sum(t.num_rows for t in curated.values())
    check_accounting(STAGE, n_in, n_out, all_rejects.num_rows)
    return curated, all_rejects, curate_stats(n_in, curated, all_rejects, steps, options)


def curate_stats(n_in: int, curated: dict[str, pa.Table], rejects: pa.Table, steps: dict, options: Options) -> dict:
    """Counts per reason, per split and per step, chunk counts, and the taxa capped or dropped."""
    reasons = Counter(rejects.column("reason").to_pylist())
    taxa = set()
    for t in curated.values():
        taxa.update(pc.unique(t.column("cls")).to_pylist())
    report = balance_mod.balance_report(rejects)
    return {
        "in": n_in,
        "out": sum(t.num_rows for t in curated.values()),
        "rejected": dict(sorted(reasons.items())),
        "splits": {s: t.num_rows for s, t in curated.items()},
        "chunks": {s: -(-t.num_rows // options.chunk_size) for s, t in curated.items()},
        "taxa": len(taxa),
        "steps": steps,
        "taxa_dropped_rare": len(report["rare_taxon"]),
        "taxa_capped": len(report["taxon_cap"]),
        "balance": report,
    }


def dedup_downloaded(table: pa.Table, options: Options | None = None, eval_hashes: pa.Table | None = None) -> StageOutput:
    """Layer 3 after download over ``record_id, sha256, phash``; evaluation sets from
    ``options.eval_sets`` are hashed when ``eval_hashes`` is not given."""
    options = options or Options()
    if eval_hashes is None and options.eval_sets:
        eval_hashes = dedup_mod.hash_eval_sets(options.eval_sets)
    out = dedup_mod.dedup_downloaded(table, options, eval_hashes, stage=STAGE)
    check_accounting("curate_dedup_bytes", table.num_rows, out.out.num_rows, out.rejects.num_rows)
    return out


write_chunks = splits_mod.write_chunks
make_chunks = splits_mod.make_chunks


def write_splits(src, dst, options: Options | None = None, force: bool = False, progress: bool = False) -> dict:
    """Balanced records under ``src`` -> ``dst/split=<s>/chunk-<n:05d>.parquet`` (+ ``_classes.json``).

    Labels (split, names, captions), assigns ``cls`` over all splits and writes each split's
    shuffled chunks into a staging folder moved into place at the end; a rerun over the same
    input and options does nothing. Class indices and the shuffle are global: up to
    ``chunk_bucket_rows`` rows the balanced set is read whole; past that only its taxon columns
    are, and the records are labelled file by file and spilled in buckets of the shuffle
    (:class:`~pipeline.curate.splits.ChunkSpill`), which gives the same chunks. Returns rows and
    chunks per split and the number of classes.
    """
    import shutil
    from pathlib import Path

    import pyarrow.parquet as pq

    from pipeline.config import config_hash
    from pipeline.io import (
        StagedOutput,
        atomic_write_json,
        count_rows,
        files_identity,
        fingerprint,
        parquet_files,
        read_dataset,
    )

    options = options or Options()
    src, dst = Path(src), Path(dst)
    inputs = parquet_files(src)
    fp = fingerprint("curate-split", config_hash(options), files_identity(inputs, src), HASH_VERSION)
    # this step rejects nothing: its staged rejects folder is removed before the move
    staged = StagedOutput(dst.parent, f"{dst.name}-split", dst, dst.parent / "rejects" / "stage=curate-split", fp)
    done = staged.finished()
    if done is not None and not force:
        return {**done, "skipped": True}
    staged.open()
    rows = count_rows(src)
    buckets = splits_mod.chunk_buckets(rows, options.chunk_bucket_rows)
    if buckets == 1:
        table = read_dataset(src)
        labelled = label_batch(table, StageContext(STAGE, options)).out if table.num_rows else table
        classes = splits_mod.class_list([labelled]) if table.num_rows else []
        by_split = split_tables(labelled, classes) if table.num_rows else {}
        written = splits_mod.write_chunks(by_split, staged.staged_out, options)
        split_rows = {s: t.num_rows for s, t in by_split.items()}
        del table, labelled, by_split
    else:
        names = set(pq.ParquetFile(inputs[0]).schema_arrow.names)
        classes = splits_mod.class_list([read_dataset(src, columns=[c for c in balance_mod.TAXON_KEY_COLUMNS if c in names])])
        written, split_rows = splits_mod.spill_chunks((read_dataset(f) for f in inputs), classes,
                                                      staged.staging / "spill", staged.staged_out, buckets, options,
                                                      rows=rows, progress=progress)
    atomic_write_json(staged.staged_out / "_classes.json", {"classes": classes})
    stats = {
        "in": rows,
        "splits": split_rows,
        "chunks": {s: sum(f"split={s}/" in w for w in written) for s in split_rows},
        "classes": len(classes),
    }
    if buckets > 1:
        stats["buckets"] = buckets
    shutil.rmtree(staged.staged_rejects, ignore_errors=True)
    staged.finalise(stats)
    return stats
