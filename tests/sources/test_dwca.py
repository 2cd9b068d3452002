"""DwC-A reader on the real GBIF archives, on broken variants of them, and its line parser."""

import io
import zipfile

import pyarrow as pa
import pyarrow.csv as pacsv
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.dwca import DwcaError, format_line, open_archive, parse_line, read_file
from tests.sources.conftest import DATA

DWCA = DATA / "gbif/dwca"
SAMPLE = DWCA / "0000066-140928181241064.zip"


def rewrite(src, dest, replace=None, drop=()):
    """Copy a zip member by member, replacing (bytes or fn(bytes) -> bytes) or dropping some."""
    replace = replace or {}
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            if info.filename in drop:
                continue
            data = zin.read(info.filename)
            new = replace.get(info.filename, data)
            zout.writestr(info.filename, new(data) if callable(new) else new)
    return dest


def rows_of(archive, spec, columns=None, **kw):
    tables, bad = [], []
    for b in read_file(archive, spec, columns, **kw):
        tables.append(b.table)
        bad.extend(b.bad)
    return pa.concat_tables(tables), bad


@pytest.mark.parametrize("name, core_rows, extensions", [
    ("0000066-140928181241064.zip", 470, {"verbatim.txt": 470, "multimedia.txt": 215}),
    ("gbif-results.zip", 158, {}),
])
def test_real_archives(name, core_rows, extensions):
    a = open_archive(DWCA / name)
    t, bad = rows_of(a, a.core, ["gbifID", "scientificName", "basisOfRecord"])
    assert t.num_rows == core_rows and not bad
    assert set(t.column("basisOfRecord").to_pylist()) <= {"PRESERVED_SPECIMEN", "UNKNOWN", ""}
    assert all(t.column("_id").to_pylist())
    for ext in a.extensions:
        et, ebad = rows_of(a, ext)
        assert et.num_rows == extensions[ext.location] and not ebad


def test_columns_follow_meta_indexes_not_header_order():
    a = open_archive(SAMPLE)
    # the core skips indexes 206-207: columns must be found by index, not by position in the list
    t, _ = rows_of(a, a.core, ["taxonKey", "kingdom", "nosuchterm"])
    assert t.column("taxonKey")[0].as_py().isdigit()
    assert t.column("kingdom")[0].as_py() == "Animalia"
    assert t.column("nosuchterm").null_count == t.num_rows


def test_batches_are_bounded():
    a = open_archive(SAMPLE)
    sizes = [b.table.num_rows for b in read_file(a, a.core, ["gbifID"], batch_rows=100, block_bytes=1 << 14)]
    assert max(sizes) <= 100 and sum(sizes) == 470


