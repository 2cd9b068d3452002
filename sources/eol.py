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
import itertools
import json
import re
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json, from_columns, from_rows, record_id_column, row_problem
from schemas.rejects import REJECT_SCHEMA
from sources.base import SHAPE_ERRORS, IngestBatch, item_key, query_hash, shape_detail
from sources.columns import per_distinct
from sources.http import ApiConnector, ApiOptions, HttpError
from sources.licenses import normalise_license, normalise_license_column, unknown_license_detail
from sources.photokey import photo_key_of, photo_keys

SOURCE = "eol"
STAGE = "ingest"
# EOL's media server names each size by a suffix of the medium's base_url (EOL publishing, Medium)
SIZE_SUFFIX = {"original": "_orig.jpg", "large": "_580_360.jpg", "medium": "_260_190.jpg", "small": "_98_68.jpg"}
RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus")
STILL_IMAGE = ("http://purl.org/dc/dcmitype/StillImage", "StillImage", "image")
ENGLISH = ("eng", "en")  # a page export's vernaculars name their language by ISO 639-2 code (639-1 also seen)
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

    def query_fingerprint(self) -> str | None:
        if self.input or not self.page_ids:
            return None
        q = {"page_ids": sorted(set(self.page_ids)), "images_per_page": self.images_per_page}
        return query_hash(q)


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
            try:
                doc = self.client(options).get_json(f"pages/1.0/{pid}.json", params={
                    "images_per_page": options.images_per_page, "videos_per_page": 0, "sounds_per_page": 0,
                    "texts_per_page": 0, "licenses": "all", "details": "true", "taxonomy": "true"})
            except HttpError as exc:
                if exc.status != 404:
                    raise
                # one page id EOL does not know (a typo, a page merged away) is that page's reject:
                # the other pages are still read, and a rerun does not fail on it again
                yield IngestBatch(records=pa.table({}), rejects=make_rejects(
                    [make_record_id(SOURCE, f"page/{pid}")], STAGE, Reason.NO_IMAGE,
                    f"EOL has no page {pid} ({exc}); check the id in [sources.eol] page_ids"))
                return
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


def _open(path: Path, errors: str = "strict"):
    raw = path.open("rb")
    if path.name.endswith(".gz"):
        return io.TextIOWrapper(gzip.GzipFile(fileobj=raw), encoding="utf-8", errors=errors, newline="")
    return io.TextIOWrapper(raw, encoding="utf-8", errors=errors, newline="")


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


def page_vernacular(vernaculars: Any) -> str | None:
    """A page export's own English common name (``raccoon``): its preferred English vernacular,
    else its first English one; ``None`` when it has none. Vernaculars of another shape are
    passed over: a common name is no reason to lose the page."""
    if not isinstance(vernaculars, list):
        return None
    english = [v for v in vernaculars if isinstance(v, dict) and isinstance(v.get("string"), str)
               and str(v.get("language") or "").strip().lower() in ENGLISH]
    preferred_first = [v for v in english if v.get("preferred") is True] + english
    return next((name for name in (clean_name(v["string"]) for v in preferred_first) if name), None)


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
    if not isinstance(doc, dict) or not {"taxonConcept", "media", "native_node"} & doc.keys():
        raise ValueError(f"eol: JSON for page {page_hint} is neither a page export nor a pages API response")
    try:
        if "taxonConcept" in doc:
            concept = doc["taxonConcept"]
            page_id = str(concept.get("identifier") or page_hint)
            taxon, lineage = _api_lineage(concept)
            items, medium = _list(concept.get("dataObjects")), _api_medium
        else:
            page_id = str(doc.get("id") or page_hint)
            taxon, lineage = _native_lineage(doc.get("native_node"))
            common = page_vernacular(doc.get("vernaculars"))
            if common is not None:
                # the page's taxon is the one named: its rank is the vernacular's
                taxon |= {"vernacular_name": common, "vernacular_rank": taxon.get("verbatim_rank")}
            items, medium = _list(doc.get("media")), partial(_export_medium, options=options)
    except SHAPE_ERRORS as exc:
        # the page's own fields (its taxon and hierarchy) hold every medium's lineage: no medium can be read
        raise ValueError(f"eol: page {page_hint}: {shape_detail('the page', exc)}; its media cannot be "
                         "placed in a taxon") from exc
    skipped = {} if items else {"page_without_media": 1}
    return _build(items, medium, page_id, taxon, lineage, options, skipped)


