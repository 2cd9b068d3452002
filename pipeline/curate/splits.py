"""Splits, class indices and shuffled fixed-size chunks of the curated records.

Split membership is a hash of the occurrence (so every image of one occurrence lands in one split
and a record never moves when others are added); the unseen-taxa split holds whole taxa out, also
by hash. Chunk order is a seeded hash of the record id: deterministic, independent of input order.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.curate.balance import taxon_keys
from pipeline.curate.hashing import hash_strings, order_by_hash, unit_interval
from schemas.record import UNIQUE_COLUMNS

if TYPE_CHECKING:
    from pipeline.stages.curate import Options

UNSEEN_SPLIT = "unseen"
# chunk files: zstd at a low level (fast to write, small to read every epoch); no dictionary
# pages for per-record ids and URLs (they never repeat), statistics only where readers filter
CHUNK_PARQUET = dict(compression="zstd", compression_level=1, row_group_size=64 * 1024,
                     write_statistics=["split", "cls"])
# rows gathered at once by the chunk writer (a whole number of chunks): bounds the shuffled copy
CHUNK_BLOCK_ROWS = 1 << 20


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


def _compact(col: pa.DictionaryArray, memo: dict) -> pa.DictionaryArray:
    """``col`` with only the dictionary values its rows use (same values per row).

    A chunk cut from a split-wide dictionary (every taxon's captions, every genus) would otherwise
    write that whole dictionary into every file; small dictionaries are kept as they are. Caption
    columns share their codes, so ``memo`` finds the used codes once for all of them.
    """
    n = len(col)
    if len(col.dictionary) <= n:
        return col
    idx = col.indices
    codes = np.asarray(pc.fill_null(idx, -1).to_numpy(zero_copy_only=False) if idx.null_count
                       else idx.to_numpy(), np.int64)
    last = memo.get("last")
    if last is not None and np.array_equal(last[0], codes):
        used, indices = last[1], last[2]
    else:
        # the used codes by marking them (a chunk's rows against a dictionary a few times larger:
        # cheaper than sorting them), each renumbered by its rank among the used
        valid = codes >= 0
        seen = np.zeros(len(col.dictionary), bool)
        seen[codes[valid]] = True
        used = np.flatnonzero(seen)
        rank = np.cumsum(seen, dtype=np.int32) - 1
        if valid.all():
            indices = pa.array(rank[codes])
        else:
            full = np.zeros(n, np.int32)
            full[valid] = rank[codes[valid]]
            indices = pa.array(full, mask=~valid)
        memo["last"] = (codes, used, indices)
    return pa.DictionaryArray.from_arrays(indices, col.dictionary.take(pa.array(used)))


def _chunk_columns(table: pa.Table, pool) -> tuple[pa.Schema, list[pa.Array | None]]:
    """The split's columns as the chunks write them: ``None`` for a column null throughout (not
    gathered), dictionaries for the string columns whose values repeat (taxa, vocabularies,
    captions: gathered as 4-byte codes and encoded by the writer from a chunk's few values), the
    per-record columns (:data:`UNIQUE_COLUMNS`) as they are. Types follow the column names only,
    so every chunk of every split has one schema. Columns are prepared on ``pool``'s threads."""
    n = table.num_rows

    def coded(field: pa.Field) -> bool:
        # ``split`` stays text: readers of the folder get it from the hive path (split=<s>/) as text too
        return pa.types.is_string(field.type) and field.name not in (*UNIQUE_COLUMNS, "split")

    def prepare(i: int) -> pa.Array | None:
        col = table.column(i)
        if col.null_count == n:
            return None
        arr = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
        return pc.dictionary_encode(arr) if coded(table.schema.field(i)) else arr

    fields = [f.with_type(pa.dictionary(pa.int32(), pa.string())) if coded(f) else f for f in table.schema]
    return pa.schema(fields, metadata=table.schema.metadata), list(pool.map(prepare, range(table.num_columns)))


def _take(col: pa.Array | None, rows: pa.Array) -> pa.Array | None:
    return None if col is None else pc.take(col, rows)


def chunk_path(split: str, index: int) -> str:
    return f"split={split}/chunk-{index:05d}.parquet"


def write_chunks(curated_by_split: Mapping[str, pa.Table], root: str | Path, options: Options) -> list[str]:
    """Write each split's shuffled chunks under ``root`` (``split=<s>/chunk-<n>.parquet``), each
    file written to a temporary name and renamed, so a reader never sees a partial chunk.

    The rows of a block of chunks are gathered column by column (a random gather over the whole
    split is bound by memory latency: one 4-byte code per row for the repeating columns), then
    each chunk of the block is a slice, written on its own thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    written: list[str] = []
    size = options.chunk_size
    per_block = max(1, CHUNK_BLOCK_ROWS // size) * size

    def write(job: tuple[Path, pa.Schema, list[pa.Array | None], int]) -> str:
        path, schema, cols, n = job
        memo: dict = {}
        arrays = [pa.nulls(n, f.type) if c is None else (_compact(c, memo) if pa.types.is_dictionary(c.type) else c)
                  for c, f in zip(cols, schema, strict=True)]
        chunk = pa.Table.from_arrays(arrays, schema=schema)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        pq.write_table(chunk, tmp, use_dictionary=[c for c in chunk.column_names if c not in UNIQUE_COLUMNS],
                       **CHUNK_PARQUET)
        os.replace(tmp, path)
        return str(path)

    # Arrow's gather and Parquet encoding release the GIL: one thread per core
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        for split in sorted(curated_by_split):
            table = curated_by_split[split]
            if not table.num_rows:
                continue
            shuffled = pool.submit(shuffle_order, table, options.seed)
            schema, columns = _chunk_columns(table, pool)
            order = shuffled.result()
            for start in range(0, len(order), per_block):
                rows = pa.array(order[start:start + per_block])
                block = list(pool.map(partial(_take, rows=rows), columns))
                jobs = [(root / chunk_path(split, (start + i) // size), schema,
                         [None if c is None else c.slice(i, size) for c in block], min(size, len(rows) - i))
                        for i in range(0, len(rows), size)]
                written.extend(pool.map(write, jobs))
    return written
