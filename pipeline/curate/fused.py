"""The local runner's fused curate: every decision of the staged path in one plan over the decision columns, then one pass over the full records.

The staged path (``pipeline.jobs.curate``) reads and writes the full records after each of its
four table stages; here the filters, both dedup layers and the balance decide on the few columns
they read (the full rows are fetched only for rows that share a dedup key, whose richness and
content tie-breaks look at every field), and only the survivors' full rows are read, once, to be
labelled and written as the shuffled chunks. The decisions are the same pure functions as the
staged stages (``apply_filters``, the ``keep_richest`` ordering, ``balance``, ``label_batch``,
``split_tables``, ``write_chunks``), so the chunks and the rejects are the same.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.curate import balance as balance_mod
from pipeline.curate import dedup as dedup_mod
from pipeline.curate import splits as splits_mod
from pipeline.curate.filters import apply_filters
from pipeline.curate.hashing import HASH_VERSION, hash_strings
from pipeline.io import (
    SUCCESS,
    atomic_write_json,
    atomic_write_parquet,
    files_identity,
    fingerprint,
    parquet_files,
)
from pipeline.stage import StageContext, check_accounting
from schemas import RANKS, RECORD_SCHEMA, REJECT_SCHEMA, Reason, empty_rejects

if TYPE_CHECKING:
    from pipeline.stages.curate import Options

# the columns the decisions read (filters, dedup keys, taxon keys); the labels are made on the
# survivors' full rows, as the staged split step makes them
DECISION_COLUMNS = tuple(dict.fromkeys((
    "record_id", "photo_key", "taxon_id", "license", "basis_of_record", "living", "non_living_class", *RANKS,
    "decimal_latitude", "decimal_longitude", "annotation_status", "quality_grade", "format", "width", "height")))
# the image-type filter reads the URL only of rows without a format: the longest column of all is
# read for the files that have such rows (elsewhere it stays null until the survivors are read)
URL_COLUMN = "identifier"
BALANCE_COLUMNS = ("record_id", *balance_mod.TAXON_KEY_COLUMNS)
# what the decisions after the filters read (dedup keys, balance): the filters' other columns are
# let go once they are applied (~30% of the decision columns' memory) and read again for the survivors
KEPT_AFTER_FILTERS = ("record_id", "photo_key", *BALANCE_COLUMNS[1:])
_ROW = "__fused_row"
# step key (folder under rejects/, key in the stats) -> the stage name written in the rejects
STEPS = {"curate-filter": "curate_filter", "curate-dedup-record": "curate_dedup_record",
         "curate-dedup-photo": "curate_dedup_photo", "curate-balance": "curate_balance"}


class _Records:
    """The input files, their row offsets, and full-row reads by global row number."""

    def __init__(self, files: list[Path]):
        self.files = files
        footers = [pq.ParquetFile(f) for f in files]  # each footer read once: row counts and columns
        self.names = [footer.schema_arrow.names for footer in footers]
        # string columns whose values repeat (taxa, vocabularies) are read as dictionaries: cheaper
        # to decode, filter and gather, and the chunks write them so; decoded where text is needed
        self.coded = [[f.name for f in footer.schema_arrow if pa.types.is_string(f.type)
                       and f.name not in splits_mod.UNIQUE_COLUMNS]
                      for footer in footers]
        self.types = [{f.name: pa.dictionary(pa.int32(), f.type) if f.name in coded else f.type
                       for f in footer.schema_arrow} for footer, coded in zip(footers, self.coded, strict=True)]
        self.empty = [_null_columns(footer.metadata) for footer in footers]
        counts = [footer.metadata.num_rows for footer in footers]
        self.offsets = np.concatenate(([0], np.cumsum(counts))).astype(np.int64)

    def read(self, i: int, columns: list[str]) -> pa.Table:
        """``columns`` of file ``i`` (repeating text as dictionaries); a column its footer says is
        null throughout is not decoded but made as nulls of the same type."""
        wanted = [c for c in columns if c not in self.empty[i]]
        t = pq.read_table(self.files[i], columns=wanted, read_dictionary=self.coded[i],
                          use_threads=False)  # the files are read a thread per core
        n = int(self.offsets[i + 1] - self.offsets[i])
        return pa.table({c: t.column(c) if c in wanted else pa.nulls(n, self.types[i][c]) for c in columns})

    def decision_part(self, i: int) -> pa.Table:
        """The decision columns of file ``i``, with the URL where needed and the global row numbers."""
        f = self.files[i]
        names = self.names[i]
        t = self.read(i, [c for c in DECISION_COLUMNS if c in names])
        formats = t.column("format") if "format" in t.column_names else None
        if URL_COLUMN in names and (formats is None or formats.null_count):
            url = pq.read_table(f, columns=[URL_COLUMN], use_threads=False).column(URL_COLUMN)
        else:
            url = pa.nulls(t.num_rows, pa.string())
        t = t.append_column(URL_COLUMN, url.cast(pa.string()))
        rows = np.arange(self.offsets[i], self.offsets[i + 1], dtype=np.int64)
        return t.append_column(_ROW, pa.array(rows))

    def filtered(self, options: Options) -> tuple[pa.Table, pa.Table]:
        """Every file's decision columns read and filtered, a thread per core (Parquet decoding and
        Arrow kernels release the GIL; the filters are row-wise, so per file is the same as whole)."""
        def part(i: int) -> tuple[pa.Table, pa.Table]:
            return apply_filters(self.decision_part(i), options, STEPS["curate-filter"])

        with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            parts = list(pool.map(part, range(len(self.files))))
        if not parts:
            empty = RECORD_SCHEMA.empty_table().select([*DECISION_COLUMNS, URL_COLUMN])
            return empty.append_column(_ROW, pa.array([], pa.int64())), empty_rejects()
        kept = pa.concat_tables([k for k, _ in parts], promote_options="default")
        return kept, pa.concat_tables([r for _, r in parts])

    def rows_of(self, rows: np.ndarray, columns: list[str] | None = None) -> pa.Table:
        """``columns`` (default: every column) of the given rows (ascending global row numbers), in
        that order; repeating text as dictionaries, as :meth:`read` gives it. The files are read a
        thread per core."""
        file_of = np.searchsorted(self.offsets, rows, side="right") - 1

        def part(i: int) -> pa.Table:
            pos = rows[file_of == i] - self.offsets[i]
            t = self.read(i, self.names[i] if columns is None else columns)
            return t if len(pos) == t.num_rows else t.take(pa.array(pos))

        with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            parts = list(pool.map(part, np.unique(file_of).tolist()))
        return pa.concat_tables(parts, promote_options="default")


def _null_columns(meta: pq.FileMetaData) -> set[str]:
    """Top-level columns whose statistics say every value is null, in every row group."""
    empty = None
    for g in range(meta.num_row_groups):
        rg = meta.row_group(g)
        here = set()
        for j in range(rg.num_columns):
            col = rg.column(j)
            stats = col.statistics
            if stats is not None and stats.has_null_count and stats.null_count == rg.num_rows \
                    and "." not in col.path_in_schema:
                here.add(col.path_in_schema)
        empty = here if empty is None else empty & here
    return empty or set()


def _rows(table: pa.Table) -> np.ndarray:
    return np.asarray(table.column(_ROW).to_numpy(), np.int64)


def _shared_keys(keys: pa.Array) -> np.ndarray:
    """Positions of the rows whose key another row also has, in ascending order.

    Equal keys hash equally, so only rows whose 64-bit hash repeats are compared by text: almost
    all keys are unique, and hashing them is cheaper than dictionary-encoding millions of strings.
    """
    h = hash_strings(keys, seed="fused-keys")
    hs = np.sort(h)
    if not (hs[1:] == hs[:-1]).any():  # the usual case: no repeat, no ordering needed
        return np.zeros(0, np.int64)
    order = np.argsort(h, kind="stable")
    hs = h[order]
    repeat = np.zeros(len(h), bool)
    same = hs[1:] == hs[:-1]
    repeat[1:] |= same
    repeat[:-1] |= same
    candidates = np.sort(order[repeat])
    if not candidates.size:
        return candidates
    sub = pc.take(keys, pa.array(candidates))
    codes = np.asarray(pc.dictionary_encode(sub).indices.to_numpy(zero_copy_only=False), np.int64)
    return candidates[np.bincount(codes)[codes] > 1]


def _keep_richest(table: pa.Table, keys: pa.Array, records: _Records, stage: str, reason: Reason,
                  merge: bool) -> tuple[pa.Table, pa.Table, dict[int, str]]:
    """``dedup.keep_richest`` (unordered) over the decision table: only rows sharing a key are read
    whole, for the same richness / record id / content order. Returns the kept rows, the rejects
    and, with ``merge``, the new ``extra`` text of each absorbing row by global row number."""
    if table.num_rows == 0:
        return table, empty_rejects(), {}
    multi = _shared_keys(keys)
    if not multi.size:
        return table, empty_rejects(), {}
    rows = _rows(table)[multi]  # ascending: the decision table is in global row order
    full = records.rows_of(rows)
    winners, dup_rows, dup_leaders = dedup_mod.rank_duplicates(
        pc.take(keys, pa.array(multi)), full, np.arange(len(multi)))
    rejects = dedup_mod.duplicate_rejects(full, dup_rows, dup_leaders, stage, reason)
    extras: dict[int, str] = {}
    if merge:
        winners = np.sort(winners)
        # only the winners' extra is rewritten: the other columns are not gathered
        merged = dedup_mod._merge_provenance(full, full.select(["extra"]).take(pa.array(winners)), winners,
                                             dup_rows, dup_leaders)
        targets = np.nonzero(np.isin(winners, dup_leaders))[0]
        texts = pc.take(merged.column("extra"), pa.array(targets)).to_pylist()
        extras = dict(zip(rows[winners[targets]].tolist(), texts, strict=True))
    mask = np.ones(table.num_rows, bool)
    mask[multi[dup_rows]] = False
    return table.filter(pa.array(mask)), rejects, extras


def _step(stats: dict, key: str, n_in: int, out: pa.Table, rejects: pa.Table, started: float) -> None:
    check_accounting(STEPS[key], n_in, out.num_rows, rejects.num_rows)
    counts = pc.value_counts(rejects.column("reason").combine_chunks()) if rejects.num_rows else None
    reasons = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist(), strict=True)) \
        if counts is not None else {}
    stats[key] = {"stage": key, "in": n_in, "out": out.num_rows, "rejected": rejects.num_rows,
                  "rejected_by_reason": dict(sorted(reasons.items())), "runner": "local-fused",
                  "seconds": round(time.perf_counter() - started, 3)}


def decide(records: _Records, options: Options) -> tuple[pa.Table, dict[str, pa.Table], dict[int, str], dict]:
    """Every decision before the labels: ``(survivors' decision columns, rejects per step,
    merged extra per row, stats per step)``; survivors stay in global row order."""
    stats: dict = {}
    rejects: dict[str, pa.Table] = {}
    t = time.perf_counter()
    current, rejects["curate-filter"] = records.filtered(options)
    _step(stats, "curate-filter", int(records.offsets[-1]), current, rejects["curate-filter"], t)
    current = current.select([c for c in current.column_names if c in (*KEPT_AFTER_FILTERS, _ROW)])

    extras: dict[int, str] = {}
    for key, on, keys_fn, reason, merge in (
            ("curate-dedup-record", options.dedup_records, dedup_mod.record_keys, Reason.DUPLICATE_RECORD, False),
            ("curate-dedup-photo", options.dedup_photos, dedup_mod.photo_keys, Reason.DUPLICATE_PHOTO, True)):
        t, before = time.perf_counter(), current.num_rows
        if on:
            current, rejects[key], extras_step = _keep_richest(current, keys_fn(current), records, STEPS[key],
                                                               reason, merge)
            extras.update(extras_step)
        else:
            rejects[key] = empty_rejects()
        _step(stats, key, before, current, rejects[key], t)

    t, before = time.perf_counter(), current.num_rows
    # the decision of ``decide_balance``, as a mask over the rows: only the kept rows are moved, once
    narrow = current.select([c for c in BALANCE_COLUMNS if c in current.column_names])
    keep, _, rejects["curate-balance"] = balance_mod.balance_rows(
        narrow, balance_mod.taxon_key_codes(narrow), options.min_per_taxon, options.max_per_taxon, options.seed,
        STEPS["curate-balance"])
    if not keep.all():
        current = current.filter(pa.array(keep))
    _step(stats, "curate-balance", before, current, rejects["curate-balance"], t)
    return current, rejects, extras, stats


def _assemble(records: _Records, decided: pa.Table, read: pa.Table, rows: np.ndarray,
              extras: dict[int, str]) -> pa.Table:
    """Survivors' full records from their decision columns (held) and the other columns (read),
    with the provenance merged into ``extra``."""
    names = records.names[0]
    held = _held(records, decided)
    columns = [decided.column(c) if c in held else read.column(c) for c in names]
    # each file brought its own dictionaries: unified once here, not by every step that combines them
    columns = [pa.chunked_array([c.combine_chunks()]) if pa.types.is_dictionary(c.type) and c.num_chunks > 1 else c
               for c in columns]
    table = pa.Table.from_arrays(columns, schema=pa.schema([decided.schema.field(c) if c in held
                                                            else read.schema.field(c) for c in names]))
    if extras:
        idx = table.column_names.index("extra")
        mask = np.isin(rows, np.fromiter(extras, np.int64, len(extras)))
        if mask.any():
            values = [extras[r] for r in rows[mask].tolist()]
            col = table.column("extra").combine_chunks().cast(pa.string())
            table = table.set_column(idx, table.schema.field("extra"),
                                     pc.replace_with_mask(col, pa.array(mask), pa.array(values, pa.string())))
    return table


def _held(records: _Records, decided: pa.Table) -> list[str]:
    """The record columns the decisions still hold (never the URL: the filters read it only for
    some files, so it is always read again)."""
    return [c for c in decided.column_names if c in records.names[0] and c in DECISION_COLUMNS]


def _rest(records: _Records, decided: pa.Table) -> list[str]:
    """The columns the decisions do not hold: the ones read for the survivors."""
    held = set(_held(records, decided))
    return [c for c in records.names[0] if c not in held]


def survivors(records: _Records, decided: pa.Table, extras: dict[int, str]) -> pa.Table:
    """The survivors' full records in global row order, with the provenance merged into ``extra``.

    The decision columns still held (:data:`KEPT_AFTER_FILTERS`) are taken as they are: only the
    other columns are read from the files.
    """
    rows = _rows(decided)
    return _assemble(records, decided, records.rows_of(rows, _rest(records, decided)), rows, extras)


def survivor_parts(records: _Records, decided: pa.Table, extras: dict[int, str]) -> Iterator[pa.Table]:
    """:func:`survivors` file by file, in global row order: the files are read a thread per core,
    as many ahead as there are threads, so only a few files' rows are held at once."""
    rows = _rows(decided)  # ascending: the decisions keep global row order
    bounds = np.searchsorted(rows, records.offsets)
    rest = _rest(records, decided)
    files = [i for i in range(len(records.files)) if bounds[i + 1] > bounds[i]]

    def part(i: int) -> pa.Table:
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        here = rows[lo:hi]
        t = records.read(i, rest)
        pos = here - records.offsets[i]
        read = t if len(pos) == t.num_rows else t.take(pa.array(pos))
        return _assemble(records, decided.slice(lo, hi - lo), read, here, extras)

    threads = max(1, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads) as pool:
        for start in range(0, len(files), threads):
            yield from pool.map(part, files[start:start + threads])