def _list(value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"expected a list of media, got {type(value).__name__}")
    return value


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


def _build(items: list, medium: Callable[[dict], dict], page_id: str | None, taxon: dict, lineage: str | None,
           options: Options, skipped: dict[str, int]) -> IngestBatch:
    """Each medium of a page (``medium`` reads one item of its JSON) to a record or a reject; an
    item of the wrong shape is a ``malformed_row`` reject of its own."""
    rows, rej_ids, rej_reasons, rej_details = [], [], [], []
    hierarchy = taxon.pop("_hierarchy", None)
    for i, item in enumerate(items):
        try:
            m = medium(item)
            row = _medium_row(m, page_id, taxon, lineage, hierarchy, options)
            problem = row_problem(row) if "record_id" in row else None
        except SHAPE_ERRORS as exc:
            row, problem = {}, exc
        if problem is not None:
            key = item_key(item, "guid", "resource_pk", "identifier", "dataObjectVersionID")
            rej_ids.append(make_record_id(SOURCE, key or f"page-{page_id}/medium-{i}"))
            rej_reasons.append(Reason.MALFORMED_ROW)
            rej_details.append(shape_detail(f"page {page_id} medium {key or f'#{i}'}", problem))
        elif "reason" in row:
            rej_ids.append(row["id"])
            rej_reasons.append(row["reason"])
            rej_details.append(row["detail"])
        else:
            rows.append(row)
    rejects = make_rejects(rej_ids, STAGE, rej_reasons, rej_details) if rej_ids else REJECT_SCHEMA.empty_table()
    records = from_rows(rows) if rows else pa.table({})
    return IngestBatch(records=records, rejects=rejects, skipped=skipped)


def _medium_row(m: dict, page_id: str | None, taxon: dict, lineage: str | None, hierarchy: Any,
                options: Options) -> dict:
    """One medium's record row, or ``{"id", "reason", "detail"}`` when it is rejected."""
    rid = make_record_id(SOURCE, str(m["media_id"]))
    lic_raw = m["license_raw"]
    code = normalise_license(lic_raw)
    if code == "unknown" and m.get("license_name"):
        code = normalise_license(m["license_name"])
    if m.get("type") and m["type"] not in STILL_IMAGE:
        return {"id": rid, "reason": Reason.NOT_STILL_IMAGE, "detail": f"dataType {m['type']!r}"}
    if not m["url"]:
        return {"id": rid, "reason": Reason.NO_IMAGE, "detail": "medium has no base_url / full-size copy URL"}
    if code == "unknown" and not options.keep_unknown_license:
        return {"id": rid, "reason": Reason.UNKNOWN_LICENSE, "detail": unknown_license_detail(lic_raw)}
    return {
        "record_id": rid, "source": SOURCE, "source_dataset": m.get("dataset"),
        "occurrence_id": None, "media_id": str(m["media_id"]),
        "photo_key": photo_key_of(m.get("source_url"), m["url"]),
        "identifier": m["url"], "license": code, "license_raw": lic_raw,
        "rights_holder": m.get("owner"), "creator": m.get("creator") or m.get("owner"),
        "references": m.get("source_url"), **taxon, "verbatim_lineage": lineage,
        "source_taxon_id": page_id,
        # the page's vernacular also in extra: resolve replaces vernacular_name with the backbone's
        "extra": extra_json({**m.get("extra", {}), "eol_page_id": page_id, "hierarchy": hierarchy,
                             "vernacular_name": taxon.get("vernacular_name")}),
    }


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
    """An EOL media manifest (CSV or TSV, plain or gzip), in batches; unreadable rows are rejects.

    Column-wise: blocks of whole lines are split by pyarrow's CSV reader while they hold no
    quote, carriage return or NUL (then a line is a row and a delimiter a field boundary, as for
    ``csv.reader``); from the first block that holds one on, the rest is read by ``csv.reader``
    itself. Either way the records are built from columns (:func:`_manifest_columns`). A row with
    the wrong number of fields is a ``malformed_row`` reject, a row with bytes that are not UTF-8
    an ``undecodable_text`` reject that says how to re-encode the file; a header that is not
    UTF-8 stops the file with an error that names it and says what to do.
    """
    try:
        with _open(path, "replace") as fh:  # the delimiter is told by counting: a bad byte cannot change it
            sample = fh.read(1 << 16)
            delim = "\t" if sample.count("\t") > sample.count(",") else ","
        with _raw(path) as raw:
            yield from _read_manifest(raw, path, delim, options)
    except UnicodeDecodeError as exc:  # the header (a bad row is a reject)
        raise ValueError(_not_utf8(path, exc.reason, exc.object[exc.start])) from exc