def test_truncated_zip(tmp_path):
    cut = tmp_path / "cut.zip"
    cut.write_bytes(SAMPLE.read_bytes()[: SAMPLE.stat().st_size // 2])
    with pytest.raises(DwcaError, match="not a zip archive or truncated"):
        open_archive(cut)


def test_corrupt_member_is_a_clear_error(tmp_path):
    data = bytearray(SAMPLE.read_bytes())
    with zipfile.ZipFile(SAMPLE) as z:
        info = z.getinfo("occurrence.txt")
    start = info.header_offset + 30 + len(info.filename) + len(info.extra)
    for i in range(start + 2000, start + 2400):
        data[i] ^= 0x5A
    bad = tmp_path / "corrupt.zip"
    bad.write_bytes(bytes(data))
    a = open_archive(bad)
    with pytest.raises(DwcaError, match="occurrence.txt"):
        rows_of(a, a.core, ["gbifID"])


def test_bytes_lost_before_the_directory_are_a_clear_error(tmp_path):
    """200 bytes cut out of the first member: zipfile then finds that member at a negative offset
    (found by a mutation fuzz: the read ended in a bare ``OSError: [Errno 22] Invalid argument``)."""
    data = SAMPLE.read_bytes()
    with zipfile.ZipFile(SAMPLE) as z:
        first = min(z.infolist(), key=lambda i: i.header_offset)
    assert first.filename == "occurrence.txt" and first.header_offset == 0
    cut = tmp_path / "cut.zip"
    cut.write_bytes(data[:100] + data[300:])
    a = open_archive(cut)  # meta.xml, after the cut, is still where the directory says
    with pytest.raises(DwcaError, match="'occurrence.txt' cannot be opened, the zip is damaged"):
        rows_of(a, a.core, ["gbifID"])
    from sources.gbif import CONNECTOR

    with pytest.raises(DwcaError, match="occurrence.txt"):
        list(CONNECTOR.read(str(cut), CONNECTOR.Options()))


def test_missing_meta(tmp_path):
    with pytest.raises(DwcaError, match="no meta.xml"):
        open_archive(rewrite(SAMPLE, tmp_path / "x.zip", drop={"meta.xml"}))


@pytest.mark.parametrize("meta, message", [
    (b"<archive><core", "not well-formed"),
    (b"<archive xmlns='http://rs.tdwg.org/dwc/text/'><extension/></archive>", "no <core>"),
    (b"<archive xmlns='http://rs.tdwg.org/dwc/text/'><core><files><location>nope.txt</location></files>"
     b"</core></archive>", "not in the archive"),
    (b"<html/>", "expected <archive>"),
])
def test_wrong_meta(tmp_path, meta, message):
    with pytest.raises(DwcaError, match=message):
        open_archive(rewrite(SAMPLE, tmp_path / "x.zip", {"meta.xml": meta}))


def test_wrong_delimiter(tmp_path):
    z = rewrite(SAMPLE, tmp_path / "x.zip", {"meta.xml": lambda m: m.replace(b'fieldsTerminatedBy="\\t"',
                                                                         b'fieldsTerminatedBy=","')})
    a = open_archive(z)
    with pytest.raises(DwcaError, match="tab-separated"):
        rows_of(a, a.core, ["gbifID"])


def _edit_lines(fn):
    def edit(data: bytes) -> bytes:
        lines = data.split(b"\n")
        fn(lines)
        return b"\n".join(lines)
    return edit


def test_ragged_rows_become_bad_rows(tmp_path):
    def damage(lines):
        lines[5] = lines[5] + b"\textra\tfields"
        lines[9] = b"\t".join(lines[9].split(b"\t")[:100])

    a = open_archive(rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(damage)}))
    t, bad = rows_of(a, a.core, ["gbifID"])
    assert t.num_rows == 468 and len(bad) == 2
    assert {b.reason for b in bad} == {"malformed_row"}
    assert all(b.row_id and b.row_id.isdigit() for b in bad)
    assert any("got 227" in b.detail for b in bad) and any("got 100" in b.detail for b in bad)


