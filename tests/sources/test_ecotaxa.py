"""EcoTaxa exports: type row, fields, statuses, images beside the TSV or in the zip, bad rows."""

from __future__ import annotations

import io
import json
import shutil
import zipfile
from datetime import date
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import Reason, conform
from sources.ecotaxa import (
    CONNECTOR,
    EcoTaxaOptions,
    event_date,
    is_type_row,
    lineage,
    parse_type_row,
    read_table,
    stream_table,
    typed_value,
)
from sources.localuri import read_local

DATA = Path(__file__).resolve().parents[1] / "data" / "plankton"
ZOOSCAN = DATA / "ecotaxa" / "ecotaxa_table_with_classification.tsv"
IFCB = DATA / "ecotaxa" / "example_table_ifcb.tsv"
# Stand-in image bytes for the export zip: real PNGs of the bundled IFCB sample (the TSVs' own
# images are not public); what is tested is that the zip member becomes the record's image.
STAND_IN_PNG = DATA / "ifcb_labeled" / "png" / "D20220522T000439_IFCB134_00002.png"


def read_all(task: str, **opts) -> tuple[pa.Table, pa.Table]:
    batches = list(CONNECTOR.read(task, EcoTaxaOptions(**opts)))
    return pa.concat_tables([b.records for b in batches]), pa.concat_tables([b.rejects for b in batches])


def image_names(tsv: Path) -> list[str]:
    table = read_table(tsv.read_text())
    i = table.header.index("img_file_name")
    return [r[i] for _, r in table.rows]


def rewrite(tsv: Path, dest: Path, edit) -> Path:
    """Copy a real TSV changing cells: ``edit(header, row_index, row) -> row``."""
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    out = lines[:2] + ["\t".join(edit(header, i, line.split("\t"))) for i, line in enumerate(lines[2:])]
    dest.write_text("\n".join(out) + "\n")
    return dest


@pytest.mark.parametrize("tsv, n", [(ZOOSCAN, 9), (IFCB, 2)], ids=["zooscan", "ifcb"])
def test_real_tsvs_without_their_images_are_rejected_no_image(tsv, n):
    records, rejects = read_all(str(tsv))
    assert records.num_rows == 0 and rejects.num_rows == n
    assert set(rejects.column("reason").to_pylist()) == {Reason.NO_IMAGE}
    assert "not found in the export" in rejects.column("detail")[0].as_py()


@pytest.mark.parametrize("tsv, n", [(ZOOSCAN, 9), (IFCB, 2)], ids=["zooscan", "ifcb"])
def test_real_tsv_fields(tsv, n):
    records, rejects = read_all(str(tsv), require_image=False, license="cc-by-4.0")
    assert records.num_rows == n and rejects.num_rows == 0
    good, bad = conform(records, "ingest")
    assert good.num_rows == n and bad.num_rows == 0
    row = records.to_pylist()[0]
    assert row["source"] == "ecotaxa" and row["annotation_status"] == "validated" and row["license"] == "cc-by-4.0"
    extra = json.loads(row["extra"])
    assert not any("email" in k for k in extra)
    if tsv is ZOOSCAN:
        assert row["verbatim_name"] == "det_fiber" and row["occurrence_id"] == "cce_p1106_cycle2_06_1"
        assert row["decimal_latitude"] == pytest.approx(33.42133333)
        assert row["decimal_longitude"] == pytest.approx(-121.6239833)
        assert row["depth_min_m"] == pytest.approx(2.599999905)
        assert row["event_date"] == "2011-06-28T09:02:39"  # object_time 90239: leading zero restored
        assert row["format"] == "image/jpeg" and row["identifier"].endswith("/cce_p1106_cycle2_06_1.jpg")
        assert extra["sample_cruise"] == "sn002zd_ccelter_2011" and extra["acq_volimage"] == 0.48
        assert extra["process_pixel"] == 0.118 and "sample_id" not in extra  # 'nan' text in a [t] column
        assert "object_area" not in extra
    else:
        assert row["verbatim_name"] == "Amphidinium-like" and row["verbatim_lineage"] == "Amphidinium"
        assert row["instrument"] == "IFCB" and row["event_date"] == "2023-09-15T09:38:04"
        assert extra["object_aphiaid"] == 109473 and extra["sample_vessel"] == "RV Svea"


def test_object_features_are_kept_on_request():
    records, _ = read_all(str(ZOOSCAN), require_image=False, keep_object_features=True)
    extra = json.loads(records.column("extra")[0].as_py())
    assert extra["object_area"] == 34 and extra["object_major"] == pytest.approx(26.55238533)


