"""EOL connector: page exports (``store-<page>.json``), pages API JSON and bulk media manifest CSVs.

Each image becomes a record with its own licence, owner, source URL and EOL's full-size copy URL
(``base_url`` + a size suffix, or the manifest's ``EOL Full-Size Copy URL``); the page's
hierarchy (native node chain, or a path-like identifier from the pages API) is the lineage hint.
"""

from __future__ import annotations

import csv
import gzip
import html
import io
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json, from_rows
from schemas.rejects import REJECT_SCHEMA
from sources.base import IngestBatch
from sources.http import ApiConnector, ApiOptions
from sources.licenses import normalise_license
from sources.photokey import photo_key_of

SOURCE = "eol"
STAGE = "ingest"
# EOL's media server names each size by a suffix of the medium's base_url (EOL publishing, Medium)
SIZE_SUFFIX = {"original": "_orig.jpg", "large": "_580_360.jpg", "medium": "_260_190.jpg", "small": "_98_68.jpg"}
RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus")
STILL_IMAGE = ("http://purl.org/dc/dcmitype/StillImage", "StillImage", "image")
# documented column names of EOL's media manifest, and the snake_case spellings also seen
MANIFEST_COLUMNS = {
    "content_id": ("EOL content ID", "eol_content_id", "content_id", "medium_id"),
    "page_id": ("EOL page ID", "eol_page_id", "page_id"),
    "source_url": ("Medium Source URL", "medium_source_url", "source_url"),
    "copy_url": ("EOL Full-Size Copy URL", "eol_full_size_copy_url", "full_size_copy_url"),
    "license": ("License Name", "license_name", "license"),
    "owner": ("Copyright Owner", "copyright_owner", "owner"),
}


class Options(ApiOptions):
    """``[sources.eol]``: export/manifest files (or a folder of them), or page ids for the pages API."""

    input: str | None = Field(None, description="a page export JSON, pages API JSON, manifest CSV, or folder")
    page_ids: list[int] = Field(default_factory=list, description="EOL page ids to fetch from the pages API")
    image_size: Literal["original", "large", "medium", "small"] = Field("original", description="copy size")
    api_base_url: str = Field("https://eol.org/api/", description="EOL API root (tests: loopback)")
    images_per_page: int = Field(75, ge=1, le=75, description="pages API images per request")
    batch_rows: int = Field(100_000, ge=1, description="records per batch (manifests)")
    keep_unknown_license: bool = Field(False, description="keep records whose licence is unknown")


class EOLConnector(ApiConnector):
    """``eol`` source: one task per file, or per page id for the API."""

    name = SOURCE
    Options = Options

    def tasks(self, input: str | None, options: Options) -> list[str]:
        target = input or options.input
        if target:
            p = Path(target)
            if p.is_dir():
                return sorted(str(f) for f in p.iterdir()
                              if re.search(r"\.(json|csv|tsv)(\.gz)?$", f.name))
            return [target]
        if not options.page_ids:
            raise ValueError("eol: give an input file/folder or page_ids for the pages API")
        return [f"page:{pid}" for pid in options.page_ids]

    def read(self, task: str, options: Options) -> Iterator[IngestBatch]:
        if task.startswith("page:"):
            pid = task.split(":", 1)[1]
            doc = self.client(options).get_json(f"pages/1.0/{pid}.json", params={
                "images_per_page": options.images_per_page, "videos_per_page": 0, "sounds_per_page": 0,
                "texts_per_page": 0, "licenses": "all", "details": "true", "taxonomy": "true"})
            yield read_json(doc, options, page_hint=pid)
            return
        path = Path(task)
        name = path.name.lower().removesuffix(".gz")
        if name.endswith(".json"):
            with _open(path) as fh:
                try:
                    doc = json.load(fh)
                except json.JSONDecodeError as exc:
                    raise ValueError(f"eol: {path} is not valid JSON ({exc})") from exc
            yield read_json(doc, options, page_hint=_page_from_name(path.name))
        else:
            yield from read_manifest(path, options)


def _open(path: Path):
    raw = path.open("rb")
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", newline="")


def _page_from_name(name: str) -> str | None:
    m = re.search(r"(\d+)", name)
    return m.group(1) if m else None


def clean_name(text: str | None) -> str | None:
    """EOL names carry HTML (``<i>Procyon lotor</i>``) and entities (``&copy;``); plain text out."""
    if text is None:
        return None
    out = html.unescape(re.sub(r"<[^>]+>", "", str(text))).strip()
    return out or None


def _copy_url(base_url: str | None, size: str) -> str | None:
    if not base_url:
        return None
    if re.search(r"\.(jpe?g|png|gif)$", base_url, re.IGNORECASE):
        return base_url
    return base_url + SIZE_SUFFIX[size]


