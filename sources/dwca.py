"""Streaming Darwin Core Archive reader: meta.xml decides files and columns; rows come in batches.

Members are read straight from the zip (never unpacked). Unquoted files (GBIF downloads) take
the fast path: a background thread inflates the member (ISA-L when ``isal`` is installed, else
zlib; both release the GIL) into recycled buffers, cut into chunks at line ends, which a second
thread parses one chunk ahead with pyarrow's CSV parser, only the wanted columns converted. Quoted files go through pyarrow's streaming
reader, and what neither can take (multi-character delimiters) through a Python line parser. Bad rows
(wrong field count, bytes that do not decode) come back as :class:`BadRow` with the row's id where
it can be read; a broken archive (not a zip, truncated, no or wrong meta.xml, a delimiter that
does not match the file) raises :class:`DwcaError` with what was wrong.
"""

from __future__ import annotations

import queue
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree

import pyarrow as pa
import pyarrow.csv as pacsv

try:  # ISA-L inflates 2-4x faster than zlib; optional, zlib is the fallback
    from isal import isal_zlib as _inflate_lib
except ImportError:  # pragma: no cover - depends on the environment
    _inflate_lib = zlib

DEFAULT_BATCH_ROWS = 100_000
CHUNK_BYTES = 16 << 20  # inflated bytes per parse call of the fast path
PARSE_BLOCK_BYTES = 512 << 10  # bytes per block of arrow's CSV parser in the fast path
NEWLINE = b"\n"
_ESCAPES = {"\\t": "\t", "\\n": "\n", "\\r": "\r", "\\r\\n": "\r\n", "\\\\": "\\", "\\|": "|"}


class DwcaError(ValueError):
    """The archive cannot be read as a Darwin Core Archive; the message says why."""


class NoMetaError(DwcaError):
    """The zip or folder has no meta.xml: it is not a Darwin Core Archive at all."""


@dataclass(frozen=True)
class Column:
    """One ``<field>`` of meta.xml: a column index (or none, for a constant) and its term."""

    term: str
    index: int | None
    default: str | None = None

    @property
    def name(self) -> str:
        return local_name(self.term)


@dataclass(frozen=True)
class FileSpec:
    """One data file (core or extension) as meta.xml describes it."""

    location: str
    row_type: str
    columns: tuple[Column, ...]
    id_index: int | None
    delimiter: str = "\t"
    quote: str = ""
    encoding: str = "UTF-8"
    ignore_header_lines: int = 0
    is_core: bool = False

    @property
    def names(self) -> list[str]:
        seen: list[str] = []
        for c in self.columns:
            if c.name not in seen:
                seen.append(c.name)
        return seen

    def column(self, name: str) -> Column | None:
        """The first column whose term's local name (or full term) is ``name``."""
        for c in self.columns:
            if c.name == name or c.term == name:
                return c
        return None


@dataclass(frozen=True)
class Archive:
    """A Darwin Core Archive: where it is and what its meta.xml says."""

    path: Path
    core: FileSpec
    extensions: tuple[FileSpec, ...] = ()

    def extension(self, row_type: str) -> FileSpec | None:
        """The extension whose rowType ends with ``row_type`` (e.g. ``Multimedia``)."""
        for ext in self.extensions:
            if ext.row_type.rstrip("/").endswith(row_type):
                return ext
        return None

    def file_bytes(self, spec: FileSpec) -> int:
        """How many bytes ``spec``'s file holds uncompressed (the zip's directory says; 0 if it is
        not there), known before a row is read."""
        src = _Source(self.path)
        try:
            member = src.find(spec.location)
            if member is None:
                return 0
            if src.zip is not None:
                return src.zip.getinfo(member).file_size
            return (self.path / member).stat().st_size
        finally:
            src.close()


@dataclass(frozen=True)
class BadRow:
    """A row that could not be read: its id if one could be cut from it, a reason and details."""

    row_id: str | None
    reason: str  # a schemas.Reason value
    detail: str


@dataclass
class DwcaBatch:
    """Up to ``batch_rows`` rows as string columns named by term local name, and the bad rows."""

    table: pa.Table
    bad: list[BadRow] = field(default_factory=list)


def local_name(term: str) -> str:
    return term.rstrip("/").rsplit("/", 1)[-1].rsplit("#", 1)[-1]


def _unescape(value: str | None, default: str) -> str:
    if value is None:
        return default
    return _ESCAPES.get(value, value)


