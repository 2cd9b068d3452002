"""Splits, class indices and shuffled fixed-size chunks of the curated records.

Split membership is a hash of the occurrence (so every image of one occurrence lands in one split
and a record never moves when others are added); the unseen-taxa split holds whole taxa out, also
by hash. Chunk order is a seeded hash of the record id: deterministic, independent of input order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.curate.balance import taxon_keys
from pipeline.curate.hashing import hash_strings, order_by_hash, unit_interval

if TYPE_CHECKING:
    from pipeline.stages.curate import Options

UNSEEN_SPLIT = "unseen"
# chunk files: zstd at a low level (fast to write, small to read every epoch); no dictionary
# pages for per-record ids and URLs (they never repeat), statistics only where readers filter
UNIQUE_COLUMNS = ("record_id", "occurrence_id", "media_id", "photo_key", "identifier", "extra")
CHUNK_PARQUET = dict(compression="zstd", compression_level=1, row_group_size=64 * 1024,
                     write_statistics=["split", "cls"])


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    col = table.column(name)
    return col.combine_chunks() if col.num_chunks else pa.array([], col.type)


def occurrence_keys(table: pa.Table) -> pa.Array:
    """The occurrence of each row: ``occurrence_id``, or the record itself when it has none."""
    occ = _column(table, "occurrence_id")
    occ = pc.if_else(pc.equal(pc.utf8_trim_whitespace(occ), ""), pa.scalar(None, pa.string()), occ)
    return pc.coalesce(occ, pc.binary_join_element_wise("record:", pc.fill_null(_column(table, "record_id"), ""), ""))


def unseen_taxa_mask(table: pa.Table, options: Options) -> np.ndarray:
    if options.unseen_fraction <= 0:
        return np.zeros(table.num_rows, bool)
    u = unit_interval(hash_strings(taxon_keys(table), seed=f"unseen:{options.seed}"))
    return u < options.unseen_fraction


def assign_splits(table: pa.Table, options: Options) -> pa.Array:
    """Split name per row from the occurrence hash and the cumulative split fractions."""
    names = list(options.splits)
    bounds = np.cumsum([options.splits[s] for s in names])
    bounds[-1] = 1.0  # float rounding must not leave a sliver of rows without a split
    u = unit_interval(hash_strings(occurrence_keys(table), seed=f"split:{options.seed}"))
    idx = np.minimum(np.searchsorted(bounds, u, side="right"), len(names) - 1)
    idx[unseen_taxa_mask(table, options)] = len(names)
    # gathered from the names by index: no Python string per row
    return pc.take(pa.array(names + [UNSEEN_SPLIT], pa.string()), pa.array(idx))


def class_list(tables: list[pa.Table]) -> list[str]:
    """Sorted distinct taxon keys over all splits: position = class index (stable for a taxon set)."""
    keys = [pc.unique(taxon_keys(t)) for t in tables if t.num_rows]
    if not keys:
        return []
    return sorted(set(pa.concat_arrays(keys).to_pylist()))


def assign_classes(table: pa.Table, classes: list[str]) -> pa.Array:
    idx = pc.index_in(taxon_keys(table), pa.array(classes, pa.string()))
    if idx.null_count:
        raise ValueError("a taxon of the table is missing from the class list")
    return idx.cast(pa.int64())


def shuffle_order(table: pa.Table, seed: int) -> np.ndarray:
    """Row order of the shuffled chunks: by ``hash(seed, record_id)``, record id breaking ties."""
    rid = pc.fill_null(_column(table, "record_id"), "")
    return order_by_hash(hash_strings(rid, seed=f"chunk:{seed}"), rid)


def make_chunks(table: pa.Table, options: Options) -> list[pa.Table]:
    """Shuffle ``table`` (one split) by seed and cut it into chunks of ``chunk_size`` rows."""
    if table.num_rows == 0:
        return []
    return [table.take(pa.array(idx)) for idx in _chunk_rows(table, options)]


def _chunk_rows(table: pa.Table, options: Options) -> list[np.ndarray]:
    order = shuffle_order(table, options.seed)
    size = options.chunk_size
    return [order[i:i + size] for i in range(0, len(order), size)]


def compact_dictionaries(table: pa.Table) -> pa.Table:
    """Keep in each dictionary column only the values its rows use.

    Caption columns share one dictionary of every taxon's captions; a chunk taken from them would
    otherwise write that whole dictionary (tens of MB) into every file. They also share their
    indices, so the used codes are found once for all of them.
    """
    last: tuple[np.ndarray, np.ndarray, np.ndarray, pa.Array] | None = None
    for i, field in enumerate(table.schema):
        if not pa.types.is_dictionary(field.type):
            continue
        col = table.column(i).combine_chunks() if table.num_rows else None
        if col is None or len(col.dictionary) <= len(col):
            continue
        codes = np.asarray(pc.fill_null(col.indices, 0).to_numpy(zero_copy_only=False), np.int64)
        valid = np.asarray(pc.is_valid(col.indices).to_numpy(zero_copy_only=False), bool)
        if last is not None and np.array_equal(last[0], codes) and np.array_equal(last[1], valid):
            used, indices = last[2], last[3]
        else:
            used, inverse = np.unique(codes, return_inverse=True)
            indices = pa.array(inverse.astype(np.int32), mask=~valid)
            last = (codes, valid, used, indices)
        compact = pa.DictionaryArray.from_arrays(indices, col.dictionary.take(pa.array(used)))
        table = table.set_column(i, field.name, compact.cast(field.type) if compact.type != field.type else compact)
    return table


class _RowTaker:
    """``table.take(rows)`` for many small row sets of one big table, cheaper than Arrow's own.

    A chunk's rows are scattered over the whole table: each column is gathered at the sorted
    rows (memory read in one direction) and then put in the chunk's order within the small
    result, and columns that are null throughout are not gathered at all.
    """

    def __init__(self, table: pa.Table):
        self.schema = table.schema
        n = table.num_rows
        self.columns = [None if c.null_count == n else (c.chunk(0) if c.num_chunks == 1 else c.combine_chunks())
                        for c in table.columns]

    def take(self, rows: np.ndarray) -> pa.Table:
        by_row = np.argsort(rows, kind="stable")
        place = np.empty(len(rows), np.int64)
        place[by_row] = np.arange(len(rows))
        sorted_rows, place = pa.array(rows[by_row]), pa.array(place)
        cols = [pa.nulls(len(rows), f.type) if c is None else pc.take(pc.take(c, sorted_rows), place)
                for c, f in zip(self.columns, self.schema, strict=True)]
        return pa.Table.from_arrays(cols, schema=self.schema)


def chunk_path(split: str, index: int) -> str:
    return f"split={split}/chunk-{index:05d}.parquet"


def write_chunks(curated_by_split: Mapping[str, pa.Table], root: str | Path, options: Options) -> list[str]:
    """Write each split's shuffled chunks under ``root`` (``split=<s>/chunk-<n>.parquet``), each
    file written to a temporary name and renamed, so a reader never sees a partial chunk."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    jobs = []
    for split in sorted(curated_by_split):
        table = curated_by_split[split]
        if table.num_rows:
            taker = _RowTaker(table)
            for n, idx in enumerate(_chunk_rows(table, options)):
                jobs.append((root / chunk_path(split, n), taker, idx))

    def write(job) -> str:
        path, taker, idx = job
        # each chunk gathers its own rows in its thread: no shuffled copy of the whole split
        chunk = compact_dictionaries(taker.take(idx))
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(chunk, tmp, use_dictionary=[c for c in chunk.column_names if c not in UNIQUE_COLUMNS],
                       **CHUNK_PARQUET)
        os.replace(tmp, path)
        return str(path)

    # Parquet encoding releases the GIL: one writer thread per core
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        return list(pool.map(write, jobs))
