"""The download stage: curated records (or a plain URL list) -> webdataset shards with sidecars.

Rows are planned into shards deterministically (``{split}-{n:06d}`` over rows sorted by key), so a
rerun, a resumed run and the Beam run agree on which image lands in which shard. Every planned
image ends in exactly one sidecar row (ok, or failed with a reason from ``shards.status``):
attempted = ok + failed. Finished shards are skipped; an unfinished one resumes per image from
its spool; ``retry_failed`` redoes only the failed images of finished shards and rewrites them.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field

from pipeline.curate.captions import CAPTION_TYPES, NAME_COLUMNS
from pipeline.runners.local import quiet_interrupt
from schemas.hashing import hash_strings
from schemas.record import UNIQUE_COLUMNS, record_id_column
from shards import status
from shards.fetch import DEFAULT_USER_AGENT, Fetcher, FetchOptions, HostLimit, host_of
from shards.image import ImageOptions, process_image, process_images
from shards.writer import (
    ShardSpool,
    read_shard,
    read_status,
    safe_key,
    sample_members,
    shard_finished,
    shard_name,
    write_shard,
)

STAGE = "download"


class HostOptions(BaseModel):
    """Politeness for one host."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    concurrency: int = Field(8, ge=1, description="simultaneous requests to this host")
    rate: float = Field(20.0, ge=0, description="requests per second (0 = unlimited)")
    burst: float | None = Field(None, gt=0, description="token-bucket size; default = rate")


