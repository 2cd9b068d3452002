"""iNaturalist connector: the open-data dump (photos/observations/taxa/observers) and API v1 pulls.

The dump's four tab-separated, unquoted files (plain or gzip, local or fetched from a URL) are
joined by DuckDB into one record per photo, with the taxon's ancestry resolved to names from the
same taxa file. The API v1 ``/observations`` endpoint is paged by an id cursor at 1 request/s; a
run pulls at most ``max_pages`` pages after the cursor its task names, and each batch carries the
cursor after it, which ingest commits with the run's records (a pull of the dataset of its own):
a rerun continues after the last committed pull, and a killed one is pulled again whole.
"""

from __future__ import annotations

import hashlib
import logging
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json, from_columns, from_rows, record_id_column, row_problem
from schemas.rejects import REJECT_SCHEMA, empty_rejects
from sources.base import SHAPE_ERRORS, IngestBatch, item_key, query_hash, shape_detail
from sources.columns import distinct, per_distinct
from sources.dates import iso_date
from sources.http import ApiConnector, ApiOptions, HttpClient, HttpError, page_results
from sources.licenses import (
    ALL_RIGHTS_RESERVED,
    normalise_license,
    normalise_license_column,
    unknown_license_detail,
)
from sources.photokey import photo_key, photo_keys

log = logging.getLogger(__name__)

SOURCE = "inaturalist"
STAGE = "ingest"
DUMP_FILES = ("photos", "observations", "taxa", "observers")
# the columns the join reads from each dump file (newer dumps add others, which are ignored)
DUMP_COLUMNS = {
    "photos": ("photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension", "license", "width",
               "height", "position"),
    "observations": ("observation_uuid", "observer_id", "latitude", "longitude", "positional_accuracy",
                     "taxon_id", "quality_grade", "observed_on"),
    "taxa": ("taxon_id", "ancestry", "rank", "name"),
    "observers": ("observer_id", "login", "name"),
}
_SUFFIXES = (".csv", ".csv.gz", ".tsv", ".tsv.gz", ".txt", ".txt.gz")
# longest side of each size iNaturalist serves (the original is capped at 2048 px)
SIZE_PX = {"original": 2048, "large": 1024, "medium": 500, "small": 240}
RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus")


class Options(ApiOptions):
    """``[sources.inaturalist]``: an open-data dump (folder or URL prefix), or an API v1 query."""

    input: str | None = Field(None, description="folder or URL prefix holding photos/observations/taxa/observers")
    mode: Literal["auto", "dump", "api"] = Field("auto", description="auto: dump when an input is given")
    photo_size: Literal["original", "large", "medium", "small"] = Field("medium", description="image size URL")
    photo_base_url: str = Field("https://inaturalist-open-data.s3.amazonaws.com/photos/",
                                description="prefix of open-data photo URLs")
    research_only: bool = Field(True, description="keep research-grade observations only")
    keep_unknown_license: bool = Field(False, description="keep records whose licence is unknown")
    batch_rows: int = Field(100_000, ge=1, description="records per batch")
    duckdb_memory: str = Field("2GB", description="memory limit of the join (spills beyond)")
    cache_dir: str = Field("data/cache/inaturalist", description="fetched dump files and API cursor state")
    api_base_url: str = Field("https://api.inaturalist.org/v1/", description="API v1 root (tests: loopback)")
    api_filters: dict[str, Any] = Field(default_factory=dict,
                                        description="extra /observations parameters, e.g. {taxon_id = 47158}")
    per_page: int = Field(200, ge=1, le=200, description="observations per API page (maximum 200)")
    max_pages: int = Field(50, ge=1, description="API pages per run; a rerun continues after the last "
                           "observation it committed, adding the next pages to the dataset")

    def query_fingerprint(self) -> str | None:
        return api_fingerprint(self) if _mode(None, self) == "api" else None


class INaturalistConnector(ApiConnector):
    """``inaturalist`` source: one task per dump, or one API task per query."""

    name = SOURCE
    Options = Options

    def continues(self, input: str | None, options: Options) -> bool:
        """An API pull continues: each run pulls the pages after the last committed one."""
        return _mode(input, options) == "api"

    def tasks(self, input: str | None, options: Options, after: int | None = None) -> list[str]:
        """The dump, or one API task: the pages after observation id ``after`` (the cursor
        committed with the last pull; None: from the first observation)."""
        target = input or options.input
        if _mode(input, options) == "dump":
            if not target:
                raise ValueError("inaturalist: mode 'dump' needs an input folder or URL prefix")
            return [target]
        return [f"api:{api_fingerprint(options)}:after={int(after or 0)}"]

    def read(self, task: str, options: Options) -> Iterator[IngestBatch]:
        if task.startswith("api:"):
            _, _, after = task.rpartition(":after=")
            yield from read_api(options, self.client(options), int(after) if after.isdigit() else 0)
        else:
            files = locate_dump(task, options, self.client(options))
            yield from read_dump(files, options)