# peak memory of the decisions per input row, measured at 5M rows (2.03 GB): the decision columns
# as dictionaries and codes, their temporaries, and the pages the allocator keeps for reuse
DECISION_BYTES_PER_ROW = 420


def memory_needed(rows: int) -> tuple[int, int | None]:
    """``(bytes the fused decisions of rows input rows need, about; this machine's memory or None)``."""
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        memory = None
    return rows * DECISION_BYTES_PER_ROW, memory


def fits(rows: int) -> bool:
    """Whether the fused decisions of ``rows`` input rows fit in 80% of this machine's memory."""
    need, memory = memory_needed(rows)
    return memory is None or need <= 0.8 * memory


def _replace_dir(staged: Path, final: Path) -> None:
    if final.exists():
        shutil.rmtree(final)
    if staged.exists():
        final.parent.mkdir(parents=True, exist_ok=True)
        staged.replace(final)


def _record_runs(root: Path, stats: dict, files: list[Path], config) -> None:
    """One run record per step (``runs/<run_id>/run.json``), as the runner writes for each stage."""
    from pipeline.io import new_run_id, write_run_record

    outputs = {"curate-filter": "work/curate/filtered (fused: not written)",
               "curate-dedup-record": "work/curate/dedup-record (fused: not written)",
               "curate-dedup-photo": "work/curate/dedup-photo (fused: not written)",
               "curate-balance": str(root / "curated")}
    for key in STEPS:
        run_id = new_run_id(key)
        stats[key].update(run_id=run_id, tasks=1)
        write_run_record(root, run_id, {
            "stage": key, "runner": "local-fused", "inputs": [str(f) for f in files], "output": outputs[key],
            "rejects": str(root / "rejects" / f"stage={key}"),
            "config": config.model_dump(mode="json") if config is not None else None, "counts": stats[key]})