class Options(BaseModel):
    """The ``[download]`` table of the config."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    size: int = Field(256, ge=1, description="target side in pixels for resize_mode")
    resize_mode: Literal["longest", "shortest", "center_crop", "none"] = Field(
        "longest", description="longest/shortest side to `size` (never upscaled), center_crop to size x size, or none")
    quality: int = Field(90, ge=1, le=100, description="JPEG quality of re-encoded images")
    keep_original: bool = Field(True, description="store the original JPEG/PNG bytes when already small enough")
    shard_size: int = Field(1000, ge=1, description="images per shard")
    plan_bucket_rows: int = Field(
        500_000, ge=1, description="a Parquet input of more rows (or a text URL list over 256 MiB, copied to "
        "Parquet first) is planned in buckets of about this many (by a hash of the key, spilled to disk beside "
        "the shards), so planning holds one bucket in memory; each bucket's last shard of a split may then be short")
    host_concurrency: int = Field(8, ge=1, description="default simultaneous requests per host")
    host_rate: float = Field(20.0, ge=0, description="default requests per second per host (0 = unlimited)")
    hosts: dict[str, HostOptions] = Field(default_factory=dict, description="per-host overrides, keyed by host name")
    total_concurrency: int = Field(256, ge=1, description="open connections over all hosts")
    max_in_flight: int = Field(512, ge=1, description="images in progress at once (bounds memory)")
    timeout: float = Field(30.0, gt=0, description="seconds per request attempt, headers and body")
    connect_timeout: float = Field(10.0, gt=0, description="seconds to connect")
    retries: int = Field(3, ge=0, description="extra attempts after a transient failure")
    backoff_base: float = Field(0.5, ge=0, description="first backoff in seconds (doubles, with jitter)")
    backoff_max: float = Field(30.0, ge=0, description="longest backoff in seconds")
    retry_after_max: float = Field(120.0, ge=0, description="longest Retry-After honoured, seconds")
    user_agent: str = Field(DEFAULT_USER_AGENT, description="User-Agent header; add a contact address")
    allow_private: bool = Field(False, description="allow private and link-local addresses")
    allow_loopback: bool = Field(False, description="allow 127.0.0.0/8 and ::1 (tests, local mirrors)")
    max_bytes: int = Field(50 * 1024 * 1024, ge=1, description="largest body accepted, bytes")
    max_pixels: int = Field(89_478_485, ge=1, description="largest width*height decoded (bombs above)")
    max_redirects: int = Field(5, ge=0, description="redirects followed per request")
    processes: int | None = Field(0, ge=0, description="decode processes; 0 (default) decodes on threads in the fetching process, fastest on small machines; None = one per CPU")
    caption_column: str = Field("caption", description="input column written as {key}.txt")
    text_members: bool = Field(
        True, description="also write each caption type and name column of curated input as BioCLIP's "
        "TreeOfLife shards do ({key}.sci.txt, {key}.taxonTag_com.txt, {key}.common_name.txt...), "
        "for trainers that pick or mix text types; false writes {key}.txt alone")
    cls_column: str = Field("cls", description="input column written as {key}.cls")
    url_column: str = Field("url", description="URL column of a plain URL list")
    key_column: str = Field("key", description="key column of a plain URL list (optional)")
    default_split: str = Field("train", description="split of rows without one (URL lists)")
    retry_failed: bool = Field(False, description="redo only the failed images of finished shards")
    reuse_from: str | None = Field(
        None, description="a shards folder of an earlier download (made with the same image options): each "
        "image it holds with the same key and URL is copied from it, with this run's record, caption and "
        "texts, instead of fetched again (local runner)")
    beam_workers_per_host: int = Field(1, ge=1, description="Beam: groups per host; each gets rate/n")
    seed: int = Field(0, description="seed of the backoff jitter")

    def fetch_options(self, split_hosts: int = 1) -> FetchOptions:
        def limit(concurrency: int, rate: float, burst: float | None) -> HostLimit:
            return HostLimit(max(1, concurrency // split_hosts), rate / split_hosts, burst)

        return FetchOptions(
            user_agent=self.user_agent,
            timeout=self.timeout,
            connect_timeout=self.connect_timeout,
            retries=self.retries,
            backoff_base=self.backoff_base,
            backoff_max=self.backoff_max,
            retry_after_max=self.retry_after_max,
            max_bytes=self.max_bytes,
            max_redirects=self.max_redirects,
            allow_private=self.allow_private,
            allow_loopback=self.allow_loopback,
            default_host=limit(self.host_concurrency, self.host_rate, None),
            hosts={h: limit(o.concurrency, o.rate, o.burst) for h, o in self.hosts.items()},
            total_concurrency=self.total_concurrency,
            seed=self.seed,
        )

    def image_options(self) -> ImageOptions:
        return ImageOptions(self.size, self.resize_mode, self.max_pixels, self.quality, self.keep_original)


# ---------------------------------------------------------------- input and plan


def _read_table(path: str, options: Options) -> pa.Table:
    """The input table; a file that cannot be read as one stops with its name and what is wrong."""
    try:
        return _read_input(path, options)
    except pa.ArrowInvalid as exc:
        raise _unreadable(path, exc) from exc


def _unreadable(path: str, exc: pa.ArrowInvalid) -> ValueError:
    hint = ("fix that line (every row needs the header's columns)" if path.lower().endswith((".csv", ".tsv"))
            else "give a curated folder, a Parquet dataset, or a .csv / .tsv / .txt URL list")
    return ValueError(f"{path}: {exc}; {hint} and run again")


def _text_list(path: str) -> bool:
    """Whether ``path`` is a URL list in text (CSV, TSV, or one URL per line)."""
    fs, local = fsspec.core.url_to_fs(path)
    return fs.isfile(local) and local.lower().endswith((".csv", ".tsv", ".txt"))


_LIST_BLOCK = 16 << 20  # bytes of a .txt URL list read at a time
_CSV_BLOCK = 1 << 20  # bytes per block of arrow's CSV reader: its memory grew with the block (16 MiB:
# ~630 MiB held over a 1 GB list, 1 MiB: ~40 MiB)
_COPY_GROUP_ROWS = 1 << 16  # rows per row group of a text list's Parquet copy
_LIST_IN_MEMORY_BYTES = 256 << 20  # a text URL list larger than this is planned from a Parquet copy


def _list_tables(path: str, options: Options) -> Iterator[pa.Table]:
    """A text URL list as tables of a block each, read as a stream (at least one
    table, maybe empty). CSV and TSV: every column as text (keys like 000123 must not become
    integers) but ``cls_column``, an integer; ``.txt``: one URL per line, stripped, blank lines
    skipped."""
    fs, local = fsspec.core.url_to_fs(path)
    if local.lower().endswith(".txt"):
        yield from _txt_tables(fs, local, path, options)
        return
    if fs.size(local) == 0:
        raise ValueError(f"{path} is empty (0 bytes); a CSV or TSV URL list needs a header line naming its columns "
                         f"({options.url_column!r}, optional {options.key_column!r}, {options.caption_column!r}) "
                         "and a row per image")
    parse = pacsv.ParseOptions(delimiter="\t" if local.lower().endswith(".tsv") else ",")
    with fs.open(local, "rb") as f:
        names = pacsv.open_csv(f, parse_options=parse, read_options=pacsv.ReadOptions(block_size=1 << 16)).schema.names
    types = {n: pa.string() for n in names}
    if options.cls_column in types:
        types[options.cls_column] = pa.int64()
    with fs.open(local, "rb") as f:
        reader = pacsv.open_csv(f, parse_options=parse, read_options=pacsv.ReadOptions(block_size=_CSV_BLOCK),
                                convert_options=pacsv.ConvertOptions(column_types=types))
        empty = True
        for batch in reader:
            empty = False
            yield pa.Table.from_batches([batch])
        if empty:
            yield reader.schema.empty_table()


def _txt_tables(fs, local: str, path: str, options: Options) -> Iterator[pa.Table]:
    """:func:`_list_tables` of a ``.txt`` list: cut at line ends, so no character is split and
    ``str.splitlines`` sees whole lines."""
    at, rest = 0, b""  # the file offset of ``rest``, the bytes after the last line end so far
    with fs.open(local, "rb") as f:
        while True:
            block = f.read(_LIST_BLOCK)
            data = rest + block
            cut = data.rfind(b"\n") + 1 if block else len(data)
            try:
                text = data[:cut].decode()
            except UnicodeDecodeError as exc:
                raise ValueError(f"{path} is not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset "
                                 f"{at + exc.start}); re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8) and "
                                 "run again") from exc
            urls = [u.strip() for u in text.splitlines() if u.strip()]
            if urls or not block:
                yield pa.table({options.url_column: pa.array(urls, pa.string())})
            if not block:
                return
            at, rest = at + cut, data[cut:]


def _read_input(path: str, options: Options) -> pa.Table:
    if _text_list(path):
        return pa.concat_tables(list(_list_tables(path, options)))
    dataset = _dataset(path)
    # repeating text stays dictionary-coded (curated captions: a few thousand values for millions
    # of rows); parts are combined as they are read, so each file's own dictionaries do not pile up
    parts, batches, rows = [], [], 0
    for batch in dataset.to_batches():
        batches.append(batch)
        rows += batch.num_rows
        if rows >= _PART_ROWS:
            parts.append(pa.Table.from_batches(batches).combine_chunks())
            batches, rows = [], 0
    if batches or not parts:
        parts.append(pa.Table.from_batches(batches, schema=dataset.schema).combine_chunks())
    return pa.concat_tables(parts).combine_chunks()


_PART_ROWS = 1 << 18


def _jsonable(value: Any) -> Any:
    return value.isoformat() if hasattr(value, "isoformat") else value


# input column -> text type of its member ({key}.{type}.txt), BioCLIP's names
TEXT_MEMBERS = {**{f"caption_{t}": t for t in CAPTION_TYPES.values()}, **{n: n for n in NAME_COLUMNS}}


_SAFE = r"[^A-Za-z0-9_-]"  # what safe_key replaces, one character (code point) at a time
_EDGE = r"^[^!-~]|[^!-~]$"  # a first or last character that str.strip() might remove


def _text(table: pa.Table, name: str) -> pa.Array | None:
    """Column ``name`` as one string array, or ``None`` when it is absent or not text (such
    columns go through Python's ``str``, as a row dict would)."""
    if name not in table.column_names:
        return None
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks != 1 else col.chunk(0)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if pa.types.is_large_string(col.type):
        col = col.cast(pa.string())
    return col if pa.types.is_string(col.type) else None


def _python_column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _urls(table: pa.Table, url_col: str) -> pa.Array:
    """``str(url).strip()`` per row ("" for null), vectorised where the text allows."""
    col = _text(table, url_col)
    if col is None:
        return pa.array(["" if u is None else str(u).strip() for u in _python_column(table, url_col)], pa.string())
    col = pc.fill_null(col, "")
    edge = np.flatnonzero(np.asarray(pc.match_substring_regex(col, _EDGE).to_numpy(zero_copy_only=False), bool))
    if edge.size:  # whitespace rules of str.strip(), for the few rows that start or end oddly
        fixed = [u.strip() for u in pc.take(col, pa.array(edge)).to_pylist()]
        mask = np.zeros(len(col), bool)
        mask[edge] = True
        col = pc.replace_with_mask(col, pa.array(mask), pa.array(fixed, pa.string()))
    return col


def _safe_keys(table: pa.Table, name: str, fallback) -> pa.Array:
    """``safe_key(value)`` per row; the rows whose value is null or empty get ``fallback(rows)``
    (their row numbers, a numpy array; it returns one string per row)."""
    col = _text(table, name)
    if col is None:
        raw = _python_column(table, name)
        missing = np.asarray([v in (None, "") for v in raw], bool)
        keys = pa.array(["" if m else safe_key(v) for v, m in zip(raw, missing, strict=True)], pa.string())
    else:
        missing = np.asarray(pc.fill_null(pc.equal(col, ""), True).to_numpy(zero_copy_only=False), bool)
        keys = pc.replace_substring_regex(pc.fill_null(col, ""), _SAFE, "_")
    if missing.any():
        keys = pc.replace_with_mask(keys, pa.array(missing), fallback(np.flatnonzero(missing)))
    return keys


def _plan_columns(names: set[str], path: str, options: Options) -> tuple[str, str]:
    """The URL and key columns of an input with these columns: a record table or a URL list."""
    if "identifier" in names:
        return "identifier", "record_id"
    if options.url_column in names:
        return options.url_column, options.key_column
    if not names:  # no Parquet file with a column in it
        raise ValueError(f"{path} holds no rows: nothing to download. If it is curated/, curate kept none of its "
                         "records: `biocorpus query \"SELECT stage, reason, count(*) FROM rejects GROUP BY ALL\"` "
                         "says why; change the [curate] options and run `biocorpus curate` again")
    raise ValueError(
        f"{path}: neither a record table (column 'identifier') nor a URL list "
        f"(column {options.url_column!r}); columns are {sorted(names)}")


def _text_members(names, options: Options) -> dict[str, str]:
    """Input column -> BioCLIP text type of the members written for it (:data:`TEXT_MEMBERS`)."""
    return {c: t for c, t in TEXT_MEMBERS.items() if c in names} if options.text_members else {}


def _keys(table: pa.Table, urls: pa.Array, key_col: str) -> pa.Array:
    """Each row's safe key: its key column's, or a record id of its URL (``urls``) when it has none."""
    return _safe_keys(table, key_col, lambda rows: record_id_column("url", pc.take(urls, pa.array(rows))))


def _split_key_url(table: pa.Table, url_col: str, key_col: str, options: Options) -> tuple[pa.Array, pa.Array, pa.Array]:
    """Each row's split, safe key (:func:`_keys`) and stripped URL."""
    urls = _urls(table, url_col)
    keys = _keys(table, urls, key_col)
    default = pa.scalar(options.default_split, pa.string())
    splits = _safe_keys(table, "split", lambda rows: pa.repeat(default, len(rows))) if "split" in table.column_names \
        else pa.repeat(default, table.num_rows)
    return splits, keys, urls


class DownloadPlan:
    """Where every input row goes: the input table as read (Arrow, columns null throughout
    dropped), and per planned position (rows sorted by split, key, URL) the input row, final key,
    URL, split and whether the key was seen before. Shards build their items from it one at a
    time (:attr:`PlannedShard.items`), so planning millions of rows holds Arrow columns, not a
    Python dict per row."""

    def __init__(self, table: pa.Table, path: str, options: Options, columns: list[str] | None = None):
        """``columns``: the input columns kept for the items (default: those not null throughout)."""
        names = set(table.column_names)
        url_col, key_col = _plan_columns(names, path, options)
        self.caption_col, self.cls_col = options.caption_column, options.cls_column
        self.text_columns = _text_members(names, options)
        splits, keys, urls = _split_key_url(table, url_col, key_col, options)
        narrow = pa.table({"split": splits, "key": keys, "url": urls})
        # a stable sort: rows equal in all three keep their input order, as sorted() keeps them
        order = pc.sort_indices(narrow, sort_keys=[("split", "ascending"), ("key", "ascending"),
                                                   ("url", "ascending")]).to_numpy().astype(np.int64)
        narrow = narrow.take(pa.array(order))
        # the i-th time a key comes (in plan order, over every split) it is {key}-dup{i}
        seen = pl.from_arrow(narrow.select(["key"])).select(
            pl.int_range(pl.len(), dtype=pl.Int64).over("key")).to_series().to_numpy()
        dup = seen > 0
        keys = narrow.column("key").combine_chunks()
        if dup.any():
            rows = np.flatnonzero(dup)
            renamed = [f"{k}-dup{i}" for k, i in zip(pc.take(keys, pa.array(rows)).to_pylist(),
                                                     seen[rows].tolist(), strict=True)]
            keys = pc.replace_with_mask(keys, pa.array(dup), pa.array(renamed, pa.string()))
        self.order, self.dup = order, dup
        self.written: str | None = None  # the folder write() wrote the plan file to
        self.keys, self.urls = keys, narrow.column("url").combine_chunks()
        self.splits = narrow.column("split").combine_chunks()
        # what an item's record is built from: a column null in every row adds nothing to it
        if columns is None:
            columns = [c for c in table.column_names if table.column(c).null_count < table.num_rows]
        self.table = table.select(columns)
        clash = sorted(set(self.table.column_names) & set(_PLAN_COLUMNS))
        if clash:
            raise ValueError(f"{path}: columns {clash} are reserved for the download plan; rename them")
        self.shards: list[PlannedShard] = []
        codes = np.asarray(pc.dictionary_encode(self.splits).indices.to_numpy(zero_copy_only=False), np.int64)
        bounds = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1], [True]))) if len(codes) else []
        for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist(), strict=True) if len(bounds) else ():
            split = self.splits[lo].as_py()
            for n, start in enumerate(range(lo, hi, options.shard_size)):
                self.shards.append(PlannedShard(split, n, self, start, min(hi, start + options.shard_size)))

    def items(self, start: int, stop: int, shard: str) -> list[dict]:
        """The items of plan positions ``start..stop``: ``key, url, split, caption, cls, texts,
        record, dup, shard`` (texts: BioCLIP's text types present in the row, see
        :data:`TEXT_MEMBERS`; record: JSON text of the row's non-null columns but ``split``)."""
        return plan_items(self.rows(start, stop), shard, self.caption_col, self.cls_col, self.text_columns)

    def rows(self, start: int, stop: int) -> pa.Table:
        """Plan positions ``start..stop`` as one table: the input's columns, then the plan's
        (:data:`_PLAN_COLUMNS`)."""
        n = stop - start
        taken = self.table.take(pa.array(self.order[start:stop]))
        plan = {"__key": self.keys.slice(start, n), "__url": self.urls.slice(start, n),
                "__split": self.splits.slice(start, n), "__dup": pa.array(self.dup[start:stop])}
        return pa.table([*taken.columns, *plan.values()], names=[*taken.column_names, *plan])

    def digests(self) -> dict[str, str]:
        """Each shard's :func:`keys_digest` (what a shard made earlier must match to be kept)."""
        return _shard_digests(self.keys, [(s.name, s.start, s.stop) for s in self.shards])

    def url_digests(self) -> dict[str, str]:
        """Each shard's :func:`pairs_digest` of its keys and URLs (a shard made earlier from the same
        keys must match it too: a key given another URL is another image)."""
        return _shard_digests(_pairs(self.keys, self.urls), [(s.name, s.start, s.stop) for s in self.shards])

    def write(self, plan_dir: str) -> dict[str, tuple[str, int]]:
        """The plan as one Parquet file in ``plan_dir``, rows in plan order and a row group per
        shard, for workers that build their shard's items themselves (Beam); returns each shard's
        file and row group."""
        self.written = plan_dir
        with _PlanFile(_join(plan_dir, "plan.parquet")) as out:
            for shard in self.shards:
                out.add(shard.name, self.rows(shard.start, shard.stop))
        return out.layout

    def close(self) -> None:
        """Remove the plan file :meth:`write` wrote, if any, and let go of the shards: they refer
        to their plan, a cycle that only Python's cyclic GC (which counts objects, not bytes) would
        free, with all the plan's columns."""
        self.shards = []
        if self.written is not None:
            _remove(self.written)