def _mode(input: str | None, options: Options) -> str:
    return options.mode if options.mode != "auto" else ("dump" if input or options.input else "api")


# ---------------------------------------------------------------- open-data dump


def locate_dump(where: str, options: Options, client: HttpClient) -> dict[str, Path]:
    """Paths of the four dump files under a folder, or fetched (resumably) from a URL prefix."""
    files: dict[str, Path] = {}
    if "://" in where:
        prefix = where.rstrip("/") + "/"
        cache = Path(options.cache_dir) / hashlib.blake2b(prefix.encode(), digest_size=6).hexdigest()
        for name in DUMP_FILES:
            files[name] = client.fetch(prefix + f"{name}.csv.gz", cache / f"{name}.csv.gz")
        return files
    root = Path(where)
    if root.is_file() and (root.name.lower().endswith((".tar", ".tar.gz", ".tgz")) or tarfile.is_tarfile(root)):
        # the dump's files are read by DuckDB, which cannot read inside a tar archive
        raise ValueError(f"inaturalist: {root} is a tar archive; extract it first (tar -xzf {root.name}) and "
                         "give the folder it makes, the one holding photos.csv, observations.csv, taxa.csv "
                         "and observers.csv")
    if not root.is_dir():
        raise FileNotFoundError(f"inaturalist: {root} is not a folder with the open-data files")
    for name in DUMP_FILES:
        found = [root / f"{name}{s}" for s in _SUFFIXES if (root / f"{name}{s}").exists()]
        if not found:
            raise FileNotFoundError(f"inaturalist: no {name}.csv[.gz] in {root}")
        files[name] = found[0]
    return files


def _read_csv(path: Path, table: str) -> str:
    # The dump is tab-separated with no quoting at all: a '"' is a literal character.
    literal = str(path).replace("'", "''")  # a quote in a folder name must not end the SQL string
    return (f"CREATE TABLE {table} AS SELECT * FROM read_csv('{literal}', delim='\t', quote='', escape='', "
            f"header=true, all_varchar=true, store_rejects=true, rejects_table='rej_{table}', "
            f"rejects_scan='scan_{table}')")


_JOIN_SQL = """
WITH ids AS (
    SELECT taxon_id, string_split(coalesce(nullif(ancestry, ''), '') || '/' || taxon_id, '/') AS chain
    FROM taxa
), steps AS (
    SELECT taxon_id, unnest(chain) AS aid, generate_subscripts(chain, 1) AS pos FROM ids
), lineage AS (
    SELECT s.taxon_id,
           string_agg(a.name, '|' ORDER BY s.pos) FILTER (WHERE a.rank <> 'stateofmatter') AS lineage,
           {rank_cols}
    FROM steps s JOIN taxa a ON a.taxon_id = s.aid
    GROUP BY s.taxon_id
)
SELECT p.photo_id, p.photo_uuid, p.extension, p.license, p.width, p.height, p.position,
       p.observation_uuid, o.observation_uuid IS NOT NULL AS has_observation,
       o.latitude, o.longitude, o.positional_accuracy, o.taxon_id, o.quality_grade, o.observed_on,
       coalesce(o.observer_id, p.observer_id) AS observer_id, u.login,
       CASE WHEN u.name IN ('', 'None') THEN NULL ELSE u.name END AS observer_name,
       t.name AS taxon_name, t.rank AS taxon_rank, t.ancestry, l.* EXCLUDE (taxon_id),
       b.problem AS observation_problem
FROM photos p
LEFT JOIN observations o ON o.observation_uuid = p.observation_uuid
LEFT JOIN bad_observations b ON b.observation_uuid = p.observation_uuid
LEFT JOIN observers u ON u.observer_id = coalesce(o.observer_id, p.observer_id)
LEFT JOIN taxa t ON t.taxon_id = o.taxon_id
LEFT JOIN lineage l ON l.taxon_id = o.taxon_id
ORDER BY TRY_CAST(p.photo_id AS BIGINT), p.photo_id
"""


def read_dump(files: dict[str, Path], options: Options) -> Iterator[IngestBatch]:
    """One record per photo of the dump (or a reject saying why not)."""
    for item in read_joined(files, options):
        yield item if isinstance(item, IngestBatch) else adapt_dump(item, options)


