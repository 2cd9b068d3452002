"""IFCB raw bins: both ADC layouts, ROI accounting, labels, bad input, parsers (hypothesis)."""

from __future__ import annotations

import io
import json
import re
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from schemas import Reason, conform, make_record_id
from sources.base import IngestBatch
from sources.ifcb import (
    ADC_V1,
    ADC_V2,
    CONNECTOR,
    IfcbOptions,
    iter_roi_arrays,
    parse_adc,
    parse_bin_name,
    parse_class_csv,
    parse_hdr,
)
from sources.localuri import read_local

DATA = Path(__file__).resolve().parents[1] / "data" / "plankton"
V2_NESTED = DATA / "ifcb" / "D2013" / "D201305" / "D20130526" / "D20130526T095207_IFCB013"
V2_LABELED = DATA / "ifcb_labeled" / "D20220522T000439_IFCB134"
V1_NO_ROI = DATA / "ifcb_v1" / "IFCB5_2012_028" / "IFCB5_2012_028_081515"
REAL_BINS = [V2_NESTED, V2_LABELED]


def read_all(task: str | Path, **opts) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    batches: list[IngestBatch] = list(CONNECTOR.read(str(task), IfcbOptions(**opts)))
    records = pa.concat_tables([b.records for b in batches if b.records.num_rows]) if any(
        b.records.num_rows for b in batches) else pa.table({"record_id": pa.array([], pa.string())})
    rejects = pa.concat_tables([b.rejects for b in batches])
    skipped: dict[str, int] = {}
    for b in batches:
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return records, rejects, skipped


def adc_rows(bin_path: Path) -> int:
    return sum(1 for line in bin_path.with_suffix(".adc").read_text().splitlines() if line.strip())


def copy_bin(src: Path, dest_dir: Path, name: str | None = None) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    name = name or src.name
    for ext in (".hdr", ".adc", ".roi"):
        if src.with_suffix(ext).exists():
            shutil.copy(src.with_suffix(ext), dest_dir / f"{name}{ext}")
    return dest_dir / name


@pytest.mark.parametrize("bin_path", REAL_BINS, ids=lambda p: p.name)
def test_every_adc_row_of_the_real_bins_is_accounted_for(bin_path):
    records, rejects, skipped = read_all(bin_path)
    roi_skips = sum(v for k, v in skipped.items() if k != "ifcb_label_without_roi")
    assert records.num_rows + rejects.num_rows + roi_skips == adc_rows(bin_path)
    assert rejects.num_rows == 0
    good, bad = conform(records, "ingest")
    assert good.num_rows == records.num_rows and bad.num_rows == 0


@pytest.mark.parametrize("bin_path, layout", [(V2_NESTED, ADC_V2), (V2_LABELED, ADC_V2), (V1_NO_ROI, ADC_V1)],
                         ids=["v2-IFCB013", "v2-IFCB134", "v1-IFCB5"])
def test_layout_columns_chain_start_bytes_on_real_adc(bin_path, layout):
    rows = parse_adc(bin_path.with_suffix(".adc").read_text(), parse_bin_name(bin_path.name).layout)
    assert rows.layout is layout and not rows.malformed
    size = rows.width * rows.height
    nz = np.flatnonzero(size > 0)
    # each image starts where the previous one ended: the geometry columns are the right ones
    assert np.array_equal(rows.start_byte[nz][1:], (rows.start_byte + size)[nz][:-1])
    roi = bin_path.with_suffix(".roi")
    if roi.exists():
        assert int(size.sum()) == roi.stat().st_size
        assert int(rows.start_byte[nz][-1] + size[nz][-1]) == roi.stat().st_size


def test_v2_counts_and_fields_of_the_nested_real_bin():
    tasks = CONNECTOR.tasks(str(DATA / "ifcb"), IfcbOptions())
    assert tasks == [str(V2_NESTED.resolve())]
    records, _, skipped = read_all(tasks[0], license="mit", dataset="pyifcb-test")
    assert records.num_rows == 19 and skipped == {"ifcb_empty_trigger": 99}
    row = records.slice(0, 1).to_pylist()[0]
    assert row["instrument"] == "IFCB013"
    assert row["event_date"] == "2013-05-26T09:52:07Z"
    assert row["media_id"] == "D20130526T095207_IFCB013_00007"
    assert row["record_id"] == make_record_id("ifcb", row["media_id"])
    assert (row["width"], row["height"], row["license"], row["source_dataset"]) == (88, 34, "mit", "pyifcb-test")
    extra = json.loads(row["extra"])
    assert extra["hdr"]["sampleTime"] == "2013-05-26T09:52:07Z"  # the header agrees with the name
    assert extra["adc_layout"] == "v2" and extra["roi_x"] == 1060