class _PlanFile:
    """A plan file being written: a row group per shard, plain text (a dictionary column would
    write its whole dictionary into every row group), renamed into place when closed."""

    def __init__(self, path: str):
        self.path = path
        self.fs, self.local = fsspec.core.url_to_fs(path)
        self.fs.makedirs(self.local.rsplit("/", 1)[0], exist_ok=True)
        self.layout: dict[str, tuple[str, int]] = {}
        self._file = self.fs.open(self.local + ".tmp", "wb")
        self._writer: pq.ParquetWriter | None = None

    def add(self, shard: str, rows: pa.Table) -> None:
        rows = _decoded(rows)
        if self._writer is None:
            # no statistics: nothing filters on them, and a footer per shard is smaller. A row group
            # of one shard is ~1,000 rows of every column, where a column chunk's fixed costs tell:
            # lz4 and no dictionary pages plan 2.69M curated rows in ~39 s instead of ~48 s (zstd),
            # for plan files of 906 MB instead of 605 MB, removed when the download ends
            self._writer = pq.ParquetWriter(self._file, rows.schema, compression="lz4", use_dictionary=False,
                                            write_statistics=False)
        self._writer.write_table(rows.cast(self._writer.schema), row_group_size=max(1, rows.num_rows))
        self.layout[shard] = (self.path, len(self.layout))

    def __enter__(self) -> _PlanFile:
        return self

    def __exit__(self, *exc) -> None:
        if self._writer is not None:
            self._writer.close()
        self._file.close()
        if exc[0] is None:
            self.fs.mv(self.local + ".tmp", self.local)
        else:
            self.fs.rm(self.local + ".tmp")


_SPILL_BYTES = 128 << 20  # input rows held by the bucketed plan's first pass before they are written out
_SPILL_GROUP_ROWS = 16_384  # rows per row group of its spill files (the writer holds one encoded group)