def _parse_spec(el: ElementTree.Element, ns: str, is_core: bool) -> FileSpec:
    loc = el.find(f"{ns}files/{ns}location")
    if loc is None or not (loc.text or "").strip():
        raise DwcaError(f"meta.xml: <{'core' if is_core else 'extension'}> has no <files><location>")
    id_el = el.find(f"{ns}id" if is_core else f"{ns}coreid")
    id_index = int(id_el.get("index")) if id_el is not None and id_el.get("index") is not None else None
    columns = []
    for f in el.findall(f"{ns}field"):
        term = f.get("term")
        if not term:
            raise DwcaError("meta.xml: a <field> has no term")
        idx = f.get("index")
        try:
            columns.append(Column(term, int(idx) if idx is not None else None, f.get("default")))
        except ValueError as exc:
            raise DwcaError(f"meta.xml: field {term} has a non-numeric index {idx!r}") from exc
    try:
        header_lines = int(el.get("ignoreHeaderLines", "0") or 0)
    except ValueError as exc:
        raise DwcaError(f"meta.xml: ignoreHeaderLines={el.get('ignoreHeaderLines')!r}") from exc
    return FileSpec(
        location=loc.text.strip(),
        row_type=el.get("rowType", ""),
        columns=tuple(columns),
        id_index=id_index,
        delimiter=_unescape(el.get("fieldsTerminatedBy"), ","),
        quote=_unescape(el.get("fieldsEnclosedBy"), '"') if el.get("fieldsEnclosedBy") is not None else '"',
        encoding=el.get("encoding") or "UTF-8",
        ignore_header_lines=header_lines,
        is_core=is_core,
    )


def parse_meta(xml: bytes | str) -> tuple[FileSpec, tuple[FileSpec, ...]]:
    """Core and extension specs from meta.xml text (defaults as in the DwC text guide)."""
    try:
        root = ElementTree.fromstring(xml)
    except ElementTree.ParseError as exc:
        raise DwcaError(f"meta.xml is not well-formed XML: {exc}") from exc
    ns = root.tag[: root.tag.index("}") + 1] if root.tag.startswith("{") else ""
    if root.tag != f"{ns}archive":
        raise DwcaError(f"meta.xml: root element is <{root.tag}>, expected <archive>")
    core_el = root.find(f"{ns}core")
    if core_el is None:
        raise DwcaError("meta.xml has no <core> element")
    core = _parse_spec(core_el, ns, True)
    exts = tuple(_parse_spec(e, ns, False) for e in root.findall(f"{ns}extension"))
    return core, exts


class _Source:
    """Opens archive members from a zip file or an unpacked folder."""

    def __init__(self, path: Path):
        self.path = path
        self.zip: zipfile.ZipFile | None = None
        if path.is_dir():
            return
        try:
            self.zip = zipfile.ZipFile(path)
        except FileNotFoundError:
            raise
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise DwcaError(f"{path}: not a zip archive or truncated ({exc})") from exc

    def names(self) -> list[str]:
        if self.zip is not None:
            return self.zip.namelist()
        return [str(p.relative_to(self.path)) for p in self.path.rglob("*") if p.is_file()]

    def find(self, location: str) -> str | None:
        names = self.names()
        if location in names:
            return location
        # some archives put everything under one top folder; never match __MACOSX junk
        for n in names:
            if n.endswith("/" + location) and not n.startswith("__MACOSX/"):
                return n
        return None

    def open(self, name: str):
        if self.zip is None:
            return open(self.path / name, "rb")
        try:
            return self.zip.open(name)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            # a damaged central directory: a member's offset or header points nowhere
            raise DwcaError(f"{self.path}: member {name!r} cannot be opened, the zip is damaged ({exc}); "
                            "download the archive again") from exc

    def close(self) -> None:
        if self.zip is not None:
            self.zip.close()