def test_labels_from_the_real_class_csv_are_kept_verbatim():
    records, _, skipped = read_all(V2_LABELED)
    csv_rows = parse_class_csv(V2_LABELED.with_name(V2_LABELED.name + "_classes.csv").read_text())
    assert skipped == {"ifcb_empty_trigger": 1}
    got = dict(zip(records.column("media_id").to_pylist(), records.column("verbatim_name").to_pylist(), strict=True))
    assert got == {k: v.name for k, v in csv_rows.items()}
    assert got["D20220522T000439_IFCB134_00003"] == "Strombidium-like"
    assert set(records.column("annotation_status").to_pylist()) == {"validated"}
    extra = json.loads(records.column("extra")[0].as_py())
    assert extra["class_name_auto"] == "Mesodinium_rubrum" and extra["score"] == pytest.approx(0.900653839111328)


def test_cut_rois_match_the_real_pngs_exported_from_the_bin():
    arrays = dict((n, a.copy()) for n, a in iter_roi_arrays(V2_LABELED))
    assert sorted(arrays) == list(range(2, 9))
    records, _, _ = read_all(V2_LABELED)
    for media_id, uri in zip(records.column("media_id").to_pylist(), records.column("identifier").to_pylist(),
                             strict=True):
        n = int(media_id.rsplit("_", 1)[1])
        png = np.array(Image.open(DATA / "ifcb_labeled" / "png" / f"{media_id}.png"))
        ours = np.array(Image.open(io.BytesIO(read_local(uri))))
        assert np.array_equal(ours, arrays[n])
        assert ours.shape == png.shape
        # the published PNGs went through an intensity stretch; the pixels are the same image
        assert np.corrcoef(ours.ravel().astype(float), png.ravel().astype(float))[0, 1] > 0.999


def test_real_v1_adc_without_its_roi_rejects_every_image_and_counts_the_empty_trigger():
    rows = parse_adc(V1_NO_ROI.with_suffix(".adc").read_text(), ADC_V1)
    assert rows.n_rows == 7
    assert (rows.width[0], rows.height[0], rows.start_byte[0]) == (96, 45, 1)
    assert rows.roi_number.tolist() == [1, 2, 3, 4, 5, 6, 7]  # two ROIs of trigger 3 are rows 3 and 4
    records, rejects, skipped = read_all(V1_NO_ROI)
    assert records.num_rows == 0 and skipped == {"ifcb_empty_trigger": 1}
    assert rejects.column("reason").to_pylist() == [Reason.NO_IMAGE] * 6
    assert "no .roi" in rejects.column("detail")[0].as_py()


def test_real_v1_header_is_parsed():
    hdr = parse_hdr(V1_NO_ROI.with_suffix(".hdr").read_text())
    assert hdr["SyringeStatus"] == "0"
    assert hdr["Temp"] == "11.4799732421875" and hdr["BlobSizeThresh"] == "10"
    assert hdr["_lines"][0].startswith("Imaging FlowCytobot Acquisition Software version 1.0")


def test_v1_layout_bin_reads_the_same_rois_as_its_v2_source(tmp_path):
    """The real IFCB013 bin rewritten in the 15-column v1 layout under a v1 name gives the same images."""
    v2 = parse_adc(V2_NESTED.with_suffix(".adc").read_text(), ADC_V2)
    lines = []
    for t, x, y, w, h, s in zip(v2.trigger, v2.roi_x, v2.roi_y, v2.width, v2.height, v2.start_byte, strict=True):
        lines.append(",".join([str(t)] + ["0.5"] * 8 + [str(x), str(y), str(w), str(h), str(s), "0"]) + ",")
    lid = "IFCB13_2013_146_095207"  # 26 May 2013 is day 146
    (tmp_path / f"{lid}.adc").write_text("\r\n".join(lines) + "\r\n")
    shutil.copy(V2_NESTED.with_suffix(".roi"), tmp_path / f"{lid}.roi")
    old, _, old_skipped = read_all(tmp_path / lid)
    new, _, new_skipped = read_all(V2_NESTED)
    assert old_skipped == new_skipped and old.num_rows == new.num_rows == 19
    assert set(old.column("instrument").to_pylist()) == {"IFCB13"}
    assert set(old.column("event_date").to_pylist()) == {"2013-05-26T09:52:07Z"}
    for a, b in zip(old.column("identifier").to_pylist(), new.column("identifier").to_pylist(), strict=True):
        assert read_local(a) == read_local(b)


