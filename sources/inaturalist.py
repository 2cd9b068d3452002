"""iNaturalist connector: the open-data dump (photos/observations/taxa/observers) and API v1 pulls.

The dump's four tab-separated, unquoted files (plain or gzip, local or fetched from a URL) are
joined by DuckDB into one record per photo, with the taxon's ancestry resolved to names from the
same taxa file. The API v1 ``/observations`` endpoint is paged by an id cursor at 1 request/s,
and the cursor is saved after each page is consumed, so a rerun continues where the last stopped.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json, from_rows
from schemas.rejects import REJECT_SCHEMA, empty_rejects
from sources.base import IngestBatch
from sources.http import ApiConnector, ApiOptions, HttpClient
from sources.licenses import ALL_RIGHTS_RESERVED, normalise_license, normalise_license_column
from sources.photokey import photo_key

SOURCE = "inaturalist"
STAGE = "ingest"
DUMP_FILES = ("photos", "observations", "taxa", "observers")
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
    max_pages: int = Field(50, ge=1, description="API pages per run; a rerun continues from the cursor")
    state_path: str | None = Field(None, description="cursor file (default: under cache_dir, per query)")


class INaturalistConnector(ApiConnector):
    """``inaturalist`` source: one task per dump, or one API task per query."""

    name = SOURCE
    Options = Options

    def tasks(self, input: str | None, options: Options) -> list[str]:
        target = input or options.input
        mode = options.mode if options.mode != "auto" else ("dump" if target else "api")
        if mode == "dump":
            if not target:
                raise ValueError("inaturalist: mode 'dump' needs an input folder or URL prefix")
            return [target]
        return [f"api:{api_fingerprint(options)}"]

    def read(self, task: str, options: Options) -> Iterator[IngestBatch]:
        if task.startswith("api:"):
            yield from read_api(options, self.client(options))
        else:
            files = locate_dump(task, options, self.client(options))
            yield from read_dump(files, options)


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
    return (f"CREATE TABLE {table} AS SELECT * FROM read_csv('{path}', delim='\t', quote='', escape='', "
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
       t.name AS taxon_name, t.rank AS taxon_rank, t.ancestry, l.* EXCLUDE (taxon_id)
FROM photos p
LEFT JOIN observations o ON o.observation_uuid = p.observation_uuid
LEFT JOIN observers u ON u.observer_id = coalesce(o.observer_id, p.observer_id)
LEFT JOIN taxa t ON t.taxon_id = o.taxon_id
LEFT JOIN lineage l ON l.taxon_id = o.taxon_id
ORDER BY TRY_CAST(p.photo_id AS BIGINT), p.photo_id
"""


def read_dump(files: dict[str, Path], options: Options) -> Iterator[IngestBatch]:
    """One record per photo of the dump (or a reject saying why not)."""
    import duckdb

    with tempfile.TemporaryDirectory(prefix="biocorpus-inat-") as tmp:
        con = duckdb.connect(str(Path(tmp) / "dump.duckdb"))
        try:
            con.execute(f"SET memory_limit='{options.duckdb_memory}'")
            con.execute("SET enable_progress_bar=false")  # it writes to stdout, which callers may own
            con.execute("SET preserve_insertion_order=true")
            for name in DUMP_FILES:
                con.execute(_read_csv(files[name], name))
            yield from _file_rejects(con)
            rank_cols = ",\n           ".join(
                f"max(a.name) FILTER (WHERE a.rank = '{r}') AS rank_{r}" for r in RANK_COLUMNS)
            reader = con.sql(_JOIN_SQL.format(rank_cols=rank_cols)).to_arrow_reader(options.batch_rows)
            for batch in reader:
                yield adapt_dump(pa.Table.from_batches([batch]), options)
        finally:
            con.close()


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
    """Joined dump rows to records: reasons are orphan, bad coordinates, grade, unknown licence."""
    codes = normalise_license_column(t.column("license")).to_pylist()
    cols = {name: t.column(name).to_pylist() for name in t.column_names}
    rows, rej_ids, rej_reasons, rej_details = [], [], [], []
    for i in range(t.num_rows):
        photo_id = cols["photo_id"][i]
        rid = make_record_id(SOURCE, photo_id)
        lat, lon, bad = _coords(cols["latitude"][i], cols["longitude"][i])
        reason = detail = None
        if not cols["has_observation"][i]:
            reason, detail = Reason.ORPHAN_MEDIA, f"observation {cols['observation_uuid'][i]} not in the dump"
        elif bad:
            reason, detail = Reason.BAD_COORDINATES, bad
        elif options.research_only and cols["quality_grade"][i] != "research":
            reason, detail = Reason.NOT_RESEARCH_GRADE, f"quality_grade {cols['quality_grade'][i]!r}"
        elif codes[i] == "unknown" and not options.keep_unknown_license:
            reason, detail = Reason.UNKNOWN_LICENSE, f"licence {cols['license'][i]!r} not recognised"
        if reason:
            rej_ids.append(rid)
            rej_reasons.append(reason)
            rej_details.append(detail)
            continue
        ext = cols["extension"][i] or "jpg"
        url = f"{options.photo_base_url.rstrip('/')}/{photo_id}/{options.photo_size}.{ext}"
        w, h = _scaled(_int(cols["width"][i]), _int(cols["height"][i]), options.photo_size)
        holder = cols["observer_name"][i] or cols["login"][i]
        unc, _ = _float(cols["positional_accuracy"][i])
        rows.append({
            "record_id": rid, "source": SOURCE, "source_dataset": "inaturalist-open-data",
            "occurrence_id": cols["observation_uuid"][i], "media_id": photo_id, "photo_key": photo_key(url),
            "identifier": url, "format": f"image/{'jpeg' if ext.lower() in ('jpg', 'jpeg') else ext.lower()}",
            "license": codes[i], "license_raw": cols["license"][i], "rights_holder": holder, "creator": holder,
            "references": f"https://www.inaturalist.org/observations/{cols['observation_uuid'][i]}",
            "verbatim_name": cols["taxon_name"][i], "verbatim_rank": cols["taxon_rank"][i],
            **{f"verbatim_{r}": cols[f"rank_{r}"][i] for r in RANK_COLUMNS},
            "verbatim_lineage": cols["lineage"][i], "source_taxon_id": cols["taxon_id"][i],
            "decimal_latitude": lat, "decimal_longitude": lon,
            "coordinate_uncertainty_m": unc if unc is None or unc >= 0 else None,
            "event_date": cols["observed_on"][i], "quality_grade": cols["quality_grade"][i],
            "width": w, "height": h,
            "extra": extra_json({"photo_uuid": cols["photo_uuid"][i], "position": _int(cols["position"][i]),
                                 "observer_id": cols["observer_id"][i], "observer_login": cols["login"][i],
                                 "ancestry": cols["ancestry"][i],
                                 "taxon_in_dump": cols["taxon_name"][i] is not None}),
        })
    rejects = make_rejects(rej_ids, STAGE, rej_reasons, rej_details) if rej_ids else REJECT_SCHEMA.empty_table()
    return IngestBatch(records=_records(rows), rejects=rejects)