def _not_utf8(path: Path, why: str, byte: int) -> str:
    return (f"eol: {path} is not UTF-8 text ({why}: byte 0x{byte:02x}); "
            f"re-encode it as UTF-8 (e.g. iconv -f latin1 -t utf-8) and ingest it again")


def _raw(path: Path):
    return gzip.open(path, "rb") if path.name.endswith(".gz") else path.open("rb")


class _Prefixed(io.RawIOBase):
    """``prefix`` then the rest of ``stream``, as one binary stream."""

    def __init__(self, prefix: bytes, stream) -> None:
        self._prefix, self._stream = memoryview(prefix), stream

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if len(self._prefix):
            n = min(len(b), len(self._prefix))
            b[:n] = self._prefix[:n]
            self._prefix = self._prefix[n:]
            return n
        data = self._stream.read(len(b))
        b[:len(data)] = data
        return len(data)


_BLOCK = 1 << 24
_ESCAPED = re.compile("[\udc80-\udcff]")  # a byte that is not UTF-8, as decoded by "surrogateescape"


def _undecodable(name: str, lineno: int, text: str, fields: list[str], content: int) -> tuple[int, str, str, str] | None:
    """The reject of a row whose text (decoded with "surrogateescape") holds bytes that are not
    UTF-8, ``None`` for a row without any. Its id is the content ID when that field is readable."""
    bad = _ESCAPED.search(text)
    if bad is None:
        return None
    key = fields[content] if len(fields) > content and not _ESCAPED.search(fields[content]) else f"{name}:{lineno}"
    return (lineno, key, f"{name} line {lineno}: not UTF-8 text (byte 0x{ord(bad.group()) - 0xDC00:02x}); "
                         f"re-encode the file as UTF-8 (e.g. iconv -f latin1 -t utf-8) and ingest it again",
            str(Reason.UNDECODABLE_TEXT))


def _unsimple(data: bytes) -> bool:
    """Whether ``data`` holds a quote, carriage return or NUL (where csv.reader's rules matter)."""
    return b'"' in data or b"\r" in data or b"\x00" in data


class _Pending:
    """Rows read but not yet batched: column chunks, their row numbers, and the malformed rows."""

    def __init__(self, keys: list[str]) -> None:
        self.keys = keys
        self.chunks: list[dict[str, pa.Array]] = []
        self.lines: list[np.ndarray] = []
        self.bad: list[tuple[int, str, str, str]] = []  # (row number, id text, detail, reason)
        self.rows = 0

    def add(self, cols: dict[str, pa.Array], lines: np.ndarray, bad: list[tuple[int, str, str, str]]) -> None:
        if len(lines):
            self.chunks.append(cols)
            self.lines.append(lines)
            self.rows += len(lines)
        self.bad.extend(bad)

    def full_batches(self, size: int) -> Iterator[tuple[dict[str, pa.Array], list[tuple[int, str, str, str]]]]:
        """Batches of ``size`` rows, each with the malformed rows read before its last row."""
        while self.rows >= size:
            cols = {k: pa.concat_arrays([c[k] for c in self.chunks]) for k in self.keys}
            lines = np.concatenate(self.lines)
            last = int(lines[size - 1])
            take = [b for b in self.bad if b[0] < last]
            self.bad = [b for b in self.bad if b[0] > last]
            self.chunks = [{k: a.slice(size) for k, a in cols.items()}]
            self.lines = [lines[size:]]
            self.rows -= size
            yield {k: a.slice(0, size) for k, a in cols.items()}, take

    def rest(self) -> tuple[dict[str, pa.Array], list[tuple[int, str, str, str]]]:
        cols = {k: pa.concat_arrays([c[k] for c in self.chunks]) if self.chunks else pa.array([], pa.string())
                for k in self.keys}
        return cols, self.bad