def test_truncated_roi_and_offsets_past_the_end_are_rejected(tmp_path):
    bin_path = copy_bin(V2_NESTED, tmp_path)
    roi = bin_path.with_suffix(".roi")
    roi.write_bytes(roi.read_bytes()[:50_000])
    records, rejects, skipped = read_all(bin_path)
    assert set(rejects.column("reason").to_pylist()) == {Reason.TRUNCATED_ROI}
    assert records.num_rows + rejects.num_rows + skipped["ifcb_empty_trigger"] == adc_rows(bin_path)
    for uri in records.column("identifier").to_pylist():
        read_local(uri)  # every kept ROI lies inside the shortened file
    assert "past the end" in rejects.column("detail")[0].as_py()


def test_malformed_rows_and_negative_sizes_are_rejected_not_raised(tmp_path):
    bin_path = copy_bin(V2_LABELED, tmp_path)
    adc = bin_path.with_suffix(".adc")
    lines = adc.read_text().splitlines()
    fields = lines[2].split(",")
    fields[15] = "-160"
    lines[2] = ",".join(fields)
    fields = lines[3].split(",")
    fields[17] = "99999999"  # start byte far past the end of the .roi
    lines[3] = ",".join(fields)
    lines.insert(4, "9,garbage,row")
    lines.insert(5, ",".join(["10"] + ["x"] * 23))
    adc.write_text("\n".join(lines) + "\n")
    records, rejects, skipped = read_all(bin_path)
    reasons = sorted(rejects.column("reason").to_pylist())
    assert reasons == sorted([Reason.MALFORMED_ROW] * 3 + [Reason.TRUNCATED_ROI])
    assert records.num_rows + rejects.num_rows + skipped["ifcb_empty_trigger"] == 10
    assert records.num_rows == 5


def test_roi_without_adc_is_counted_as_a_bin(tmp_path):
    shutil.copy(V2_NESTED.with_suffix(".roi"), tmp_path / "D20130526T095207_IFCB013.roi")
    tasks = CONNECTOR.tasks(str(tmp_path), IfcbOptions())
    assert len(tasks) == 1
    records, rejects, skipped = read_all(tasks[0])
    assert records.num_rows == 0 and rejects.num_rows == 0 and skipped == {"ifcb_bin_without_adc": 1}


def test_label_statuses_and_unlabelled_rois(tmp_path):
    bin_path = copy_bin(V2_LABELED, tmp_path)
    real = V2_LABELED.with_name(V2_LABELED.name + "_classes.csv").read_text().splitlines()
    # row 2 keeps its person label, row 3 has only the classifier's, rows 4.. none; a label for a ROI that
    # is not in the bin (99) and one for the empty trigger (1)
    lines = [real[0], real[1], real[2].replace('"Strombidium-like","Strombidium-like"', '"","Strombidium-like"'),
             '"D20220522T000439_IFCB134_00099.png","Ciliophora","",', '"D20220522T000439_IFCB134_00001.png","x","",']
    (tmp_path / f"{bin_path.name}_classes.csv").write_text("\n".join(lines) + "\n")
    records, rejects, skipped = read_all(bin_path)
    assert skipped == {"ifcb_empty_trigger": 1, "ifcb_label_without_roi": 2}
    assert rejects.column("detail").to_pylist() == [
        "D20220522T000439_IFCB134_00003: annotation_status=predicted (Strombidium-like)"]
    assert records.num_rows == 6 and records.column("verbatim_name").to_pylist().count(None) == 5
    records, rejects, _ = read_all(bin_path, accept_statuses=("validated", "predicted"), keep_unlabelled=False)
    assert records.column("annotation_status").to_pylist() == ["validated", "predicted"]
    assert set(rejects.column("reason").to_pylist()) == {Reason.NOT_VALIDATED} and rejects.num_rows == 5


