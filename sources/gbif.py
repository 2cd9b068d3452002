"""GBIF connector: Darwin Core Archive downloads, the occurrence search API and the download API.

A DwC-A's occurrence core is joined with its Multimedia extension (one record per image) batch by
batch against the media sorted by key (partitioned to spill files when the media is large), so an
archive larger than memory works; the search API (pygbif, 300 per page up to GBIF's offset cap)
and a finished download request feed the same adapter.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import requests
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json, record_id_column, value_bytes
from schemas.rejects import REJECT_SCHEMA, empty_rejects
from sources.base import SHAPE_ERRORS, IngestBatch, SourceConfigError, item_key, query_hash, shape_detail
from sources.columns import per_distinct
from sources.dwca import DwcaError, NoMetaError, Prefetch, open_archive, read_ahead, read_file
from sources.http import ApiConnector, ApiOptions, HttpClient, HttpError, NotJson, page_results
from sources.licenses import normalise_license_column, unknown_license_detail
from sources.photokey import photo_keys

log = logging.getLogger(__name__)

SOURCE = "gbif"
STAGE = "ingest"
OFFSET_CAP = 100_000  # GBIF refuses offset + limit beyond this for occurrence/search
MULTIMEDIA_EXTENSION = "http://rs.gbif.org/terms/1.0/Multimedia"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp")

# the core's terms the adapter reads (the core id always comes too, as ``o__id``): each one read
# costs its share of the parse, so a term nothing uses is not listed
OCCURRENCE_COLUMNS = [
    "occurrenceID", "datasetKey", "basisOfRecord", "license", "rights", "rightsHolder",
    "scientificName", "verbatimScientificName", "acceptedScientificName", "taxonRank", "verbatimTaxonRank",
    "kingdom", "phylum", "class", "order", "family", "genus", "taxonKey", "higherClassification",
    "decimalLatitude", "decimalLongitude", "coordinateUncertaintyInMeters", "eventDate", "countryCode",
    "lifeStage", "sex", "references", "catalogNumber", "institutionCode", "recordedBy", "issue",
    "occurrenceStatus",
]
MEDIA_COLUMNS = ["type", "format", "identifier", "references", "title", "creator", "publisher", "license",
                 "rightsHolder", "created"]
_EXTRA_OCC = ["verbatimScientificName", "acceptedScientificName", "catalogNumber", "institutionCode",
              "recordedBy", "issue", "occurrenceStatus"]


class Options(ApiOptions):
    """``[sources.gbif]``: an archive to read, or a query for the search or download API."""

    input: str | None = Field(None, description="path or URL of a DwC-A zip; overrides the query")
    mode: Literal["auto", "dwca", "search", "download"] = Field(
        "auto", description="auto: dwca when an input is given, else search")
    taxon_key: int | None = Field(None, description="GBIF backbone taxon key of the query")
    filters: dict[str, Any] = Field(default_factory=dict,
                                    description="more occurrence filters, e.g. {country = 'DK', year = '2020,2024'}")
    media_type: str | None = Field("StillImage", description="mediaType filter added to API queries")
    api_base_url: str = Field("https://api.gbif.org/v1/", description="GBIF API root (tests point it at loopback)")
    page_size: int = Field(300, ge=1, le=300, description="occurrence/search page size (GBIF maximum 300)")
    max_records: int = Field(OFFSET_CAP, ge=1, le=OFFSET_CAP, description="stop the search after this many")
    rate: float = Field(3.0, gt=0, description="API requests per second")
    poll_interval_s: float = Field(60.0, gt=0, description="seconds between download status polls")
    poll_timeout_s: float = Field(6 * 3600.0, gt=0, description="give up on a download request after this")
    cache_dir: str = Field("data/cache/gbif", description="where fetched archives and request state live")
    batch_rows: int = Field(100_000, ge=1, description="records per batch")
    join_memory_mb: float = Field(256, gt=0, description="multimedia held in memory for the join; beyond, "
                                "both files are partitioned to temporary spill files, and the partitions "
                                "that fit are still joined while the core is read")
    join_partitions: int | None = Field(None, ge=1, description="spill partitions when the multimedia exceeds "
                                        "join_memory_mb; by default its text's size over an eighth of the budget "
                                        "(16 to 512), so that one partition holds about a sixth of the budget")
    keep_unknown_license: bool = Field(False, description="keep records whose licence is unknown")

    def query_fingerprint(self) -> str | None:
        api = _mode(None, self) != "dwca"
        return query_fingerprint(self) if api and (self.taxon_key is not None or self.filters) else None


def _mode(input: str | None, options: Options) -> str:
    """dwca, search or download: ``auto`` reads an archive when one is given, else searches."""
    return options.mode if options.mode != "auto" else ("dwca" if input or options.input else "search")


class GBIFConnector(ApiConnector):
    """``gbif`` source: tasks are archives, or one search / download task for a query."""

    name = SOURCE
    Options = Options

    def tasks(self, input: str | None, options: Options) -> list[str]:
        target = input or options.input
        mode = _mode(input, options)
        if mode == "dwca":
            if not target:
                raise ValueError("gbif: mode 'dwca' needs an input archive (path or URL)")
            if "://" not in target and Path(target).is_dir() and not (Path(target) / "meta.xml").exists():
                return sorted(str(p) for p in Path(target).glob("*.zip"))
            return [target]
        if options.taxon_key is None and not options.filters:
            raise ValueError("gbif: give an input archive, or a taxon_key / filters for the API")
        if mode == "download" and not _request_state(options).exists():
            credentials()  # (before anything runs: a new request needs them; a recorded one does not)
        return [f"{mode}:{query_fingerprint(options)}"]

    def read(self, task: str, options: Options) -> Iterator[IngestBatch]:
        if task.startswith("search:"):
            yield from self._read_search(options)
        elif task.startswith("download:"):
            yield from read_archive(self._download(options), options)
        elif "://" in task:
            yield from read_archive(self._fetch(task, options), options)
        else:
            yield from read_archive(Path(task), options)

    def _fetch(self, url: str, options: Options) -> Path:
        name = hashlib.blake2b(url.encode(), digest_size=8).hexdigest() + ".zip"
        return self.client(options).fetch(url, Path(options.cache_dir) / name)

    def _read_search(self, options: Options) -> Iterator[IngestBatch]:
        rows: list[dict] = []
        bad: list[tuple[str, str]] = []  # (record key, detail) of occurrences of a malformed shape
        for n, result in enumerate(search_occurrences(options, self.client(options))):
            try:
                rows.extend(api_rows(result))
            except SHAPE_ERRORS as exc:
                key = item_key(result, "gbifID", "key")
                bad.append((f"occurrence/{key}" if key else f"search-result/{n}",
                            shape_detail(f"occurrence {key or f'#{n} of the search'}", exc)))
            if len(rows) >= options.batch_rows:
                yield adapt(rows_table(rows), options)
                rows = []
        if rows:
            yield adapt(rows_table(rows), options)
        if bad:
            yield IngestBatch(records=pa.table({}), rejects=make_rejects(
                [make_record_id(SOURCE, k) for k, _ in bad], STAGE, [Reason.MALFORMED_ROW] * len(bad),
                [d for _, d in bad]))

    def _download(self, options: Options) -> Path:
        return request_download(options, self.client(options), sleep=self.sleep, clock=self.clock)


# ---------------------------------------------------------------- DwC-A


def read_archive(path: Path, options: Options) -> Iterator[IngestBatch]:
    """:func:`_read_archive` run in a background thread one batch ahead of the caller.

    The caller (a runner writing Parquet) then works while the next batch is joined and adapted:
    two threads of Python-driven work, each mostly in arrow code that releases the GIL.
    """
    with closing(read_ahead(_read_archive(path, options), 1, "gbif-adapt")) as batches:
        yield from batches


def _read_archive(path: Path, options: Options) -> Iterator[IngestBatch]:
    """Records of one GBIF DwC-A: every multimedia row of every occurrence, or a reject for it.

    The multimedia extension (needed columns only) is read first into a table sorted by a
    64-bit key of its core id; occurrence batches then stream past it and are joined batch by
    batch, so memory holds one occurrence batch and the media. Media larger than
    ``join_memory_mb`` is partitioned with the core by key hash into spill files under a
    temporary folder: the partitions that fit the budget are held and joined as the core streams
    past (a hybrid hash join), the others partition by partition afterwards. A filter of the
    media's keys (an eighth of the budget) keeps the occurrences without any media out of the
    spill: they are joined (to nothing) as the core streams past. The core is read one batch
    ahead in a background thread started before the media is read, so its inflating and parsing
    overlap reading the media, the join and the adapter, which work on ``ADAPT_THREADS`` batches
    at once (in memory).
    """
    try:
        archive = open_archive(path)
    except NoMetaError as exc:
        # GBIF's SIMPLE_CSV and SPECIES_LIST downloads are zips of one CSV, without meta.xml
        raise DwcaError(f"gbif: {exc}; request the download in DWCA format (a "
                        "SIMPLE_CSV or SPECIES_LIST download has no meta.xml)") from exc
    except DwcaError as exc:
        raise DwcaError(f"gbif: {exc}") from exc
    media_spec = archive.extension("Multimedia")
    malformed: dict[str, str] = {}  # filled as the core is read, before any media row is called an orphan
    # the core is read from now on, one batch ahead, so its start overlaps reading the media
    with closing(Prefetch(_prefixed(archive, archive.core, OCCURRENCE_COLUMNS, "o_", options, malformed), 1,
                          "gbif-core")) as ahead:
        yield from _join_archive(archive, media_spec, ahead, options, malformed)


def _join_archive(archive, media_spec, ahead: Iterator, options: Options,
                  malformed: dict[str, str] | None = None) -> Iterator[IngestBatch]:
    """:func:`_read_archive` once the core is being read (``ahead``: its tables and rejects;
    ``malformed``: the ids of its rows that could not be read, complete once ``ahead`` is)."""
    if media_spec is None:
        for item in ahead:
            yield item if isinstance(item, IngestBatch) else adapt(item, options)
        return
    budget = int(options.join_memory_mb * 2**20)
    tables: list[pa.Table] = []
    held = 0
    with tempfile.TemporaryDirectory(prefix="biocorpus-gbif-") as tmp:
        spill: _Spill | None = None
        for item in _prefixed(archive, media_spec, MEDIA_COLUMNS, "m_", options):
            if isinstance(item, IngestBatch):
                yield item
                continue
            if spill is not None:
                spill.add("m", item)
                continue
            tables.append(item)
            held += item.nbytes
            if held > budget:
                spill = _Spill(Path(tmp), spill_partitions(archive.file_bytes(media_spec), budget,
                                                           options.join_partitions),
                               key_filter_bytes=filter_bytes(budget))
                for t in tables:
                    spill.add("m", t)
                tables = []
        if spill is None:
            media = _MediaIndex(_concat(tables, MEDIA_COLUMNS, "m_"))
            tables = []
            yield from map_ahead(functools.partial(media.records, options=options), ahead, ADAPT_THREADS)
            yield from media.orphans(malformed)
            return
        # a hybrid hash join: the media partitions that fit the budget are held, and their core
        # rows are joined while the core is read (the adapter then overlaps the parse, as in
        # memory); of the other partitions' core rows, only those the media's key filter may
        # match are spilled and joined afterwards (the filter is part of the budget)
        spill.close("m")
        resident = spill.fitting("m", budget - spill.filter_nbytes)
        held_media = _MediaIndex(spill.media(sorted(resident)))

        def unspilled() -> Iterator[pa.Table | IngestBatch]:
            for item in ahead:
                if isinstance(item, IngestBatch):
                    yield item
                    continue
                kept = spill.add("o", item, keep=resident)
                if kept is not None:
                    yield kept

        yield from map_ahead(functools.partial(held_media.records, options=options), unspilled(), ADAPT_THREADS)
        yield from held_media.orphans(malformed)
        held_media = None  # released before the spilled partitions are read in turn
        spill.close()
        for part in range(spill.parts):
            if part in resident:
                continue
            media = _MediaIndex(spill.media([part]))
            yield from map_ahead(functools.partial(media.records, options=options),
                                 spill.batches("o", part, options.batch_rows), ADAPT_THREADS)
            yield from media.orphans(malformed)
            media = None  # released before the next partition is read, not while it is


ADAPT_THREADS = 2  # batches joined and adapted at once (arrow compute releases the GIL)
MIN_PARTITIONS, MAX_PARTITIONS = 16, 512  # spill partitions chosen by size (one open file each)


def spill_partitions(media_bytes: int, budget: int, configured: int | None = None) -> int:
    """How many partitions the spill cuts both join sides into.

    Each spilled partition's multimedia is read whole for its join (and briefly twice, as read
    and as combined), so a fixed count would let one partition, and the peak memory, grow with
    the archive. By default the count is the multimedia file's uncompressed size over an eighth
    of the budget: Arrow holds the needed columns in ~1.27x their text (the scaled real sample),
    so one partition holds ~0.16 of the budget, and the peak is that of the streaming join at
    any size. Past ``MAX_PARTITIONS`` (16 GB of multimedia text at 256 MiB) partitions grow
    again; the count is capped because each spilled partition has a file open while a side is
    written. ``configured`` wins when given.
    """
    if configured is not None:
        return configured
    return min(MAX_PARTITIONS, max(MIN_PARTITIONS, -(-8 * media_bytes // max(budget, 1))))


def filter_bytes(budget: int) -> int:
    """Size of the spill's media key filter: an eighth of the join budget (32 MiB at the default
    256 MiB: two probes per key keep false positives under 4% up to ~3.6M media rows, about
    8M occurrences here, and under 12% at twice that), 1 KiB at least."""
    return max(1 << 10, budget // 8)


class _KeyFilter:
    """A Bloom filter of 64-bit join keys in a fixed size: a byte per slot, two slots per key
    (multiplicative hashes of the key). It says for sure that a key was never added; a key it
    says may have been added was not always (a false positive), which only costs a spilled row.
    """

    _MULTIPLIERS = (np.uint64(0x9E3779B97F4A7C15), np.uint64(0xC2B2AE3D27D4EB4F))

    def __init__(self, nbytes: int):
        bits = max(10, int(nbytes).bit_length() - 1)  # 2**bits slots, no more than nbytes
        self.shift = np.uint64(64 - bits)
        self.slots = np.zeros(1 << bits, np.uint8)

    def _slot(self, keys: np.ndarray, multiplier: np.uint64) -> np.ndarray:
        return ((keys * multiplier) >> self.shift).astype(np.intp)  # the product wraps: modulo 2**64

    def add(self, keys: np.ndarray) -> None:
        for m in self._MULTIPLIERS:
            self.slots[self._slot(keys, m)] = 1

    def may_contain(self, keys: np.ndarray) -> np.ndarray:
        hit = np.ones(len(keys), bool)
        for m in self._MULTIPLIERS:
            hit &= self.slots[self._slot(keys, m)] != 0
        return hit


def map_ahead(fn: Callable, items: Iterator, workers: int) -> Iterator:
    """``fn(item)`` of each item, up to ``workers`` computed at once in threads; results in order."""
    if workers <= 1:
        yield from map(fn, items)
        return
    pending: collections.deque = collections.deque()
    with ThreadPoolExecutor(workers, thread_name_prefix="gbif-adapt") as pool:
        try:
            for item in items:
                pending.append(pool.submit(fn, item))
                if len(pending) >= workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()


def from_join(t: pa.Table | _Rows, options: Options) -> IngestBatch:
    """Records and rejects of one joined batch (an empty batch gives empty tables)."""
    return adapt(t, options) if t.num_rows else IngestBatch(records=pa.table({}), rejects=empty_rejects())


MALFORMED_KEPT = 100_000  # core rows that could not be read, kept by id to name their media's parent


def _prefixed(archive, spec, columns, prefix: str, options: Options,
              malformed: dict[str, str] | None = None) -> Iterator[pa.Table | IngestBatch]:
    """One archive file as tables of prefixed string columns plus a row number; bad rows as rejects.

    Each column comes as one chunk: joined here, in the reader's thread, rather than by the adapter.
    The id and detail of each bad row that has an id go to ``malformed`` (up to ``MALFORMED_KEPT``).
    """
    row = 0
    for batch in read_file(archive, spec, columns, batch_rows=options.batch_rows):
        t = batch.table.combine_chunks()
        t = t.rename_columns([prefix + c for c in t.column_names])
        t = t.append_column(prefix + "row", pa.array(np.arange(row, row + t.num_rows, dtype=np.int64)))
        row += t.num_rows
        if batch.bad:
            if malformed is not None:
                for b in batch.bad:
                    if b.row_id and len(malformed) < MALFORMED_KEPT:
                        malformed.setdefault(b.row_id, b.detail)
            ids = [make_record_id(SOURCE, f"{spec.location}:{b.row_id or 'unknown'}:{i}")
                   for i, b in enumerate(batch.bad, start=row)]
            yield IngestBatch(records=pa.table({}), rejects=make_rejects(
                ids, STAGE, [b.reason for b in batch.bad],
                [f"{b.detail}; gbifID={b.row_id}" for b in batch.bad]))
        if t.num_rows:
            yield t


def _concat(tables: list[pa.Table], columns: list[str], prefix: str) -> pa.Table:
    if tables:
        return pa.concat_tables(tables).combine_chunks()
    names = [f"{prefix}_id", *[prefix + c for c in columns]]
    return pa.table({**{n: pa.array([], pa.string()) for n in names}, f"{prefix}row": pa.array([], pa.int64())})


def join_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """A 64-bit key per core id, a function of the id alone (both sides of the join use it).

    A decimal integer without leading zeros (every gbifID) is its own key, top bit set; any other
    id is hashed, top bit clear. Equal ids give equal keys; two different ids share a key only
    when both are hashed, which the join then tells apart by comparing the ids themselves.
    """
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if len(ids) == 0:
        return np.zeros(0, np.uint64)
    canonical = _canonical(ids)
    top = np.uint64(1 << 63)
    if pc.all(canonical).as_py():
        return pc.cast(ids, pa.int64()).to_numpy(zero_copy_only=False).astype(np.uint64) | top
    keys = pl.Series(ids).hash(seed=0).to_numpy() & np.uint64((1 << 63) - 1)
    if pc.any(canonical).as_py():
        ints = pc.cast(pc.if_else(canonical, ids, "0"), pa.int64()).to_numpy(zero_copy_only=False)
        keys = np.where(canonical.to_numpy(zero_copy_only=False), ints.astype(np.uint64) | top, keys)
    return keys


def _canonical(ids: pa.Array) -> pa.Array:
    """Which ids are decimal integers as GBIF writes them: 1 to 18 ASCII digits, no leading zero
    (``0`` alone is one). The same as the regex ``^(0|[1-9][0-9]{0,17})$``, a few times cheaper."""
    length = pc.binary_length(ids)
    digits = pc.and_(pc.ascii_is_decimal(ids), pc.less_equal(length, 18))
    return pc.fill_null(pc.and_(digits, pc.or_(pc.equal(length, 1), pc.invert(pc.starts_with(ids, "0")))), False)


def _canonical_integers(ids: pa.Array) -> bool:
    """Whether every id is keyed by its integer value (so that keys cannot collide on that side)."""
    return bool(pc.all(_canonical(ids), min_count=0).as_py())


class _Rows:
    """Rows picked from tables side by side, their columns copied only when asked for.

    Each part is a table and the row of it behind each row here (``None``: all its rows, in
    order; ``-1``: a null row). :meth:`filter` composes the selections instead of copying, so a
    joined batch that is mostly rejected copies only the kept rows of the columns records need.
    """

    def __init__(self, parts: list[tuple[pa.Table, np.ndarray | None]], num_rows: int):
        self.parts, self.num_rows = parts, num_rows
        self._where: dict[str, int] = {}
        for i, (table, _) in enumerate(parts):
            for name in table.column_names:
                self._where.setdefault(name, i)
        self.column_names = list(self._where)
        self._cache: dict[str, pa.Array] = {}

    @classmethod
    def of(cls, table: pa.Table) -> _Rows:
        return cls([(table, None)], table.num_rows)

    def column(self, name: str) -> pa.Array:
        if name not in self._cache:
            table, rows = self.parts[self._where[name]]
            col = table.column(name)
            if isinstance(col, pa.ChunkedArray):
                col = col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()
            if rows is not None:
                col = col.take(pa.array(rows, mask=rows < 0) if len(rows) and rows.min() < 0 else pa.array(rows))
            self._cache[name] = col
        return self._cache[name]

    def filter(self, mask: pa.Array) -> _Rows:
        keep = np.flatnonzero(mask.to_numpy(zero_copy_only=False))
        parts = [(table, keep if rows is None else rows[keep]) for table, rows in self.parts]
        return _Rows(parts, len(keep))

    def table(self) -> pa.Table:
        return pa.Table.from_arrays([self.column(n) for n in self.column_names], names=self.column_names)


def _blank_ids(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """Which core ids are missing: null, empty or only whitespace (such an id names nothing)."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(ids.cast(pa.string())), ""), True)
    return blank.to_numpy(zero_copy_only=False)


