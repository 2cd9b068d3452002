"""EcoTaxa exports (TSV files, or zip archives holding TSVs and their images) read into records.

An EcoTaxa TSV has one row per image of an object. Its first line names the columns; an optional
second line gives each column's type, ``[t]`` text or ``[f]`` float, and is used to type values
(``nan`` and empty become null). ``object_annotation_category`` is the label, kept verbatim
(``detritus``, ``badfocus<artefact``, ``tail<Appendicularia``); ``object_annotation_hierarchy``
is the lineage, root first. Only ``validated`` rows are kept by default: ``predicted`` and
``dubious`` rows are rejected ``not_validated`` with their status. ``sample_``, ``acq_`` and
``process_`` columns go to ``extra``. The image is ``img_file_name`` resolved beside the TSV
(``file://``) or inside the zip (``zip://``), see ``sources.localuri``.
"""

from __future__ import annotations

import csv
import datetime
import io
import itertools
import json
import math
import operator
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
from pydantic import Field, field_validator

from schemas import Reason, make_rejects
from schemas.record import record_id_column
from sources.base import IngestBatch, SourceOptions, text_codec
from sources.localuri import FolderFiles, zip_member_uri, zip_uri_prefix

SOURCE = "ecotaxa"
STAGE = "ingest"
ANNOTATION_STATUSES: tuple[str, ...] = ("validated", "predicted", "dubious")
EXTRA_PREFIXES: tuple[str, ...] = ("sample_", "acq_", "process_")
# object_ columns that are about the annotation, not the object's measured features.
ANNOTATION_COLUMNS: tuple[str, ...] = (
    "object_annotation_person_name", "object_annotation_date",
    "object_annotation_time", "object_aphiaid", "object_annotation_category_id", "img_rank",
)
MAPPED_COLUMNS = frozenset({
    "img_file_name", "object_id", "object_lat", "object_lon", "object_date", "object_time",
    "object_depth_min", "object_depth_max", "object_annotation_category", "object_annotation_hierarchy",
    "object_annotation_status", "object_annotation_category_id", "object_link", "acq_instrument",
    # annotators' e-mail addresses are personal data with no use in a corpus: not carried over.
    "object_annotation_person_email",
})
_TYPE_CELL = re.compile(r"^\[(t|f)\]$", re.IGNORECASE)
_INT_TEXT = re.compile(r"^[+-]?\d+$")
_DATE = re.compile(r"\d{8}")
_TIME = re.compile(r"\d{1,6}")
_NULLS = frozenset({"", "nan", "na", "null", "none"})
_MIME = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "tif": "image/tiff",
         "tiff": "image/tiff", "bmp": "image/bmp", "gif": "image/gif", "webp": "image/webp"}


def is_type_row(cells: Iterable[str]) -> bool:
    """True when every cell is ``[t]`` or ``[f]`` (EcoTaxa's second header line)."""
    cells = list(cells)
    return bool(cells) and all(_TYPE_CELL.match(c.strip()) for c in cells)


def parse_type_row(cells: Iterable[str]) -> list[str]:
    """Column types from a type row: ``"t"`` (text) or ``"f"`` (float) per cell."""
    out = []
    for c in cells:
        m = _TYPE_CELL.match(c.strip())
        if not m:
            raise ValueError(f"not an EcoTaxa type cell: {c!r}")
        out.append(m.group(1).lower())
    return out


def typed_value(raw: str | None, kind: str) -> str | float | None:
    """One cell typed by its column kind; null for empty/``nan``; ``ValueError`` for a bad float."""
    if raw is None:
        return None
    value = raw.strip()
    if value.lower() in _NULLS:
        return None
    if kind == "f":
        f = float(value)
        if math.isnan(f) or math.isinf(f):
            return None
        # ids and counts typed [f] (object_aphiaid, img_rank) stay integers when written as such.
        return int(value) if _INT_TEXT.match(value) else f
    return value


def event_date(date: str | None, time: str | None) -> str | None:
    """ISO 8601 from EcoTaxa ``object_date`` (YYYYMMDD) and ``object_time`` (HHMMSS, leading zeros often lost)."""
    if not date:
        return None
    d = str(date).strip().split(".")[0]
    if not _DATE.fullmatch(d):
        raise ValueError(f"object_date {date!r} is not YYYYMMDD")
    try:
        datetime.date(int(d[:4]), int(d[4:6]), int(d[6:]))
    except ValueError:
        raise ValueError(f"object_date {date!r} is not a calendar date") from None
    iso = f"{d[:4]}-{d[4:6]}-{d[6:]}"
    if not time:
        return iso
    t = str(time).strip().split(".")[0]
    if not _TIME.fullmatch(t):
        raise ValueError(f"object_time {time!r} is not HHMMSS")
    t = t.zfill(6)
    hh, mm, ss = int(t[:2]), int(t[2:4]), int(t[4:])
    if hh > 23 or mm > 59 or ss > 59:
        raise ValueError(f"object_time {time!r} is not a time of day")
    return f"{iso}T{t[:2]}:{t[2:4]}:{t[4:]}"