class BucketedPlan:
    """The plan of an input too large to hold (more than ``plan_bucket_rows`` rows), in two passes
    that each hold about one bucket.

    1. The input streams past in batches; each row goes to bucket ``hash(key) % buckets`` (all
       rows of a key in one bucket, so repeated keys are found there), written to a Parquet file
       per bucket in a temporary folder.
    2. Each bucket in turn is planned as :class:`DownloadPlan` plans a whole input (sorted by
       split, key, URL; repeated keys marked), and its shards are written to ``plan_dir`` as
       :meth:`DownloadPlan.write` does; a split's shard numbers go on from bucket to bucket.

    Shards are then cut per bucket: each bucket's last shard of a split may be short. The plan
    depends only on the rows, not on their order in the input (but for rows equal in split, key
    and URL, as in :class:`DownloadPlan`). Shards read their items from the plan files.
    """

    def __init__(self, path: str, options: Options, rows: int, plan_dir: str, progress: bool = False,
                 source: str | None = None):
        """``source``: the input as messages name it (default ``path``; a text URL list is read
        from a Parquet copy)."""
        self.plan_dir, self.source = plan_dir, source or path
        self.rows, self.progress = rows, progress
        self.buckets = max(1, -(-rows // options.plan_bucket_rows))
        self.shards: list[PlannedShard] = []
        self.layout: dict[str, tuple[str, int]] = {}
        self._digests: dict[str, str] = {}
        self._url_digests: dict[str, str] = {}
        self._open: tuple[str, pq.ParquetFile] | None = None  # the plan file last read (shards come in its order)
        fs, local = fsspec.core.url_to_fs(plan_dir)
        spill_dir = local if isinstance(fs, fsspec.implementations.local.LocalFileSystem) else None
        if spill_dir:
            fs.makedirs(spill_dir, exist_ok=True)
        try:
            with tempfile.TemporaryDirectory(prefix="biocorpus-plan-", dir=spill_dir) as tmp:
                columns = self._spill(path, options, Path(tmp))
                self._plan(path, options, Path(tmp), columns)
        except BaseException:
            self.close()  # no half-written plan files left beside the shards
            raise

    def _bar(self, total: int, unit: str, desc: str):
        from tqdm import tqdm

        return tqdm(total=total, unit=unit, desc=desc, disable=not self.progress, dynamic_ncols=True,
                    unit_scale=unit == "rows")

    def _spill(self, path: str, options: Options, tmp: Path) -> list[str]:
        """Pass 1: the input's rows into a Parquet file per bucket; returns the columns that are
        not null throughout (the items' records are built from those)."""
        dataset = _dataset(path)
        url_col, key_col = _plan_columns(set(dataset.schema.names), self.source, options)
        self.caption_col, self.cls_col = options.caption_column, options.cls_column
        self.text_columns = _text_members(dataset.schema.names, options)
        writers: dict[int, pq.ParquetWriter] = {}
        held: list[list[pa.Table]] = [[] for _ in range(self.buckets)]
        held_bytes = 0
        nonnull: set[str] = set()

        def flush() -> None:
            for b, parts in enumerate(held):
                if parts:
                    rows = pa.concat_tables(parts)
                    if b not in writers:
                        writers[b] = pq.ParquetWriter(tmp / f"bucket-{b:05d}.parquet", rows.schema,
                                                      compression="zstd", compression_level=1)
                    writers[b].write_table(rows, row_group_size=_SPILL_GROUP_ROWS)
                    parts.clear()

        bar = self._bar(self.rows, "rows", f"plan: {self.buckets} buckets")
        try:
            # row group by row group: the dataset's scanner reads ahead of this loop, which is slower
            # than it, whatever its read-ahead options say (a whole file of a URL list, 1.2 GB)
            batches = (b for fragment in dataset.get_fragments() for group in fragment.split_by_row_group()
                       for b in group.to_batches(schema=dataset.schema))
            for batch in batches:
                bar.update(batch.num_rows)
                if not batch.num_rows:
                    continue
                table = pa.Table.from_batches([batch])
                nonnull.update(c for c in table.column_names if table.column(c).null_count < table.num_rows)
                keys = _keys(table, _urls(table, url_col), key_col)
                bucket = (hash_strings(keys, "download-plan") % np.uint64(self.buckets)).astype(np.int64)
                order = np.argsort(bucket, kind="stable")
                bounds = np.searchsorted(bucket[order], np.arange(self.buckets + 1))
                # plain text: a slice of a dictionary column holds its batch's whole dictionary, which
                # would be written once per bucket (Parquet makes dictionaries of its own)
                grouped = _decoded(table.take(pa.array(order)))
                for b in np.flatnonzero(np.diff(bounds)).tolist():
                    held[b].append(grouped.slice(bounds[b], bounds[b + 1] - bounds[b]))
                held_bytes += grouped.nbytes
                if held_bytes > _SPILL_BYTES:
                    flush()
                    held_bytes = 0
            flush()
        finally:
            bar.close()
            for writer in writers.values():
                writer.close()
        return [c for c in dataset.schema.names if c in nonnull]

    def _plan(self, path: str, options: Options, tmp: Path, columns: list[str]) -> None:
        """Pass 2: each bucket planned, its shards written to its own plan file."""
        first: collections.Counter[str] = collections.Counter()  # the next shard number of each split
        with self._bar(self.buckets, "bucket", "plan: shards") as bar:
            for b in range(self.buckets):
                self._plan_bucket(path, options, tmp / f"bucket-{b:05d}.parquet", b, columns, first)
                bar.update(1)

    def _plan_bucket(self, path: str, options: Options, spilled: Path, b: int, columns: list[str],
                     first: collections.Counter[str]) -> None:
        """One bucket of pass 2; ``first``: each split's next shard number, moved on here."""
        if not spilled.exists():
            return
        # repeating text back as dictionaries (Parquet's own): a bucket then holds each caption once
        text = [f.name for f in pq.read_schema(spilled) if pa.types.is_string(f.type) and f.name not in UNIQUE_COLUMNS]
        plan = DownloadPlan(pq.read_table(spilled, read_dictionary=text).combine_chunks(), self.source, options,
                            columns)
        spilled.unlink()
        planned = collections.Counter()
        spans = []
        with _PlanFile(_join(self.plan_dir, f"plan-{b:05d}.parquet")) as out:
            for shard in plan.shards:
                n = first[shard.split] + shard.n
                name = shard_name(shard.split, n)
                out.add(name, plan.rows(shard.start, shard.stop))
                self.shards.append(PlannedShard(shard.split, n, self, 0, len(shard)))
                spans.append((name, shard.start, shard.stop))
                planned[shard.split] += 1
        self.layout.update(out.layout)
        self._digests.update(_shard_digests(plan.keys, spans))
        self._url_digests.update(_shard_digests(_pairs(plan.keys, plan.urls), spans))
        first.update(planned)
        plan.close()  # freed now, not at the next cyclic GC

    def items(self, start: int, stop: int, shard: str) -> list[dict]:
        """A shard's items, read from its plan file (``start``, ``stop``: its rows there)."""
        path, group = self.layout[shard]
        if self._open is None or self._open[0] != path:
            fs, local = fsspec.core.url_to_fs(path)
            with fs.open(local, "rb") as f:
                self._open = (path, pq.ParquetFile(pa.BufferReader(f.read())))
        rows = self._open[1].read_row_group(group).slice(start, stop - start)
        return plan_items(rows, shard, self.caption_col, self.cls_col, self.text_columns)

    def digests(self) -> dict[str, str]:
        """Each shard's :func:`keys_digest`, as :meth:`DownloadPlan.digests`."""
        return dict(self._digests)

    def url_digests(self) -> dict[str, str]:
        """Each shard's :func:`pairs_digest`, as :meth:`DownloadPlan.url_digests`."""
        return dict(self._url_digests)

    def write(self, plan_dir: str) -> dict[str, tuple[str, int]]:
        """Each shard's plan file and row group (already written, in ``plan_dir``)."""
        if plan_dir != self.plan_dir:
            raise ValueError(f"this plan is in {self.plan_dir}, not {plan_dir}")
        return self.layout

    def close(self) -> None:
        """Remove the plan files and let go of the shards (which refer to this plan)."""
        self._open = None
        self.shards = []
        _remove(self.plan_dir)


def _remove(folder: str) -> None:
    fs, local = fsspec.core.url_to_fs(folder)
    if fs.exists(local):
        fs.rm(local, recursive=True)


def _decoded(table: pa.Table) -> pa.Table:
    """``table`` with its dictionary columns as plain values."""
    return pa.table([c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in table.columns],
                    names=table.column_names)


# the plan's own columns in a plan file and in :meth:`DownloadPlan.rows` (input columns keep their names)
_PLAN_COLUMNS = ("__key", "__url", "__split", "__dup")


def plan_items(rows: pa.Table, shard: str, caption_col: str, cls_col: str, text_columns: dict[str, str]) -> list[dict]:
    """Download items from plan rows (:meth:`DownloadPlan.rows`, or row groups of a plan file)."""
    out = []
    # decoded before to_pylist: converting dictionary columns value by value is ~4x slower
    for row in _decoded(rows).to_pylist():
        plan = {k: row.pop(k) for k in _PLAN_COLUMNS}
        caption, cls = row.get(caption_col), row.get(cls_col)
        record = {k: _jsonable(v) for k, v in row.items() if v is not None and k != "split"}
        out.append({
            "key": plan["__key"],
            "url": plan["__url"],
            "split": plan["__split"],
            "caption": None if caption is None else str(caption),
            "cls": None if cls is None else int(cls),
            "texts": {t: str(row[c]) for c, t in text_columns.items() if row.get(c) is not None},
            "record": json.dumps(record, sort_keys=True, ensure_ascii=False, default=str),
            "dup": bool(plan["__dup"]),
            "shard": shard,
        })
    return out


def read_plan_items(path: str, shard: str, group: int, caption_col: str, cls_col: str,
                    text_columns: dict[str, str], only: frozenset[str] | None = None) -> list[dict]:
    """One shard's items from a plan file (:meth:`DownloadPlan.write`, :class:`BucketedPlan`);
    ``only``: just these keys."""
    fs, local = fsspec.core.url_to_fs(path)
    with fs.open(local, "rb") as f:
        rows = pq.ParquetFile(f).read_row_group(group)
    items = plan_items(rows, shard, caption_col, cls_col, text_columns)
    return items if only is None else [i for i in items if i["key"] in only]


@dataclass
class PlannedShard:
    split: str
    n: int
    plan: DownloadPlan | BucketedPlan
    start: int
    stop: int

    @property
    def name(self) -> str:
        return shard_name(self.split, self.n)

    def __len__(self) -> int:
        return self.stop - self.start

    @property
    def items(self) -> list[dict]:
        """This shard's items, built now from the plan (a shard's worth of rows at a time)."""
        return self.plan.items(self.start, self.stop, self.name)


def keys_digest(keys: pa.Array | list[str]) -> str:
    """A digest of a set of sample keys, independent of their order: the count and two sums of
    64-bit key hashes. Two shards with equal digests hold the same keys (but for a 128-bit
    coincidence)."""
    return _shard_digests(pa.array(keys, pa.string()) if isinstance(keys, list) else keys,
                          [("", 0, len(keys))])[""]


def pairs_digest(keys: pa.Array, urls: pa.Array) -> str:
    """:func:`keys_digest` of the (key, URL) pairs: equal when two shards hold the same keys with
    the same URLs."""
    return keys_digest(_pairs(keys, urls))


def _pairs(keys, urls) -> pa.Array:
    """``key NUL url`` per row (a safe key holds no NUL, so the first one parts the two)."""
    return pc.binary_join_element_wise(keys, urls, "\x00")


def _shard_digests(keys: pa.Array, spans: list[tuple[str, int, int]]) -> dict[str, str]:
    """:func:`keys_digest` of ``keys[start:stop]`` for each ``(name, start, stop)``, in one pass."""
    if not spans:
        return {}
    starts = np.array([start for _, start, _ in spans], np.int64)
    stops = np.array([stop for _, _, stop in spans], np.int64)
    sums = []
    for seed in ("download-layout-1", "download-layout-2"):
        running = np.concatenate([np.zeros(1, np.uint64), np.cumsum(hash_strings(keys, seed), dtype=np.uint64)])
        sums.append((running[stops] - running[starts]).tolist())  # modulo 2**64, as the sums wrap
    return {name: f"{stop - start}-{a:016x}{b:016x}"
            for (name, start, stop), a, b in zip(spans, *sums, strict=True)}


class LayoutError(ValueError):
    """The output folder holds shards that this plan would make from other rows or other image options."""


# each planned shard's digest of its keys (``shards``) and of its keys with their URLs (``urls``,
# from version 2), and the image options its images are made with (``image``; null when unknown:
# a folder made before the record), written as a download starts
_LAYOUT = "_layout.json"
_LAYOUT_VERSION = 2


def check_layout(out_dir: str, plan: DownloadPlan | BucketedPlan, spool_root: Path | None = None,
                 image: dict | None = None) -> dict[str, str]:
    """Stop before anything is fetched when ``out_dir`` holds shards this plan would fill with
    other images, then record the plan's layout (``_layout.json``).

    Finished shards are skipped by name and unfinished ones resume from their spool, so a shard
    made from other rows (the input, ``shard_size`` or ``plan_bucket_rows`` changed since) would
    leave some images out and hold others twice, one whose keys now have other URLs would keep
    the images of the old ones, and one made with other image options (``image``: size, resize
    mode...) would keep images of another size. Each shard made earlier is compared by its keys
    and URLs: with the digests recorded when it was planned, or for a folder from before that
    record, with its sidecar's rows (a spool's rows must be among the shard's). The record is
    written only when some planned shard is still to be made: a run with nothing to do leaves
    the folder as it is. It never claims image options for images made before they were
    recorded (``image`` null then). Returns the keys digests."""
    digests, url_digests = plan.digests(), plan.url_digests()
    fs, path = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(path, exist_ok=True)
    record = path.rstrip("/") + "/" + _LAYOUT
    old: dict = json.loads(fs.cat_file(record)) if fs.exists(record) else {}
    recorded: dict[str, str] = old.get("shards", {})
    recorded_urls: dict[str, str] = old.get("urls", {})
    made = sorted(p.rsplit("/", 1)[-1][: -len(".parquet")] for p in fs.glob(path.rstrip("/") + "/*.parquet")
                  if fs.exists(p[: -len(".parquet")] + ".tar"))
    spooled = sorted(d.name for d in spool_root.iterdir() if d.is_dir()) if spool_root and spool_root.exists() else []
    held = bool(made or spooled)
    if held and image is not None and old.get("image") is not None and old["image"] != image:
        raise LayoutError(_image_changed(out_dir, old["image"], image))
    changed, moved, stale = [], [], []
    by_name = {s.name: s for s in plan.shards}
    for name in sorted(set(made) | set(spooled)):
        if name not in digests:
            stale.append(name)
            continue
        if name in recorded and recorded[name] != digests[name]:
            changed.append(name)
            continue
        if name in recorded and name in recorded_urls:
            if recorded_urls[name] != url_digests[name]:
                moved.append(name)
            continue
        # no record of this shard or of its URLs (a folder from before them): what it holds
        if name in made:
            with fs.open(path.rstrip("/") + "/" + name + ".parquet", "rb") as f:
                rows = pq.read_table(f, columns=["key", "url"])
            keys, urls = rows["key"].combine_chunks(), rows["url"].combine_chunks()
            if keys_digest(keys) != digests[name]:
                changed.append(name)
            elif pairs_digest(keys, urls) != url_digests[name]:
                moved.append(name)
        else:
            planned = {i["key"]: i["url"] for i in by_name[name].items}
            done = ShardSpool(spool_root / name).done
            if not set(done) <= planned.keys():
                changed.append(name)
            elif any(row["url"] != planned[key] for key, row in done.items()):
                moved.append(name)
    if changed or moved or stale:
        raise LayoutError(_layout_changed(out_dir, changed, moved, stale))
    complete = set(digests) <= set(made) and not spooled
    layout = {"version": _LAYOUT_VERSION, "image": image if not held or old.get("image") == image else None,
              "shards": digests, "urls": url_digests}
    if layout != old and not complete:
        tmp = record + ".tmp"
        with fs.open(tmp, "w") as f:
            json.dump(layout, f)
        fs.mv(tmp, record)
    return digests


def _shards_named(names: list[str], what: str) -> str:
    """``"3 shards made ... (a, b, c)"``: how many, what is wrong with them, the first three."""
    listed = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return f"{len(names):,} shard{'' if len(names) == 1 else 's'} {what} ({listed})"


def _layout_changed(out_dir: str, changed: list[str], moved: list[str], stale: list[str]) -> str:
    what, why = [], []
    if changed:
        what.append(_shards_named(changed, f"made from other rows than this plan gives {'it' if len(changed) == 1 else 'them'}"))
    if stale:
        what.append(_shards_named(stale, "that this plan does not have"))
    if moved:
        what.append(_shards_named(moved, "whose keys this plan gives other URLs"))
    one = len(changed) + len(stale) == 1
    if changed or stale:
        why.append(f"the input, shard_size or plan_bucket_rows changed since {'it was' if one else 'they were'} made. "
                   f"Kept, {'it' if one else 'they'} would leave images out and hold others twice")
    if moved:
        one = len(moved) == 1
        why.append(f"{'and ' if why else ''}the input gives some of {'its' if one else 'their'} keys other URLs now "
                   f"(re-ingested or re-curated records). Kept, {'it' if one else 'they'} would hold the images of "
                   "the old URLs")
    listed = what[0] if len(what) == 1 else ", ".join(what[:-1]) + " and " + what[-1]
    return (f"{out_dir} holds {listed}: {'; '.join(why)}. Move this folder aside and download again with "
            "--reuse-from pointing at it (the images it holds with the same key and URL are copied, not fetched "
            "again), download into another folder (--output), or remove this one to start over.")


_IMAGE_OPTION = {"mode": "resize_mode"}  # a field of ImageOptions -> its [download] option, where they differ


def _image_changed(out_dir: str, old: dict, new: dict) -> str:
    """The message of a folder whose images were made with other image options than this run's."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    made = ", ".join(f"{_IMAGE_OPTION.get(k, k)} = {old.get(k)!r}" for k in keys)
    asked = ", ".join(f"{_IMAGE_OPTION.get(k, k)} = {new.get(k)!r}" for k in keys)
    return (f"{out_dir} holds shards whose images were made with {made}; this run makes {asked}. Its shards are "
            "kept by name, so they would keep images made the other way. Run again with the options the folder was "
            "made with, or download into another folder (--output), or move this one aside (or remove it) and "
            "download again. --reuse-from cannot take images from it: reuse needs the same image options.")


def _image_record(options: Options) -> dict:
    """The image options a shards folder records (``_layout.json``): reused images must match."""
    return asdict(options.image_options())


_REUSED_FIELDS = ("http_status", "attempts", "sha256", "width", "height", "bytes", "format", "phash",
                  "stored_width", "stored_height", "stored_bytes")
_NOT_IMAGE = ("json", "txt", "cls")


def check_reuse(folder: str, options: Options, out_dir: str) -> None:
    """Raise unless ``folder`` can lend its images to a download into ``out_dir`` with ``options``:
    an existing shards folder other than ``out_dir``, whose recorded image options are these."""
    fs, path = fsspec.core.url_to_fs(folder)
    path = path.rstrip("/")
    if fsspec.core.url_to_fs(out_dir)[1].rstrip("/") == path:
        raise ValueError(f"reuse_from {folder} is the output folder itself; give the folder of an earlier download")
    if not fs.exists(path):
        raise ValueError(f"reuse_from {folder} does not exist; give the shards folder of an earlier download (the one "
                         "moved aside, e.g. with `mv data/shards data/shards-old`)")
    if not fs.isdir(path):
        raise ValueError(f"reuse_from {folder} is a file; give the shards folder of an earlier download")
    record = path + "/" + _LAYOUT
    if not fs.exists(record):
        raise ValueError(f"reuse_from {folder}: no {_LAYOUT} there, so its image options are unknown; give a "
                         "shards folder made by this version of biocorpus")
    image = json.loads(fs.cat_file(record)).get("image")
    if image is None:
        raise ValueError(f"reuse_from {folder}: its image options are unknown (it holds images made before biocorpus "
                         "recorded them), so its images may not be what this run makes; download without --reuse-from")
    if image != _image_record(options):
        raise ValueError(f"reuse_from {folder}: its images were made with {image}, this run makes "
                         f"{_image_record(options)}; reuse needs the same image options")


class _Reuse:
    """The images an earlier download holds (``reuse_from``), found by key and URL: a sorted
    64-bit hash of each ok image's (key, URL) and the shard it is in, so the index costs 12 bytes
    an image; a shard's sidecar and members are read when an item needs them (the last one kept:
    the plan's order makes neighbouring items come from the same shards)."""

    def __init__(self, folder: str, options: Options, out_dir: str):
        fs, path = fsspec.core.url_to_fs(folder)  # (run_download checked the folder: check_reuse)
        path = path.rstrip("/")
        self.tars: list[str] = []
        hashes, shard_of = [], []
        for sidecar in sorted(fs.glob(path + "/*.parquet")):
            tar = sidecar[: -len(".parquet")] + ".tar"
            if not fs.exists(tar):
                continue
            with fs.open(sidecar, "rb") as f:
                rows = pq.read_table(f, columns=["key", "url", "status"])
            rows = rows.filter(pc.equal(rows["status"], status.OK))
            hashes.append(_pair_hashes(rows["key"], rows["url"]))
            shard_of.append(np.full(rows.num_rows, len(self.tars), np.int32))
            self.tars.append(fs.unstrip_protocol(tar))
        hashes = np.concatenate(hashes) if hashes else np.zeros(0, np.uint64)
        order = np.argsort(hashes, kind="stable")
        self.hashes = hashes[order]
        self.shard_of = np.concatenate(shard_of)[order] if shard_of else np.zeros(0, np.int32)
        self._open: tuple[int, dict[str, dict], dict[str, dict[str, bytes]]] | None = None

    def _shard(self, i: int) -> tuple[dict[str, dict], dict[str, dict[str, bytes]]]:
        if self._open is None or self._open[0] != i:
            rows = {r["key"]: r for r in read_status(self.tars[i]) if r["status"] == status.OK}
            self._open = (i, rows, read_shard(self.tars[i]))
        return self._open[1], self._open[2]

    def take(self, items: list[dict]) -> list[tuple[dict, dict[str, bytes]]]:
        """The status row and members of each item held here (same key and URL), made with the
        item's record, caption, class and texts; items not held here are left out."""
        todo = [i for i in items if not i.get("dup")]
        if not todo or not len(self.hashes):
            return []
        wanted = _pair_hashes(pa.array([i["key"] for i in todo], pa.string()),
                              pa.array([i["url"] for i in todo], pa.string()))
        at = np.minimum(np.searchsorted(self.hashes, wanted), len(self.hashes) - 1)
        found = np.flatnonzero(self.hashes[at] == wanted)
        out = []
        for n in sorted(found.tolist(), key=lambda n: int(self.shard_of[at[n]])):
            item = todo[n]
            rows, members = self._shard(int(self.shard_of[at[n]]))
            old, held = rows.get(item["key"]), members.get(item["key"])
            if old is None or held is None or old["url"] != item["url"]:  # a hash shared with another pair
                continue
            out.append(_reused(item, old, held))
        return out


def _pair_hashes(keys, urls) -> np.ndarray:
    return hash_strings(pc.binary_join_element_wise(keys, urls, "\x00"), "download-reuse")


def _reused(item: dict, old: dict, held: dict[str, bytes]) -> tuple[dict, dict[str, bytes]]:
    """An image held by an earlier download as this plan's sample: its stored bytes and what was
    measured of it (the sidecar's fields, the record's ``download``) with the item's own record,
    caption, class and texts, as :func:`download_item` would write them."""
    ext = next(e for e in sorted(held) if e not in _NOT_IMAGE and not e.endswith(".txt"))
    record = json.loads(item["record"])
    record["download"] = {"sha256": old["sha256"], "phash": old["phash"], "original_width": old["width"],
                          "original_height": old["height"], "width": old["stored_width"],
                          "height": old["stored_height"]}
    members = sample_members(item["key"], held[ext], ext, record, item["caption"], item["cls"], item.get("texts"))
    return _status_row(item, status=status.OK, reason=None, **{k: old[k] for k in _REUSED_FIELDS}), members


def _say_planned(shards: list[PlannedShard], started: float) -> None:
    splits = collections.Counter()
    for shard in shards:
        splits[shard.split] += len(shard)
    per_split = ", ".join(f"{k} {v:,}" for k, v in sorted(splits.items()))
    print(f"download: {sum(splits.values()):,} images planned in {len(shards):,} shards ({per_split}) "
          f"in {time.monotonic() - started:.1f} s", file=sys.stderr)


def plan_download(path: str, options: Options) -> list[PlannedShard]:
    """The shards of an input that is planned in memory (see :func:`make_plan`)."""
    return make_plan(path, options).shards


def make_plan(path: str, options: Options, plan_dir: str | None = None,
              progress: bool = False) -> DownloadPlan | BucketedPlan:
    """Read the input (records Parquet dataset, or a URL list) and cut it into shards.

    Rows are sorted by (split, key, URL), so the plan never depends on input order; each split is
    cut into shards of ``options.shard_size``. A key seen again gets ``{key}-dup{i}`` and is
    marked ``dup`` (recorded as ``duplicate_key``, never fetched), so no sample overwrites
    another and none disappears. Curated records are recognised by ``identifier`` (key
    ``record_id``); anything with ``options.url_column`` is a URL list.

    A Parquet input of more than ``options.plan_bucket_rows`` rows is planned in buckets
    (:class:`BucketedPlan`), whose files go to ``plan_dir`` (required then), with progress bars
    when ``progress``; a text URL list over ``_LIST_IN_MEMORY_BYTES`` is copied to Parquet and
    planned as one (when there is a ``plan_dir``). ``close()`` the plan when done with it."""
    if _text_list(path) and plan_dir is not None and _file_bytes(path) > _LIST_IN_MEMORY_BYTES:
        return _plan_text_list(path, options, plan_dir, progress)
    rows = _parquet_rows(path)
    if rows is None or rows <= options.plan_bucket_rows:
        return DownloadPlan(_read_table(path, options), path, options)
    if plan_dir is None:
        raise ValueError(f"{path}: {rows:,} rows are planned in buckets, which needs a plan_dir")
    try:
        return BucketedPlan(path, options, rows, plan_dir, progress)
    except pa.ArrowInvalid as exc:
        raise ValueError(f"{path}: {exc}; give a curated folder or a Parquet dataset and run again") from exc


def _file_bytes(path: str) -> int:
    fs, local = fsspec.core.url_to_fs(path)
    return fs.size(local)


def _plan_text_list(path: str, options: Options, plan_dir: str, progress: bool) -> DownloadPlan | BucketedPlan:
    """The plan of a large text URL list: copied as it is read into a Parquet file (in a temporary
    folder in ``plan_dir`` when that is local), then planned from it as a Parquet input is, so
    that memory holds a block of the list at a time, and one bucket when planned in buckets."""
    fs, local = fsspec.core.url_to_fs(plan_dir)
    here = isinstance(fs, fsspec.implementations.local.LocalFileSystem)
    if here:
        fs.makedirs(local, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="biocorpus-list-", dir=local if here else None))
    try:
        copy, rows, writer, held, held_rows = tmp / "list.parquet", 0, None, [], 0
        try:
            for table in _list_tables(path, options):
                if writer is None:
                    writer = pq.ParquetWriter(copy, table.schema, compression="zstd", compression_level=1)
                held.append(table)
                rows += table.num_rows
                held_rows += table.num_rows
                if held_rows >= _COPY_GROUP_ROWS:
                    writer.write_table(pa.concat_tables(held))
                    held, held_rows = [], 0
            if held:
                writer.write_table(pa.concat_tables(held))
        except pa.ArrowInvalid as exc:
            raise _unreadable(path, exc) from exc
        finally:
            if writer is not None:
                writer.close()
        if rows <= options.plan_bucket_rows:
            return DownloadPlan(pq.read_table(copy), path, options)
        return BucketedPlan(str(copy), options, rows, plan_dir, progress, source=path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if here and fs.exists(local) and not fs.ls(local):
            fs.rmdir(local)


def _parquet_rows(path: str) -> int | None:
    """How many rows a Parquet input holds (from the files' footers), or None for a CSV, TSV or
    text URL list and for what is not a readable Parquet dataset (its reading then says why)."""
    if _text_list(path):
        return None
    try:
        return _dataset(path).count_rows()
    except (pa.ArrowInvalid, OSError):
        return None


def _dataset(path: str) -> pads.Dataset:
    fs, local = fsspec.core.url_to_fs(path)
    return pads.dataset(local, filesystem=fs, format="parquet", partitioning="hive")


# ---------------------------------------------------------------- one image


def _status_row(item: dict, **fields) -> dict:
    return {
        "key": item["key"],
        "url": item["url"],
        "split": item["split"],
        "shard": item["shard"],
        "host": host_of(item["url"]) or None,
        **fields,
    }


async def download_item(
    item: dict,
    fetcher: Fetcher,
    decode: Callable[[bytes], Any],
) -> tuple[dict, dict[str, bytes] | None]:
    """Fetch, check and convert one planned image: ``(status row, shard members or None)``."""
    if item.get("dup"):
        return _status_row(item, status=status.FAILED, reason=status.DUPLICATE_KEY, attempts=0), None
    fetched = await fetcher.fetch(item["url"])
    common = {"http_status": fetched.http_status, "attempts": fetched.attempts}
    if not fetched.ok:
        return _status_row(item, status=status.FAILED, reason=fetched.reason, **common), None
    result = await decode(fetched.data)
    del fetched
    info = {k: result.get(k) for k in ("sha256", "width", "height", "bytes", "format")}
    if not result["ok"]:
        return _status_row(item, status=status.FAILED, reason=result["reason"], **common, **info), None
    record = json.loads(item["record"])
    record["download"] = {
        "sha256": result["sha256"],
        "phash": result["phash"],
        "original_width": result["width"],
        "original_height": result["height"],
        "width": result["stored_width"],
        "height": result["stored_height"],
    }
    members = sample_members(item["key"], result["data"], result["ext"], record, item["caption"], item["cls"],
                             item.get("texts"))
    row = _status_row(
        item,
        status=status.OK,
        reason=None,
        **common,
        **info,
        phash=result["phash"],
        stored_width=result["stored_width"],
        stored_height=result["stored_height"],
        stored_bytes=result["stored_bytes"],
    )
    return row, members


class _Decoder:
    """Runs ``process_image`` in a process pool (or threads), images batched per task.

    Images queue here until a task slot is free; each task takes up to ``_BATCH`` of those
    waiting, so a busy pool gets few large tasks (one pickle, one pipe round trip and one
    wake-up of each process per batch instead of per image) and an idle one gets single
    images at once. Each image's bytes go to the worker once; only the small result comes back.
    """

    _BATCH = 8
    _TASKS_PER_WORKER = 2

    def __init__(self, options: Options):
        self.image_options = options.image_options()
        workers = options.processes if options.processes is not None else (os.cpu_count() or 1)
        if workers == 0:
            # Pillow releases the GIL while decoding and resizing, so threads still overlap.
            workers = os.cpu_count() or 1
            self.pool: concurrent.futures.Executor = concurrent.futures.ThreadPoolExecutor(workers)
        else:
            # forkserver: forking the event-loop process (with its resolver threads) can deadlock.
            # Its default preload of __main__ does not happen on Python 3.11 (the main path is
            # never passed to the server), so each worker imported this module's dependencies
            # itself (~1 s CPU and tens of MB each); preloaded, they share the server's pages.
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload([__name__, "shards.image"])
            # a Ctrl-C ends the workers without a traceback each (pipeline.runners.local.quiet_interrupt)
            self.pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=context, initializer=quiet_interrupt)
        self.tasks = self._TASKS_PER_WORKER * workers
        self._running = 0
        self._waiting: collections.deque[tuple[bytes, asyncio.Future]] = collections.deque()

    async def __call__(self, data: bytes) -> dict:
        future = asyncio.get_running_loop().create_future()
        self._waiting.append((data, future))
        self._submit()
        return await future

    def _submit(self) -> None:
        while self._running < self.tasks and self._waiting:
            batch: list[tuple[bytes, asyncio.Future]] = []
            while self._waiting and len(batch) < self._BATCH:
                data, future = self._waiting.popleft()
                if not future.done():  # its caller was cancelled
                    batch.append((data, future))
            if not batch:
                return
            self._running += 1
            task = asyncio.wrap_future(self.pool.submit(process_images, [d for d, _ in batch], self.image_options))
            task.add_done_callback(lambda t, futures=[f for _, f in batch]: self._done(t, futures))

    def _done(self, task: asyncio.Future, futures: list[asyncio.Future]) -> None:
        self._running -= 1
        error = None if task.cancelled() else task.exception()
        for i, future in enumerate(futures):
            if future.done():
                continue
            if task.cancelled():
                future.cancel()
            elif error is not None:  # the pool broke (a worker was killed): the run stops
                future.set_exception(error)
            else:
                future.set_result(task.result()[i])
        self._submit()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


# ---------------------------------------------------------------- local runner


def _join(root: str, name: str) -> str:
    return root.rstrip("/") + "/" + name


def _spool_root(out_dir: str) -> Path:
    fs, path = fsspec.core.url_to_fs(out_dir)
    if isinstance(fs, fsspec.implementations.local.LocalFileSystem):
        return Path(path) / "_partial"
    digest = zlib.crc32(out_dir.encode())
    return Path(tempfile.gettempdir()) / f"biocorpus-spool-{digest:08x}"


def _prepare_spool(tar_url: str, spool_dir: Path, retry_failed: bool) -> ShardSpool | None:
    """The spool to finish the shard ``tar_url`` in, or ``None`` when the shard needs no work."""
    finished = shard_finished(tar_url)
    if finished and not retry_failed:
        if spool_dir.exists():  # killed after the sidecar was renamed, before the spool was removed
            shutil.rmtree(spool_dir, ignore_errors=True)
        return None
    if spool_dir.exists() or not finished:
        return ShardSpool(spool_dir)
    old_rows = read_status(tar_url)
    if all(r["status"] == status.OK for r in old_rows):
        return None
    old_members = read_shard(tar_url)
    spool = ShardSpool(spool_dir)
    for row in old_rows:
        if row["status"] == status.OK and row["key"] in old_members:
            spool.add(row, old_members[row["key"]])
    return spool


class _Progress:
    def __init__(self, total: int, enabled: bool):
        from tqdm import tqdm

        self.bar = tqdm(total=total, unit="img", disable=not enabled, smoothing=0.05, dynamic_ncols=True)
        self.failures: collections.Counter[str] = collections.Counter()
        self._shown = 0.0

    def update(self, row: dict) -> None:
        if row["status"] != status.OK:
            self.failures[row["reason"]] += 1
        self.bar.update(1)
        now = time.monotonic()
        if now - self._shown > 0.5:
            self._shown = now
            self.bar.set_postfix(ok=self.bar.n - sum(self.failures.values()), **dict(self.failures.most_common(6)))

    def close(self) -> None:
        self.bar.set_postfix(ok=self.bar.n - sum(self.failures.values()), **dict(self.failures.most_common(6)))
        self.bar.close()


def _pending_count(shard: PlannedShard, tar_url: str, spool_dir: Path, retry_failed: bool) -> int:
    """How many of ``shard``'s images this run will try (for the progress bar), without building
    its items or its spool."""
    finished = shard_finished(tar_url)
    if finished and not retry_failed:
        return 0
    if spool_dir.exists():
        return max(0, len(shard) - len(ShardSpool(spool_dir).done))
    if not finished:
        return len(shard)
    return sum(r["status"] != status.OK for r in read_status(tar_url))


async def _run_local(shards: list[PlannedShard], out_dir: str, options: Options, progress: bool,
                     reuse: _Reuse | None = None) -> tuple[int, int]:
    """Download every pending image, shard by shard: a shard's items and spool are made when the
    scheduler reaches it, so memory holds the shards in progress, not the whole plan. Images that
    ``reuse`` holds are copied from it into the spool instead. Returns the images processed and
    those of them reused."""
    spool_root = _spool_root(out_dir)
    total = sum(_pending_count(shard, _join(out_dir, shard.name + ".tar"), spool_root / shard.name,
                               options.retry_failed) for shard in shards)
    bar = _Progress(total, progress)
    decoder = _Decoder(options) if total else None
    remaining: dict[str, int] = {}
    reused = [0]
    targets: dict[str, tuple[str, ShardSpool]] = {}
    # One thread does all spool and shard writes, in submission order (an image's members and
    # status line before its shard's finalise): a few file syscalls per image on the event loop
    # stalled every fetch behind the disk, about 6 ms an image on a busy machine.
    writer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="spool")
    loop = asyncio.get_running_loop()
    try:
        async with Fetcher(options.fetch_options()) as fetcher:

            def prepare(shard: PlannedShard, tar_url: str) -> tuple[ShardSpool | None, list[dict], list[dict]]:
                spool = _prepare_spool(tar_url, spool_root / shard.name, options.retry_failed)
                pending = [] if spool is None else [i for i in shard.items if i["key"] not in spool.done]
                copied = []
                if reuse is not None and pending:
                    for row, members in reuse.take(pending):
                        spool.add(row, members)
                        copied.append(row)
                    done = {r["key"] for r in copied}
                    pending = [i for i in pending if i["key"] not in done]
                return spool, pending, copied

            async def pending_items():
                for shard in shards:
                    tar_url = _join(out_dir, shard.name + ".tar")
                    # on the writer thread: the spool's files, and the items built from the plan
                    spool, pending, copied = await loop.run_in_executor(writer, prepare, shard, tar_url)
                    for row in copied:
                        bar.update(row)
                    reused[0] += len(copied)
                    if spool is None:
                        continue
                    if not pending:
                        await loop.run_in_executor(writer, spool.finalise, tar_url)
                        continue
                    targets[shard.name] = (tar_url, spool)
                    remaining[shard.name] = len(pending)
                    for item in pending:
                        yield item

            async def handle(item: dict) -> None:
                row, members = await download_item(item, fetcher, decoder)
                tar_url, spool = targets[item["shard"]]
                await loop.run_in_executor(writer, spool.add, row, members)
                bar.update(row)
                remaining[item["shard"]] -= 1
                if remaining[item["shard"]] == 0:
                    del targets[item["shard"]], remaining[item["shard"]]
                    await loop.run_in_executor(writer, spool.finalise, tar_url)

            await _schedule(pending_items(), handle, options, fetcher)
    finally:
        writer.shutdown(wait=True)
        bar.close()
        if decoder is not None:
            decoder.close()
    if spool_root.exists() and not any(spool_root.iterdir()):
        spool_root.rmdir()
    return total, reused[0]