def test_type_row_of_the_real_export():
    table = read_table(IFCB.read_text())
    assert len(table.kinds) == len(table.header) == 282
    assert table.kinds[table.header.index("object_lat")] == "f"
    assert table.kinds[table.header.index("object_annotation_category")] == "t"
    assert len(table.rows) == 2  # the type row is not data


def test_tsv_without_a_type_row_still_reads(tmp_path):
    lines = ZOOSCAN.read_text().splitlines()
    plain = tmp_path / "plain.tsv"
    plain.write_text("\n".join([lines[0]] + lines[2:]) + "\n")
    records, _ = read_all(str(plain), require_image=False)
    assert records.num_rows == 9
    assert records.column("decimal_latitude")[0].as_py() == pytest.approx(33.42133333)


def test_zip_export_images_become_the_records_images(tmp_path):
    archive = tmp_path / "ecotaxa_export_1234.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(ZOOSCAN, "sample_a/ecotaxa_sample_a.tsv")
        for name in image_names(ZOOSCAN)[:-1]:  # the last image is missing from the export
            zf.write(STAND_IN_PNG, f"sample_a/{name}")
        zf.writestr("__MACOSX/sample_a/._ecotaxa_sample_a.tsv", b"junk")
    tasks = CONNECTOR.tasks(str(tmp_path), EcoTaxaOptions())
    assert tasks == [f"{archive.resolve()}!/sample_a/ecotaxa_sample_a.tsv"]
    records, rejects = read_all(tasks[0])
    assert records.num_rows == 8 and rejects.column("reason").to_pylist() == [Reason.NO_IMAGE]
    uri = records.column("identifier")[0].as_py()
    assert uri.startswith("zip://") and uri.endswith("!/sample_a/cce_p1106_cycle2_06_1.jpg")
    assert read_local(uri) == STAND_IN_PNG.read_bytes()
    assert set(records.column("source_dataset").to_pylist()) == {"ecotaxa_export_1234"}


def test_images_beside_the_tsv_get_file_uris(tmp_path):
    shutil.copy(IFCB, tmp_path / IFCB.name)
    for name in image_names(IFCB):
        shutil.copy(STAND_IN_PNG, tmp_path / name)
    records, rejects = read_all(str(tmp_path / IFCB.name))
    assert records.num_rows == 2 and rejects.num_rows == 0
    assert all(read_local(u) == STAND_IN_PNG.read_bytes() for u in records.column("identifier").to_pylist())


def test_statuses_labels_and_lineage_are_kept_verbatim(tmp_path):
    status = {0: "predicted", 1: "dubious", 2: "", 3: "Validated"}
    names = {4: "badfocus<artefact", 5: "tail<Appendicularia"}

    def edit(header, i, row):
        row[header.index("object_annotation_status")] = status.get(i, row[header.index("object_annotation_status")])
        if i in names:
            row[header.index("object_annotation_category")] = names[i]
        return row

    tsv = rewrite(ZOOSCAN, tmp_path / "edited.tsv", edit)
    records, rejects = read_all(str(tsv), require_image=False)
    assert records.num_rows == 6
    details = rejects.column("detail").to_pylist()
    assert sorted(d.split(": ")[1] for d in details) == ["annotation_status=(none)", "annotation_status=dubious",
                                                         "annotation_status=predicted"]
    assert set(rejects.column("reason").to_pylist()) == {Reason.NOT_VALIDATED}
    assert {"badfocus<artefact", "tail<Appendicularia"} <= set(records.column("verbatim_name").to_pylist())
    records, rejects = read_all(str(tsv), require_image=False, statuses=("validated", "predicted", "dubious"))
    assert records.num_rows == 8 and rejects.num_rows == 1


def test_bad_rows_are_rejected_with_reasons(tmp_path):
    def edit(header, i, row):
        if i == 0:
            row[header.index("object_lat")] = "north"
        if i == 1:
            row[header.index("object_lon")] = "200"
        if i == 2:
            row[header.index("object_date")] = "2011-06-28"
        if i == 3:
            row = row[:10]
        if i == 4:
            row[header.index("object_id")] = ""
        return row

    tsv = rewrite(ZOOSCAN, tmp_path / "bad.tsv", edit)
    records, rejects = read_all(str(tsv), require_image=False)
    assert records.num_rows == 4
    assert sorted(rejects.column("reason").to_pylist()) == sorted(
        [Reason.MALFORMED_ROW] * 4 + [Reason.BAD_COORDINATES])
    assert rejects.num_rows + records.num_rows == 9