def test_labels_option_points_at_a_folder_of_class_csvs(tmp_path):
    bin_path = copy_bin(V2_LABELED, tmp_path / "bins" / "2022" / "D20220522")
    shutil.copy(V2_LABELED.with_name(V2_LABELED.name + "_classes.csv"), tmp_path / f"{V2_LABELED.name}.csv")
    records, _, _ = read_all(bin_path, labels=str(tmp_path))
    assert records.column("verbatim_name").to_pylist().count("Mesodinium_rubrum") == 5
    with pytest.raises(FileNotFoundError):
        read_all(bin_path, labels=str(tmp_path / "nowhere"))


def test_class_csv_without_the_needed_columns_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="file_name"):
        parse_class_csv("a,b\n1,2\n")
    bin_path = copy_bin(V2_LABELED, tmp_path)
    (tmp_path / f"{bin_path.name}_classes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=f"labels file .*{bin_path.name}_classes.csv: class CSV needs a file_name"):
        read_all(bin_path)


@pytest.mark.parametrize("encoding", ["latin-1", "cp1252"])
def test_a_class_csv_that_is_not_utf8_names_the_file_and_is_read_with_labels_encoding(tmp_path, encoding):
    """QA: a latin-1 class CSV stopped the bin with a bare codec error, no file named."""
    bin_path = copy_bin(V2_LABELED, tmp_path)
    real = V2_LABELED.with_name(V2_LABELED.name + "_classes.csv").read_text()
    (tmp_path / f"{bin_path.name}_classes.csv").write_bytes(real.replace("Ciliophora", "Ciliophora_ß").encode(encoding))
    with pytest.raises(ValueError) as err:
        read_all(bin_path)
    message = str(err.value)
    assert f"labels file {tmp_path / bin_path.name}_classes.csv is not UTF-8 text (line " in message
    assert "iconv -f latin1 -t utf-8" in message and 'labels_encoding = "latin-1"' in message
    records, rejects, _ = read_all(bin_path, labels_encoding=encoding)
    want, want_rejects, _ = read_all(V2_LABELED)
    assert records.num_rows == want.num_rows and rejects.num_rows == want_rejects.num_rows
    assert records.column("verbatim_name").to_pylist() == [
        None if n is None else n.replace("Ciliophora", "Ciliophora_ß") for n in want.column("verbatim_name").to_pylist()]
    assert "Ciliophora_ß" in records.column("verbatim_name").to_pylist()
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="'klingon' is not a text encoding Python knows"):
        IfcbOptions(labels_encoding="klingon")


# ---- parsers, property-based ------------------------------------------------------------------

geometry = st.tuples(st.integers(1, 10**6), st.integers(-5, 2000), st.integers(-5, 2000), st.integers(0, 2000),
                     st.integers(0, 2000), st.integers(0, 10**9))


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(geometry, max_size=30), layout=st.sampled_from([ADC_V1, ADC_V2]),
       trailing_comma=st.booleans(), crlf=st.booleans(), blank_lines=st.booleans())
def test_parse_adc_recovers_geometry_in_both_layouts(rows, layout, trailing_comma, crlf, blank_lines):
    width = 15 if layout is ADC_V1 else 24
    lines = []
    for t, x, y, w, h, s in rows:
        fields = ["0.125"] * width
        fields[layout.trigger], fields[layout.roi_x], fields[layout.roi_y] = str(t), str(x), str(y)
        fields[layout.width], fields[layout.height], fields[layout.start_byte] = str(w), str(h), str(s)
        lines.append(",".join(fields) + ("," if trailing_comma else ""))
        if blank_lines:
            lines.append("")
    text = ("\r\n" if crlf else "\n").join(lines)
    parsed = parse_adc(text)  # layout detected from the column count (nothing to detect from no rows)
    assert (parsed.layout is layout or not rows) and not parsed.malformed
    got = list(zip(parsed.trigger.tolist(), parsed.roi_x.tolist(), parsed.roi_y.tolist(), parsed.width.tolist(),
                   parsed.height.tolist(), parsed.start_byte.tolist(), strict=True))
    assert got == rows
    assert parsed.roi_number.tolist() == list(range(1, len(rows) + 1))