async def _schedule(items, handle, options: Options, fetcher: Fetcher) -> None:
    """Run ``handle`` over ``items`` (an async iterable, read as the work goes) with at most
    ``max_in_flight`` at once and at most twice a host's concurrency running on that host, so a
    slow host cannot fill the window while the others idle; deferred items of a host start as its
    earlier ones finish. At most ``_DEFERRED_PER_SLOT * max_in_flight`` items wait deferred: past
    that, reading more items waits for some to finish (one busy host must not pull the whole
    input into memory)."""
    window = asyncio.Semaphore(options.max_in_flight)
    running: collections.Counter[str] = collections.Counter()
    deferred: dict[str, collections.deque] = collections.defaultdict(collections.deque)
    waiting = 0  # items in ``deferred``
    max_waiting = _DEFERRED_PER_SLOT * options.max_in_flight
    tasks: set[asyncio.Task] = set()
    errors: list[BaseException] = []
    # Set as each item finishes; waiting on it instead of asyncio.wait(tasks) keeps a finish
    # O(1) (asyncio.wait adds and removes a callback on every running task, hundreds here).
    finished = asyncio.Event()

    def cap(host: str) -> int:
        return 2 * fetcher.opts.hosts.get(host, fetcher.opts.default_host).concurrency

    def start(item: dict, host: str) -> None:
        running[host] += 1
        task = asyncio.create_task(run(item, host))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def run(item: dict, host: str) -> None:
        nonlocal waiting
        try:
            await handle(item)
        except BaseException as exc:  # a bug: stop the run so the shard stays unfinished
            errors.append(exc)
        finally:
            running[host] -= 1
            tasks.discard(asyncio.current_task())
            if deferred[host] and not errors:
                waiting -= 1
                start(deferred[host].popleft(), host)  # hands its window slot on
            else:
                window.release()
            finished.set()

    async for item in items:
        if errors:
            break
        host = host_of(item["url"])
        if running[host] >= cap(host):
            deferred[host].append(item)
            waiting += 1
            while waiting >= max_waiting and tasks and not errors:
                await finished.wait()
                finished.clear()
            continue
        await window.acquire()
        start(item, host)
    while tasks or any(deferred.values()):
        if errors:
            break
        if tasks:
            await finished.wait()
            finished.clear()
        for host, queue in deferred.items():
            # a host whose tasks all finished before its items were deferred
            while queue and running[host] < cap(host) and not errors:
                await window.acquire()
                waiting -= 1
                start(queue.popleft(), host)
    for task in list(tasks):
        task.cancel()
    if errors:
        raise errors[0]