def _read_manifest(raw, path: Path, delim: str, options: Options) -> Iterator[IngestBatch]:
    buf = b""
    while b"\n" not in buf:
        chunk = raw.read(1 << 16)
        if not chunk:
            break
        buf += chunk
    if not buf:
        return
    cut = buf.find(b"\n") + 1 or len(buf)
    head, buf = buf[:cut], buf[cut:]
    simple = not _unsimple(head)
    if simple:
        line = head.rstrip(b"\n").decode("utf-8")
        header = line.split(delim) if line else []
        lineno = 2
    else:  # the header itself needs the csv module's rules
        text = io.TextIOWrapper(io.BufferedReader(_Prefixed(head + buf, raw)), encoding="utf-8",
                                errors="surrogateescape", newline="")
        reader = csv.reader(text, delimiter=delim)
        try:
            header = next(reader)
        except StopIteration:
            return
        bad = next((m for h in header if (m := _ESCAPED.search(h))), None)
        if bad is not None:  # the columns cannot be found
            raise ValueError(_not_utf8(path, "in the header", ord(bad.group()) - 0xDC00))
        lineno = 2
    fields = _manifest_fields(header)
    missing = {"content_id", "copy_url"} - fields.keys()
    if missing:
        raise ValueError(f"eol: {path} lacks manifest columns {sorted(missing)} "
                         f"(found {header}); expected EOL's names, e.g. 'EOL content ID'")
    keys = list(fields)
    pending = _Pending(keys)
    width = len(header)

    def batches():
        for cols, bad in pending.full_batches(options.batch_rows):
            yield _manifest_columns(cols, bad, options)

    if simple:
        eof = False
        while buf or not eof:
            while len(buf) < _BLOCK and not eof:
                chunk = raw.read(_BLOCK)
                eof = not chunk
                buf += chunk
            end = len(buf) if eof else buf.rfind(b"\n") + 1
            if not eof and end == 0:  # one line longer than a block: read on
                more = raw.read(_BLOCK)
                eof = not more
                buf += more
                continue
            block, buf = buf[:end], buf[end:]
            if _unsimple(block):
                simple = False
                buf = block + buf
                break
            if block:
                cols, lines, bad, lineno = _split_block(block, delim, width, fields, lineno, path.name)
                pending.add(cols, lines, bad)
                yield from batches()
        if not simple:
            text = io.TextIOWrapper(io.BufferedReader(_Prefixed(buf, raw)), encoding="utf-8",
                                    errors="surrogateescape", newline="")
            reader = csv.reader(text, delimiter=delim)
    if not simple:
        for cols, lines, bad in _csv_chunks(reader, width, fields, lineno, path.name):
            pending.add(cols, lines, bad)
            yield from batches()
    cols, bad = pending.rest()
    yield _manifest_columns(cols, bad, options)


def _malformed(row: list[str], width: int, content: int, lineno: int, name: str) -> tuple[int, str, str, str]:
    key = row[content] if len(row) > content else f"{name}:{lineno}"
    return lineno, key, f"{name} line {lineno}: expected {width} fields, got {len(row)}", str(Reason.MALFORMED_ROW)