def curate_fused(input_dir: Path, root: Path, options: Options, force: bool = False, config=None,
                 progress: bool = False) -> dict:
    """``input_dir`` (resolved records) -> ``root/curated/split=<s>/chunk-<n:05d>.parquet`` (+
    ``_classes.json``) and ``root/rejects/stage=<step>/``, as ``jobs.curate`` writes them.

    Everything is staged under ``root/.staging/curate-fused`` and moved into place at the end; a
    rerun over the same input files and options does nothing. Returns the stats of ``jobs.curate``:
    per step in/out/rejected, ``balance`` and ``curate-split``; writes ``curated/_curate_stats.json``
    and a run record per step (with the whole ``config``, when given, as the runner records it).
    """
    from pipeline.config import config_hash
    from pipeline.stages.curate import label_batch, split_tables

    input_dir, root = Path(input_dir), Path(root)
    files = parquet_files(input_dir)
    if not files and not input_dir.exists():
        raise FileNotFoundError(f"curate: input {input_dir} does not exist; run `biocorpus resolve` first")
    curated = root / "curated"
    fp = fingerprint("curate-fused", config_hash(options), files_identity(files, input_dir), HASH_VERSION)
    marker = curated / SUCCESS
    if marker.exists() and not force:
        import json

        done = json.loads(marker.read_text())
        if done.get("fingerprint") == fp:
            print("curate: already complete for these inputs and options; nothing to do", file=sys.stderr)
            return {**done["stats"], "skipped": True}
    started = time.perf_counter()
    staging = root / ".staging" / "curate-fused"
    shutil.rmtree(staging, ignore_errors=True)
    records = _Records(files)
    decided, rejects, extras, stats = decide(records, options)

    t = time.perf_counter()
    for key, rej in rejects.items():
        if rej.num_rows:
            atomic_write_parquet(rej.select(REJECT_SCHEMA.names).cast(REJECT_SCHEMA),
                                 staging / "rejects" / f"stage={key}" / "part-fused.parquet")
    stats["balance"] = balance_mod.balance_report(rejects["curate-balance"].cast(REJECT_SCHEMA))
    buckets = splits_mod.chunk_buckets(decided.num_rows, options.chunk_bucket_rows)
    if buckets == 1:
        full = survivors(records, decided, extras) if decided.num_rows else None
        if full is not None:
            # labelled as the staged split step labels the balanced records
            full = label_batch(full, StageContext("curate", options)).out
        classes = splits_mod.class_list([full]) if full is not None else []
        by_split = split_tables(full, classes) if full is not None else {}
        del full
        written = splits_mod.write_chunks(by_split, staging / "curated", options)
        split_rows = {s: tb.num_rows for s, tb in by_split.items()}
        del by_split
    else:
        # too many survivors to hold: read file by file, spilled by split and the shuffle's hash,
        # and labelled a bucket at a time
        classes = splits_mod.class_list([decided])  # the taxon keys' columns are decision columns
        written, split_rows = splits_mod.spill_chunks(survivor_parts(records, decided, extras), classes,
                                                      staging / "spill", staging / "curated", buckets, options,
                                                      rows=decided.num_rows, progress=progress)
    atomic_write_json(staging / "curated" / "_classes.json", {"classes": classes})
    stats["curate-split"] = {
        "in": decided.num_rows, "splits": split_rows,
        "chunks": {s: sum(f"split={s}/" in w for w in written) for s in split_rows},
        "classes": len(classes), "seconds": round(time.perf_counter() - t, 3)}
    if buckets > 1:
        stats["curate-split"]["buckets"] = buckets
    stats["seconds"] = round(time.perf_counter() - started, 3)
    for key in STEPS:
        _replace_dir(staging / "rejects" / f"stage={key}", root / "rejects" / f"stage={key}")
    _replace_dir(staging / "curated", curated)
    _record_runs(root, stats, files, config)
    atomic_write_json(curated / "_curate_stats.json", stats)
    atomic_write_json(marker, {"fingerprint": fp, "stats": stats})
    shutil.rmtree(staging, ignore_errors=True)
    n_rejected = sum(stats[k]["rejected"] for k in STEPS if k in stats)
    print(f"curate: {int(records.offsets[-1])} in -> "
          f"{decided.num_rows} out + {n_rejected} rejected ({stats['seconds']} s)", file=sys.stderr)
    return stats