def lineage(hierarchy: str | None) -> str | None:
    """EcoTaxa hierarchy (``>`` or ``|`` separated, root first) as ``|``-separated."""
    if not hierarchy:
        return None
    parts = [p.strip() for p in re.split(r"[>|]", hierarchy) if p.strip()]
    return "|".join(parts) or None


@dataclass
class Table:
    """Header, column kinds and the data rows of one TSV (row numbers are 1-based file lines)."""

    header: list[str]
    kinds: list[str]
    rows: Iterable[tuple[int, list[str]]]


def read_table(text: str) -> Table:
    """Split an EcoTaxa TSV into header, kinds (``t`` when there is no type row) and rows (a list)."""
    table = stream_table(io.StringIO(text))
    return Table(table.header, table.kinds, list(table.rows))


def stream_table(stream) -> Table:
    """:func:`read_table` of a text stream, its rows an iterator read as the stream is: an export
    larger than memory works (a 1 GB TSV took 10.8 GB read whole)."""
    reader = csv.reader(stream, delimiter="\t")
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return Table([], [], iter(()))
    rows = ((reader.line_num, r) for r in reader if any(c.strip() for c in r))
    first = next(rows, None)
    kinds = ["t"] * len(header)
    if first is not None and is_type_row(first[1]):
        kinds = parse_type_row(first[1])
        first = None
        if len(kinds) < len(header):
            kinds += ["t"] * (len(header) - len(kinds))
    return Table(header, kinds[:len(header)], rows if first is None else itertools.chain([first], rows))