def _split_block(block: bytes, delim: str, width: int, fields: dict[str, int], lineno: int, name: str):
    """Whole lines without quotes, CRs or NULs: (columns, row numbers, bad rows, next row number).

    A bad row has the wrong number of fields or bytes that are not UTF-8 (the latter told first).
    """
    escaped: list[str] | None = None
    try:
        block.decode("utf-8")
    except UnicodeDecodeError:  # the block's lines, bad bytes escaped ("\n" is never one of them)
        escaped = block.decode("utf-8", "surrogateescape").split("\n")
    data = np.frombuffer(block, np.uint8)
    nl = np.flatnonzero(data == 10)
    ends = nl if block.endswith(b"\n") else np.append(nl, len(data))
    starts = np.concatenate(([0], ends[:-1] + 1))
    seps = np.flatnonzero(data == ord(delim))
    count = np.searchsorted(seps, ends) - np.searchsorted(seps, starts)
    good = (count == width - 1) & (ends > starts)
    n = len(ends)
    numbers = np.arange(lineno, lineno + n)
    bad = []
    undecodable: dict[int, tuple[int, str, str, str]] = {}
    if escaped is not None:
        for i in range(n):
            line = escaped[i]
            if _ESCAPED.search(line):
                row = line.split(delim) if line else []
                undecodable[i] = _undecodable(name, int(numbers[i]), line, row, fields["content_id"])
                good[i] = False
    if not good.all():
        for i in np.flatnonzero(~good).tolist():
            if i in undecodable:
                bad.append(undecodable[i])
                continue
            line = block[starts[i]:ends[i]].decode("utf-8")
            row = line.split(delim) if line else []
            bad.append(_malformed(row, width, fields["content_id"], int(numbers[i]), name))
        block = data[np.repeat(good, np.diff(np.append(starts, len(data))))].tobytes()
    lines = numbers[good]
    if not len(lines):
        return {k: pa.array([], pa.string()) for k in fields}, lines, bad, lineno + n
    names = [f"c{i}" for i in range(width)]
    table = pacsv.read_csv(
        io.BytesIO(block),
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 26),
        parse_options=pacsv.ParseOptions(delimiter=delim, quote_char=False, escape_char=False,
                                         newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pacsv.ConvertOptions(include_columns=[names[i] for i in fields.values()],
                                             column_types={names[i]: pa.string() for i in fields.values()},
                                             strings_can_be_null=False, quoted_strings_can_be_null=False,
                                             null_values=[]))
    if table.num_rows != len(lines):
        raise AssertionError(f"eol: {name}: {table.num_rows} rows parsed, {len(lines)} expected")
    cols = {k: table.column(names[i]).combine_chunks() for k, i in fields.items()}
    return cols, lines, bad, lineno + n


def _csv_chunks(reader, width: int, fields: dict[str, int], lineno: int, name: str, size: int = 1 << 16):
    """``csv.reader`` rows, as column chunks of ``size`` rows (and the bad rows among them: ragged, or not UTF-8)."""
    content = fields["content_id"]
    while rows := list(itertools.islice(reader, size)):
        numbers = np.arange(lineno, lineno + len(rows))
        ok = [len(r) == width for r in rows]
        undecodable: dict[int, tuple[int, str, str, str]] = {}
        if _ESCAPED.search("".join(itertools.chain.from_iterable(rows))):  # bytes that are not UTF-8: which rows
            for i, r in enumerate(rows):
                found = _undecodable(name, int(numbers[i]), "".join(r), r, content)
                if found is not None:
                    undecodable[i] = found
                    ok[i] = False
        bad = []
        if not all(ok):
            bad = [undecodable.get(i) or _malformed(r, width, content, int(numbers[i]), name)
                   for i, (r, o) in enumerate(zip(rows, ok, strict=True)) if not o]
            rows = [r for r, o in zip(rows, ok, strict=True) if o]
            numbers = numbers[np.array(ok, bool)]
        columns = list(zip(*rows, strict=True)) if rows else [()] * width
        yield {k: pa.array(columns[i], pa.string()) for k, i in fields.items()}, numbers, bad
        lineno += len(ok)


# ---------------------------------------------------------------- column-wise records

# a value whose first and last characters are printable ASCII other than space: str.strip keeps it
_TRIMMED = (r"^[!-~]", r"[!-~]$")


def _stripped(a: pa.Array) -> pa.Array:
    """``v.strip() or None`` of every value: Python's own strip where the ends are not plain ASCII."""
    plain = pc.and_(pc.match_substring_regex(a, _TRIMMED[0]), pc.match_substring_regex(a, _TRIMMED[1]))
    if pc.all(plain).as_py() is not False:
        return a
    rest = pc.if_else(plain, pa.scalar(None, pa.string()), a)
    return pc.if_else(plain, a, per_distinct(lambda v: (v.strip() or None) if v is not None else None, rest))


def _page_extra(page: str | None) -> str | None:
    return extra_json({"eol_page_id": page, "hierarchy": None})