class _MediaIndex:
    """Media rows sorted by join key, joined to occurrence batches by binary search.

    A row with a blank core id on either side joins nothing: the occurrence keeps no media, the
    media row is an orphan (blank ids are equal text, not the same occurrence).
    """

    def __init__(self, media: pa.Table):
        keys = join_keys(media.column("m__id"))
        order = np.argsort(keys, kind="stable")  # stable: an occurrence's media keep file order
        blank = _blank_ids(media.column("m__id")) if media.num_rows else np.zeros(0, bool)
        self.order = order[~blank[order]] if blank.any() else order
        self.keys = keys[self.order]
        self.media = media
        self.ids = media.column("m__id").combine_chunks() if media.num_rows else pa.array([], pa.string())
        self.exact = media.num_rows == 0 or _canonical_integers(self.ids)
        self.seen = np.zeros(media.num_rows, bool)

    def join_rows(self, occ: pa.Table) -> _Rows:
        """``occ`` LEFT JOIN media ON core id, rows in (occurrence, media file) order, not yet copied."""
        okeys = join_keys(occ.column("o__id"))
        lo = np.searchsorted(self.keys, okeys, "left")
        hi = np.searchsorted(self.keys, okeys, "right")
        blank = _blank_ids(occ.column("o__id")) if occ.num_rows else np.zeros(0, bool)
        if blank.any():
            hi = np.where(blank, lo, hi)
        count = hi - lo
        width = np.maximum(count, 1)
        occ_take = np.repeat(np.arange(occ.num_rows), width)
        first = np.repeat(np.cumsum(width) - width, width)
        within = np.arange(len(occ_take)) - first
        has = np.repeat(count > 0, width)
        pos = np.where(has, np.repeat(lo, width) + within, 0)
        media_take = np.where(has, self.order[pos] if len(self.order) else 0, -1)
        exact = self.exact or _canonical_integers(occ.column("o__id").combine_chunks())
        if has.any() and not exact:  # a hash key shared by different ids: keep only the true matches
            same = pc.equal(pc.take(occ.column("o__id").combine_chunks(), pa.array(occ_take[has])),
                            pc.take(self.ids, pa.array(media_take[has]))).to_numpy(zero_copy_only=False)
            if not same.all():
                occ_take, media_take = _drop_false_matches(occ_take, media_take, has, same)
        matched = media_take[media_take >= 0]
        self.seen[matched] = True
        o_rows = None if len(occ_take) == occ.num_rows else occ_take  # no occurrence repeated: as it is
        return _Rows([(occ, o_rows), (self.media.drop_columns(["m__id"]), media_take)], len(occ_take))

    def join(self, occ: pa.Table) -> pa.Table:
        """``occ`` LEFT JOIN media ON core id, rows in (occurrence, media file) order."""
        return self.join_rows(occ).table()

    def records(self, item: pa.Table | IngestBatch, options: Options) -> IngestBatch:
        """Records and rejects of an occurrence table joined here; a batch of rejects passes as it is."""
        return item if isinstance(item, IngestBatch) else from_join(self.join_rows(item), options)

    def orphans(self, malformed: dict[str, str] | None = None) -> Iterator[IngestBatch]:
        """Rejects for the media rows no occurrence claimed; ``malformed`` (core id: why its row
        could not be read) tells a parent row that was there, but malformed, from one that is not."""
        idx = np.flatnonzero(~self.seen)
        if not len(idx):
            return
        orphans = self.media.take(pa.array(idx))
        gids = orphans.column("m__id").to_pylist()
        ids = [make_record_id(SOURCE, f"{g}/{u}") for g, u in zip(gids, orphans.column("m_identifier").to_pylist(), strict=True)]
        malformed = malformed or {}
        yield IngestBatch(records=pa.table({}), rejects=make_rejects(
            ids, STAGE, Reason.ORPHAN_MEDIA,
            [f"multimedia row for gbifID {g}, whose core row is malformed ({malformed[g]})" if g in malformed
             else f"multimedia row for gbifID {g} which is not in the core" if (g or "").strip()
             else "multimedia row without a core id (gbifID)" for g in gids]))