def _native_lineage(node: dict | None) -> tuple[dict[str, Any], str | None]:
    """Taxon fields from a page export's native_node chain (leaf first in the file)."""
    chain = []
    while node:
        chain.append(node)
        node = node.get("parent")
    if not chain:
        return {}, None
    leaf = chain[0]
    root_first = list(reversed(chain))
    names = [clean_name(n.get("canonical_form") or n.get("scientific_name")) for n in root_first]
    taxon = {
        "verbatim_name": clean_name(leaf.get("canonical_form")) or clean_name(leaf.get("scientific_name")),
        "verbatim_rank": leaf.get("rank"),
        **{f"verbatim_{n['rank']}": clean_name(n.get("canonical_form")) for n in root_first
           if n.get("rank") in RANK_COLUMNS},
    }
    resource = (leaf.get("resource") or {}).get("name")
    return taxon | {"_hierarchy": resource}, "|".join(n for n in names if n)


def _api_lineage(concept: dict) -> tuple[dict[str, Any], str | None]:
    """Taxon fields from a pages API taxonConcept: the name, the commonest rank, a path-like lineage."""
    entries = concept.get("taxonConcepts") or []
    ranks = [e.get("taxonRank") for e in entries if e.get("taxonRank")]
    rank = max(set(ranks), key=ranks.count) if ranks else None
    lineage = None
    for e in entries:
        sid = e.get("sourceIdentifier") or ""
        if sid.count("/") >= 2 and " " not in sid.split("/")[0]:
            lineage = "|".join(p for p in sid.split("/") if p)
            break
    return {"verbatim_name": clean_name(concept.get("scientificName")), "verbatim_rank": rank}, lineage


def read_json(doc: dict, options: Options, page_hint: str | None = None) -> IngestBatch:
    """A page export (``media`` + ``native_node``) or a pages API response (``taxonConcept``)."""
    if "taxonConcept" in doc:
        concept = doc["taxonConcept"]
        page_id = str(concept.get("identifier") or page_hint)
        taxon, lineage = _api_lineage(concept)
        media = [_api_medium(o) for o in concept.get("dataObjects") or []]
    elif "media" in doc or "native_node" in doc:
        page_id = str(doc.get("id") or page_hint)
        taxon, lineage = _native_lineage(doc.get("native_node"))
        media = [_export_medium(m, options) for m in doc.get("media") or []]
    else:
        raise ValueError(f"eol: JSON for page {page_hint} is neither a page export nor a pages API response")
    skipped = {} if media else {"page_without_media": 1}
    return _build(media, page_id, taxon, lineage, options, skipped)


def _export_medium(m: dict, options: Options) -> dict:
    lic = m.get("license") or {}
    return {
        "media_id": m.get("guid") or m.get("resource_pk"),
        "url": _copy_url(m.get("eol_full_size_copy_url") or m.get("base_url"), options.image_size),
        "source_url": m.get("source_url"),
        "license_raw": lic.get("source_url") or lic.get("name") if isinstance(lic, dict) else lic,
        "license_name": lic.get("name") if isinstance(lic, dict) else None,
        "owner": clean_name(m.get("owner")),
        "dataset": (m.get("provider") or {}).get("name"),
        "type": "StillImage",
        "extra": {"resource_pk": m.get("resource_pk"), "title": clean_name(m.get("name")),
                  "partner": (m.get("provider") or {}).get("partner"), "language": m.get("language")},
    }


def _api_medium(o: dict) -> dict:
    agents = o.get("agents") or []
    creator = next((a.get("full_name") for a in agents if a.get("role") in ("photographer", "creator")), None)
    return {
        "media_id": str(o.get("identifier") or o.get("dataObjectVersionID")),
        "url": o.get("eolMediaURL") or o.get("mediaURL"),
        "source_url": o.get("source") or o.get("mediaURL"),
        "license_raw": o.get("license"),
        "license_name": None,
        "owner": clean_name(o.get("rightsHolder")) or creator,
        "creator": creator,
        "dataset": None,
        "type": o.get("dataType"),
        "extra": {"title": clean_name(o.get("title")), "mime_type": o.get("mimeType"),
                  "data_object_version_id": o.get("dataObjectVersionID")},
    }