@settings(max_examples=80, deadline=None)
@given(rows=st.lists(geometry, min_size=1, max_size=30), layout=st.sampled_from([ADC_V1, ADC_V2]),
       trailing_comma=st.booleans(), crlf=st.booleans(), floats=st.booleans())
def test_both_adc_parsers_give_the_same_rows(rows, layout, trailing_comma, crlf, floats):
    """Small files are parsed row by row, large ones by Arrow: on well-formed text both give the
    same geometry and ROI numbers (integers written as ``12.0`` too)."""
    from sources.ifcb import _parse_adc_arrow, _parse_adc_rows

    width = 15 if layout is ADC_V1 else 24
    lines = []
    for values in rows:
        fields = ["0.125"] * width
        for c, v in zip((layout.trigger, layout.roi_x, layout.roi_y, layout.width, layout.height,
                         layout.start_byte), values, strict=True):
            fields[c] = f"{v}.0" if floats else str(v)
        lines.append(",".join(fields) + ("," if trailing_comma else ""))
    end = "\r\n" if crlf else "\n"
    text = end.join(lines) + end  # as the instrument writes them (Arrow cannot take one line without an end)
    arrow, by_row = _parse_adc_arrow(text.encode(), layout), _parse_adc_rows(text, layout)
    assert arrow is not None and not by_row.malformed
    for name in ("roi_number", "trigger", "roi_x", "roi_y", "width", "height", "start_byte"):
        assert getattr(arrow, name).tolist() == getattr(by_row, name).tolist(), name


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=400), layout=st.sampled_from([None, ADC_V1, ADC_V2]))
def test_parse_adc_never_raises_and_accounts_for_every_line(text, layout):
    parsed = parse_adc(text, layout)
    lines = re.split(r"\r\n|\n|\r", text)
    assert parsed.n_rows == sum(1 for line in lines if line.strip())


# "_lines" is where parse_hdr puts the lines that are not key: value (no IFCB header has that key)
hdr_key = st.text(st.characters(whitelist_categories=("L", "N"), whitelist_characters="_()%"), min_size=1,
                  max_size=20).filter(lambda k: k != "_lines")
hdr_value = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=30).map(str.strip)


@settings(max_examples=80, deadline=None)
@given(pairs=st.dictionaries(hdr_key, hdr_value, max_size=15), tab=st.booleans())
def test_parse_hdr_recovers_key_value_lines(pairs, tab):
    text = "\n".join(f"{k}: {v}{chr(9) if tab else ''}" for k, v in pairs.items())
    assert {k: v for k, v in parse_hdr(text).items() if k != "_lines"} == pairs


@settings(max_examples=80, deadline=None)
@given(text=st.text(max_size=300))
def test_parse_hdr_never_raises(text):
    assert isinstance(parse_hdr(text), dict)


@settings(max_examples=80, deadline=None)
@given(when=st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31)),
       instrument=st.integers(1, 999))
def test_bin_names_of_both_generations_give_instrument_and_time(when, instrument):
    when = when.replace(microsecond=0, tzinfo=UTC)
    iso = when.strftime("%Y-%m-%dT%H:%M:%SZ")
    v2 = parse_bin_name(f"D{when:%Y%m%dT%H%M%S}_IFCB{instrument:03d}")
    assert v2 is not None and v2.layout is ADC_V2 and v2.sample_time == iso and v2.instrument == f"IFCB{instrument:03d}"
    doy = (when - datetime(when.year, 1, 1, tzinfo=UTC)).days + 1
    v1 = parse_bin_name(f"IFCB{instrument}_{when.year}_{doy:03d}_{when:%H%M%S}")
    assert v1 is not None and v1.layout is ADC_V1 and v1.sample_time == iso
    assert when - timedelta(0) == datetime.strptime(v1.sample_time, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@pytest.mark.parametrize("lid", ["D20131326T095207_IFCB013", "IFCB5_2012_400_081515", "foo", "D20130526T095207"])
def test_not_a_bin_name(lid):
    assert parse_bin_name(lid) is None
