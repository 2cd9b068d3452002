"""Splits, class indices and shuffled fixed-size chunks of the curated records.

Split membership is a hash of the occurrence (so every image of one occurrence lands in one split
and a record never moves when others are added); the unseen-taxa split holds whole taxa out, also
by hash. Chunk order is a seeded hash of the record id: deterministic, independent of input order.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterable, Mapping
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
SPILL_IPC = pa.ipc.IpcWriteOptions(compression="lz4")  # ~3x smaller than plain, for ~1.5 s more per 2.7M rows


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


def coded(field: pa.Field) -> bool:
    """Whether the chunks write a text column as a dictionary: its values repeat. ``split`` stays
    text: readers of the folder get it from the hive path (split=<s>/) as text too."""
    return pa.types.is_string(field.type) and field.name not in (*UNIQUE_COLUMNS, "split")


def _chunk_columns(table: pa.Table, pool) -> tuple[pa.Schema, list[pa.Array | None]]:
    """The split's columns as the chunks write them: ``None`` for a column null throughout (not
    gathered), dictionaries for the string columns whose values repeat (taxa, vocabularies,
    captions: gathered as 4-byte codes and encoded by the writer from a chunk's few values), the
    per-record columns (:data:`UNIQUE_COLUMNS`) as they are. Types follow the column names only,
    so every chunk of every split has one schema. Columns are prepared on ``pool``'s threads."""
    n = table.num_rows

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


def _write_chunk(job: tuple[Path, pa.Schema, list[pa.Array | None], int]) -> str:
    """One chunk file from its columns' slices, written to a temporary name and renamed."""
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


def _write_ordered(table: pa.Table, order, split: str, first: int, root: Path, options: Options, pool) -> list[str]:
    """The rows of ``table`` in ``order`` (an array, or a future of one) as the chunks of ``split``
    numbered from ``first``, ``chunk_size`` rows each (the last one may be short).

    The rows of a block of chunks are gathered column by column (a random gather over the whole
    split is bound by memory latency: one 4-byte code per row for the repeating columns), then
    each chunk of the block is a slice, written on its own thread of ``pool``.
    """
    size = options.chunk_size
    per_block = max(1, CHUNK_BLOCK_ROWS // size) * size
    schema, columns = _chunk_columns(table, pool)
    order = order.result() if hasattr(order, "result") else order
    written: list[str] = []
    for start in range(0, len(order), per_block):
        rows = pa.array(order[start:start + per_block])
        block = list(pool.map(partial(_take, rows=rows), columns))
        jobs = [(root / chunk_path(split, first + (start + i) // size), schema,
                 [None if c is None else c.slice(i, size) for c in block], min(size, len(rows) - i))
                for i in range(0, len(rows), size)]
        written.extend(pool.map(_write_chunk, jobs))
    return written


def write_chunks(curated_by_split: Mapping[str, pa.Table], root: str | Path, options: Options) -> list[str]:
    """Write each split's shuffled chunks under ``root`` (``split=<s>/chunk-<n>.parquet``), each
    file written to a temporary name and renamed, so a reader never sees a partial chunk."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    written: list[str] = []
    # Arrow's gather and Parquet encoding release the GIL: one thread per core
    with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
        for split in sorted(curated_by_split):
            table = curated_by_split[split]
            if table.num_rows:
                written += _write_ordered(table, pool.submit(shuffle_order, table, options.seed), split, 0, root,
                                          options, pool)
    return written


def chunk_buckets(rows: int, bucket_rows: int) -> int:
    """Buckets of the spilled chunk writer for ``rows`` curated rows: 1 (in memory) when they fit
    ``bucket_rows``, else the power of two that brings a bucket under it."""
    buckets = 1
    while rows > buckets * bucket_rows:
        buckets *= 2
    return buckets


def _spill_form(table: pa.Table) -> pa.Table:
    """``table`` with the column types the chunks write (:func:`coded` text as dictionaries, the
    rest as text), so that every part of a spill has one schema whatever its source gave."""
    fields, columns = [], []
    for field, col in zip(table.schema, table.columns, strict=True):
        text = field.with_type(field.type.value_type) if pa.types.is_dictionary(field.type) else field
        if pa.types.is_string(text.type) and coded(text):
            kind = pa.dictionary(pa.int32(), pa.string())
            col = col if col.type == kind else pc.dictionary_encode(col.cast(pa.string()))
        elif text is not field:
            kind = text.type
            col = col.cast(kind)
        else:
            kind = field.type
        fields.append(field.with_type(kind))
        columns.append(col)
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


class ChunkSpill:
    """The shuffled chunks of curated rows too many to hold, written in two passes.

    :meth:`add` takes each split's rows part by part and spills them to ``folder``, one Arrow
    stream per split and bucket, the bucket being the top bits of the chunk shuffle's hash
    (:func:`shuffle_order`). :meth:`write` then reads each split's buckets in hash order, has
    ``prepare`` finish each one (the curate paths label it there: captions made per part would
    bring every part's dictionaries into the spill), orders it as :func:`shuffle_order` orders a
    whole split, and cuts the stream into chunks, carrying a bucket's last partial chunk into the
    next. Every chunk holds the rows :func:`write_chunks` would give it, in the same order, while
    one bucket is held at a time.
    """

    def __init__(self, folder: Path, buckets: int, seed: int):
        if buckets < 1 or buckets & (buckets - 1):
            raise ValueError(f"buckets must be a power of two, got {buckets}")
        self.folder, self.buckets, self.seed = Path(folder), buckets, seed
        shutil.rmtree(self.folder, ignore_errors=True)  # a killed run's spill: its rows are spilled again
        self.shift = np.uint64(64 - (buckets.bit_length() - 1))
        self.rows: dict[str, int] = {}
        self.schema: pa.Schema | None = None
        self._writers: dict[tuple[str, int], pa.ipc.RecordBatchStreamWriter] = {}
        self._sinks: list[pa.NativeFile] = []
        self._spilled: set[tuple[str, int]] = set()  # the (split, bucket) streams written

    def _path(self, split: str, bucket: int) -> Path:
        return self.folder / f"split={split}" / f"bucket-{bucket:05d}.arrow"

    def add(self, split: str, table: pa.Table) -> None:
        """Spill one part of ``split``'s rows."""
        if not table.num_rows:
            return
        table = _spill_form(table)
        if self.schema is None:
            self.schema = table.schema
        elif table.schema != self.schema:
            if set(table.column_names) != set(self.schema.names):
                raise ValueError(f"curate: the records' files have different columns: "
                                 f"{sorted(set(table.column_names) ^ set(self.schema.names))} in some only")
            table = table.select(self.schema.names).cast(self.schema)
        self.rows[split] = self.rows.get(split, 0) + table.num_rows
        if self.buckets == 1:
            bucket = np.zeros(table.num_rows, np.int64)
        else:
            rid = pc.fill_null(_column(table, "record_id"), "")
            bucket = (hash_strings(rid, seed=f"chunk:{self.seed}") >> self.shift).astype(np.int64)
        order = np.argsort(bucket, kind="stable")  # a part's rows keep their order within a bucket
        bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
        table = table.take(pa.array(order))
        for b in np.flatnonzero(np.diff(bounds)).tolist():
            self._writer((split, b)).write_table(table.slice(int(bounds[b]), int(bounds[b + 1] - bounds[b])))

    def _writer(self, key: tuple[str, int]) -> pa.ipc.RecordBatchStreamWriter:
        writer = self._writers.get(key)
        if writer is None:
            path = self._path(*key)
            path.parent.mkdir(parents=True, exist_ok=True)
            # written once and read once: an Arrow stream (no encoding), the repeating text as the
            # dictionaries it came in (a stream may replace them batch by batch)
            sink = pa.OSFile(str(path), "wb")
            writer = self._writers[key] = pa.ipc.new_stream(sink, self.schema, options=SPILL_IPC)
            self._sinks.append(sink)
            self._spilled.add(key)
        return writer

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        for sink in self._sinks:
            sink.close()
        self._writers.clear()
        self._sinks.clear()

    def _bucket(self, split: str, bucket: int) -> pa.Table:
        path = self._path(split, bucket)
        with pa.OSFile(str(path)) as f:  # read, not mapped: a mapping's pages would stay resident
            return pa.ipc.open_stream(f).read_all()

    def write(self, root: str | Path, options: Options,
              prepare: Callable[[str, pa.Table], pa.Table] | None = None) -> list[str]:
        """Pass 2: every split's chunks under ``root``, as :func:`write_chunks` writes them from
        each split's ``prepare(split, rows)`` (a row-wise step: it must keep the rows and their
        order)."""
        from concurrent.futures import ThreadPoolExecutor

        self.close()
        root, size = Path(root), options.chunk_size
        written: list[str] = []
        with ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
            for split in sorted(self.rows):
                carry: pa.Table | None = None  # the rows of a chunk begun in the previous bucket
                done = 0  # rows written to this split's chunks so far
                present = sorted(b for s, b in self._spilled if s == split)
                for b in present:
                    table = self._bucket(split, b)
                    if prepare is not None:
                        table = prepare(split, table)
                    order = shuffle_order(table, self.seed)
                    if carry is not None:
                        order = np.concatenate((np.arange(carry.num_rows), order + carry.num_rows))
                        table = pa.concat_tables([carry, table])
                    last = b == present[-1]
                    whole = len(order) if last else len(order) // size * size
                    carry = table.take(pa.array(order[whole:])) if whole < len(order) else None
                    if whole:
                        written += _write_ordered(table, order[:whole], split, done // size, root, options, pool)
                        done += whole
                    del table
                if carry is not None or done != self.rows[split]:  # nothing is lost: every spilled row is written
                    raise RuntimeError(f"curate: {done} rows written to the chunks of split {split!r}, "
                                       f"{self.rows[split]} spilled")
                shutil.rmtree(self.folder / f"split={split}", ignore_errors=True)
        return written

    def remove(self) -> None:
        """Close the spill files and remove them (after :meth:`write`, or when curating fails)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def spill_chunks(parts: Iterable[pa.Table], classes: list[str], spill_dir: Path, root: Path, buckets: int,
                 options: Options, rows: int | None = None, progress: bool = False) -> tuple[list[str], dict[str, int]]:
    """The curate paths' chunks of rows too many to hold: ``parts`` (the balanced records in row
    order) get their split, are spilled in ``buckets`` (:class:`ChunkSpill`) and are labelled and
    given their ``cls`` a bucket at a time, as :func:`label_batch` and :func:`split_tables` label
    and split the whole set. Returns the chunk files and the rows per split; ``progress`` shows a
    bar per pass (``rows``: how many ``parts`` hold)."""
    from tqdm import tqdm

    from pipeline.stage import StageContext
    from pipeline.stages.curate import STAGE, label_batch, split_tables

    def bar(desc: str, total: int | None, unit: str):
        return tqdm(total=total, desc=desc, unit=unit, disable=not progress, dynamic_ncols=True, leave=False)

    def prepare(split: str, bucket: pa.Table) -> pa.Table:
        labelled = split_tables(label_batch(bucket, StageContext(STAGE, options)).out, classes)[split]
        done.update(bucket.num_rows)
        return labelled

    spill = ChunkSpill(spill_dir, buckets, options.seed)
    try:
        with bar(f"curate: spilling in {buckets} buckets", rows, "row") as spilled:
            for part in parts:
                if not part.num_rows:
                    continue
                part = part.append_column("split", assign_splits(part, options))
                names = pc.unique(part.column("split")).to_pylist()
                for split in sorted(names):
                    spill.add(split, part if len(names) == 1 else part.filter(pc.equal(part.column("split"), split)))
                spilled.update(part.num_rows)
        with bar("curate: chunks", sum(spill.rows.values()), "row") as done:
            written = spill.write(root, options, prepare)
    finally:
        spill.remove()
    return written, dict(sorted(spill.rows.items()))