def test_rows_with_bytes_that_are_not_utf8_are_rejected_the_others_unchanged(tmp_path):
    """They used to be decoded with U+FFFD in place of the bytes, silently."""
    lines = ZOOSCAN.read_bytes().split(b"\n")
    header = lines[0].decode().split("\t")
    at = header.index("object_annotation_category")
    first = 2 if is_type_row(lines[1].decode().split("\t")) else 1
    cells = lines[first + 1].split(b"\t")
    cells[at] = cells[at] + b" caf\xe9"  # latin-1 e-acute
    lines[first + 1] = b"\t".join(cells)
    bad = tmp_path / "latin1.tsv"
    bad.write_bytes(b"\n".join(lines))
    records, rejects = read_all(str(bad), require_image=False)
    want, _ = read_all(str(ZOOSCAN), require_image=False)
    assert rejects.column("reason").to_pylist() == [Reason.UNDECODABLE_TEXT]
    assert "bytes that are not UTF-8" in rejects.column("detail")[0].as_py()
    assert b"caf\\xe9" in rejects.column("detail")[0].as_py().encode()
    assert records.num_rows == want.num_rows - 1
    assert not any("\ufffd" in (v or "") for v in records.column("verbatim_name").to_pylist())


def _annotator(tsv: Path, dest: Path, name: str, encoding: str) -> Path:
    """A copy of a real TSV with every row's ``object_annotation_person_name`` set to ``name``,
    written in ``encoding`` (as older tools and spreadsheets save exports)."""
    rewrite(tsv, dest, lambda header, i, row: [name if h == "object_annotation_person_name" else c
                                               for h, c in zip(header, row, strict=True)])
    dest.write_bytes(dest.read_text(encoding="utf-8").encode(encoding))
    return dest


def _in_zip(tsv: Path) -> str:
    """``tsv`` as the one member of an export zip: the task that reads it."""
    archive = tsv.with_suffix(".zip")
    with zipfile.ZipFile(archive, "w") as zf:
        zf.write(tsv, f"export/{tsv.name}")
    return f"{archive}!/export/{tsv.name}"


@pytest.mark.parametrize("packed", [False, True], ids=["tsv", "zip"])
@pytest.mark.parametrize("tsv, n", [(ZOOSCAN, 9), (IFCB, 2)], ids=["zooscan", "ifcb"])
def test_a_latin1_export_is_read_with_the_encoding_option(tmp_path, tsv, n, packed):
    """QA: one non-ASCII annotator name in a latin-1 export lost every row as undecodable_text,
    with no way to say the encoding."""
    (tmp_path / "utf8").mkdir()
    latin = _annotator(tsv, tmp_path / "latin.tsv", "José Müller", "latin-1")
    same = _annotator(tsv, tmp_path / "utf8" / "latin.tsv", "José Müller", "utf-8")
    task, want_task = (_in_zip(latin), _in_zip(same)) if packed else (str(latin), str(same))
    # UTF-8 (the default): each row is rejected, and the detail says how to read the file
    records, rejects = read_all(task, require_image=False)
    assert records.num_rows == 0 and rejects.column("reason").to_pylist() == [Reason.UNDECODABLE_TEXT] * n
    detail = rejects.column("detail")[0].as_py()
    assert "Jos\\xe9 M\\xfcller" in detail
    assert '[sources.ecotaxa] encoding = "latin-1"' in detail and "iconv -f latin1 -t utf-8 latin.tsv" in detail
    # with the encoding given, the export reads as its UTF-8 twin does
    records, rejects = read_all(task, require_image=False, encoding="latin-1")
    want, _ = read_all(want_task, require_image=False)
    assert rejects.num_rows == 0 and records.num_rows == n
    assert records.drop_columns(["identifier"]).equals(want.drop_columns(["identifier"]))
    assert {json.loads(e)["object_annotation_person_name"] for e in records.column("extra").to_pylist()} == {
        "José Müller"}


def test_a_stray_byte_in_an_export_of_another_encoding_is_still_one_reject(tmp_path):
    lines = _annotator(ZOOSCAN, tmp_path / "cp1252.tsv", "José Müller", "cp1252").read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"Jos\xe9", b"Jos\x81")  # 0x81: no character in cp1252
    (tmp_path / "cp1252.tsv").write_bytes(b"\n".join(lines))
    records, rejects = read_all(str(tmp_path / "cp1252.tsv"), require_image=False, encoding="cp1252")
    assert records.num_rows == 8 and rejects.column("reason").to_pylist() == [Reason.UNDECODABLE_TEXT]
    detail = rejects.column("detail")[0].as_py()
    assert detail.startswith("cp1252.tsv line 4: bytes that are not cp1252 in b'Jos\\x81")
    assert "encoding is 'cp1252'" in detail