def _records(rows: list[dict]) -> pa.Table:
    if not rows:
        return pa.table({})
    table = from_rows(rows)
    keep = [n for n in table.column_names if any(r.get(n) is not None for r in rows)]
    return table.select(keep)


# ---------------------------------------------------------------- API v1


def api_fingerprint(options: Options) -> str:
    q = {"filters": options.api_filters, "research_only": options.research_only}
    return hashlib.blake2b(json.dumps(q, sort_keys=True, default=str).encode(), digest_size=6).hexdigest()


def _state_path(options: Options) -> Path:
    if options.state_path:
        return Path(options.state_path)
    return Path(options.cache_dir) / f"api-cursor-{api_fingerprint(options)}.json"


def load_cursor(options: Options) -> int:
    path = _state_path(options)
    return int(json.loads(path.read_text()).get("id_above", 0)) if path.exists() else 0


def save_cursor(options: Options, id_above: int) -> None:
    path = _state_path(options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"id_above": id_above}))
    tmp.replace(path)  # atomic: a crash leaves the old cursor, never a torn file


def read_api(options: Options, client: HttpClient) -> Iterator[IngestBatch]:
    """Pages of ``/observations`` after the saved cursor; the cursor advances once a page is consumed."""
    cursor = load_cursor(options)
    for _ in range(options.max_pages):
        params = {"order_by": "id", "order": "asc", "id_above": cursor, "per_page": options.per_page,
                  "photos": "true", **options.api_filters}
        if options.research_only:
            params["quality_grade"] = "research"
        page = client.get_json("observations", params=params)
        results = page.get("results") or []
        if not results:
            return
        yield adapt_api(results, options)
        # saved only after the consumer took the batch, so a crash re-reads the page, never skips it
        cursor = max(int(o["id"]) for o in results)
        save_cursor(options, cursor)


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
    """API v1 observations to one record per photo (or a reject)."""
    rows, rej_ids, rej_reasons, rej_details = [], [], [], []
    for obs in results:
        photos = [p.get("photo") or p for p in obs.get("observation_photos") or []] or obs.get("photos") or []
        coords = (obs.get("geojson") or {}).get("coordinates") or [None, None]
        lat, lon, bad = _coords(coords[1], coords[0])
        grade = obs.get("quality_grade")
        taxon = obs.get("taxon") or {}
        lineage, ranks = _api_lineage(obs)
        user = obs.get("user") or {}
        holder = user.get("name") or user.get("login")
        if not photos:
            rej_ids.append(make_record_id(SOURCE, f"observation/{obs.get('id')}"))
            rej_reasons.append(Reason.NO_IMAGE)
            rej_details.append(f"observation {obs.get('id')} has no photos")
            continue
        for pos, photo in enumerate(photos):
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
                reason, detail = Reason.UNKNOWN_LICENSE, f"licence {raw!r} not recognised"
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
                "event_date": obs.get("time_observed_at") or obs.get("observed_on"),
                "quality_grade": grade, "width": w, "height": h,
                "extra": extra_json({"attribution": photo.get("attribution"), "position": pos,
                                     "observation_uuid": obs.get("uuid"), "captive": obs.get("captive"),
                                     "obscured": obs.get("obscured"), "ancestor_ids": taxon.get("ancestor_ids"),
                                     "vernacular_name": taxon.get("preferred_common_name")}),
            })
    rejects = make_rejects(rej_ids, STAGE, rej_reasons, rej_details) if rej_ids else REJECT_SCHEMA.empty_table()
    return IngestBatch(records=_records(rows), rejects=rejects)


CONNECTOR = INaturalistConnector()