def open_archive(path: str | Path) -> Archive:
    """Read meta.xml and check that every file it names is in the archive."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such archive: {path}")
    src = _Source(path)
    try:
        meta_name = src.find("meta.xml")
        if meta_name is None:
            raise NoMetaError(f"{path}: no meta.xml in the archive, so it is not a Darwin Core Archive "
                              f"(members: {src.names()[:10]})")
        try:
            with src.open(meta_name) as fh:
                core, exts = parse_meta(fh.read())
        except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
            raise DwcaError(f"{path}: meta.xml is corrupt ({exc})") from exc
        for spec in (core, *exts):
            if src.find(spec.location) is None:
                raise DwcaError(f"{path}: meta.xml names {spec.location!r}, which is not in the archive")
    finally:
        src.close()
    return Archive(path, core, exts)


def parse_line(line: str, delimiter: str = "\t", quote: str = "") -> list[str]:
    """Split one line into fields; with ``quote``, CSV rules (doubled quote = literal quote)."""
    line = line.rstrip("\r\n")
    if not quote:
        return line.split(delimiter)
    fields: list[str] = []
    buf: list[str] = []
    i, n = 0, len(line)
    dl, ql = len(delimiter), len(quote)
    at_start = True
    in_quotes = False
    while i < n:
        if in_quotes:
            if line.startswith(quote, i):
                if line.startswith(quote, i + ql):
                    buf.append(quote)
                    i += 2 * ql
                    continue
                in_quotes = False
                i += ql
                continue
            buf.append(line[i])
            i += 1
            continue
        if at_start and line.startswith(quote, i):
            in_quotes = True
            at_start = False
            i += ql
            continue
        if line.startswith(delimiter, i):
            fields.append("".join(buf))
            buf = []
            at_start = True
            i += dl
            continue
        buf.append(line[i])
        at_start = False
        i += 1
    fields.append("".join(buf))
    return fields


def format_line(fields: list[str], delimiter: str = "\t", quote: str = "") -> str:
    """Inverse of :func:`parse_line` (quotes only the fields that need it)."""
    if not quote:
        return delimiter.join(fields)
    out = []
    for f in fields:
        if delimiter in f or quote in f or "\n" in f or "\r" in f:
            f = quote + f.replace(quote, quote + quote) + quote
        out.append(f)
    return delimiter.join(out)


def _first_line(src: _Source, name: str, encoding: str) -> str:
    try:
        with src.open(name) as fh:
            raw = fh.readline(1 << 22)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DwcaError(f"{name}: corrupt or truncated at its start ({exc})") from exc
    return raw.decode(encoding, errors="replace").lstrip("\ufeff")


def _expected_width(spec: FileSpec, first: str) -> int:
    indexed = [c.index for c in spec.columns if c.index is not None]
    if spec.id_index is not None:
        indexed.append(spec.id_index)
    need = max(indexed) + 1 if indexed else 1
    got = len(parse_line(first, spec.delimiter, spec.quote)) if first.strip() else need
    if got < need:
        others = {"\t": "tab", ",": "comma", ";": "semicolon", "|": "pipe"}
        guess = [name for d, name in others.items() if d != spec.delimiter and first.count(d) >= need - 1]
        hint = f"; the file looks {guess[0]}-separated" if guess else ""
        raise DwcaError(
            f"{spec.location}: meta.xml says fields are separated by {spec.delimiter!r} and there are "
            f"{need} of them, but the first line splits into {got}{hint}"
        )
    return got


def _row_id(text: str | None, spec: FileSpec) -> str | None:
    if text is None or spec.id_index is None:
        return None
    parts = parse_line(text, spec.delimiter, spec.quote)
    return parts[spec.id_index] if len(parts) > spec.id_index and parts[spec.id_index] else None


def _decode_columns(batch: pa.RecordBatch, spec: FileSpec, id_col: str | None) -> tuple[pa.Table, list[BadRow]]:
    """Binary columns to strings; rows with bytes that are not valid UTF-8 become bad rows."""
    try:
        return pa.Table.from_batches([batch.cast(pa.schema([(n, pa.string()) for n in batch.schema.names]))]), []
    except (pa.ArrowInvalid, UnicodeDecodeError):
        pass
    bad_rows: set[int] = set()
    details: dict[int, str] = {}
    for name in batch.schema.names:
        col = batch.column(name)
        try:
            col.cast(pa.string())
            continue
        except pa.ArrowInvalid:
            pass
        for i, v in enumerate(col.to_pylist()):
            if v is None:
                continue
            try:
                v.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad_rows.add(i)
                term = next((c.name for c in spec.columns if f"c{c.index}" == name), name)
                details.setdefault(i, f"column {term}: {exc.reason} at byte {exc.start} of {v[:40]!r}")
    keep = [i for i in range(batch.num_rows) if i not in bad_rows]
    good = pa.Table.from_batches([batch]).take(pa.array(keep, pa.int64()))
    good = good.cast(pa.schema([(n, pa.string()) for n in good.schema.names]))
    bad = []
    for i in sorted(bad_rows):
        rid = None
        if id_col is not None:
            raw = batch.column(id_col)[i].as_py()
            rid = raw.decode("utf-8", errors="replace") if raw else None
        bad.append(BadRow(rid, "undecodable_text", f"{spec.location}: {details[i]}"))
    return good, bad


def _finish(table: pa.Table, spec: FileSpec, wanted: list[str], index_of: dict[str, int | None]) -> pa.Table:
    cols, names = [], []
    n = table.num_rows
    for name in wanted:
        idx = index_of.get(name)
        if idx is not None and f"c{idx}" in table.column_names:
            cols.append(table.column(f"c{idx}"))
        else:
            col = spec.column(name)
            default = col.default if col is not None else None
            cols.append(pa.array([default] * n, pa.string()))
        names.append(name)
    return pa.table(cols, names=names)


def read_file(
    archive: Archive,
    spec: FileSpec,
    columns: list[str] | None = None,
    batch_rows: int = DEFAULT_BATCH_ROWS,
    block_bytes: int = CHUNK_BYTES,
) -> Iterator[DwcaBatch]:
    """Stream ``spec``'s rows in batches of at most ``batch_rows``.

    ``columns`` are term local names (or full terms); ``None`` means all. The core's or
    extension's id column is always included under the name ``_id``. Missing columns come back
    as nulls (or the meta.xml default). Empty strings stay empty strings: callers decide.
    """
    src = _Source(archive.path)
    try:
        member = src.find(spec.location)
        if member is None:
            raise DwcaError(f"{spec.location} is not in {archive.path}")
        first = _first_line(src, member, spec.encoding)
        width = _expected_width(spec, first)
        wanted = list(columns) if columns is not None else spec.names
        index_of: dict[str, int | None] = {}
        for name in wanted:
            col = spec.column(name)
            index_of[name] = col.index if col is not None else None
        wanted = ["_id", *[w for w in wanted if w != "_id"]]
        index_of["_id"] = spec.id_index
        if len(spec.delimiter) != 1 or len(spec.quote) > 1:
            yield from _read_python(src, member, spec, wanted, index_of, batch_rows)
        elif not spec.quote and _arrow_encoding(spec.encoding) == "utf8":
            yield from _read_chunked(src, member, spec, width, wanted, index_of, batch_rows,
                                     max(block_bytes, 1 << 12))
        else:
            yield from _read_arrow(src, member, spec, width, wanted, index_of, batch_rows, block_bytes)
    finally:
        src.close()


class _Rebatcher:
    """Cuts parsed tables into batches of ``batch_rows``; bad rows go out with the next batch.

    At the end a last, possibly short, batch carries what is left (an empty one when the file had
    no rows at all, so a reader always yields its columns).
    """

    def __init__(self, batch_rows: int, finish, include: list[str]):
        self.batch_rows, self.finish, self.include = batch_rows, finish, include
        self.rows = 0
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.invalid: list[BadRow] = []

    def add(self, table: pa.Table, bad: list[BadRow]) -> Iterator[DwcaBatch]:
        self.invalid.extend(bad)
        self.rows += table.num_rows
        self.pending.append(table)
        self.pending_rows += table.num_rows
        while self.pending_rows >= self.batch_rows:
            whole = pa.concat_tables(self.pending)
            out, rest = whole.slice(0, self.batch_rows), whole.slice(self.batch_rows)
            yield DwcaBatch(self.finish(out), self.invalid)
            self.invalid = []
            self.pending, self.pending_rows = [rest], rest.num_rows

    def close(self, bad: list[BadRow] = ()) -> Iterator[DwcaBatch]:
        self.invalid.extend(bad)
        if self.pending_rows or self.invalid or not self.rows:
            whole = pa.concat_tables(self.pending) if self.pending else \
                pa.table({c: pa.array([], pa.string()) for c in self.include})
            yield DwcaBatch(self.finish(whole), self.invalid)


def _read_arrow(src, member, spec, width, wanted, index_of, batch_rows, block_bytes) -> Iterator[DwcaBatch]:
    names = [f"c{i}" for i in range(width)]
    include = sorted({f"c{i}" for i in index_of.values() if i is not None and i < width},
                     key=lambda c: int(c[1:]))
    invalid: list[BadRow] = []

    def on_invalid(row) -> str:
        invalid.append(BadRow(_row_id(row.text, spec), "malformed_row",
                              f"{spec.location}: expected {row.expected_columns} fields, got "
                              f"{row.actual_columns}" + (f" (line {row.number})" if row.number else "")))
        return "skip"

    read_opts = pacsv.ReadOptions(column_names=names, skip_rows=spec.ignore_header_lines,
                                  block_size=block_bytes, encoding=_arrow_encoding(spec.encoding))
    parse_opts = pacsv.ParseOptions(delimiter=spec.delimiter, quote_char=spec.quote or False,
                                    double_quote=True, newlines_in_values=bool(spec.quote),
                                    invalid_row_handler=on_invalid)
    conv_opts = pacsv.ConvertOptions(include_columns=include, column_types={c: pa.binary() for c in include},
                                     strings_can_be_null=False, quoted_strings_can_be_null=False,
                                     null_values=[])
    id_col = f"c{spec.id_index}" if spec.id_index is not None else None
    batches = _Rebatcher(batch_rows, lambda t: _finish(t, spec, wanted, index_of), include)
    try:
        stream = src.open(member)
        reader = pacsv.open_csv(stream, read_options=read_opts, parse_options=parse_opts,
                                convert_options=conv_opts)
        for batch in reader:
            table, bad = _decode_columns(batch, spec, id_col)
            # the ragged rows the parser reported while reading this batch come before its bad bytes
            ragged, invalid[:] = invalid[:], []
            yield from batches.add(table, ragged + bad)
        yield from batches.close(invalid)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DwcaError(f"{member}: corrupt or truncated after {batches.rows} rows ({exc})") from exc
    except pa.ArrowInvalid as exc:
        raise DwcaError(f"{member}: unreadable after {batches.rows} rows ({exc})") from exc


def _arrow_encoding(encoding: str) -> str:
    return "utf8" if encoding.lower().replace("-", "").replace("_", "") == "utf8" else encoding


def _read_python(src, member, spec, wanted, index_of, batch_rows) -> Iterator[DwcaBatch]:
    cols: dict[str, list[str | None]] = {w: [] for w in wanted}
    bad: list[BadRow] = []
    need = max([i for i in index_of.values() if i is not None], default=0) + 1
    encoding = "utf-8" if _arrow_encoding(spec.encoding) == "utf8" else spec.encoding
    try:
        with src.open(member) as raw:
            lineno = 0
            for line in raw:
                lineno += 1
                if lineno <= spec.ignore_header_lines or not line.strip(b"\r\n"):
                    continue
                try:
                    s = line.decode(encoding)
                except UnicodeDecodeError as exc:
                    rid = _row_id(line.decode(encoding, errors="replace"), spec)
                    bad.append(BadRow(rid, "undecodable_text", f"{spec.location} line {lineno}: {exc.reason}"))
                    continue
                parts = parse_line(s, spec.delimiter, spec.quote)
                if len(parts) < need:
                    bad.append(BadRow(_row_id(s, spec), "malformed_row",
                                      f"{spec.location} line {lineno}: expected {need} fields, got {len(parts)}"))
                    continue
                for w in wanted:
                    i = index_of[w]
                    cols[w].append(parts[i] if i is not None else (spec.column(w).default if spec.column(w) else None))
                if len(cols[wanted[0]]) >= batch_rows:
                    yield DwcaBatch(pa.table({w: pa.array(v, pa.string()) for w, v in cols.items()}), bad)
                    cols, bad = {w: [] for w in wanted}, []
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise DwcaError(f"{member}: corrupt or truncated ({exc})") from exc
    yield DwcaBatch(pa.table({w: pa.array(v, pa.string()) for w, v in cols.items()}), bad)


def _zip_member_range(path: Path, info: zipfile.ZipInfo) -> int:
    """Offset of a member's compressed bytes (after its local header, whose extra field may differ)."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(30)
    if len(header) < 30 or header[:4] != b"PK\x03\x04":
        raise DwcaError(f"{info.filename}: bad local header in the zip")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len