def _drop_false_matches(occ_take, media_take, has, same):
    """Remove pairs whose ids differ; an occurrence left with none gets its no-media row back."""
    keep = np.ones(len(occ_take), bool)
    keep[np.flatnonzero(has)[~same]] = False
    true_match = np.zeros(len(occ_take), bool)
    true_match[np.flatnonzero(has)[same]] = True
    rows = np.unique(occ_take)
    matched_rows = np.unique(occ_take[true_match])
    lonely = np.setdiff1d(rows, matched_rows)
    first_of = np.searchsorted(occ_take, lonely, "left")
    keep[first_of] = True
    media_take = media_take.copy()
    media_take[first_of] = -1
    return occ_take[keep], media_take[keep]


class _Spill:
    """Rows of both join sides partitioned by key hash into Arrow IPC files, read back per partition."""

    def __init__(self, folder: Path, parts: int, key_filter_bytes: int = 0):
        self.folder, self.parts = folder, parts
        self.writers: dict[tuple[str, int], pa.ipc.RecordBatchStreamWriter] = {}
        self.nbytes: collections.Counter = collections.Counter()  # (side, part) -> bytes written
        # the media's keys, so that core rows without any media are not spilled
        self.media_keys = _KeyFilter(key_filter_bytes) if key_filter_bytes else None

    def _path(self, side: str, part: int) -> Path:
        return self.folder / f"{side}-{part:03d}.arrow"

    def add(self, side: str, t: pa.Table, keep: frozenset[int] = frozenset()) -> pa.Table | None:
        """Write ``t``'s rows to their partitions' files, except those of the ``keep`` partitions,
        which are returned (in their order; ``None`` when there are none).

        Media rows (side ``m``) are also added to the key filter, when there is one; once they all
        are, core rows (side ``o``) whose key no media row has are returned too: joined at once,
        they find no media, as they would in their partition.
        """
        keys = join_keys(t.column(f"{side}__id"))
        part = keys % np.uint64(self.parts)
        kept = np.zeros(len(part), bool)
        if self.media_keys is not None:
            if side == "m":
                self.media_keys.add(keys)
            else:
                kept = ~self.media_keys.may_contain(keys)
        if keep:
            kept |= np.isin(part, np.fromiter(keep, np.uint64, len(keep)))
        spilled = np.flatnonzero(~kept)
        if len(spilled):
            # one take puts each partition's rows together (in their order), then a slice each:
            # cheaper than a filter of the whole batch per partition
            order = spilled[np.argsort(part[spilled], kind="stable")]
            parts, starts = np.unique(part[order], return_index=True)
            grouped = t.take(pa.array(order))
            for p, start, stop in zip(parts.tolist(), starts.tolist(), [*starts[1:].tolist(), len(order)], strict=True):
                rows = grouped.slice(start, stop - start)
                key = (side, p)
                if key not in self.writers:
                    self.writers[key] = pa.ipc.new_stream(self._path(side, p), rows.schema)
                self.writers[key].write_table(rows)
                self.nbytes[key] += rows.nbytes
        if not kept.any():
            return None
        return t if kept.all() else t.filter(pa.array(kept))

    @property
    def filter_nbytes(self) -> int:
        return 0 if self.media_keys is None else self.media_keys.slots.nbytes

    def fitting(self, side: str, budget: int) -> frozenset[int]:
        """Partitions, taken in order, whose ``side`` rows together stay within ``budget`` bytes."""
        chosen, total = set(), 0
        for p in range(self.parts):
            size = self.nbytes[(side, p)]
            if total + size <= budget:
                chosen.add(p)
                total += size
        return frozenset(chosen)

    def close(self, side: str | None = None) -> None:
        """Finish the files of ``side`` (of both sides by default), so that they can be read."""
        for key in [k for k in self.writers if side is None or k[0] == side]:
            self.writers.pop(key).close()

    def media(self, parts: list[int]) -> pa.Table:
        """The media rows of these partitions as one table (its columns copied together once)."""
        return _concat([t for p in parts for t in self.batches("m", p, 1 << 62)], MEDIA_COLUMNS, "m_")

    def batches(self, side: str, part: int, rows: int) -> Iterator[pa.Table]:
        path = self._path(side, part)
        if not path.exists():
            return
        # read, not memory-mapped (what ``open_stream(path)`` does): a mapping stays open while the
        # partition is joined, and every page of it read so far stays in the process's resident
        # set, so the peak RSS grew with the partition, hence with the archive
        with pa.OSFile(str(path)) as fh, pa.ipc.open_stream(fh) as reader:
            pending, n = [], 0
            for b in reader:
                pending.append(b)
                n += b.num_rows
                if n >= rows:
                    yield pa.Table.from_batches(pending)
                    pending, n = [], 0
            if pending:
                yield pa.Table.from_batches(pending)