def read_joined(files: dict[str, Path], options: Options) -> Iterator[IngestBatch | pa.Table]:
    """The rows DuckDB could not read (as an IngestBatch), then the joined rows in batches."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="biocorpus-inat-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "dump.duckdb"))
        try:
            con.execute(f"SET memory_limit='{options.duckdb_memory}'")
            con.execute("SET enable_progress_bar=false")  # it writes to stdout, which callers may own
            con.execute("SET preserve_insertion_order=true")
            for name in DUMP_FILES:
                _load(con, files[name], name)
            _malformed_observations(con)
            yield from _file_rejects(con)
            rank_cols = ",\n           ".join(
                f"max(a.name) FILTER (WHERE a.rank = '{r}') AS rank_{r}" for r in RANK_COLUMNS)
            reader = con.sql(_JOIN_SQL.format(rank_cols=rank_cols)).to_arrow_reader(options.batch_rows)
            for batch in reader:
                yield pa.Table.from_batches([batch])
        finally:
            con.close()


def _load(con, path: Path, name: str) -> None:
    """Load one dump file; a file that cannot be one (empty, not tab-separated, a header without
    the columns the join needs) stops with what is wrong, as no row of it can be read."""
    import duckdb

    hint = (f"the iNaturalist open-data {name} file is tab-separated with a header line "
            f"({', '.join(DUMP_COLUMNS[name])}); check that {path} is that file, whole")
    try:
        con.execute(_read_csv(path, name))
    except duckdb.Error as exc:
        raise ValueError(f"inaturalist: {path} cannot be read ({str(exc).splitlines()[0]}); {hint}") from exc
    found = [r[0] for r in con.execute(f"DESCRIBE {name}").fetchall()]
    missing = [c for c in DUMP_COLUMNS[name] if c not in found]
    if missing:
        raise ValueError(f"inaturalist: {path} lacks the column(s) {', '.join(missing)} "
                         f"(its header gives {', '.join(found[:12])}); {hint}")


def _malformed_observations(con) -> None:
    """``bad_observations``: the uuid of each observations row DuckDB could not read, with where
    and why, so that its photos' ``orphan_media`` rejects say the row was there but malformed
    (one row per uuid: the join must not repeat photos)."""
    columns = [r[0] for r in con.execute("DESCRIBE observations").fetchall()]
    uuid = f"split_part(csv_line, '\t', {columns.index('observation_uuid') + 1})"
    con.execute(f"CREATE TABLE bad_observations AS SELECT {uuid} AS observation_uuid, "
                f"arg_min('line ' || line || ': ' || error_message, line) AS problem FROM rej_observations "
                f"WHERE csv_line IS NOT NULL AND {uuid} <> '' GROUP BY 1")


def _file_rejects(con) -> Iterator[IngestBatch]:
    """Rows DuckDB could not read: bad photo rows are rejects; bad rows of other files are counted."""
    skipped: dict[str, int] = {}
    ids, reasons, details = [], [], []
    for name in DUMP_FILES:
        rows = con.sql(f"SELECT DISTINCT ON (line) line, error_type, csv_line, error_message "
                       f"FROM rej_{name} ORDER BY line").fetchall()
        for line, err, text, msg in rows:
            reason = Reason.UNDECODABLE_TEXT if str(err) == "INVALID ENCODING" else Reason.MALFORMED_ROW
            if name == "photos":
                parts = (text or "").split("\t")
                key = parts[1] if len(parts) > 1 and parts[1] else f"line-{line}"
                ids.append(make_record_id(SOURCE, key))
                reasons.append(reason)
                details.append(f"photos line {line}: {msg}")
            else:
                # not a record itself; the photos that needed it are rejected as orphans
                skipped[f"{name}_{reason}"] = skipped.get(f"{name}_{reason}", 0) + 1
    if ids or skipped:
        yield IngestBatch(records=pa.table({}), rejects=make_rejects(ids, STAGE, reasons, details)
                          if ids else empty_rejects(), skipped=skipped)


def _scaled(w: int | None, h: int | None, size: str) -> tuple[int | None, int | None]:
    if w is None or h is None or w <= 0 or h <= 0:
        return None, None
    scale = min(1.0, SIZE_PX[size] / max(w, h))
    return round(w * scale), round(h * scale)


def _int(v: str | None) -> int | None:
    try:
        return int(v) if v not in (None, "") else None
    except ValueError:
        return None


def _float(v: Any) -> tuple[float | None, bool]:
    """(value, bad): blank is (None, False), unparseable is (None, True)."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return None, False
    try:
        return float(v), False
    except (TypeError, ValueError):
        return None, True


def _coords(lat_raw: Any, lon_raw: Any) -> tuple[float | None, float | None, str | None]:
    """Validated coordinates, or a reason detail when they are unusable."""
    lat, bad_lat = _float(lat_raw)
    lon, bad_lon = _float(lon_raw)
    if bad_lat or bad_lon or (lat is None) != (lon is None) or \
            (lat is not None and not -90 <= lat <= 90) or (lon is not None and not -180 <= lon <= 180):
        return None, None, f"latitude={lat_raw!r} longitude={lon_raw!r}"
    return lat, lon, None