_DEFERRED_PER_SLOT = 8


def collect_stats(out_dir: str, shards: list[PlannedShard]) -> dict:
    """Counts over every planned shard's sidecar: attempted, ok, failed by reason."""
    failed: collections.Counter[str] = collections.Counter()
    ok = attempted = written = 0
    for shard in shards:
        tar_url = _join(out_dir, shard.name + ".tar")
        if not shard_finished(tar_url):
            continue
        written += 1
        rows = read_status(tar_url)
        attempted += len(rows)
        for row in rows:
            if row["status"] == status.OK:
                ok += 1
            else:
                failed[row["reason"]] += 1
    return {
        "attempted": attempted,
        "ok": ok,
        "failed": dict(sorted(failed.items())),
        "failed_total": sum(failed.values()),
        "shards": written,
        "planned": sum(len(s) for s in shards),
    }


def _write_stats(out_dir: str, stats: dict) -> None:
    fs, path = fsspec.core.url_to_fs(_join(out_dir, "_stats.json"))
    with fs.open(path + ".tmp", "w") as f:
        json.dump(stats, f, indent=2, sort_keys=True)
    fs.mv(path + ".tmp", path)


def _finish(out_dir: str, shards: list[PlannedShard], processed: int, seconds: float) -> dict:
    from pipeline.stage import check_accounting

    stats = collect_stats(out_dir, shards)
    check_accounting(STAGE, stats["planned"], stats["ok"], stats["failed_total"])
    stats["processed_this_run"] = processed
    stats["seconds"] = round(seconds, 3)
    _write_stats(out_dir, {k: v for k, v in stats.items() if k != "seconds"})
    return stats