@pytest.mark.parametrize("name", ["klingon", "base64", "rot13"])
def test_an_encoding_that_is_no_text_codec_is_a_clear_config_error(name):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=f"'{name}' is not a text encoding Python knows; give a codec name"):
        EcoTaxaOptions(encoding=name)
    assert EcoTaxaOptions(encoding="Latin1").encoding == EcoTaxaOptions(encoding="iso-8859-1").encoding


def test_a_file_that_is_no_export_is_a_clear_error(tmp_path):
    readme = tmp_path / "notes.tsv"
    readme.write_text("# my notes\tabout\nplankton\tthings\n")
    with pytest.raises(ValueError, match="has no object_id column .* give an EcoTaxa export TSV"):
        read_all(str(readme))
    broken = tmp_path / "export.zip"
    broken.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="is not a zip archive or is damaged"):
        CONNECTOR.tasks(str(broken), EcoTaxaOptions())

def _repeated(tsv: Path, dest: Path, copies: int) -> Path:
    """The real TSV's data rows repeated ``copies`` times, each with its own object id."""
    lines = tsv.read_text().splitlines()
    header = lines[0].split("\t")
    oid = header.index("object_id")
    out = lines[:2]
    for n in range(copies):
        for line in lines[2:]:
            cells = line.split("\t")
            cells[oid] = f"{cells[oid]}_{n}"
            out.append("\t".join(cells))
    dest.write_text("\n".join(out) + "\n")
    return dest


class _CountingText(io.TextIOWrapper):
    """A text stream that counts the lines taken from it."""

    taken = 0

    def __next__(self):
        line = super().__next__()
        type(self).taken += 1
        return line


def test_an_export_is_read_as_its_batches_are_asked_for(tmp_path, monkeypatch):
    """Rows stream from the file: the first batch comes out with most of a large export not yet
    read (read whole, a 1 GB export took 10.8 GB)."""
    import sources.ecotaxa as ecotaxa

    tsv = _repeated(IFCB, tmp_path / "big.tsv", 200)  # 400 rows
    table = stream_table(io.StringIO(tsv.read_text()))
    assert table.kinds[table.header.index("object_lat")] == "f"  # the type row is read ahead, not kept
    assert next(iter(table.rows))[0] == 3  # first data row: file line 3
    _CountingText.taken = 0
    monkeypatch.setattr(ecotaxa, "_text", lambda raw, encoding="utf-8": _CountingText(
        raw, encoding="utf-8-sig", errors="surrogateescape", newline="\n"))
    batches = CONNECTOR.read(str(tsv), EcoTaxaOptions(require_image=False, batch_size=10))
    first = next(batches)
    assert first.records.num_rows == 10 and _CountingText.taken < 20
    assert sum(b.records.num_rows for b in batches) == 390 and _CountingText.taken == 402
    assert read_all(str(tsv), require_image=False)[0].num_rows == 400


def test_record_ids_are_made_of_the_media_id_and_a_bad_rows_of_its_place(tmp_path):
    from schemas import make_record_id

    lines = IFCB.read_text().splitlines()
    tsv = tmp_path / "export.tsv"
    tsv.write_text("\n".join([*lines, "only\tthree\tfields"]) + "\n")
    records, rejects = read_all(str(tsv), require_image=False)
    assert records.num_rows == 2
    assert records["record_id"].to_pylist() == [make_record_id("ecotaxa", m) for m in records["media_id"].to_pylist()]
    assert rejects["record_id"].to_pylist() == [make_record_id("ecotaxa", f"{tsv}#{len(lines) + 1}")]


def test_a_zip_member_found_damaged_while_it_is_read_is_a_clear_error(tmp_path):
    archive = tmp_path / "export.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("export.tsv", IFCB.read_bytes())
    data = bytearray(archive.read_bytes())
    at = data.index(b"validated")  # a byte of the member's data: its CRC no longer matches
    data[at] = ord("V")
    archive.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"export.tsv in .*export.zip cannot be read, the zip is damaged .*CRC"):
        read_all(f"{archive}!/export.tsv")


@pytest.mark.parametrize("d, t", [("20110230", None), ("20111301", None), ("2011062", None), ("20110628", "246000"),
                                  ("20110628", "12:00")])
def test_bad_dates_and_times_raise(d, t):
    with pytest.raises(ValueError):
        event_date(d, t)