def adapt_dump(t: pa.Table, options: Options) -> IngestBatch:
    """Joined dump rows to records, column-wise: reasons are a photo without its id (malformed), orphan,
    bad coordinates, grade, unknown licence.

    The first reason that applies wins, in that order; rejects keep the rows' order. Text that
    needs Python's own rules (``repr`` in details, ``int``/``float`` of anything but plain ASCII
    numbers, ``str.lower`` of extensions) is computed once per distinct value.
    """
    n = t.num_rows
    if n == 0:
        return IngestBatch(records=pa.table({}), rejects=REJECT_SCHEMA.empty_table())
    col = {name: _text(t.column(name)) if name != "has_observation" else _flat(t.column(name))
           for name in t.column_names}
    codes = normalise_license_column(col["license"])
    # a photo without its id has no URL and no id of its own: it is keyed by its uuid and rejected
    no_id = ~_mask(pc.fill_null(pc.not_equal(col["photo_id"], ""), False))
    photo_text = pc.fill_null(col["photo_id"], "None")
    keys = pc.if_else(pa.array(no_id), pc.binary_join_element_wise(
        "photo-uuid/", pc.fill_null(col["photo_uuid"], "None"), ""), photo_text) if no_id.any() else photo_text
    rids = record_id_column(SOURCE, keys)
    lat, lat_ok, lat_bad = _floats(col["latitude"])
    lon, lon_ok, lon_bad = _floats(col["longitude"])
    with np.errstate(invalid="ignore"):
        bad_coords = lat_bad | lon_bad | (lat_ok != lon_ok) | (lat_ok & ~((lat >= -90) & (lat <= 90))) | \
            (lon_ok & ~((lon >= -180) & (lon <= 180)))
    orphan = ~_mask(pc.fill_null(col["has_observation"], False))
    grade = col["quality_grade"]
    not_research = ~_mask(pc.fill_null(pc.equal(grade, "research"), False)) if options.research_only \
        else np.zeros(n, bool)
    unknown = _mask(pc.equal(codes, "unknown")) if not options.keep_unknown_license else np.zeros(n, bool)
    # the first reason that applies, as in the order of the tests
    reason = np.select([no_id, orphan, bad_coords, not_research, unknown], [5, 1, 2, 3, 4], 0).astype(np.int8)
    rejects = _dump_rejects(reason, rids, col, codes)
    keep = np.flatnonzero(reason == 0)
    if not len(keep):
        return IngestBatch(records=pa.table({}), rejects=rejects)
    idx = pa.array(keep)
    k = {name: pc.take(a, idx) for name, a in col.items()}
    ext = pc.fill_null(pc.if_else(pc.equal(k["extension"], ""), pa.scalar(None, pa.string()), k["extension"]),
                       "jpg")
    base = f"{options.photo_base_url.rstrip('/')}/"
    url = pc.binary_join_element_wise(base, pc.take(photo_text, idx), f"/{options.photo_size}.", ext, "")
    w, h = _scaled_columns(k["width"], k["height"], options.photo_size)
    name = k["observer_name"]
    holder = pc.if_else(pc.fill_null(pc.not_equal(name, ""), False), name, k["login"])
    unc, unc_ok, _ = _floats(k["positional_accuracy"])
    with np.errstate(invalid="ignore"):
        unc_ok &= unc >= 0
    m = len(keep)
    # a date that is none (2011-13-45, 06/02/2011) is no event_date: its text stays in extra
    k["event_date"] = per_distinct(iso_date, k["observed_on"])
    k["bad_observed_on"] = pc.if_else(pc.is_null(k["event_date"]), k["observed_on"], pa.scalar(None, pa.string()))
    values = {
        "record_id": pc.take(rids, idx), "source": pa.repeat(SOURCE, m),
        "source_dataset": pa.repeat("inaturalist-open-data", m),
        "occurrence_id": k["observation_uuid"], "media_id": k["photo_id"], "photo_key": _photo_keys(url, k["photo_id"], base, options.photo_size),
        "identifier": url, "format": per_distinct(_format_of, ext),
        "license": pc.take(codes, idx), "license_raw": k["license"], "rights_holder": holder, "creator": holder,
        "references": pc.binary_join_element_wise("https://www.inaturalist.org/observations/",
                                                  pc.fill_null(k["observation_uuid"], "None"), ""),
        "verbatim_name": k["taxon_name"], "verbatim_rank": k["taxon_rank"],
        **{f"verbatim_{r}": k[f"rank_{r}"] for r in RANK_COLUMNS},
        "verbatim_lineage": k["lineage"], "source_taxon_id": k["taxon_id"],
        "decimal_latitude": _float_array(lat[keep], lat_ok[keep]),
        "decimal_longitude": _float_array(lon[keep], lon_ok[keep]),
        "coordinate_uncertainty_m": _float_array(unc, unc_ok),
        "event_date": k["event_date"], "quality_grade": k["quality_grade"],
        "width": w, "height": h,
        "extra": _dump_extras(k),
    }
    return IngestBatch(records=_records_of_columns(values, m), rejects=rejects)