PIECE_BYTES = 256 << 10  # inflated bytes per step: small enough for malloc to reuse (no fresh pages)
READ_BYTES = 64 << 10  # compressed bytes per file read: about one piece inflated (little leftover to copy)


def _raw_blocks(src: _Source, member: str, piece_bytes: int = PIECE_BYTES) -> Iterator[bytes]:
    """The member's uncompressed bytes in pieces of at most ``piece_bytes``, inflated here (so the
    caller can run it in a thread), the CRC and size checked at the end.

    Small pieces matter: large fresh buffers cost a page fault per 4 KiB on first touch, which
    took as long as the inflating itself.
    """
    if src.zip is None:
        with open(src.path / member, "rb") as fh:
            while block := fh.read(piece_bytes):
                yield block
        return
    info = src.zip.getinfo(member)
    if info.compress_type not in (zipfile.ZIP_DEFLATED, zipfile.ZIP_STORED) or info.flag_bits & 0x1:
        with src.open(member) as fh:  # other codecs and encryption: zipfile knows them
            while block := fh.read(piece_bytes):
                yield block
        return
    start = _zip_member_range(src.path, info)
    inflater = _inflate_lib.decompressobj(-15) if info.compress_type == zipfile.ZIP_DEFLATED else None
    crc, size, left = 0, 0, info.compress_size
    with open(src.path, "rb") as fh:
        fh.seek(start)
        while left > 0:
            raw = fh.read(min(left, READ_BYTES if inflater is not None else piece_bytes))
            if not raw:
                raise DwcaError(f"{member}: the zip ends {left} bytes before the member does (truncated)")
            left -= len(raw)
            while raw:
                if inflater is not None:
                    block = inflater.decompress(raw, piece_bytes)
                    raw = inflater.unconsumed_tail
                else:
                    block, raw = raw, b""
                if not block:  # all of this read taken in (or the stream's end reached)
                    break
                crc = _inflate_lib.crc32(block, crc)
                size += len(block)
                yield block
        if inflater is not None:
            tail = inflater.flush()
            if tail:
                crc = _inflate_lib.crc32(tail, crc)
                size += len(tail)
                yield tail
            if not inflater.eof:
                raise DwcaError(f"{member}: the compressed data stops before its end (truncated)")
    if size != info.file_size or crc != info.CRC:
        raise DwcaError(f"{member}: corrupt: {size} bytes with CRC {crc:08x}, the zip says "
                        f"{info.file_size} with {info.CRC:08x}")