@pytest.mark.parametrize("raw, want", [("a>b>c", "a|b|c"), ("living|Eukaryota| Harosa", "living|Eukaryota|Harosa"),
                                       ("", None), (None, None), ("Amphidinium", "Amphidinium")])
def test_lineage_is_root_first_pipe_separated(raw, want):
    assert lineage(raw) == want


# ---- parsers, property-based ------------------------------------------------------------------

type_cell = st.tuples(st.sampled_from(["t", "f", "T", "F"]), st.sampled_from(["", " ", "\t"])).map(
    lambda p: f"{p[1]}[{p[0]}]{p[1]}")


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(type_cell, min_size=1, max_size=40))
def test_type_rows_are_recognised_and_parsed(cells):
    assert is_type_row(cells)
    assert parse_type_row(cells) == [c.strip()[1].lower() for c in cells]


@settings(max_examples=100, deadline=None)
@given(cells=st.lists(type_cell, max_size=10), intruder=st.text(max_size=8).filter(
    lambda s: s.strip().lower() not in ("[t]", "[f]")), at=st.integers(0, 10))
def test_a_data_row_is_not_a_type_row(cells, intruder, at):
    cells.insert(min(at, len(cells)), intruder)
    assert not is_type_row(cells)
    with pytest.raises(ValueError):
        parse_type_row(cells)


@settings(max_examples=100, deadline=None)
@given(x=st.floats(allow_nan=False, allow_infinity=False) | st.integers(-10**12, 10**12))
def test_float_cells_round_trip(x):
    assert typed_value(repr(x), "f") == x
    assert typed_value(repr(x), "t") == repr(x)
    assert typed_value(" nan ", "f") is None and typed_value("", "t") is None


@settings(max_examples=100, deadline=None)
@given(d=st.dates(min_value=date(1900, 1, 1)), h=st.integers(0, 23), m=st.integers(0, 59), s=st.integers(0, 59))
def test_event_date_from_ecotaxa_date_and_time(d, h, m, s):
    date = d.strftime("%Y%m%d")
    assert event_date(date, None) == d.isoformat()
    assert event_date(date, str(h * 10000 + m * 100 + s)) == f"{d.isoformat()}T{h:02d}:{m:02d}:{s:02d}"


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(codec="latin-1", exclude_categories=("Cc", "Cs", "Zl", "Zp")), max_size=12),
       encoding=st.sampled_from(["latin-1", "cp1252", "utf-8", "utf-16"]))
def test_an_export_reads_the_same_in_any_encoding_it_can_be_written_in(tmp_path_factory, text, encoding):
    """Whatever the encoding, a TSV written in it and read with it gives the records of its UTF-8 twin."""
    try:
        text.encode(encoding)
    except UnicodeEncodeError:  # cp1252 lacks a few latin-1 control-range characters
        return
    written = _annotator(IFCB, tmp_path_factory.mktemp("enc") / "export.tsv", text, encoding)
    twin = _annotator(IFCB, tmp_path_factory.mktemp("utf8") / "export.tsv", text, "utf-8")
    got, got_rejects = read_all(str(written), require_image=False, encoding=encoding)
    want, want_rejects = read_all(str(twin), require_image=False)
    assert got_rejects.num_rows == want_rejects.num_rows == 0
    assert got.drop_columns(["identifier"]).equals(want.drop_columns(["identifier"]))  # the image beside each file


@given(st.lists(st.tuples(st.sampled_from(["sample_a", "acq_b", "process_c", "sample_a", "object_x"]),
                          st.sampled_from(["t", "f"])), min_size=0, max_size=6),
       st.lists(st.lists(st.sampled_from(["", " ", "nan", "NaN", "1", "1.50", " 2 ", "-3e2", "inf", "abc", "é\"q",
                                          "null", "0", "1e400"]), min_size=6, max_size=6),
                min_size=1, max_size=30))
def test_extra_json_from_cached_pieces_equals_extra_json_of_the_typed_cells(columns, rows):
    """The row's ``extra`` from kept pieces and kept rows is what ``extra_json`` makes of its typed
    cells (a repeated header name keeps its last cell, a text in a [f] column stays text, empty and
    nan cells are left out), whichever rows came before."""
    from schemas.record import extra_json
    from sources.ecotaxa import _Extras

    kinds = [k for _, k in columns]
    cols = [(i, name) for i, (name, _) in enumerate(columns)]
    extras = _Extras(cols, kinds)
    for raw in rows + rows[::-1]:
        expected = {}
        for i, name in cols:
            try:
                expected[name] = typed_value(raw[i], kinds[i])
            except ValueError:
                expected[name] = raw[i].strip()
        assert extras.json(raw) == extra_json(expected)