class EcoTaxaOptions(SourceOptions):
    """``[sources.ecotaxa]``: reading EcoTaxa export TSVs and zips."""

    license: str = Field("unknown", description="licence code for every record (the export's licence, see PROVENANCE)")
    statuses: tuple[str, ...] = Field(("validated",), description="annotation statuses kept; others are rejected not_validated")
    require_image: bool = Field(True, description="reject rows whose image is not beside the TSV / in the zip (no_image)")
    instrument: str | None = Field(None, description="instrument when the export has no acq_instrument column")
    dataset: str | None = Field(None, description="source_dataset of every record; default: the export's file name")
    keep_object_features: bool = Field(False, description="also keep the object_ feature columns (area, esd...) in extra")
    encoding: str = Field("utf-8", description="text encoding of the TSVs (a Python codec name: utf-8, latin-1, "
                          "cp1252...); EcoTaxa writes UTF-8, older tools and spreadsheets often latin-1")
    batch_size: int = Field(50_000, gt=0, description="records per yielded batch")

    @field_validator("encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        return text_codec(value)


def _open_zip(path: str | Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise ValueError(f"ecotaxa: {path} is not a zip archive or is damaged ({exc}); export it again") from exc


def _text(raw, encoding: str = "utf-8") -> io.TextIOWrapper:
    """A binary stream as text in ``encoding`` (for UTF-8, a BOM dropped); bytes that do not
    decode stay as lone surrogates, so the rows that hold them are rejected ``undecodable_text``
    instead of being changed silently. Lines end at ``\\n`` only, untranslated, as the csv module wants."""
    encoding = "utf-8-sig" if encoding == "utf-8" else encoding
    return io.TextIOWrapper(raw, encoding=encoding, errors="surrogateescape", newline="\n")


_UNDECODED = re.compile("[\udc80-\udcff]")


def undecodable_detail(name: str, line: int, field: str, encoding: str) -> str:
    """The reject detail of line ``line`` of TSV ``name`` holding bytes that do not decode in
    ``encoding``: the bytes (up to 60), and the two ways to read such a file (the option, or
    re-encoding it as UTF-8)."""
    try:
        raw = field.encode(encoding, "surrogateescape")[:60]
    except UnicodeError:  # a codec that cannot give the bytes back: they are shown as UTF-8 would hold them
        raw = field.encode("utf-8", "surrogateescape")[:60]
    if encoding == "utf-8":
        fix = 'if the file is in another encoding, set [sources.ecotaxa] encoding = "latin-1" (or its codec)'
    else:
        fix = f"[sources.ecotaxa] encoding is {encoding!r}: if the file is in another one, set that instead"
    stem = name.rsplit(".", 1)[0]
    return (f"{name} line {line}: bytes that are not {'UTF-8' if encoding == 'utf-8' else encoding} in {raw!r}; "
            f"{fix}, or re-encode it as UTF-8 (iconv -f latin1 -t utf-8 {name} > {stem}-utf8.tsv)")


_TYPED_KEPT = 4096  # results kept per cache (one column's values, whole rows' extras): bounds their memory


def _task_stream(task: str, encoding: str = "utf-8") -> tuple[io.TextIOWrapper, str, zipfile.ZipFile | None, str]:
    """``(tsv text stream, dataset name, open zip or None, tsv member dir)`` for a task."""
    if "!/" in task:
        archive, _, member = task.partition("!/")
        zf = _open_zip(archive)
        try:
            raw = zf.open(member)
        except (zipfile.BadZipFile, OSError, EOFError, zlib.error, KeyError) as exc:
            zf.close()
            raise _damaged(task, exc) from exc
        return _text(raw, encoding), Path(archive).stem, zf, posixpath.dirname(member)
    return _text(open(task, "rb"), encoding), Path(task).stem, None, ""


def _damaged(task: str, exc: BaseException) -> ValueError:
    archive, _, member = task.partition("!/")
    return ValueError(f"ecotaxa: {member} in {archive} cannot be read, the zip is damaged ({exc}); export it again")


class EcoTaxaConnector:
    """Connector for EcoTaxa exports: one task per TSV (on disk or inside a zip)."""

    name = SOURCE
    Options = EcoTaxaOptions

    def tasks(self, input: str | None, options: EcoTaxaOptions) -> list[str]:
        """TSVs and zip members ``archive.zip!/member.tsv`` under ``input``, sorted."""
        if not input:
            raise ValueError("the ecotaxa source needs INPUT: a TSV, an export zip, or a folder of them")
        root = Path(input)
        if not root.exists():
            raise FileNotFoundError(f"EcoTaxa input {input!r} does not exist")
        files = [root] if root.is_file() else sorted(
            p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in (".tsv", ".zip"))
        out: list[str] = []
        for f in files:
            if f.suffix.lower() == ".zip":
                with _open_zip(f) as zf:
                    out += [f"{f.resolve()}!/{m}" for m in sorted(zf.namelist())
                            if m.lower().endswith(".tsv") and not m.startswith("__MACOSX/")]
            else:
                out.append(str(f.resolve()))
        return out

    def read(self, task: str, options: EcoTaxaOptions) -> Iterator[IngestBatch]:
        """Records of one TSV; bad rows and non-validated rows become rejects."""
        stream, stem, zf, member_dir = _task_stream(task, options.encoding)
        try:
            yield from _read_tsv(task, stream, stem, zf, member_dir, options)
        except (zipfile.BadZipFile, EOFError, zlib.error) as exc:  # found while the member is read
            raise _damaged(task, exc) from exc
        finally:
            stream.close()
            if zf is not None:
                zf.close()


def _read_tsv(task: str, stream, stem: str, zf: zipfile.ZipFile | None, member_dir: str,
              options: EcoTaxaOptions) -> Iterator[IngestBatch]:
    table = stream_table(stream)
    col = {name: i for i, name in enumerate(table.header)}
    id_at = col.get("object_id")
    members = set(zf.namelist()) if zf is not None else set()
    zip_prefix = zip_uri_prefix(zf.filename) if zf is not None else ""
    base_dir = Path(task).parent
    files = FolderFiles(base_dir) if zf is None else None
    name = Path(task.split("!/")[-1]).name
    dataset = options.dataset or stem
    accept = set(options.statuses)
    extra_cols = [
        (i, name) for i, name in enumerate(table.header)
        if name not in MAPPED_COLUMNS and (
            name.startswith(EXTRA_PREFIXES) or name in ANNOTATION_COLUMNS
            or (options.keep_object_features and name.startswith("object_")))
    ]
    rows: list[dict] = []
    rej_ids: list[str] = []
    rej_reasons: list[str] = []
    rej_details: list[str] = []

    # rows and rejects carry the text their record id is made of (the media id, or where a row
    # without one is): the ids are made column-wise per batch (:func:`_batch`)
    def reject(rid: str, reason: Reason, detail: str) -> None:
        rej_ids.append(rid)
        rej_reasons.append(str(reason))
        rej_details.append(detail)

    def cell(raw: list[str], name: str, kind: str | None = None):
        i = col.get(name)
        if i is None:
            return None
        return typed_value(raw[i], kind or table.kinds[i])

    extras = _Extras(extra_cols, table.kinds)
    # labels, statuses and the instrument repeat from row to row: each text's result is kept
    memo: dict[str, dict[str, object]] = {}

    def repeated(raw: list[str], name: str, make):
        i = col.get(name)
        if i is None:
            return make(None)
        seen = memo.setdefault(name, {})
        value = seen.get(raw[i], _MISSING)
        if value is _MISSING:
            value = make(raw[i])
            if len(seen) < _TYPED_KEPT:
                seen[raw[i]] = value
        return value

    def text(v):
        return typed_value(v, "t")

    def status_of(v):
        return (typed_value(v, "t") or "").lower() or None

    def lineage_of(v):
        return lineage(typed_value(v, "t"))

    def taxon_id_of(v):
        return _id_text(typed_value(v, "t"))

    for line, raw in table.rows:
        if id_at is None:
            # not an EcoTaxa export (or its header line is damaged): no row of it could be identified
            raise ValueError(f"ecotaxa: {task} has no object_id column (its header starts "
                             f"{_UNDECODED.sub(chr(0xFFFD), ', '.join(table.header[:6]))[:200]}); "
                             "give an EcoTaxa export TSV (or a zip of them)")
        where = f"{name} line {line}"
        object_id = raw[id_at].strip() if len(raw) > id_at else ""
        # undecodable bytes are lone surrogates: an ASCII row holds none (a flag of the joined
        # text, no scan); else one search of the whole row, then of its fields when it has some
        joined = "\t".join(raw)
        bad = None if joined.isascii() or not _UNDECODED.search(joined) else \
            next((m for m in map(_UNDECODED.search, raw) if m), None)
        if bad is not None:
            reject(f"{task}#{line}", Reason.UNDECODABLE_TEXT,
                   undecodable_detail(name, line, bad.string, options.encoding))
            continue
        if len(raw) != len(table.header):
            reject(f"{task}#{line}", Reason.MALFORMED_ROW, f"{where}: {len(raw)} fields, header has {len(table.header)}")
            continue
        if not object_id:
            reject(f"{task}#{line}", Reason.MALFORMED_ROW, f"{where}: no object_id")
            continue
        rank = raw[col["img_rank"]].strip() if "img_rank" in col else ""
        rank = rank.split(".")[0] if rank.lower() not in _NULLS else ""
        # rank 0 is the object's first image: its media id is the object id itself.
        media_id = f"{object_id}:{rank}" if rank not in ("", "0") else object_id
        rid = media_id
        try:
            lat = cell(raw, "object_lat", "f")
            lon = cell(raw, "object_lon", "f")
            dmin = cell(raw, "object_depth_min", "f")
            dmax = cell(raw, "object_depth_max", "f")
            date = event_date(cell(raw, "object_date", "t"), cell(raw, "object_time", "t"))
        except ValueError as e:
            reject(rid, Reason.MALFORMED_ROW, f"{where}: {e}")
            continue
        if (lat is not None and not -90 <= lat <= 90) or (lon is not None and not -180 <= lon <= 180):
            reject(rid, Reason.BAD_COORDINATES, f"{where}: lat={lat} lon={lon}")
            continue
        status = repeated(raw, "object_annotation_status", status_of)
        if status not in accept:
            reject(rid, Reason.NOT_VALIDATED, f"{where}: annotation_status={status or '(none)'}")
            continue
        image = cell(raw, "img_file_name", "t")
        identifier = None
        if image:
            if zf is not None:
                member = posixpath.normpath(posixpath.join(member_dir, image.replace("\\", "/")))
                if member not in members and image in members:
                    member = image
                if member in members:
                    identifier = zip_member_uri(zip_prefix, member)
            elif files.is_file(image):
                identifier = files.uri(image)
        if identifier is None:
            if options.require_image:
                reject(rid, Reason.NO_IMAGE, f"{where}: image {image!r} not found in the export")
                continue
            if image:
                identifier = files.uri(image) if zf is None else zip_member_uri(zip_prefix, image)
        if identifier is None:
            reject(rid, Reason.NO_IMAGE, f"{where}: no img_file_name")
            continue
        ext = image.rsplit(".", 1)[-1].lower() if image and "." in image else ""
        rows.append({
            "record_id": rid,
            "source": SOURCE,
            "source_dataset": dataset,
            "occurrence_id": object_id,
            "media_id": media_id,
            "identifier": identifier,
            "format": _MIME.get(ext),
            "license": options.license,
            "references": cell(raw, "object_link", "t"),
            "verbatim_name": repeated(raw, "object_annotation_category", text),
            "verbatim_lineage": repeated(raw, "object_annotation_hierarchy", lineage_of),
            "source_taxon_id": repeated(raw, "object_annotation_category_id", taxon_id_of),
            "annotation_status": status,
            "instrument": repeated(raw, "acq_instrument", text) or options.instrument,
            "decimal_latitude": lat,
            "decimal_longitude": lon,
            "depth_min_m": dmin,
            "depth_max_m": dmax,
            "event_date": date,
            "extra": extras.json(raw),
        })
        if len(rows) >= options.batch_size:
            yield _batch(rows, rej_ids, rej_reasons, rej_details)
            rows, rej_ids, rej_reasons, rej_details = [], [], [], []
    yield _batch(rows, rej_ids, rej_reasons, rej_details)


class _Extras:
    """The ``extra`` JSON of a row's ``sample_``/``acq_``/``process_`` (and kept ``object_``)
    cells: exactly :func:`~schemas.record.extra_json` of their typed values, made from cached
    pieces. Those values repeat from row to row (one sample, one acquisition): a row whose cells
    were all seen before gets its text from one lookup, and each column keeps the ``"key": value``
    text of its values, so a new row only joins pieces."""

    def __init__(self, columns: list[tuple[int, str]], kinds: list[str]):
        last = {key: i for i, key in columns}  # a repeated header name: the last cell wins, as in a dict
        self.keys = sorted(last)
        self.index = [last[k] for k in self.keys]
        self.kinds = [kinds[i] for i in self.index]
        self.heads = [json.dumps(k, ensure_ascii=False) + ": " for k in self.keys]
        self.pieces: list[dict[str, str | None]] = [{} for _ in self.keys]
        self.rows: dict[tuple[str, ...], str | None] = {}
        n = len(self.index)
        self.cells = (operator.itemgetter(*self.index) if n > 1 else
                      (lambda raw, i=self.index[0]: (raw[i],)) if n == 1 else (lambda raw: ()))

    def _piece(self, n: int, raw: str) -> str | None:
        try:
            value = typed_value(raw, self.kinds[n])
        except ValueError:
            value = raw.strip()  # a feature column typed [f] holding text: kept as text, the row is not lost
        if value is None:  # empty and nan cells (typed_value never gives an empty text)
            return None
        return self.heads[n] + json.dumps(value, ensure_ascii=False, default=str)

    def json(self, raw: list[str]) -> str | None:
        cells = self.cells(raw)
        text = self.rows.get(cells, _MISSING)
        if text is not _MISSING:
            return text
        parts = []
        for n, cell in enumerate(cells):
            seen = self.pieces[n]
            piece = seen.get(cell, _MISSING)
            if piece is _MISSING:
                piece = self._piece(n, cell)
                if len(seen) < _TYPED_KEPT:
                    seen[cell] = piece
            if piece is not None:
                parts.append(piece)
        text = "{" + ", ".join(parts) + "}" if parts else None
        if len(self.rows) < _TYPED_KEPT:
            self.rows[cells] = text
        return text


_MISSING = object()


def _id_text(value: str | None) -> str | None:
    return value.split(".")[0] if value and re.fullmatch(r"\d+\.0+", value) else value


_STRING_COLUMNS = ("record_id", "source", "source_dataset", "occurrence_id", "media_id", "identifier", "format",
                   "license", "references", "verbatim_name", "verbatim_lineage", "source_taxon_id",
                   "annotation_status", "instrument", "event_date", "extra")
_FLOAT_COLUMNS = ("decimal_latitude", "decimal_longitude", "depth_min_m", "depth_max_m")


def _batch(rows, rej_ids, rej_reasons, rej_details) -> IngestBatch:
    """Records and rejects of a batch; their ``record_id`` fields hold the text each id is made of."""
    cols = {c: pa.array([r[c] for r in rows], pa.string()) for c in _STRING_COLUMNS}
    cols["record_id"] = record_id_column(SOURCE, cols["record_id"])
    cols.update({c: pa.array([r[c] for r in rows], pa.float64()) for c in _FLOAT_COLUMNS})
    ids = record_id_column(SOURCE, pa.array(rej_ids, pa.string())).to_pylist()
    return IngestBatch(records=pa.table(cols), rejects=make_rejects(ids, STAGE, rej_reasons, rej_details))


CONNECTOR = EcoTaxaConnector()