def run_download(input_dir: str | Path, out_dir: str | Path, options: Options | None = None, progress: bool = True) -> dict:
    """Download every image of ``input_dir`` (records Parquet dataset, or a URL list: Parquet,
    CSV/TSV or one URL per line .txt) into webdataset shards under ``out_dir``.

    Returns stats: ``attempted`` (= ``ok`` + ``failed_total``), ``ok``, ``failed`` by reason,
    ``shards``, ``planned``, ``processed_this_run``, ``seconds``; also written to
    ``out_dir/_stats.json``. Raises ``AccountingError`` if an image is missing from the sidecars."""
    options = options or Options()
    started = time.monotonic()
    out_dir = str(out_dir)
    if options.reuse_from:  # before planning: a wrong folder is told at once
        check_reuse(options.reuse_from, options, out_dir)
    fs, path = fsspec.core.url_to_fs(out_dir)
    fs.makedirs(path, exist_ok=True)
    plan = make_plan(str(input_dir), options, _plan_dir(out_dir), progress)
    try:
        spool_root = _spool_root(out_dir)
        check_layout(out_dir, plan, spool_root, _image_record(options))
        shards = plan.shards
        if progress:
            _say_planned(shards, started)
        if shards and _complete(shards, out_dir, spool_root, options.retry_failed):
            _say_complete(out_dir, shards)
            reuse = None
        else:
            reuse = _Reuse(options.reuse_from, options, out_dir) if options.reuse_from else None
        processed, reused = asyncio.run(_run_local(shards, out_dir, options, progress, reuse))
        return {**_finish(out_dir, shards, processed, time.monotonic() - started), "reused_this_run": reused}
    finally:
        plan.close()