def _line_chunks(src: _Source, member: str, chunk_bytes: int,
                 free: queue.SimpleQueue | None = None) -> Iterator[memoryview]:
    """Chunks of whole lines of a member, inflated one chunk ahead in a background thread.

    Each chunk is a view of a ``bytearray`` that the inflated pieces are copied into. A caller
    done with a chunk may put ``chunk.obj`` on ``free``: the buffer is then filled again instead
    of a new one being allocated (and faulted in page by page). Chunks hold at most
    ``chunk_bytes``, unless one line is longer (then it and what follows it in one inflated
    piece).
    """
    out: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    piece_bytes = max(1, min(PIECE_BYTES, chunk_bytes))

    def fresh(need: int) -> bytearray:
        if free is not None:
            try:
                buf = free.get_nowait()
                if len(buf) >= need:
                    return buf
            except queue.Empty:
                pass
        return bytearray(max(need, chunk_bytes))

    def produce() -> None:
        try:
            buf, fill = fresh(chunk_bytes), 0
            for piece in _raw_blocks(src, member, piece_bytes):
                if stop.is_set():
                    return
                if fill + len(piece) > chunk_bytes:
                    cut = buf.rfind(b"\n", 0, fill) + 1
                    if cut:  # hand on the whole lines, keep the partial last one
                        out.put(memoryview(buf)[:cut])
                        nxt = fresh(fill - cut + len(piece))
                        nxt[:fill - cut] = memoryview(buf)[cut:fill]
                        buf, fill = nxt, fill - cut
                    if fill + len(piece) > len(buf):  # one line longer than the buffer: grow it
                        bigger = bytearray(max(2 * len(buf), fill + len(piece)))
                        bigger[:fill] = memoryview(buf)[:fill]
                        buf = bigger
                memoryview(buf)[fill:fill + len(piece)] = piece  # (bytearray slices copy twice)
                fill += len(piece)
            if fill:
                out.put(memoryview(buf)[:fill])
            out.put(None)
        except BaseException as exc:  # handed to the consumer, which raises it
            out.put(exc)

    worker = threading.Thread(target=produce, name=f"inflate-{member}", daemon=True)
    worker.start()
    try:
        while True:
            item = out.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                out.get(timeout=0.05)
            except queue.Empty:
                pass
        worker.join()