def _photo_keys(url: pa.Array, photo_id: pa.Array, base: str, size: str) -> pa.Array:
    """:func:`photo_key` of every URL ``base + photo_id + "/" + size + "." + ext``.

    When the base is one :func:`photo_key` reads the photo id after (probed with two ids: the
    match of its iNaturalist pattern then ends at the base, whatever the digits), the key of a
    URL whose photo id is ASCII digits is ``inat-photo-<the id as an integer>``: no regex per
    row. Other URLs (another base, an id that is not digits) go through ``photo_keys``.
    """
    if not all(photo_key(f"{base}{p}/{size}.jpg") == f"inat-photo-{p}" for p in ("1", "20")):
        return photo_keys(url)
    digits = pc.fill_null(pc.match_substring_regex(photo_id, r"^[0-9]+$"), False)
    trimmed = pc.utf8_ltrim(photo_id, "0")
    keys = pc.binary_join_element_wise("inat-photo-", pc.if_else(pc.equal(trimmed, ""), "0", trimmed), "")
    rest = np.flatnonzero(~_mask(digits))
    if not len(rest):
        return keys
    where = np.full(len(url), -1, np.int64)
    where[rest] = np.arange(len(rest))
    others = pc.take(photo_keys(pc.take(url, pa.array(rest))), pa.array(where, mask=where < 0))
    return pc.if_else(digits, keys, others)


_REASONS = (None, Reason.ORPHAN_MEDIA, Reason.BAD_COORDINATES, Reason.NOT_RESEARCH_GRADE, Reason.UNKNOWN_LICENSE,
            Reason.MALFORMED_ROW)


def _dump_rejects(reason: np.ndarray, rids: pa.Array, col: dict[str, pa.Array], codes: pa.Array) -> pa.Table:
    """Reject rows in the batch's order; each detail computed on its own reason's rows only."""
    rejected = np.flatnonzero(reason)
    if not len(rejected):
        return REJECT_SCHEMA.empty_table()
    of = reason[rejected]
    parts, where = [], []
    for code in np.unique(of):
        at = np.flatnonzero(of == code)
        rows = pa.array(rejected[at])
        if code == 1:
            uuid = pc.fill_null(pc.take(col["observation_uuid"], rows), "None")
            detail = pc.binary_join_element_wise("observation ", uuid, " not in the dump", "")
            if "observation_problem" in col:  # its row was there, but DuckDB could not read it
                problem = pc.take(col["observation_problem"], rows)
                detail = pc.if_else(pc.is_valid(problem), pc.binary_join_element_wise(
                    "observation ", uuid, ": its row in observations is malformed (", problem, ")", ""), detail)
        elif code == 2:
            detail = per_distinct(lambda a, b: f"latitude={a!r} longitude={b!r}",
                                   pc.take(col["latitude"], rows), pc.take(col["longitude"], rows))
        elif code == 3:
            detail = per_distinct(lambda g: f"quality_grade {g!r}", pc.take(col["quality_grade"], rows))
        elif code == 4:
            detail = per_distinct(unknown_license_detail, pc.take(col["license"], rows))
        else:
            detail = pc.binary_join_element_wise(
                "photo ", pc.fill_null(pc.take(col["photo_uuid"], rows), "None"), " has no photo_id", "")
        parts.append(detail)
        where.append(at)
    details = pc.take(pa.concat_arrays(parts), pa.array(np.argsort(np.concatenate(where), kind="stable")))
    names = pa.array([str(r) if r else "" for r in _REASONS], pa.string())
    return pa.Table.from_arrays(
        [pc.take(rids, pa.array(rejected)), pa.repeat(STAGE, len(rejected)), pc.take(names, pa.array(of)), details],
        schema=REJECT_SCHEMA)


def _records_of_columns(values: dict[str, pa.Array], n: int) -> pa.Table:
    """The table ``_records`` builds from the same values as rows: every record column, then those
    without any value dropped."""
    table = from_columns(values, n)
    return table.select([c.name for c, col in zip(table.schema, table.columns, strict=True) if col.null_count < n])


# ---------------------------------------------------------------- column helpers