def _complete(shards: list[PlannedShard], out_dir: str, spool_root: Path | None, retry_failed: bool) -> bool:
    """Whether every planned shard is finished, with no spool left and (``retry_failed``) no failed image."""
    for shard in shards:
        tar_url = _join(out_dir, shard.name + ".tar")
        if not shard_finished(tar_url) or (spool_root is not None and (spool_root / shard.name).exists()):
            return False
        if retry_failed and any(r["status"] != status.OK for r in read_status(tar_url)):
            return False
    return True


def _say_complete(out_dir: str, shards: list[PlannedShard]) -> None:
    print(f"download: {out_dir} already complete for this input and options ({len(shards):,} "
          f"shard{'' if len(shards) == 1 else 's'}); nothing to do", file=sys.stderr)


def _plan_dir(out_dir: str) -> str:
    """Where a plan's files go while the shards are made: beside them (Beam workers read them), in
    a folder that no reader of the shards' sidecars (``shards/*.parquet``) looks into."""
    return _join(out_dir, "_plan")


def rejects_part_name(out_dir: str | Path) -> str:
    """The name of a shards folder's part file in ``rejects/stage=<stage>/``: its base name and a
    short hash of its absolute path (two folders of one base name, ``data/shards`` and
    ``elsewhere/shards``, must not replace each other's rejects; a rerun into the same folder
    replaces its own)."""
    fs, local = fsspec.core.url_to_fs(str(out_dir))
    where = str(Path(local).resolve()) if isinstance(fs, fsspec.implementations.local.LocalFileSystem) \
        else fs.unstrip_protocol(local.rstrip("/"))
    name = where.rstrip("/").rsplit("/", 1)[-1] or "shards"
    return f"part-{name}-{hashlib.sha256(where.encode()).hexdigest()[:10]}.parquet"


def failed_rejects(out_dir: str | Path):
    """Reject rows (``schemas.REJECT_SCHEMA``) for every failed image of the finished shards:
    reason ``download_failed``, detail = the download reason (``shards.status``)."""
    from schemas import Reason, make_rejects

    fs, path = fsspec.core.url_to_fs(str(out_dir))
    keys, details = [], []
    for side in sorted(fs.glob(path.rstrip("/") + "/*.parquet")):
        table = pads.dataset(side, filesystem=fs, format="parquet").to_table(columns=["key", "status", "reason"])
        table = table.filter(pc.equal(table["status"], status.FAILED))
        keys += table["key"].to_pylist()
        details += table["reason"].to_pylist()
    return make_rejects(keys, STAGE, Reason.DOWNLOAD_FAILED, details)


# ---------------------------------------------------------------- Beam runner


def _host_group(item: dict, splits: int) -> str:
    host = host_of(item["url"])
    if splits <= 1:
        return host
    return f"{host}#{zlib.crc32(item['key'].encode()) % splits}"


def _fetch_group(items: list[dict], options: Options) -> list[tuple[dict, dict[str, bytes] | None]]:
    """Download one host group's items in this worker (its own event loop and thread pool)."""

    async def run() -> list:
        threads = concurrent.futures.ThreadPoolExecutor(max(1, options.processes or os.cpu_count() or 1))
        image_options = options.image_options()
        loop = asyncio.get_running_loop()

        async def decode(data: bytes) -> dict:
            return await loop.run_in_executor(threads, process_image, data, image_options)

        window = asyncio.Semaphore(options.max_in_flight)

        async def one(item: dict):
            async with window:
                return await download_item(item, fetcher, decode)

        try:
            async with Fetcher(options.fetch_options(options.beam_workers_per_host)) as fetcher:
                return await asyncio.gather(*(one(i) for i in sorted(items, key=lambda i: i["key"])))
        finally:
            threads.shutdown(wait=True)

    return asyncio.run(run())


def _write_group(shard: str, results: Iterable[tuple[dict, dict | None]], out_dir: str) -> dict:
    tar_url = _join(out_dir, shard + ".tar")
    rows: dict[str, dict] = {}
    samples: dict[str, dict[str, bytes]] = {}
    if shard_finished(tar_url):  # retry_failed: keep the images that were fine
        old_members = read_shard(tar_url)
        for row in read_status(tar_url):
            if row["status"] == status.OK and row["key"] in old_members:
                rows[row["key"]] = row
                samples[row["key"]] = old_members[row["key"]]
    for row, members in results:
        rows[row["key"]] = row
        if members:
            samples[row["key"]] = members
    write_shard(tar_url, samples, rows.values())
    return {"shard": shard, "images": len(rows)}


def download_beam(
    input_dir: str | Path,
    out_dir: str,
    options: Options | None = None,
    pipeline_args: list[str] | None = None,
) -> dict:
    """The same download on Apache Beam: rows keyed by host (``GroupByKey``) so one worker holds
    each host group and its limits hold across the cluster (``beam_workers_per_host`` > 1 splits
    a big host into that many groups, each at 1/n of its rate and concurrency), then grouped by
    shard and written to any fsspec path (local, gs://, s3://). Same shards as ``run_download``.

    ``pipeline_args`` are Beam pipeline options; ``--runner=FnApiRunner`` is the default (the
    DirectRunner downloads Prism). Returns the same stats as ``run_download``."""
    options = options or Options()
    if options.reuse_from:
        raise ValueError("reuse_from works with the local runner; download there (runner = \"local\"), "
                         "or leave reuse_from out to fetch every image")
    started = time.monotonic()
    out_dir = str(out_dir)
    plan = make_plan(str(input_dir), options, _plan_dir(out_dir), sys.stderr.isatty())
    try:
        check_layout(out_dir, plan, image=_image_record(options))
        return _download_beam(plan, out_dir, options, pipeline_args, started)
    finally:
        plan.close()


def _download_beam(plan: DownloadPlan | BucketedPlan, out_dir: str, options: Options, pipeline_args: list[str] | None,
                   started: float) -> dict:
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    shards = plan.shards
    _say_planned(shards, started)
    # the workers read their shard's rows from a plan file beside the shards (any fsspec path), so
    # the pipeline carries shard names and the launcher holds no item
    todo: list[tuple[PlannedShard, frozenset[str] | None]] = []
    for shard in shards:
        tar_url = _join(out_dir, shard.name + ".tar")
        if not shard_finished(tar_url):
            todo.append((shard, None))
        elif options.retry_failed:
            failed = frozenset(r["key"] for r in read_status(tar_url) if r["status"] != status.OK)
            if failed:
                todo.append((shard, failed))
    planned = sum(len(shard) if only is None else len(only) for shard, only in todo)
    args = list(pipeline_args or [])
    if not any(a.startswith("--runner") for a in args):
        args.append("--runner=FnApiRunner")
    splits = options.beam_workers_per_host
    if shards and not todo:
        _say_complete(out_dir, shards)
    if todo:
        layout = plan.write(_plan_dir(out_dir))
        work = [(shard.name, layout[shard.name], only) for shard, only in todo]
        caption_col, cls_col, text_columns = plan.caption_col, plan.cls_col, plan.text_columns
        with beam.Pipeline(options=PipelineOptions(args)) as p:
            _ = (
                p
                | "Shards" >> beam.Create(work)
                | "Reshuffle" >> beam.Reshuffle()
                | "Items" >> beam.FlatMap(lambda w: read_plan_items(w[1][0], w[0], w[1][1], caption_col, cls_col,
                                                                    text_columns, w[2]))
                | "KeyByHost" >> beam.Map(lambda item: (_host_group(item, splits), item))
                | "GroupByHost" >> beam.GroupByKey()
                | "Fetch" >> beam.FlatMap(lambda kv: _fetch_group(list(kv[1]), options))
                | "KeyByShard" >> beam.Map(lambda rm: (rm[0]["shard"], rm))
                | "GroupByShard" >> beam.GroupByKey()
                | "Write" >> beam.MapTuple(lambda shard, results: _write_group(shard, results, out_dir))
            )
    return _finish(out_dir, shards, planned, time.monotonic() - started)