def _manifest_columns(cols: dict[str, pa.Array], bad: list[tuple[int, str, str, str]], options: Options) -> IngestBatch:
    """The batch ``_build`` makes of these rows page by page (records and rejects grouped by page in
    order of first appearance, rows in order within a page), then the unreadable rows."""
    n = len(cols["content_id"])
    nulls = pa.nulls(n, pa.string())
    get = {k: _stripped(cols[k]) if k in cols else nulls for k in MANIFEST_COLUMNS}
    media = pc.fill_null(get["content_id"], "None")  # str(None), as make_record_id is given
    rids = record_id_column(SOURCE, media)
    url, lic_raw, page = get["copy_url"], get["license"], get["page_id"]
    codes = normalise_license_column(lic_raw)
    no_image = np.asarray(pc.is_null(url).to_numpy(zero_copy_only=False), bool)
    unknown = np.asarray(pc.equal(codes, "unknown").to_numpy(zero_copy_only=False), bool) \
        if not options.keep_unknown_license else np.zeros(n, bool)
    reason = np.where(no_image, 1, np.where(unknown, 2, 0)).astype(np.int8)
    # each row's page group, numbered in order of the page's first row
    if n:
        groups = pc.dictionary_encode(page, null_encoding="encode").indices.to_numpy(zero_copy_only=False)
        _, first = np.unique(groups, return_index=True)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first, kind="stable")] = np.arange(len(first))
        group = rank[groups]
    else:
        group = np.zeros(0, np.int64)
    rej_rows = np.flatnonzero(reason != 0)
    rej_rows = rej_rows[np.argsort(group[rej_rows], kind="stable")]
    keep = np.flatnonzero(reason == 0)
    keep = keep[np.argsort(group[keep], kind="stable")]
    rejects = [_reject_table(rej_rows, reason, rids, lic_raw)]
    if bad:
        rejects.append(make_rejects([make_record_id(SOURCE, b[1]) for b in bad], STAGE, [b[3] for b in bad],
                                    [b[2] for b in bad]))
    rej = pa.concat_tables(rejects) if len(rejects) > 1 else rejects[0]
    if not len(keep):
        return IngestBatch(records=pa.table({}), rejects=rej)
    idx = pa.array(keep)
    k = {name: pc.take(a, idx) for name, a in get.items()}
    m = len(keep)
    owner = per_distinct(clean_name, k["owner"]) if "owner" in cols else pa.nulls(m, pa.string())
    values = {
        "record_id": pc.take(rids, idx), "source": pa.repeat(SOURCE, m), "media_id": pc.take(media, idx),
        "photo_key": _photo_key_of(k["source_url"], k["copy_url"]),
        "identifier": k["copy_url"], "license": pc.take(codes, idx), "license_raw": k["license"],
        "rights_holder": owner, "creator": owner, "references": k["source_url"],
        "source_taxon_id": k["page_id"], "extra": per_distinct(_page_extra, k["page_id"]),
    }
    return IngestBatch(records=from_columns(values, m), rejects=rej)


def _photo_key_of(source_url: pa.Array, url: pa.Array) -> pa.Array:
    """``photo_key_of(source_url, url)`` of every row (both stripped, ``url`` never null)."""
    ks, ku = photo_keys(source_url), photo_keys(url)
    inat_s = pc.fill_null(pc.starts_with(ks, "inat-photo-"), False)
    inat_u = pc.fill_null(pc.starts_with(ku, "inat-photo-"), False)
    other = pc.if_else(pc.is_valid(ks), ks, ku)
    return pc.if_else(inat_s, ks, pc.if_else(inat_u, ku, other))


def _reject_table(rows: np.ndarray, reason: np.ndarray, rids: pa.Array, lic_raw: pa.Array) -> pa.Table:
    if not len(rows):
        return REJECT_SCHEMA.empty_table()
    idx = pa.array(rows)
    r = reason[rows]
    names = pa.array(["", str(Reason.NO_IMAGE), str(Reason.UNKNOWN_LICENSE)], pa.string())
    licence = per_distinct(unknown_license_detail, pc.take(lic_raw, idx))
    detail = pc.if_else(pa.array(r == 1), "medium has no base_url / full-size copy URL", licence)
    return pa.Table.from_arrays([pc.take(rids, idx), pa.repeat(STAGE, len(rows)),
                                 pc.take(names, pa.array(r)), detail], schema=REJECT_SCHEMA)


CONNECTOR = EOLConnector()