def _build(media: list[dict], page_id: str | None, taxon: dict, lineage: str | None, options: Options,
           skipped: dict[str, int]) -> IngestBatch:
    rows, rej_ids, rej_reasons, rej_details = [], [], [], []
    hierarchy = taxon.pop("_hierarchy", None)
    for m in media:
        rid = make_record_id(SOURCE, str(m["media_id"]))
        lic_raw = m["license_raw"]
        code = normalise_license(lic_raw)
        if code == "unknown" and m.get("license_name"):
            code = normalise_license(m["license_name"])
        reason = detail = None
        if m.get("type") and m["type"] not in STILL_IMAGE:
            reason, detail = Reason.NOT_STILL_IMAGE, f"dataType {m['type']!r}"
        elif not m["url"]:
            reason, detail = Reason.NO_IMAGE, "medium has no base_url / full-size copy URL"
        elif code == "unknown" and not options.keep_unknown_license:
            reason, detail = Reason.UNKNOWN_LICENSE, f"licence {lic_raw!r} not recognised"
        if reason:
            rej_ids.append(rid)
            rej_reasons.append(reason)
            rej_details.append(detail)
            continue
        rows.append({
            "record_id": rid, "source": SOURCE, "source_dataset": m.get("dataset"),
            "occurrence_id": None, "media_id": str(m["media_id"]),
            "photo_key": photo_key_of(m.get("source_url"), m["url"]),
            "identifier": m["url"], "license": code, "license_raw": lic_raw,
            "rights_holder": m.get("owner"), "creator": m.get("creator") or m.get("owner"),
            "references": m.get("source_url"), **taxon, "verbatim_lineage": lineage,
            "source_taxon_id": page_id,
            "extra": extra_json({**m.get("extra", {}), "eol_page_id": page_id, "hierarchy": hierarchy}),
        })
    rejects = make_rejects(rej_ids, STAGE, rej_reasons, rej_details) if rej_ids else REJECT_SCHEMA.empty_table()
    records = from_rows(rows) if rows else pa.table({})
    return IngestBatch(records=records, rejects=rejects, skipped=skipped)


def _manifest_fields(header: list[str]) -> dict[str, int]:
    norm = {h.strip().lower(): i for i, h in enumerate(header)}
    found = {}
    for key, names in MANIFEST_COLUMNS.items():
        for n in names:
            if n.lower() in norm:
                found[key] = norm[n.lower()]
                break
    return found


def read_manifest(path: Path, options: Options) -> Iterator[IngestBatch]:
    """An EOL media manifest (CSV or TSV, plain or gzip), in batches; unreadable rows are rejects."""
    with _open(path) as fh:
        sample = fh.read(1 << 16)
        delim = "\t" if sample.count("\t") > sample.count(",") else ","
    with _open(path) as fh:
        reader = csv.reader(fh, delimiter=delim)
        try:
            header = next(reader)
        except StopIteration:
            return
        fields = _manifest_fields(header)
        missing = {"content_id", "copy_url"} - fields.keys()
        if missing:
            raise ValueError(f"eol: {path} lacks manifest columns {sorted(missing)} "
                             f"(found {header}); expected EOL's names, e.g. 'EOL content ID'")
        media: list[dict] = []
        bad_ids, bad_details = [], []
        page_of: list[str | None] = []
        for lineno, row in enumerate(reader, start=2):
            if len(row) != len(header):
                bad_ids.append(make_record_id(SOURCE, row[fields["content_id"]] if len(row) > fields["content_id"]
                                              else f"{path.name}:{lineno}"))
                bad_details.append(f"{path.name} line {lineno}: expected {len(header)} fields, got {len(row)}")
                continue
            get = lambda k, row=row: (row[fields[k]].strip() or None) if k in fields else None  # noqa: E731
            media.append({"media_id": get("content_id"), "url": get("copy_url"), "source_url": get("source_url"),
                          "license_raw": get("license"), "license_name": None, "owner": clean_name(get("owner")),
                          "dataset": None, "type": None, "extra": {}})
            page_of.append(get("page_id"))
            if len(media) >= options.batch_rows:
                yield _manifest_batch(media, page_of, bad_ids, bad_details, options)
                media, page_of, bad_ids, bad_details = [], [], [], []
        yield _manifest_batch(media, page_of, bad_ids, bad_details, options)


def _manifest_batch(media, page_of, bad_ids, bad_details, options) -> IngestBatch:
    tables, rejects = [], []
    # a manifest mixes pages: build per page so each record carries its own page id
    by_page: dict[str | None, list[dict]] = {}
    for m, p in zip(media, page_of, strict=False):
        by_page.setdefault(p, []).append(m)
    for page, items in by_page.items():
        b = _build(items, page, {}, None, options, {})
        if b.records.num_rows:
            tables.append(b.records)
        rejects.append(b.rejects)
    if bad_ids:
        rejects.append(make_rejects(bad_ids, STAGE, Reason.MALFORMED_ROW, bad_details))
    records = pa.concat_tables(tables) if tables else pa.table({})
    rej = pa.concat_tables(rejects) if rejects else REJECT_SCHEMA.empty_table()
    return IngestBatch(records=records, rejects=rej)


CONNECTOR = EOLConnector()