def _flat(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    return a.combine_chunks() if isinstance(a, pa.ChunkedArray) else a


def _text(a: pa.Array | pa.ChunkedArray) -> pa.Array:
    a = _flat(a)
    return a if a.type == pa.string() else a.cast(pa.string())


def _mask(a: pa.Array) -> np.ndarray:
    """A non-null boolean array as numpy booleans."""
    return np.asarray(a.to_numpy(zero_copy_only=False), bool)


def _float_array(values: np.ndarray, ok: np.ndarray) -> pa.Array:
    return pa.array(values, pa.float64(), mask=~ok)


def _format_of(ext: str) -> str:
    return f"image/{'jpeg' if ext.lower() in ('jpg', 'jpeg') else ext.lower()}"


# plain ASCII decimals: arrow parses these exactly as float() does (correctly rounded); anything
# else (blank, spaces, '1_0', 'nan', other scripts' digits) goes through _float once per value
_PLAIN_FLOAT = r"^[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
# plain ASCII integers small enough to be exact as float64 (so _scaled's arithmetic is numpy's)
_PLAIN_INT = r"^-?[0-9]{1,15}$"


def _floats(a: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_float` of every value: (values, has a value, unparseable) as numpy arrays."""
    n = len(a)
    plain = _mask(pc.fill_null(pc.match_substring_regex(a, _PLAIN_FLOAT), False))
    values = np.full(n, np.nan)
    ok = plain.copy()
    bad = np.zeros(n, bool)
    if plain.any():
        parsed = pc.cast(pc.if_else(pa.array(plain), a, pa.scalar(None, pa.string())), pa.float64())
        values[plain] = parsed.filter(pa.array(plain)).to_numpy()
    rest = np.flatnonzero(~plain & _mask(pc.is_valid(a)))
    if len(rest):
        uniques, inverse = distinct(pc.take(a, pa.array(rest)))
        got = [_float(u[0]) for u in uniques]
        v = np.array([np.nan if x is None else x for x, _ in got], float)[inverse]
        has = np.array([x is not None for x, _ in got], bool)[inverse]
        values[rest] = v
        ok[rest] = has
        bad[rest] = np.array([b for _, b in got], bool)[inverse]
    return values, ok, bad


def _ints(a: pa.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """:func:`_int` of the plain values: (values, has a value, needs Python) as numpy arrays."""
    plain = _mask(pc.fill_null(pc.match_substring_regex(a, _PLAIN_INT), False))
    values = np.zeros(len(a), np.int64)
    if plain.any():
        parsed = pc.cast(pc.if_else(pa.array(plain), a, pa.scalar(None, pa.string())), pa.int64())
        values[plain] = parsed.filter(pa.array(plain)).to_numpy()
    return values, plain, ~plain & _mask(pc.is_valid(a))


def _scaled_columns(width: pa.Array, height: pa.Array, size: str) -> tuple[pa.Array, pa.Array]:
    """:func:`_scaled` of every row; rows with a value that is not a plain integer go through it."""
    w, w_ok, w_odd = _ints(width)
    h, h_ok, h_odd = _ints(height)
    ok = w_ok & h_ok & (w > 0) & (h > 0)
    wf, hf = w.astype(np.float64), h.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.minimum(1.0, SIZE_PX[size] / np.maximum(wf, hf))
        sw = np.where(ok, np.rint(wf * scale), 0).astype(np.int64)  # round() is half-even, as rint
        sh = np.where(ok, np.rint(hf * scale), 0).astype(np.int64)
    odd = np.flatnonzero(w_odd | h_odd)
    if len(odd):
        ws, hs = pc.take(width, pa.array(odd)).to_pylist(), pc.take(height, pa.array(odd)).to_pylist()
        for i, a, b in zip(odd, ws, hs, strict=True):
            x, y = _scaled(_int(a), _int(b), size)
            ok[i] = x is not None
            sw[i], sh[i] = (x, y) if x is not None else (0, 0)
    return pa.array(sw, pa.int64(), mask=~ok), pa.array(sh, pa.int64(), mask=~ok)


def _position_text(a: pa.Array) -> pa.Array:
    """``str(_int(v))`` of every value (null where ``_int`` gives ``None``)."""
    v, ok, odd = _ints(a)
    out = pc.cast(pa.array(v, pa.int64(), mask=~ok), pa.string())
    if odd.any():
        rows = pa.array(np.flatnonzero(odd))
        slow = per_distinct(lambda s: None if _int(s) is None else str(_int(s)), pc.take(a, rows))
        where = np.full(len(a), -1, np.int64)
        where[odd] = np.arange(len(rows))
        out = pc.if_else(pa.array(odd), pc.take(slow, pa.array(where, mask=where < 0)), out)
    return out


_JSON_ESCAPES = {0x08: "\\b", 0x09: "\\t", 0x0A: "\\n", 0x0C: "\\f", 0x0D: "\\r"}


def _json_text(a: pa.Array) -> pa.Array:
    """The body of ``json.dumps(v, ensure_ascii=False)`` of every value (without the quotes)."""
    _, offsets, data = a.buffers()
    if data is None or not len(a):
        return a
    ends = np.frombuffer(offsets, np.int32)
    raw = np.frombuffer(data, np.uint8)[ends[a.offset]:ends[a.offset + len(a)]]
    if (raw == 0x5C).any():
        a = pc.replace_substring(a, "\\", "\\\\")
    if (raw == 0x22).any():
        a = pc.replace_substring(a, '"', '\\"')
    for c in np.unique(raw[raw < 0x20]).tolist():
        a = pc.replace_substring(a, chr(c), _JSON_ESCAPES.get(c, f"\\u{c:04x}"))
    return a


def _dump_extras(k: dict[str, pa.Array]) -> pa.Array:
    """:func:`schemas.record.extra_json` of every row's leftovers (keys sorted; empty values left out)."""
    pieces = [pa.scalar("{")]
    for key, name in (("ancestry", "ancestry"), ("observed_on", "bad_observed_on"), ("observer_id", "observer_id"),
                      ("observer_login", "login"), ("photo_uuid", "photo_uuid")):
        v = k[name]
        v = pc.if_else(pc.equal(v, ""), pa.scalar(None, pa.string()), v)
        pieces.append(pc.fill_null(pc.binary_join_element_wise(f'"{key}": "', _json_text(v), '", ', ""), ""))
    position = _position_text(k["position"])
    pieces.append(pc.fill_null(pc.binary_join_element_wise('"position": ', position, ", ", ""), ""))
    pieces.append(pc.if_else(pc.is_valid(k["taxon_name"]), '"taxon_in_dump": true}', '"taxon_in_dump": false}'))
    return pc.binary_join_element_wise(*pieces, "")


def _records(rows: list[dict]) -> pa.Table:
    if not rows:
        return pa.table({})
    table = from_rows(rows)
    keep = [n for n in table.column_names if any(r.get(n) is not None for r in rows)]
    return table.select(keep)


# ---------------------------------------------------------------- API v1


def api_fingerprint(options: Options) -> str:
    """A short stable hash of the API query (its filters and grade): names the task and the dataset."""
    q = {"filters": options.api_filters, "research_only": options.research_only}
    return query_hash(q)


def read_api(options: Options, client: HttpClient, after: int = 0) -> Iterator[IngestBatch]:
    """Up to ``max_pages`` pages of ``/observations`` after observation id ``after``, in id order;
    each batch's ``cursor`` is the last id of its page.

    Nothing is saved here: the runner commits the cursor with the records, so an interrupted
    pull leaves the cursor where the last committed one ended and its rerun pulls the same pages.
    """
    cursor = after
    for _ in range(options.max_pages):
        params = {"order_by": "id", "order": "asc", "id_above": cursor, "per_page": options.per_page,
                  "photos": "true", **options.api_filters}
        if options.research_only:
            params["quality_grade"] = "research"
        page = client.get_json("observations", params=params)
        results = page_results(page, f"inaturalist: observations after id {cursor} at {options.api_base_url}")
        if not results:
            return
        ids = [o["id"] for o in results if isinstance(o, dict) and type(o.get("id")) is int]
        if not ids:
            raise HttpError(f"inaturalist: an observations page after id {cursor} has no integer observation "
                            "ids, so the cursor cannot move on; is api_base_url iNaturalist's API v1?")
        cursor = max(ids)
        batch = adapt_api(results, options)
        batch.cursor = cursor
        yield batch
    if len(results) >= options.per_page:  # (a short last page was the end: nothing to continue)
        log.warning("inaturalist: stopped after max_pages = %d pages, at observation id %d; run the same "
                    "command again to pull the next pages into the same dataset", options.max_pages, cursor)


def _api_lineage(obs: dict) -> tuple[str | None, dict[str, str]]:
    taxon = obs.get("taxon") or {}
    for ident in obs.get("identifications") or []:
        it = ident.get("taxon") or {}
        if it.get("id") == taxon.get("id") and it.get("ancestors"):
            chain = [a for a in it["ancestors"] if a.get("rank") != "stateofmatter"] + [it]
            ranks = {a["rank"]: a["name"] for a in chain if a.get("rank") in RANK_COLUMNS}
            return "|".join(a["name"] for a in chain), ranks
    return None, {}


def adapt_api(results: list[dict], options: Options) -> IngestBatch:
    """API v1 observations to one record per photo (or a reject).

    An observation whose JSON has the wrong shape (an object where a list should be, a list where
    text should be) is one ``malformed_row`` reject, whatever it held; the others are unaffected.
    """
    rows: list[dict] = []
    ids: list[str] = []
    reasons: list[str] = []
    details: list[str] = []
    for i, obs in enumerate(results):
        problem: BaseException | str | None
        try:
            got, (rej_ids, rej_reasons, rej_details) = _api_observation(obs, options)
            problem = next((p for p in map(row_problem, got) if p), None)
        except SHAPE_ERRORS as exc:
            problem = exc
        if problem is not None:
            key = item_key(obs, "id")
            ids.append(make_record_id(SOURCE, f"observation/{key or f'page-item-{i}'}"))
            reasons.append(Reason.MALFORMED_ROW)
            details.append(shape_detail(f"observation {key or f'#{i} of the page'}", problem))
            continue
        rows.extend(got)
        ids.extend(rej_ids)
        reasons.extend(rej_reasons)
        details.extend(rej_details)
    rejects = make_rejects(ids, STAGE, reasons, details) if ids else REJECT_SCHEMA.empty_table()
    return IngestBatch(records=_records(rows), rejects=rejects)


def _api_observation(obs: dict, options: Options) -> tuple[list[dict], tuple[list, list, list]]:
    """One observation's records, and its rejects as (ids, reasons, details)."""
    rows: list[dict] = []
    rej_ids: list[str] = []
    rej_reasons: list[str] = []
    rej_details: list[str] = []
    photos = [p.get("photo") or p for p in obs.get("observation_photos") or []] or obs.get("photos") or []
    coords = (obs.get("geojson") or {}).get("coordinates") or [None, None]
    lat, lon, bad = _coords(coords[1], coords[0])
    grade = obs.get("quality_grade")
    taxon = obs.get("taxon") or {}
    lineage, ranks = _api_lineage(obs)
    user = obs.get("user") or {}
    holder = user.get("name") or user.get("login")
    # a date that is none (2011-13-45, 06/02/2011) is no event_date: its text stays in extra
    given = {k: obs.get(k) for k in ("time_observed_at", "observed_on") if obs.get(k) not in (None, "")}
    dates = {k: iso_date(v) for k, v in given.items()}
    when = dates.get("time_observed_at") or dates.get("observed_on")
    bad_dates = {k: v for k, v in given.items() if dates[k] is None}
    if not photos:
        rej_ids.append(make_record_id(SOURCE, f"observation/{obs.get('id')}"))
        rej_reasons.append(Reason.NO_IMAGE)
        rej_details.append(f"observation {obs.get('id')} has no photos")
        return rows, (rej_ids, rej_reasons, rej_details)
    for pos, photo in enumerate(photos):
        if item_key(photo, "id") is None:  # no id, no URL of its own: it would share "None" with others
            rej_ids.append(make_record_id(SOURCE, f"observation/{obs.get('id')}/photo-{pos}"))
            rej_reasons.append(Reason.MALFORMED_ROW)
            rej_details.append(f"observation {obs.get('id')} photo #{pos} has no id")
            continue
        pid = str(photo.get("id"))
        rid = make_record_id(SOURCE, pid)
        raw = photo.get("license_code")
        # iNaturalist: a photo without a licence code is all rights reserved
        code = normalise_license(raw) if raw else ALL_RIGHTS_RESERVED
        reason = detail = None
        if bad:
            reason, detail = Reason.BAD_COORDINATES, bad
        elif options.research_only and grade != "research":
            reason, detail = Reason.NOT_RESEARCH_GRADE, f"quality_grade {grade!r}"
        elif code == "unknown" and not options.keep_unknown_license:
            reason, detail = Reason.UNKNOWN_LICENSE, unknown_license_detail(raw)
        if reason:
            rej_ids.append(rid)
            rej_reasons.append(reason)
            rej_details.append(detail)
            continue
        url = (photo.get("url") or "").replace("/square.", f"/{options.photo_size}.")
        dims = photo.get("original_dimensions") or {}
        w, h = _scaled(dims.get("width"), dims.get("height"), options.photo_size)
        unc = obs.get("public_positional_accuracy") or obs.get("positional_accuracy")
        rows.append({
            "record_id": rid, "source": SOURCE, "source_dataset": "inaturalist-api-v1",
            "occurrence_id": str(obs.get("id")), "media_id": pid, "photo_key": photo_key(url),
            "identifier": url, "license": code, "license_raw": raw, "rights_holder": holder,
            "creator": holder, "references": obs.get("uri"),
            "verbatim_name": taxon.get("name"), "verbatim_rank": taxon.get("rank"),
            **{f"verbatim_{r}": ranks.get(r) for r in RANK_COLUMNS},
            "verbatim_lineage": lineage, "source_taxon_id": str(taxon["id"]) if taxon.get("id") else None,
            "decimal_latitude": lat, "decimal_longitude": lon,
            "coordinate_uncertainty_m": float(unc) if unc is not None else None,
            "event_date": when,
            "quality_grade": grade, "width": w, "height": h,
            "extra": extra_json({"attribution": photo.get("attribution"), "position": pos,
                                 "observation_uuid": obs.get("uuid"), "captive": obs.get("captive"),
                                 "obscured": obs.get("obscured"), "ancestor_ids": taxon.get("ancestor_ids"),
                                 "vernacular_name": taxon.get("preferred_common_name"), **bad_dates}),
        })
    return rows, (rej_ids, rej_reasons, rej_details)


CONNECTOR = INaturalistConnector()
