"""The record is defined once; the Arrow schema and validation follow from it."""

from __future__ import annotations

import math

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas import RANKS, RECORD_SCHEMA, Record, conform, make_record_id
from schemas.record import BOUNDS, ENUMS, REQUIRED, from_columns, from_rows, make_record_ids, record_id_column
from tests.curate.test_hashing import reference


def test_arrow_schema_is_derived_from_the_model():
    names = [f.alias or n for n, f in Record.model_fields.items()]
    assert RECORD_SCHEMA.names == names
    assert set(RANKS) <= set(RECORD_SCHEMA.names)
    assert RECORD_SCHEMA.field("decimal_latitude").type == pa.float64()
    assert RECORD_SCHEMA.field("living").type == pa.bool_()
    assert RECORD_SCHEMA.field("decimal_latitude").metadata[b"dwc"] == b"decimalLatitude"
    assert REQUIRED == ("record_id", "source", "identifier")


@given(st.text(), st.text())
def test_record_ids_are_stable_and_dot_free(source, media):
    rid = make_record_id(source, media)
    assert "." not in rid[len(source):] and rid == make_record_id(source, media)


def test_record_ids_are_the_string_hash_of_the_media_id_seeded_by_the_source():
    """The definition, pinned: ids that changed silently would no longer match stored data (a new
    definition comes with a new SCHEMA_VERSION)."""
    assert make_record_id("gbif", "1234/http://x.org/1.jpg") == "gbif-d70038f5313d13c0"
    assert make_record_id("inaturalist", "42") == "inaturalist-0a5ee8ef61051f54"
    for source, media in [("gbif", "1234/http://x.org/1.jpg"), ("eol", ""), ("x", "ü" * 9)]:
        assert make_record_id(source, media) == f"{source}-{reference(media, source):016x}"


@given(st.text(max_size=8), st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=20), st.integers(0, 3))
def test_record_ids_column_wise_equal_one_by_one(source, media, skip):
    arr = pa.array(["skipped"] * skip + media, pa.string()).slice(skip)  # offsets not at 0
    want = [make_record_id(source, m) for m in media]  # None is str(None), as the connectors have it
    assert record_id_column(source, arr).to_pylist() == want
    assert record_id_column(source, pa.chunked_array([arr], pa.string())).to_pylist() == want
    assert make_record_ids(source, media) == want


def _row(**kw):
    return {"record_id": "t-1", "source": "t", "identifier": "http://x/1.jpg", **kw}


def test_conform_keeps_good_rows_and_rejects_bad_ones_with_a_reason():
    rows = [
        _row(),
        _row(record_id="t-2", decimal_latitude=91.0),
        _row(record_id="t-3", identifier=""),
        _row(record_id="t.4"),
        _row(record_id="t-5", match_type="guess"),
        _row(record_id="t-6", decimal_longitude=-180.0, match_score=1.0),
    ]
    good, rejects = conform(from_rows(rows), "ingest")
    assert good.column("record_id").to_pylist() == ["t-1", "t-6"]
    assert good.schema == RECORD_SCHEMA
    by_id = {r["record_id"]: r["detail"] for r in rejects.to_pylist()}
    assert set(by_id) == {"t-2", "t-3", "t.4", "t-5"}
    assert "decimal_latitude" in by_id["t-2"] and "identifier: required" in by_id["t-3"]
    assert set(rejects.column("reason").to_pylist()) == {"invalid_record"}


def test_conform_casts_text_numbers_and_rejects_garbage():
    t = pa.table({"record_id": ["a-1", "a-2"], "source": ["s", "s"], "identifier": ["u", "u"],
                  "decimal_latitude": ["12.5", "north"]})
    good, rejects = conform(t, "ingest")
    assert good.column("decimal_latitude").to_pylist() == [12.5]
    assert rejects.column("record_id").to_pylist() == ["a-2"]


@given(st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=30))
def test_conform_accounts_for_every_row(lats):
    rows = [_row(record_id=f"t-{i}", decimal_latitude=v) for i, v in enumerate(lats)]
    good, rejects = conform(from_rows(rows) if rows else from_rows([_row()]).slice(0, 0), "ingest")
    assert good.num_rows + rejects.num_rows == len(lats)
    assert all(-90 <= v <= 90 for v in good.column("decimal_latitude").to_pylist() if v is not None)