def _skip_lines(chunk: bytes | memoryview, n: int) -> tuple[memoryview, int]:
    """``chunk`` without its first ``n`` lines, and how many lines were dropped.

    A view of the same buffer, not a copy: the chunk's buffer can then still be filled again
    once it is parsed (copying a 16 MiB first chunk faulted in fresh pages twice).
    """
    view = memoryview(chunk)
    pos = dropped = 0
    while dropped < n and pos < len(view):
        cut = _find_newline(view, pos)
        pos = len(view) if cut < 0 else cut + 1
        dropped += 1
    return view[pos:], dropped


def _find_newline(view: memoryview, start: int) -> int:
    """The position of the first ``\\n`` at or after ``start`` in ``view``, or -1; it copies
    windows that double in size, so a short header line costs a short copy."""
    window = 1 << 12
    while start < len(view):
        found = bytes(view[start:start + window]).find(NEWLINE)
        if found >= 0:
            return start + found
        start += window
        window *= 2
    return -1


def _parse_chunk(chunk: bytes | memoryview, first_line: int, spec: FileSpec, names: list[str],
                 include: list[str], id_col: str | None) -> tuple[pa.Table, list[BadRow]]:
    """One chunk of whole lines to string columns, with its ragged and undecodable rows as bad rows."""
    invalid: list[BadRow] = []
    text: list[bytes] = []  # the chunk as bytes, made once, for locating ragged rows

    def on_invalid(row) -> str:
        if not text:
            text.append(bytes(chunk))
        whole = text[0]
        pos = whole.find(row.text.encode("utf-8", errors="surrogateescape")) if row.text else -1
        where = f" (line {first_line + whole.count(NEWLINE, 0, pos) + 1})" if pos >= 0 else ""
        invalid.append(BadRow(_row_id(row.text, spec), "malformed_row",
                              f"{spec.location}: expected {row.expected_columns} fields, got "
                              f"{row.actual_columns}{where}"))
        return "skip"

    parse_opts = pacsv.ParseOptions(delimiter=spec.delimiter, quote_char=False, invalid_row_handler=on_invalid)

    def convert(kind: pa.DataType) -> pacsv.ConvertOptions:
        return pacsv.ConvertOptions(include_columns=include, column_types={c: kind for c in include},
                                    strings_can_be_null=False, null_values=[])

    def read(kind: pa.DataType) -> pa.Table:
        # one thread per chunk: the reader already overlaps inflating, parsing and its consumer,
        # and arrow's threads cost ~30% more CPU per byte (measured), which a two-core machine
        # pays for. Small blocks: each is still in the core's cache when its wanted fields are
        # converted (~15% less CPU than 4 MiB blocks); a line longer than a block makes arrow
        # give up, and the chunk is parsed again as one block.
        mark = len(invalid)
        for block in (PARSE_BLOCK_BYTES, len(chunk) + 1):
            read_opts = pacsv.ReadOptions(column_names=names, block_size=block, use_threads=False)
            try:
                return pacsv.read_csv(pa.py_buffer(chunk), read_options=read_opts, parse_options=parse_opts,
                                      convert_options=convert(kind))
            except pa.ArrowInvalid as exc:
                if "straddl" not in str(exc) or block > len(chunk):
                    raise
                del invalid[mark:]  # the next parse reports this one's ragged rows again
        raise AssertionError("unreachable")

    try:  # strings straight away (arrow checks the UTF-8); bytes only to find the bad rows
        return read(pa.string()).combine_chunks(), invalid  # one chunk a column: fewer to handle downstream
    except pa.ArrowInvalid as exc:
        if "utf8" not in str(exc).lower() and "utf-8" not in str(exc).lower():
            raise
    invalid.clear()  # the second parse reports the ragged rows again
    table = read(pa.binary())
    parts = []
    for batch in table.to_batches():
        good, bad = _decode_columns(batch, spec, id_col)
        invalid.extend(bad)
        parts.append(good)
    if parts:
        return pa.concat_tables(parts), invalid
    return table.cast(pa.schema([(n, pa.string()) for n in table.schema.names])), invalid


