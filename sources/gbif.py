"""GBIF connector: Darwin Core Archive downloads, the occurrence search API and the download API.

A DwC-A's occurrence core is joined with its Multimedia extension (one record per image) by
DuckDB over temporary Parquet, so an archive larger than memory works; the search API (pygbif,
300 per page up to GBIF's offset cap) and a finished download request feed the same adapter.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json
from schemas.rejects import REJECT_SCHEMA, empty_rejects
from sources.base import IngestBatch, SourceOptions
from sources.dwca import DwcaError, open_archive, read_file
from sources.http import USER_AGENT, HttpClient, HttpError
from sources.licenses import normalise_license_column
from sources.photokey import photo_key

log = logging.getLogger(__name__)

SOURCE = "gbif"
STAGE = "ingest"
OFFSET_CAP = 100_000  # GBIF refuses offset + limit beyond this for occurrence/search
MULTIMEDIA_EXTENSION = "http://rs.gbif.org/terms/1.0/Multimedia"
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".tif", ".tiff", ".webp", ".bmp")

OCCURRENCE_COLUMNS = [
    "gbifID", "occurrenceID", "datasetKey", "basisOfRecord", "license", "rights", "rightsHolder",
    "scientificName", "verbatimScientificName", "acceptedScientificName", "taxonRank", "verbatimTaxonRank",
    "kingdom", "phylum", "class", "order", "family", "genus", "species", "taxonKey", "higherClassification",
    "decimalLatitude", "decimalLongitude", "coordinateUncertaintyInMeters", "eventDate", "countryCode",
    "lifeStage", "sex", "references", "catalogNumber", "institutionCode", "recordedBy", "issue",
    "mediaType", "occurrenceStatus",
]
MEDIA_COLUMNS = ["type", "format", "identifier", "references", "title", "creator", "publisher", "license",
                 "rightsHolder", "created"]
_EXTRA_OCC = ["verbatimScientificName", "acceptedScientificName", "catalogNumber", "institutionCode",
              "recordedBy", "issue", "occurrenceStatus"]


class Options(SourceOptions):
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
    max_retries: int = Field(5, ge=0, description="retries of a transient HTTP failure")
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout per request")
    poll_interval_s: float = Field(60.0, gt=0, description="seconds between download status polls")
    poll_timeout_s: float = Field(6 * 3600.0, gt=0, description="give up on a download request after this")
    cache_dir: str = Field("data/cache/gbif", description="where fetched archives and request state live")
    batch_rows: int = Field(100_000, ge=1, description="records per batch")
    duckdb_memory: str = Field("2GB", description="memory limit of the join (spills to disk beyond)")
    keep_unknown_license: bool = Field(False, description="keep records whose licence is unknown")
    user_agent: str = Field(USER_AGENT, description="User-Agent sent to GBIF")


class GBIFConnector:
    """``gbif`` source: tasks are archives, or one search / download task for a query."""

    name = SOURCE
    Options = Options

    def __init__(self, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.sleep, self.clock = sleep, clock

    def tasks(self, input: str | None, options: Options) -> list[str]:
        target = input or options.input
        mode = options.mode if options.mode != "auto" else ("dwca" if target else "search")
        if mode == "dwca":
            if not target:
                raise ValueError("gbif: mode 'dwca' needs an input archive (path or URL)")
            if "://" not in target and Path(target).is_dir() and not (Path(target) / "meta.xml").exists():
                return sorted(str(p) for p in Path(target).glob("*.zip"))
            return [target]
        if options.taxon_key is None and not options.filters:
            raise ValueError("gbif: give an input archive, or a taxon_key / filters for the API")
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

    def client(self, options: Options) -> HttpClient:
        return HttpClient(options.api_base_url, rate=options.rate, max_retries=options.max_retries,
                          timeout_s=options.timeout_s, user_agent=options.user_agent,
                          sleep=self.sleep, clock=self.clock)

    def _fetch(self, url: str, options: Options) -> Path:
        name = hashlib.blake2b(url.encode(), digest_size=8).hexdigest() + ".zip"
        return self.client(options).fetch(url, Path(options.cache_dir) / name)

    def _read_search(self, options: Options) -> Iterator[IngestBatch]:
        rows: list[dict] = []
        for result in search_occurrences(options, self.client(options)):
            rows.extend(api_rows(result))
            if len(rows) >= options.batch_rows:
                yield adapt(rows_table(rows), options)
                rows = []
        if rows:
            yield adapt(rows_table(rows), options)

    def _download(self, options: Options) -> Path:
        return request_download(options, self.client(options), sleep=self.sleep, clock=self.clock)


# ---------------------------------------------------------------- DwC-A


def read_archive(path: Path, options: Options) -> Iterator[IngestBatch]:
    """Records of one GBIF DwC-A: every multimedia row of every occurrence, or a reject for it."""
    try:
        archive = open_archive(path)
    except DwcaError as exc:
        raise DwcaError(f"gbif: {exc}") from exc
    media_spec = archive.extension("Multimedia")
    with tempfile.TemporaryDirectory(prefix="biocorpus-gbif-") as tmp:
        occ_path, media_path = Path(tmp) / "occ.parquet", Path(tmp) / "media.parquet"
        yield from _spool(archive, archive.core, OCCURRENCE_COLUMNS, occ_path, "o_", options)
        if media_spec is not None:
            yield from _spool(archive, media_spec, MEDIA_COLUMNS, media_path, "m_", options)
        yield from _join(occ_path, media_path if media_spec is not None else None, options, tmp)


def _spool(archive, spec, columns, dest: Path, prefix: str, options: Options) -> Iterator[IngestBatch]:
    """Stream one archive file into a Parquet file (prefixed columns + row number); bad rows rejected."""
    writer = None
    row = 0
    try:
        for batch in read_file(archive, spec, columns, batch_rows=options.batch_rows):
            t = batch.table
            t = t.rename_columns([prefix + c for c in t.column_names])
            t = t.append_column(prefix + "row", pa.array(range(row, row + t.num_rows), pa.int64()))
            row += t.num_rows
            if writer is None:
                writer = pq.ParquetWriter(dest, t.schema, compression="zstd")
            writer.write_table(t)
            if batch.bad:
                ids = [make_record_id(SOURCE, f"{spec.location}:{b.row_id or 'unknown'}:{i}")
                       for i, b in enumerate(batch.bad, start=row)]
                yield IngestBatch(records=pa.table({}), rejects=make_rejects(
                    ids, STAGE, [b.reason for b in batch.bad],
                    [f"{b.detail}; gbifID={b.row_id}" for b in batch.bad]))
    finally:
        if writer is not None:
            writer.close()


def _join(occ_path: Path, media_path: Path | None, options: Options, tmp: str) -> Iterator[IngestBatch]:
    import duckdb

    con = duckdb.connect()
    try:
        con.execute(f"SET memory_limit='{options.duckdb_memory}'")
        con.execute("SET enable_progress_bar=false")  # it writes to stdout, which callers may own
        con.execute(f"SET temp_directory='{Path(tmp) / 'spill'}'")
        con.execute("SET preserve_insertion_order=true")
        occ = f"read_parquet('{occ_path}')"
        if media_path is None:
            sql = f"SELECT * FROM {occ} ORDER BY o_row"
        else:
            med = f"read_parquet('{media_path}')"
            sql = (f"SELECT * FROM {occ} o LEFT JOIN {med} m ON o.o__id = m.m__id "
                   f"ORDER BY o.o_row, m.m_row")
        reader = con.sql(sql).to_arrow_reader(options.batch_rows)
        for batch in reader:
            yield adapt(pa.Table.from_batches([batch]), options)
        if media_path is not None:
            orphans = con.sql(
                f"SELECT m__id, m_identifier, m_row FROM read_parquet('{media_path}') m "
                f"ANTI JOIN {occ} o ON o.o__id = m.m__id ORDER BY m_row").to_arrow_table()
            if orphans.num_rows:
                ids = [make_record_id(SOURCE, f"{g}/{u}") for g, u in
                       zip(orphans.column("m__id").to_pylist(), orphans.column("m_identifier").to_pylist(), strict=False)]
                yield IngestBatch(records=pa.table({}), rejects=make_rejects(
                    ids, STAGE, Reason.ORPHAN_MEDIA,
                    [f"multimedia row for gbifID {g} which is not in the core" for g in
                     orphans.column("m__id").to_pylist()]))
    finally:
        con.close()


# ---------------------------------------------------------------- the adapter


def _col(t: pa.Table, name: str) -> pa.Array:
    if name in t.column_names:
        c = t.column(name)
        c = c.combine_chunks() if isinstance(c, pa.ChunkedArray) else c
        return c.cast(pa.string())
    return pa.nulls(t.num_rows, pa.string())


def _blank_to_null(a: pa.Array) -> pa.Array:
    a = pc.utf8_trim_whitespace(a)
    return pc.if_else(pc.equal(a, ""), pa.scalar(None, pa.string()), a)


def _floats(a: pa.Array) -> tuple[pa.Array, pa.Array]:
    """Parse strings to float64; returns (values, unparseable mask) — blank is null, not bad."""
    a = _blank_to_null(a)
    try:
        return pc.cast(a, pa.float64()), pa.array([False] * len(a))
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


def adapt(t: pa.Table, options: Options) -> IngestBatch:
    """Joined occurrence (``o_*``) + media (``m_*``) rows to records and rejects.

    Reasons, first that applies: material citation, no image, not a still image, bad
    coordinates, unknown licence (unless kept).
    """
    n = t.num_rows
    if n == 0:
        return IngestBatch(records=pa.table({}), rejects=empty_rejects())
    g = lambda name: _blank_to_null(_col(t, name))  # noqa: E731
    gbif_id = g("o__id")
    ident = g("m_identifier")
    media_ids = [f"{o}/{u}" if u is not None else None for o, u in zip(gbif_id.to_pylist(), ident.to_pylist(), strict=False)]
    record_ids = [make_record_id(SOURCE, m if m is not None else f"occurrence/{o}")
                  for m, o in zip(media_ids, gbif_id.to_pylist(), strict=False)]

    basis = g("o_basisOfRecord")
    mtype, mformat = g("m_type"), g("m_format")
    lat, lat_bad = _floats(_col(t, "o_decimalLatitude"))
    lon, lon_bad = _floats(_col(t, "o_decimalLongitude"))
    unc, _ = _floats(_col(t, "o_coordinateUncertaintyInMeters"))
    license_code, license_raw = _pick_license(g("m_license"), g("o_license"), g("o_rights"))

    is_image_type = pc.fill_null(pc.is_in(pc.utf8_lower(mtype), pa.array(["stillimage", "image"])), False)
    looks_image = pc.fill_null(pc.or_(
        pc.starts_with(pc.utf8_lower(mformat), "image/"),
        pc.match_substring_regex(pc.utf8_lower(ident), r"\.(jpe?g|png|gif|tiff?|webp|bmp)(\?|$)")), False)
    still = pc.or_(is_image_type, pc.and_(pc.is_null(mtype), looks_image))
    out_of_range = pc.fill_null(pc.or_(
        pc.or_(pc.less(lat, -90.0), pc.greater(lat, 90.0)),
        pc.or_(pc.less(lon, -180.0), pc.greater(lon, 180.0))), False)
    one_sided = pc.xor(pc.is_null(lat), pc.is_null(lon))
    bad_coords = pc.or_(pc.or_(pc.or_(lat_bad, lon_bad), out_of_range), pc.and_(one_sided, pc.invert(pc.or_(lat_bad, lon_bad))))

    reasons: list[str | None] = [None] * n
    details: list[str | None] = [None] * n

    def mark(mask: pa.Array, reason: str, detail: Callable[[int], str]) -> None:
        for i in pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist():
            if reasons[i] is None:
                reasons[i] = reason
                details[i] = detail(i)

    type_l = mtype.to_pylist()
    media_row = t.column("m_row").to_pylist() if "m_row" in t.column_names else [None] * n
    mark(pc.equal(basis, "MATERIAL_CITATION"), Reason.MATERIAL_CITATION, lambda i: "basisOfRecord MATERIAL_CITATION")
    mark(pc.is_null(ident), Reason.NO_IMAGE,
         lambda i: "occurrence has no media" if media_row[i] is None else "media row has no identifier URL")
    mark(pc.invert(still), Reason.NOT_STILL_IMAGE,
         lambda i: f"media type {type_l[i]!r}, format {mformat[i].as_py()!r}")
    lat_l, lon_l = _col(t, "o_decimalLatitude").to_pylist(), _col(t, "o_decimalLongitude").to_pylist()
    mark(bad_coords, Reason.BAD_COORDINATES, lambda i: f"decimalLatitude={lat_l[i]!r} decimalLongitude={lon_l[i]!r}")
    if not options.keep_unknown_license:
        lic_raw_l = license_raw.to_pylist()
        mark(pc.equal(license_code, "unknown"), Reason.UNKNOWN_LICENSE,
             lambda i: f"licence {lic_raw_l[i]!r} not recognised" if lic_raw_l[i] else "no licence given")

    keep = [i for i in range(n) if reasons[i] is None]
    rej = [i for i in range(n) if reasons[i] is not None]
    rejects = make_rejects([record_ids[i] for i in rej], STAGE, [reasons[i] for i in rej],
                           [details[i] for i in rej]) if rej else REJECT_SCHEMA.empty_table()
    if not keep:
        return IngestBatch(records=pa.table({}), rejects=rejects)

    idx = pa.array(keep, pa.int64())
    take = lambda a: pc.take(a, idx)  # noqa: E731
    ident_k = take(ident).to_pylist()
    rights = pc.coalesce(g("m_rightsHolder"), g("m_creator"), g("o_rightsHolder"), g("o_institutionCode"))
    extra_cols = {c: take(g(f"o_{c}")).to_pylist() for c in _EXTRA_OCC}
    extra_cols["media_title"] = take(g("m_title")).to_pylist()
    extra_cols["media_publisher"] = take(g("m_publisher")).to_pylist()
    extra_cols["media_created"] = take(g("m_created")).to_pylist()
    extras = [extra_json({k: v[j] for k, v in extra_cols.items()}) for j in range(len(keep))]
    name = take(g("o_scientificName"))
    rank = pc.utf8_lower(take(pc.coalesce(g("o_taxonRank"), g("o_verbatimTaxonRank"))))
    coords_null = lambda a: pc.if_else(take(bad_coords), pa.scalar(None, pa.float64()), take(a))  # noqa: E731
    records = pa.table({
        "record_id": [record_ids[i] for i in keep],
        "source": pa.array([SOURCE] * len(keep), pa.string()),
        "source_dataset": take(g("o_datasetKey")),
        "occurrence_id": take(pc.coalesce(g("o_occurrenceID"), gbif_id)),
        "media_id": [media_ids[i] for i in keep],
        "photo_key": [photo_key(u) for u in ident_k],
        "identifier": pa.array(ident_k, pa.string()),
        "format": take(mformat),
        "license": take(license_code),
        "license_raw": take(license_raw),
        "rights_holder": take(rights),
        "creator": take(g("m_creator")),
        "references": take(pc.coalesce(g("m_references"), g("o_references"))),
        "verbatim_name": name,
        "verbatim_rank": rank,
        "verbatim_kingdom": take(g("o_kingdom")),
        "verbatim_phylum": take(g("o_phylum")),
        "verbatim_class": take(g("o_class")),
        "verbatim_order": take(g("o_order")),
        "verbatim_family": take(g("o_family")),
        "verbatim_genus": take(g("o_genus")),
        "verbatim_lineage": take(pc.coalesce(g("o_higherClassification"), _lineage(t))),
        "source_taxon_id": take(g("o_taxonKey")),
        "decimal_latitude": coords_null(lat),
        "decimal_longitude": coords_null(lon),
        "coordinate_uncertainty_m": take(unc),
        "event_date": take(g("o_eventDate")),
        "country_code": take(g("o_countryCode")),
        "basis_of_record": take(basis),
        "life_stage": take(g("o_lifeStage")),
        "sex": take(g("o_sex")),
        "extra": pa.array(extras, pa.string()),
    })
    return IngestBatch(records=records, rejects=rejects)


def _lineage(t: pa.Table) -> pa.Array:
    """``kingdom|phylum|...|genus`` from the interpreted ranks, for archives without higherClassification."""
    parts = [_blank_to_null(_col(t, f"o_{r}")).to_pylist() for r in ("kingdom", "phylum", "class", "order",
                                                                     "family", "genus")]
    out = []
    for row in zip(*parts, strict=False):
        names = [x for x in row if x]
        out.append("|".join(names) if names else None)
    return pa.array(out, pa.string())


# ---------------------------------------------------------------- search API


def query_fingerprint(options: Options) -> str:
    """A short stable hash of the query (names the task and the download request state)."""
    q = {"taxon_key": options.taxon_key, "filters": options.filters, "media_type": options.media_type}
    return hashlib.blake2b(json.dumps(q, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _search_params(options: Options) -> dict[str, Any]:
    params = dict(options.filters)
    if options.taxon_key is not None:
        params["taxonKey"] = options.taxon_key
    if options.media_type:
        params["mediaType"] = options.media_type
    return params


def search_occurrences(options: Options, client: HttpClient) -> Iterator[dict]:
    """Every occurrence of the query, paging occurrence/search up to the offset cap, via pygbif."""
    import importlib

    from pygbif import occurrences as gbif_occ

    # pygbif copies its base URL into each module at import (and the package attribute
    # ``occurrences.search`` is the function), so patch the module object itself.
    search_module = importlib.import_module("pygbif.occurrences.search")
    search_module.gbif_baseurl = options.api_base_url.rstrip("/") + "/"
    params = _search_params(options)
    offset = 0
    limit_total = min(options.max_records, OFFSET_CAP)
    while offset < limit_total:
        limit = min(options.page_size, limit_total - offset)
        page = client.call(lambda limit=limit, offset=offset: gbif_occ.search(limit=limit, offset=offset, timeout=options.timeout_s, **params),
                           what=f"occurrence/search offset={offset}")
        results = page.get("results") or []
        yield from results
        offset += len(results)
        if page.get("endOfRecords", True) or not results:
            return
        if offset >= OFFSET_CAP:
            log.warning("gbif: search stopped at GBIF's offset cap (%d); use the download API for more",
                        OFFSET_CAP)


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
    """GBIF_USER / GBIF_PWD / GBIF_EMAIL from the environment (the only place they come from)."""
    user, pwd, email = os.environ.get("GBIF_USER"), os.environ.get("GBIF_PWD"), os.environ.get("GBIF_EMAIL")
    missing = [k for k, v in (("GBIF_USER", user), ("GBIF_PWD", pwd), ("GBIF_EMAIL", email)) if not v]
    if missing:
        raise RuntimeError(f"gbif download API: set {', '.join(missing)} in the environment")
    return user, pwd, email  # type: ignore[return-value]


def request_download(options: Options, client: HttpClient, sleep: Callable[[float], None] = time.sleep,
                     clock: Callable[[], float] = time.monotonic) -> Path:
    """Request (or reuse the recorded request of) a download for the query, poll it, fetch the zip."""
    cache = Path(options.cache_dir)
    cache.mkdir(parents=True, exist_ok=True)
    state_path = cache / f"download-{query_fingerprint(options)}.json"
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
            raise HttpError(f"gbif download {key} ended {status}")
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