def test_undecodable_bytes_become_bad_rows(tmp_path):
    def damage(lines):
        fields = lines[3].split(b"\t")
        fields[99] = fields[99][:3] + b"\xff" + fields[99][3:]  # index 99 is dwc:genus
        lines[3] = b"\t".join(fields)

    a = open_archive(rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": _edit_lines(damage)}))
    t, bad = rows_of(a, a.core, ["gbifID", "genus"])
    assert t.num_rows == 469 and [b.reason for b in bad] == ["undecodable_text"]
    assert "genus" in bad[0].detail and bad[0].row_id.isdigit()


def test_declared_latin1_is_transcoded(tmp_path):
    def to_latin1(data: bytes) -> bytes:
        return data.decode("utf-8").replace("Toluca", "Tolùca").encode("latin-1")

    meta = lambda m: m.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"', 1)  # noqa: E731
    a = open_archive(rewrite(SAMPLE, tmp_path / "x.zip", {"occurrence.txt": to_latin1, "meta.xml": meta}))
    t, bad = rows_of(a, a.core, ["locality"])
    assert not bad and "Toluca, 15.5 mi E".replace("Toluca", "Tolùca") in t.column("locality").to_pylist()


def test_quoted_comma_separated_file(tmp_path):
    a = open_archive(SAMPLE)
    t, _ = rows_of(a, a.extension("Multimedia"))
    names = [n for n in t.column_names if n != "_id"]
    buf = io.StringIO()
    buf.write(format_line(names, ",", '"') + "\n")
    for row in t.select(names).to_pylist():
        buf.write(format_line([f'{v}, "quoted"' if k == "title" else v for k, v in row.items()], ",", '"') + "\n")
    meta = zipfile.ZipFile(SAMPLE).read("meta.xml").replace(
        b'fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" ignoreHeaderLines="1" '
        b'rowType="http://rs.gbif.org/terms/1.0/Multimedia"',
        b'fieldsTerminatedBy="," linesTerminatedBy="\\n" fieldsEnclosedBy="&quot;" ignoreHeaderLines="1" '
        b'rowType="http://rs.gbif.org/terms/1.0/Multimedia"')
    z = rewrite(SAMPLE, tmp_path / "x.zip", {"multimedia.txt": buf.getvalue().encode(), "meta.xml": meta})
    b = open_archive(z)
    spec = b.extension("Multimedia")
    assert spec.delimiter == "," and spec.quote == '"'
    t2, bad = rows_of(b, spec)
    assert not bad and t2.num_rows == 215
    assert t2.column("title")[0].as_py() == ', "quoted"'
    assert t2.column("identifier").to_pylist() == t.column("identifier").to_pylist()


def test_unpacked_folder_reads_the_same(tmp_path):
    with zipfile.ZipFile(SAMPLE) as z:
        z.extractall(tmp_path / "dir")
    a = open_archive(tmp_path / "dir")
    assert rows_of(a, a.core, ["gbifID"])[0].num_rows == 470
    zipped = open_archive(SAMPLE)  # the sizes the zip's directory gives are the unpacked files' sizes
    for spec in (a.core, *a.extensions):
        assert a.file_bytes(spec) == zipped.file_bytes(spec) == (tmp_path / "dir" / spec.location).stat().st_size > 0


FIELD = st.text(alphabet=st.characters(blacklist_characters="\r\n", blacklist_categories=("Cs",)), max_size=12)


@given(st.lists(FIELD, min_size=1, max_size=8), st.sampled_from([",", "\t", ";", "|"]))
def test_quoted_lines_round_trip(fields, delim):
    assert parse_line(format_line(fields, delim, '"'), delim, '"') == fields


@given(st.lists(FIELD.filter(lambda f: "\t" not in f), min_size=1, max_size=8))
def test_unquoted_lines_round_trip(fields):
    assert parse_line("\t".join(fields) + "\n", "\t", "") == fields


@given(st.lists(st.lists(FIELD.filter(lambda f: f.strip() == f), min_size=3, max_size=3), min_size=1, max_size=5))
def test_python_parser_agrees_with_arrow(rows):
    text = "".join(format_line(r, ",", '"') + "\n" for r in rows)
    t = pacsv.read_csv(io.BytesIO(text.encode()),
                       read_options=pacsv.ReadOptions(column_names=["a", "b", "c"]),
                       parse_options=pacsv.ParseOptions(delimiter=",", quote_char='"'),
                       convert_options=pacsv.ConvertOptions(column_types={c: pa.string() for c in "abc"},
                                                            strings_can_be_null=False, null_values=[]))
    assert [list(r.values()) for r in t.to_pylist()] == [parse_line(line, ",", '"') for line in text.split("\n")[:-1]]


@given(st.lists(st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")), max_size=6), st.booleans(),
       st.integers(0, 8), st.integers(0, 12))
def test_skip_lines_drops_header_lines_without_copying(lines, trailing_newline, n, long_line):
    from sources.dwca import _skip_lines

    lines = [*lines, b"x" * (long_line << 10)]  # a line longer than the first search window
    data = b"\n".join(lines) + (b"\n" if trailing_newline else b"")
    buf = bytearray(data + b"tail")
    view = memoryview(buf)[:len(data)]  # as the inflater hands chunks on: a view of a longer buffer
    rest, dropped = _skip_lines(view, n)
    want, want_dropped = data, 0  # the definition: drop through the next newline, n times, while any is left
    while want_dropped < n and want:
        cut = want.find(b"\n")
        want = want[cut + 1:] if cut != -1 else b""
        want_dropped += 1
    assert (bytes(rest), dropped) == (want, want_dropped)
    assert rest.obj is buf  # a view of the chunk's buffer, which can then be refilled