def _read_chunked(src, member, spec, width, wanted, index_of, batch_rows, chunk_bytes) -> Iterator[DwcaBatch]:
    """Fast path for unquoted UTF-8 files, a three-stage pipeline over whole-line chunks.

    A thread inflates, a second parses one chunk ahead (arrow's parser releases the GIL), and
    the caller's thread slices batches, so a consumer that spends its time in Python overlaps
    with both.
    """
    names = [f"c{i}" for i in range(width)]
    include = sorted({f"c{i}" for i in index_of.values() if i is not None and i < width},
                     key=lambda c: int(c[1:]))
    id_col = f"c{spec.id_index}" if spec.id_index is not None else None
    batches = _Rebatcher(batch_rows, lambda t: _finish(t, spec, wanted, index_of), include)
    lines_done = [spec.ignore_header_lines]  # header + rows parsed so far (blank lines are not counted)

    free: queue.SimpleQueue = queue.SimpleQueue()  # parsed chunks' buffers, for the inflater to refill

    def parse(chunk: bytes | memoryview) -> tuple[pa.Table, list[BadRow]]:
        # one worker parses chunks in order, so the count is exact when the next one starts
        table, bad = _parse_chunk(chunk, lines_done[0], spec, names, include, id_col)
        lines_done[0] += table.num_rows + len(bad)
        if isinstance(chunk, memoryview) and isinstance(chunk.obj, bytearray):
            free.put(chunk.obj)  # arrow copied what it kept: the buffer can be filled again
        return table, bad

    def chunks() -> Iterator[bytes | memoryview]:
        header_left = spec.ignore_header_lines
        for chunk in _line_chunks(src, member, chunk_bytes, free):
            if header_left:
                chunk, dropped = _skip_lines(chunk, header_left)
                header_left -= dropped
            if len(chunk) < 4096 and not bytes(chunk).strip(b"\r\n"):
                continue
            yield chunk

    try:
        source = chunks()
        with ThreadPoolExecutor(1, thread_name_prefix=f"parse-{member}") as pool, closing(source):
            ahead = None
            while True:
                nxt = next(source, None)
                future = pool.submit(parse, nxt) if nxt is not None else None
                if ahead is not None:
                    yield from batches.add(*ahead.result())
                if future is None:
                    break
                ahead = future
        yield from batches.close()
    except (zipfile.BadZipFile, zlib.error, _inflate_lib.error, EOFError, OSError) as exc:
        raise DwcaError(f"{member}: corrupt or truncated after {batches.rows} rows ({exc})") from exc
    except pa.ArrowInvalid as exc:
        raise DwcaError(f"{member}: unreadable after {batches.rows} rows ({exc})") from exc