def test_from_columns_is_from_rows_of_the_same_values():
    rows = [{"record_id": "gbif-1", "source": "gbif", "identifier": "https://a.org/1.jpg", "width": 640},
            {"record_id": "gbif-2", "source": "gbif", "identifier": None, "width": None}]
    columns = {k: pa.array([r[k] for r in rows]) for k in rows[0]}
    assert from_columns(columns, 2).equals(from_rows(rows), check_metadata=True)
    with pytest.raises(KeyError, match="not record columns"):
        from_columns({"colour": pa.array(["red"])}, 1)


_JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=True), st.text(max_size=5)),
    lambda inner: st.one_of(st.lists(inner, max_size=2), st.dictionaries(st.text(max_size=3), inner, max_size=2)),
    max_leaves=4)


@given(st.dictionaries(st.sampled_from(RECORD_SCHEMA.names), _JSON_VALUES, max_size=6))
def test_row_problem_says_exactly_when_from_rows_fails(row):
    """Any JSON-like values in any record columns: ``row_problem`` is None iff ``from_rows`` takes the row."""
    from schemas.record import row_problem

    problem = row_problem(row)
    try:
        t = from_rows([row])
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError, TypeError):
        assert problem is not None
    else:
        assert problem is None, (problem, t)
        for name, value in row.items():
            got = t.column(name)[0].as_py()
            assert got == value or (value != value and got != got)  # NaN stays NaN


def _first_problem(row: dict) -> str | None:
    """conform's rule, row by row: the first problem in schema field order."""
    for field in RECORD_SCHEMA:
        v = row.get(field.name)
        if not field.nullable and (v is None or v == ""):
            return f"{field.name}: required"
        if field.name in BOUNDS and v is not None and not math.isnan(v):
            lo, hi = BOUNDS[field.name]
            if (lo is not None and v < lo) or (hi is not None and v > hi):
                return f"{field.name}: out of range [{lo}, {hi}]"
        if field.name in ENUMS and v is not None and v not in ENUMS[field.name]:
            return f"{field.name}: not one of {ENUMS[field.name]}"
        if field.name == "record_id" and v and "." in v:
            return "record_id: contains a dot"
    return None


_ROWS = st.lists(st.fixed_dictionaries({
    "record_id": st.sampled_from(["t-1", "t.2", "", None, "t-3"]),
    "source": st.sampled_from(["t", "", None]),
    "identifier": st.sampled_from(["http://x/1.jpg", "", None]),
    "decimal_latitude": st.one_of(st.none(), st.floats(-200, 200), st.just(math.nan)),
    "match_score": st.one_of(st.none(), st.floats(-1, 2)),
    "match_type": st.sampled_from([None, "exact", "guess"]),
}), max_size=25)


@given(_ROWS)
def test_conform_rejects_what_the_row_by_row_rule_rejects(rows):
    table = from_rows(rows) if rows else from_rows([_row()]).slice(0, 0)
    good, rejects = conform(table, "ingest")
    expected = [(i, _first_problem(r)) for i, r in enumerate(rows)]
    bad = [(i, why) for i, why in expected if why is not None]
    assert good.num_rows == len(rows) - len(bad) and good.schema == RECORD_SCHEMA
    assert rejects.column("detail").to_pylist() == [why for _, why in bad]
    assert rejects.column("record_id").to_pylist() == [rows[i]["record_id"] or f"row-{i}" for i, _ in bad]


def test_record_ids_past_32_bit_offsets_are_a_large_string_column(monkeypatch):
    import schemas.hashing

    media = pa.array(["a", "b", None, "d"])
    want = record_id_column("t", media).to_pylist()
    monkeypatch.setattr(schemas.hashing, "_MAX_STRING_BYTES", 40)  # 4 ids of 18 bytes: past it
    got = record_id_column("t", media)
    assert got.type == pa.large_string() and got.to_pylist() == want