# ---------------------------------------------------------------- the adapter


def _col(t: pa.Table | _Rows, name: str) -> pa.Array:
    if name in t.column_names:
        c = t.column(name)
        c = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
        return c.cast(pa.string())
    return pa.nulls(t.num_rows, pa.string())


def _blank_to_null(a: pa.Array) -> pa.Array:
    """Values trimmed of whitespace; empty ones null.

    Most columns have no value that starts or ends with a byte that might be whitespace (ASCII
    space or control, or any non-ASCII byte): those keep their buffers and only get nulls where
    a value is empty. The rest are trimmed by arrow.
    """
    fast = _untrimmed_blank_to_null(a)
    if fast is not None:
        return fast
    a = pc.utf8_trim_whitespace(a)
    return pc.if_else(pc.equal(a, ""), pa.scalar(None, pa.string()), a)


def _untrimmed_blank_to_null(a: pa.Array) -> pa.Array | None:
    """``a`` with its empty values null when no value needs trimming, else ``None``.

    The first and last byte of every value are looked at (of an empty value, those of its
    neighbours, which are looked at anyway): none may be a space, a control or a non-ASCII byte.
    """
    if a.type != pa.string() or not len(a):
        return None
    validity, offsets, data = a.buffers()
    n, off = len(a), a.offset
    ends = np.frombuffer(offsets, np.int32)[off: off + n + 1]
    lengths = np.diff(ends)
    if data is not None and ends[-1] > ends[0]:
        raw = np.frombuffer(data, np.uint8)[:ends[-1]]
        for at in (ends[:-1], ends[1:] - 1):
            edge = raw.take(at, mode="clip") - np.uint8(0x21)  # wraps: 0x21..0x7e -> 0..0x5d
            if (edge > 0x5D).any():
                return None
    present = lengths > 0
    if a.null_count == 0 and present.all():
        return a
    if a.null_count:
        present &= a.is_valid().to_numpy(zero_copy_only=False)
    bits = np.packbits(np.concatenate([np.zeros(off, bool), present]), bitorder="little")
    return pa.StringArray.from_buffers(n, offsets, data, pa.py_buffer(bits), -1, off)