def read_ahead(items: Iterator, depth: int = 1, name: str = "read-ahead") -> Iterator:
    """``items`` in order, produced by a background thread up to ``depth`` items ahead.

    The producer's work overlaps the consumer's wherever either releases the GIL (inflating,
    arrow's parser and compute do). An exception in the producer is raised at the consumer's
    next item; closing the returned iterator stops the producer and closes ``items``. The
    thread starts at the first item asked for; :class:`Prefetch` starts it at once.
    """
    ahead = Prefetch(items, depth, name)
    try:
        yield from ahead
    finally:
        ahead.close()


class Prefetch:
    """:func:`read_ahead` whose producer thread starts when it is made, not at the first item.

    Iterate it once; :meth:`close` (also after an early stop, or an error) stops the producer
    and closes ``items``.
    """

    _DONE = object()

    def __init__(self, items: Iterator, depth: int = 1, name: str = "prefetch"):
        self._items = items
        self._out: queue.Queue = queue.Queue(maxsize=max(depth, 1))
        self._stop = threading.Event()
        self._finished = False
        self._worker = threading.Thread(target=self._produce, name=name, daemon=True)
        self._worker.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._out.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        try:
            for item in self._items:
                if not self._put((item, None)):
                    return
            self._put((self._DONE, None))
        except BaseException as exc:  # handed to the consumer, which raises it
            self._put((self._DONE, exc))
        finally:
            close = getattr(self._items, "close", None)
            if close is not None:
                close()

    def __iter__(self) -> Prefetch:
        return self

    def __next__(self):
        if self._finished:
            raise StopIteration
        item, exc = self._out.get()
        if item is self._DONE:
            self._finished = True
            self.close()
            if exc is not None:
                raise exc
            raise StopIteration
        return item

    def close(self) -> None:
        self._finished = True
        self._stop.set()
        self._worker.join()