def _floats(a: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse strings to float64; returns (values, unparseable mask) — blank is null, not bad."""
    a = _blank_to_null(a)
    try:
        return pc.cast(a, pa.float64()), pa.array(np.zeros(len(a), bool))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        vals, bad = [], []
        for v in a.to_pylist():
            try:
                vals.append(float(v) if v is not None else None)
                bad.append(False)
            except ValueError:
                vals.append(None)
                bad.append(True)
        return pa.array(vals, pa.float64()), pa.array(bad)


def _pick_license(media: pa.Array, occ_license: pa.Array, occ_rights: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Per row: the media row's licence if it gives one, else the occurrence's.

    Older downloads (2014) leave dc:license empty and carry the licence URL in dc:rights, so
    dc:rights is the last resort, used only when it names a licence.
    """
    raw = pc.coalesce(media, occ_license)
    rights_code = normalise_license_column(occ_rights)
    use_rights = pc.and_(pc.is_null(raw), pc.not_equal(rights_code, "unknown"))
    raw = pc.if_else(use_rights, occ_rights, raw)
    return normalise_license_column(raw), raw


_CONTROL = r"[\x00-\x1f]"
_IMAGE_URL = r"\.(jpe?g|png|gif|tiff?|webp|bmp)(\?|$)"


def _extras(cols: dict[str, pa.Array]) -> pa.Array:
    """:func:`schemas.record.extra_json` of every row, built column-wise.

    Rows with a control character in a value (which JSON escapes in several ways) go through
    ``extra_json`` itself. Columns without any value are left out; in the others each present
    value becomes ``, "key": "value"`` (quotes and backslashes escaped, when a column has any),
    the pieces are concatenated, and the leading separator is cut: a row without any value is
    null.
    """
    names = sorted(cols)
    pieces = []
    odd = None
    for k in names:
        v = cols[k]
        if v.null_count == len(v):  # adds nothing to any row
            continue
        raw = value_bytes(v)
        if (raw < 0x20).any():
            hit = pc.fill_null(pc.match_substring_regex(v, _CONTROL), False)
            odd = hit if odd is None else pc.or_(odd, hit)
        if ((raw == 0x5C) | (raw == 0x22)).any():
            v = pc.replace_substring(pc.replace_substring(v, "\\", "\\\\"), '"', '\\"')
        piece = pc.binary_join_element_wise(pa.scalar(", " + json.dumps(k) + ': "'), v, pa.scalar('"'), "")
        pieces.append(pc.fill_null(piece, ""))
    if not pieces:
        return pa.nulls(len(cols[names[0]]) if names else 0, pa.string())
    joined = pc.binary_join_element_wise(*pieces, "") if len(pieces) > 1 else pieces[0]
    out = _braced(joined)
    slow = pc.indices_nonzero(odd).to_pylist() if odd is not None else []
    if slow:
        values = out.to_pylist()
        for i in slow:
            values[i] = extra_json({k: cols[k][i].as_py() for k in cols})
        out = pa.array(values, pa.string())
    return out


def _braced(joined: pa.Array) -> pa.Array:
    """``"{" + v[2:] + "}"`` of every non-empty value (each starts with a 2-byte separator), null
    for the empty ones.

    The result has the lengths of the input, so it is the input's bytes moved one to the left
    with the braces written over each value's first and last byte: one copy, no kernel per row.
    """
    n = len(joined)
    _, offsets, data = joined.buffers()
    ends = np.frombuffer(offsets, np.int32)[joined.offset: joined.offset + n + 1]
    lo, hi = int(ends[0]), int(ends[-1])
    buf = np.empty(hi - lo, np.uint8)
    if hi > lo:
        buf[:-1] = np.frombuffer(data, np.uint8)[lo + 1: hi]
    starts, stops = ends[:-1] - lo, ends[1:] - lo
    present = stops > starts
    buf[starts[present]] = ord("{")
    buf[stops[present] - 1] = ord("}")
    bits = np.packbits(present, bitorder="little")
    return pa.StringArray.from_buffers(n, pa.py_buffer((ends - lo).astype(np.int32)), pa.py_buffer(buf),
                                       pa.py_buffer(bits), n - int(present.sum()))


def _repr_pairs(a: pa.Array, b: pa.Array, fmt: str) -> pa.Array:
    """``fmt.format(repr(x), repr(y))`` per row, computed once per distinct pair."""
    return per_distinct(lambda x, y: fmt.format(repr(x), repr(y)), a, b)


def adapt(t: pa.Table | _Rows, options: Options) -> IngestBatch:
    """Joined occurrence (``o_*``) + media (``m_*``) rows to records and rejects.

    Reasons, first that applies: material citation, no image, not a still image, bad
    coordinates, unknown licence (unless kept). Column-wise throughout: Python runs once per
    row only for the record id hash, else once per distinct value.

    Rows without an image URL (often most of an archive: occurrences without media) can only
    be rejected, as material citations or for having no image: they are told apart by their
    basisOfRecord alone, and only the rows with a URL go through every test.
    """
    n = t.num_rows
    if n == 0:
        return IngestBatch(records=pa.table({}), rejects=empty_rejects())
    t = _Rows.of(t) if isinstance(t, pa.Table) else t
    no_url = pc.is_null(_blank_to_null(_col(t, "m_identifier")))
    if not pc.any(no_url).as_py():
        return _adapt_rows(t, options)[0]
    without = t.filter(no_url)
    gid_text = _core_ids(without, _blank_to_null(_col(without, "o__id")))
    material = pc.fill_null(pc.equal(_blank_to_null(_col(without, "o_basisOfRecord")), "MATERIAL_CITATION"), False)
    no_media = (pc.is_null(without.column("m_row")) if "m_row" in without.column_names
                else pa.repeat(pa.scalar(True), without.num_rows))
    rejects = pa.table({
        "record_id": record_id_column(SOURCE, pc.binary_join_element_wise("occurrence", gid_text, "/")),
        "stage": pa.repeat(pa.scalar(STAGE), without.num_rows),
        "reason": pc.if_else(material, str(Reason.MATERIAL_CITATION), str(Reason.NO_IMAGE)),
        "detail": pc.if_else(material, "basisOfRecord MATERIAL_CITATION",
                             pc.if_else(no_media, "occurrence has no media", "media row has no identifier URL")),
    }, schema=REJECT_SCHEMA)
    if without.num_rows == n:
        return IngestBatch(records=pa.table({}), rejects=rejects)
    no_url_np = no_url.to_numpy(zero_copy_only=False)
    with_url, url_rejected = _adapt_rows(t.filter(pc.invert(no_url)), options)
    # both sets of rejects, in row order
    at = np.concatenate([np.flatnonzero(no_url_np), np.flatnonzero(~no_url_np)[url_rejected]])
    both = pa.concat_tables([rejects, with_url.rejects]).combine_chunks()
    return IngestBatch(records=with_url.records, rejects=both.take(pa.array(np.argsort(at, kind="stable"))))


def _core_ids(t: _Rows, ids: pa.Array) -> pa.Array:
    """Each row's core id (trimmed, blank as null); a row without one is named by its row in the
    core file (``row-<n>``), so that such rows do not all share one record id."""
    if not ids.null_count or "o_row" not in t.column_names:
        return pc.fill_null(ids, "None")  # a joined table made by hand, without row numbers
    rows = pc.cast(t.column("o_row"), pa.string())
    return pc.coalesce(ids, pc.binary_join_element_wise("row-", rows, ""))


def _adapt_rows(t: _Rows, options: Options) -> tuple[IngestBatch, np.ndarray]:
    """:func:`adapt` of every row through every test, and which rows were rejected."""
    n = t.num_rows
    g = lambda name: _blank_to_null(_col(t, name))  # noqa: E731
    gbif_id = g("o__id")
    ident = g("m_identifier")
    gid_text = _core_ids(t, gbif_id)
    media_ids = pc.binary_join_element_wise(gid_text, ident, "/")
    ids = record_id_column(SOURCE, pc.coalesce(media_ids, pc.binary_join_element_wise("occurrence", gid_text, "/")))

    basis = g("o_basisOfRecord")
    mtype, mformat = g("m_type"), g("m_format")
    lat_raw, lon_raw = _col(t, "o_decimalLatitude"), _col(t, "o_decimalLongitude")
    lat, lat_bad = _floats(lat_raw)
    lon, lon_bad = _floats(lon_raw)
    unc, _ = _floats(_col(t, "o_coordinateUncertaintyInMeters"))
    license_code, license_raw = _pick_license(g("m_license"), g("o_license"), g("o_rights"))

    is_image_type = pc.fill_null(pc.is_in(pc.utf8_lower(mtype), pa.array(["stillimage", "image"])), False)
    # without a type, a row is a still image when its format and URL look like one: only rows
    # with a format and a URL can, so only those are looked at
    untyped = pc.and_(pc.is_null(mtype), pc.and_(pc.is_valid(mformat), pc.is_valid(ident)))
    if pc.any(untyped).as_py():
        rows = pc.indices_nonzero(untyped)
        looks_image = pc.or_(pc.starts_with(pc.utf8_lower(mformat.take(rows)), "image/"),
                             pc.match_substring_regex(pc.utf8_lower(ident.take(rows)), _IMAGE_URL))
        still = pc.or_(is_image_type, pc.fill_null(_scatter(looks_image, rows, n), False))
    else:
        still = is_image_type
    out_of_range = pc.fill_null(pc.or_(
        pc.or_(pc.less(lat, -90.0), pc.greater(lat, 90.0)),
        pc.or_(pc.less(lon, -180.0), pc.greater(lon, 180.0))), False)
    one_sided = pc.xor(pc.is_null(lat), pc.is_null(lon))
    bad_coords = pc.or_(pc.or_(pc.or_(lat_bad, lon_bad), out_of_range), pc.and_(one_sided, pc.invert(pc.or_(lat_bad, lon_bad))))

    media_row = t.column("m_row") if "m_row" in t.column_names else pa.nulls(n, pa.int64())
    no_media = pc.is_null(media_row)
    # each test explains the rows it rejects (computed on those rows only)
    tests: list[tuple[pa.Array, str, Callable[[pa.Array], pa.Array]]] = [
        (pc.equal(basis, "MATERIAL_CITATION"), Reason.MATERIAL_CITATION,
         lambda rows: pa.repeat(pa.scalar("basisOfRecord MATERIAL_CITATION"), len(rows))),
        (pc.is_null(ident), Reason.NO_IMAGE,
         lambda rows: pc.if_else(no_media.take(rows), "occurrence has no media", "media row has no identifier URL")),
        (pc.invert(still), Reason.NOT_STILL_IMAGE,
         lambda rows: _repr_pairs(mtype.take(rows), mformat.take(rows), "media type {}, format {}")),
        (bad_coords, Reason.BAD_COORDINATES,
         lambda rows: _repr_pairs(lat_raw.take(rows), lon_raw.take(rows), "decimalLatitude={} decimalLongitude={}")),
    ]
    if not options.keep_unknown_license:
        tests.append((pc.equal(license_code, "unknown"), Reason.UNKNOWN_LICENSE,
                      lambda rows: per_distinct(unknown_license_detail, license_raw.take(rows))))
    # the first test that applies wins: applied last to first, each overwriting, then one take
    which = np.full(n, -1, np.int64)  # row -> its detail among the explained rows
    test_of = np.full(n, -1, np.int64)  # row -> the test that rejects it
    details: list[pa.Array] = []
    explained = 0
    for k in reversed(range(len(tests))):
        mask, _, explain = tests[k]
        mask = pc.fill_null(mask, False)
        if pc.any(mask).as_py():
            rows = pc.indices_nonzero(mask)
            details.append(explain(rows))
            at = rows.to_numpy()
            which[at] = np.arange(explained, explained + len(at))
            test_of[at] = k
            explained += len(at)
    if details:
        detail = pc.take(pa.concat_arrays(details), pa.array(which, mask=which < 0))
        reason = pc.take(pa.array([str(why) for _, why, _ in tests], pa.string()),
                         pa.array(test_of, mask=test_of < 0))
    else:
        detail = reason = pa.nulls(n, pa.string())
    keep = pc.is_null(reason)
    rejected = pc.invert(keep)
    if pc.any(rejected).as_py():
        rejects = pa.table({"record_id": pc.filter(ids, rejected), "stage": pa.repeat(pa.scalar(STAGE), pc.sum(rejected).as_py()),
                            "reason": pc.filter(reason, rejected), "detail": pc.filter(detail, rejected)},
                           schema=REJECT_SCHEMA)
    else:
        rejects = REJECT_SCHEMA.empty_table()
    kept = pc.sum(keep).as_py() or 0
    rejected_np = rejected.to_numpy(zero_copy_only=False)
    if not kept:
        return IngestBatch(records=pa.table({}), rejects=rejects), rejected_np

    if kept == n:  # nothing rejected: the columns as they are, not copied by a filter
        take = lambda a: a  # noqa: E731
        kept_rows = t
    else:
        take = lambda a: pc.filter(a, keep)  # noqa: E731
        kept_rows = t.filter(keep)
    gk = lambda name: _blank_to_null(_col(kept_rows, name))  # noqa: E731  # kept rows only: cheaper
    ident_k = take(ident)
    extra_cols = {c: gk(f"o_{c}") for c in _EXTRA_OCC}
    extra_cols["media_title"] = gk("m_title")
    extra_cols["media_publisher"] = gk("m_publisher")
    extra_cols["media_created"] = gk("m_created")
    lineage = gk("o_higherClassification")
    if lineage.null_count:
        lineage = pc.coalesce(lineage, _lineage(kept_rows))
    coords_null = lambda a: pc.if_else(take(bad_coords), pa.scalar(None, pa.float64()), take(a))  # noqa: E731
    records = pa.table({
        "record_id": take(ids),
        "source": pa.repeat(pa.scalar(SOURCE, pa.string()), kept),
        "source_dataset": gk("o_datasetKey"),
        "occurrence_id": pc.coalesce(gk("o_occurrenceID"), take(gbif_id)),
        "media_id": take(media_ids),
        "photo_key": photo_keys(ident_k),
        "identifier": ident_k,
        "format": take(mformat),
        "license": take(license_code),
        "license_raw": take(license_raw),
        "rights_holder": pc.coalesce(gk("m_rightsHolder"), gk("m_creator"), gk("o_rightsHolder"),
                                     gk("o_institutionCode")),
        "creator": gk("m_creator"),
        "references": pc.coalesce(gk("m_references"), gk("o_references")),
        "verbatim_name": gk("o_scientificName"),
        "verbatim_rank": pc.utf8_lower(pc.coalesce(gk("o_taxonRank"), gk("o_verbatimTaxonRank"))),
        "verbatim_kingdom": gk("o_kingdom"),
        "verbatim_phylum": gk("o_phylum"),
        "verbatim_class": gk("o_class"),
        "verbatim_order": gk("o_order"),
        "verbatim_family": gk("o_family"),
        "verbatim_genus": gk("o_genus"),
        "verbatim_lineage": lineage,
        "source_taxon_id": gk("o_taxonKey"),
        "decimal_latitude": coords_null(lat),
        "decimal_longitude": coords_null(lon),
        "coordinate_uncertainty_m": take(unc),
        "event_date": gk("o_eventDate"),
        "country_code": gk("o_countryCode"),
        "basis_of_record": take(basis),
        "life_stage": gk("o_lifeStage"),
        "sex": gk("o_sex"),
        "extra": _extras(extra_cols),
    })
    return IngestBatch(records=records, rejects=rejects), rejected_np


def _scatter(values: pa.Array, rows: pa.Array, n: int) -> pa.Array:
    """An ``n``-long array with ``values`` at ``rows`` and nulls elsewhere."""
    if len(values) == n:
        return values
    where = np.full(n, -1, np.int64)
    where[rows.to_numpy()] = np.arange(len(rows))
    return pc.take(values, pa.array(where, mask=where < 0))


def _lineage(t: pa.Table | _Rows) -> pa.Array:
    """``kingdom|phylum|...|genus`` from the interpreted ranks, for archives without higherClassification.

    Rows share few rank combinations (one per genus at most), so the lineage text is built once
    per distinct combination and taken for every row.
    """
    parts = [_blank_to_null(_col(t, f"o_{r}")) for r in ("kingdom", "phylum", "class", "order", "family", "genus")]
    groups = _distinct_rows(parts)
    if groups is None:
        return _join_present(parts, "|")
    first, inverse = groups
    return _join_present([p.take(first) for p in parts], "|").take(inverse)


def _distinct_rows(parts: list[pa.Array]) -> tuple[pa.Array, pa.Array] | None:
    """For rows of equal values in every part (nulls equal to nulls): the first row of each
    group and each row's group; ``None`` when most rows are distinct (nothing to gain)."""
    n = len(parts[0])
    if n < 64:
        return None
    key = np.zeros(n, np.int64)
    bound = 1
    for p in parts:
        encoded = pc.dictionary_encode(p)
        codes = pc.fill_null(encoded.indices, -1).to_numpy(zero_copy_only=False).astype(np.int64) + 1
        size = len(encoded.dictionary) + 1
        if bound * size >= 1 << 62:  # renumber the combinations so far before they overflow
            _, key = np.unique(key, return_inverse=True)
            bound = int(key.max()) + 1
        key = key * size + codes
        bound *= size
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    if len(first) > n // 2:
        return None
    return pa.array(first), pa.array(inverse.reshape(-1))


def _join_present(parts: list[pa.Array], sep: str) -> pa.Array:
    """Per row, the non-null values joined by ``sep``; null where all are null.

    (pyarrow 25's ``null_handling="skip"`` drops the all-null rows instead, hence by hand: each
    present value gets a leading ``sep``, the first one is cut.)
    """
    led = [pc.fill_null(pc.binary_join_element_wise(sep, p, ""), "") for p in parts]
    joined = pc.binary_join_element_wise(*led, "") if len(led) > 1 else led[0]
    cut = pc.utf8_slice_codeunits(joined, len(sep))
    return pc.if_else(pc.equal(joined, ""), pa.scalar(None, pa.string()), cut)


# ---------------------------------------------------------------- search API


def query_fingerprint(options: Options) -> str:
    """A short stable hash of the query (names the task and the download request state)."""
    q = {"taxon_key": options.taxon_key, "filters": options.filters, "media_type": options.media_type}
    return query_hash(q)


def _search_params(options: Options) -> dict[str, Any]:
    params = dict(options.filters)
    if options.taxon_key is not None:
        params["taxonKey"] = options.taxon_key
    if options.media_type:
        params["mediaType"] = options.media_type
    return params


def search_occurrences(options: Options, client: HttpClient) -> Iterator[dict]:
    """Every occurrence of the query, paging occurrence/search up to the offset cap, via pygbif
    under the shared client's rate, retries and Retry-After, with the configured user agent."""
    import importlib

    from pygbif import occurrences as gbif_occ

    # pygbif copies its base URL into each module at import (and the package attribute
    # ``occurrences.search`` is the function), so patch the module object itself.
    search_module = importlib.import_module("pygbif.occurrences.search")
    search_module.gbif_baseurl = options.api_base_url.rstrip("/") + "/"
    params = _search_params(options)
    url = f"{options.api_base_url.rstrip('/')}/occurrence/search"
    offset = 0
    limit_total = min(options.max_records, OFFSET_CAP)
    while offset < limit_total:
        limit = min(options.page_size, limit_total - offset)

        def page_of(limit=limit, offset=offset):
            return client.call(lambda: _pygbif(options.user_agent, lambda: gbif_occ.search(
                limit=limit, offset=offset, timeout=options.timeout_s, **params)), what=f"GET {url} offset={offset}")

        page = client.json_call(page_of, f"GET {url}")
        results = page_results(page, f"gbif: occurrence/search offset={offset} at {options.api_base_url}")
        yield from results
        offset += len(results)
        if page.get("endOfRecords", True) or not results:
            return
        if offset >= OFFSET_CAP:
            log.warning("gbif: search stopped at GBIF's offset cap (%d); use the download API for more",
                        OFFSET_CAP)


_PYGBIF_LOCK = threading.Lock()


def _pygbif(user_agent: str, request: Callable[[], Any]) -> Any:
    """One pygbif request with the configured user agent (pygbif 0.7 sends its own ``make_ua()``
    headers and refuses a ``headers`` argument, so it is swapped for the call), its refusal of a
    non-JSON answer (``NoResultException``: the content type) and a body that does not parse as
    :class:`sources.http.NotJson`, which the client retries."""
    from pygbif import gbifutils

    with _PYGBIF_LOCK:
        made = gbifutils.make_ua
        gbifutils.make_ua = lambda: {"User-Agent": user_agent}
        try:
            return request()
        except gbifutils.NoResultException as exc:
            raise NotJson(f"{exc}", 200) from exc
        except requests.exceptions.JSONDecodeError as exc:
            raise NotJson(f"the body does not parse: {exc}", 200) from exc
        finally:
            gbifutils.make_ua = made


def api_rows(occ: dict) -> list[dict]:
    """One joined row per media item of an API occurrence (one row without media when it has none)."""
    base = {f"o_{c}": _text(occ.get(c)) for c in OCCURRENCE_COLUMNS}
    base["o__id"] = _text(occ.get("gbifID") or occ.get("key"))
    base["o_class"] = _text(occ.get("class"))
    base["o_issue"] = ";".join(occ.get("issues") or []) or None
    media = occ.get("media") or []
    if not media:
        return [{**base, "m_row": None}]
    rows = []
    for j, m in enumerate(media):
        row = dict(base)
        row.update({f"m_{c}": _text(m.get(c)) for c in MEDIA_COLUMNS})
        row["m_row"] = j
        rows.append(row)
    return rows


def _text(v: Any) -> str | None:
    if v is None:
        return None
    return v if isinstance(v, str) else str(v)


def rows_table(rows: list[dict]) -> pa.Table:
    names = sorted({k for r in rows for k in r})
    return pa.table({k: pa.array([r.get(k) for r in rows], pa.int64() if k == "m_row" else pa.string())
                     for k in names})


# ---------------------------------------------------------------- download API


def _predicate_key(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).upper()


def build_predicate(options: Options) -> dict:
    """The download request predicate for the query (``and`` of equals / in)."""
    preds = []
    params = _search_params(options)
    for key in sorted(params):
        value = params[key]
        pkey = _predicate_key(key)
        if isinstance(value, (list, tuple)):
            preds.append({"type": "in", "key": pkey, "values": [str(v) for v in value]})
        else:
            preds.append({"type": "equals", "key": pkey, "value": str(value)})
    return preds[0] if len(preds) == 1 else {"type": "and", "predicates": preds}


def credentials() -> tuple[str, str, str]:
    """GBIF_USER / GBIF_PWD / GBIF_EMAIL from the environment (the only place they come from);
    a :class:`SourceConfigError` naming those that are missing."""
    user, pwd, email = os.environ.get("GBIF_USER"), os.environ.get("GBIF_PWD"), os.environ.get("GBIF_EMAIL")
    missing = [k for k, v in (("GBIF_USER", user), ("GBIF_PWD", pwd), ("GBIF_EMAIL", email)) if not v]
    if missing:
        raise SourceConfigError(f"gbif download API: set {', '.join(missing)} in the environment")
    return user, pwd, email  # type: ignore[return-value]


def _request_state(options: Options) -> Path:
    """Where the query's download request is recorded (its key), so a rerun polls it again."""
    return Path(options.cache_dir) / f"download-{query_fingerprint(options)}.json"


def request_download(options: Options, client: HttpClient, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> Path:
    """Request (or reuse the recorded request of) a download for the query, poll it, fetch the zip."""
    cache = Path(options.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    state_path = _request_state(options)
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    key = state.get("key")
    if not key:
        user, pwd, email = credentials()
        body = {"creator": user, "notificationAddresses": [email], "sendNotification": False,
                "format": "DWCA", "predicate": build_predicate(options)}
        resp = client.post("occurrence/download/request", json=body, auth=(user, pwd))
        key = resp.text.strip()
        state = {"key": key, "predicate": body["predicate"]}
        state_path.write_text(json.dumps(state, indent=1))
        log.info("gbif: download %s requested", key)
    done = cache / f"{key}.zip"
    if done.exists():
        return done  # fetched by an earlier run
    started = clock()
    while True:
        meta = client.get_json(f"occurrence/download/{key}")
        status = meta.get("status")
        if status == "SUCCEEDED":
            break
        if status in ("FAILED", "KILLED", "CANCELLED", "FILE_ERASED"):
            state_path.unlink(missing_ok=True)  # a new request on the next run
            raise HttpError(f"gbif download {key} ended {status}; GBIF made no archive of it (see "
                            f"https://www.gbif.org/occurrence/download/{key})",
                            advice="run the same command again to request a new download of the query")
        if clock() - started > options.poll_timeout_s:
            raise TimeoutError(f"gbif download {key} still {status} after {options.poll_timeout_s:.0f}s; "
                               f"rerun to keep waiting")
        sleep(options.poll_interval_s)
    link = meta.get("downloadLink") or f"occurrence/download/request/{key}.zip"
    if not link.startswith(options.api_base_url) and "://" in link and "api.gbif.org" in link \
            and "api.gbif.org" not in options.api_base_url:
        link = f"occurrence/download/request/{key}.zip"  # keep tests (and mirrors) on the configured host
    return client.fetch(link, done)


CONNECTOR = GBIFConnector()
