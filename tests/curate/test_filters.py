"""Each curate filter on real GBIF records: its reason, its counts, and in = out + rejected."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.curate.filters import FILTERS, apply_filters, license_family, normalise_basis
from pipeline.stages.curate import Options
from schemas import Reason
from schemas.record import from_rows
from tests.curate.conftest import dwca_rows, plain_text, search_rows

# filters off except the one under test, so each test counts one reason
ALL_OFF = tuple(f.name for f in FILTERS)


def only(name: str, **kw) -> Options:
    return Options(disabled_filters=tuple(n for n in ALL_OFF if n != name), **kw)


def run(rows: list[dict], options: Options):
    table = from_rows(rows)
    kept, rejects = apply_filters(table, options)
    assert kept.num_rows + rejects.num_rows == table.num_rows
    assert set(kept.column("record_id").to_pylist()).isdisjoint(rejects.column("record_id").to_pylist())
    return kept, rejects


def reasons(rejects: pa.Table) -> dict[str, int]:
    return {r: rejects.column("reason").to_pylist().count(r) for r in set(rejects.column("reason").to_pylist())}


def test_license_policy_on_real_licences():
    rows = dwca_rows() + search_rows()
    refused = sum(1 for r in rows if r["license"] in ("unknown", "all-rights-reserved", "cc-by-nc-4.0"))
    kept, rej = run(rows, only("license"))
    assert reasons(rej) == {Reason.LICENSE_POLICY: refused}
    assert set(kept.column("license").to_pylist()) == {"cc-by-4.0"}
    assert "license cc-by-nc-4.0 not allowed" in rej.column("detail").to_pylist()


@pytest.mark.parametrize(
    "code, nc, nd, allowed",
    [
        ("cc0-1.0", False, False, True),
        ("cc-by-4.0", False, False, True),
        ("cc-by-sa-4.0", False, False, True),
        ("cc-by", False, False, True),  # iNaturalist codes carry no version
        ("public-domain", False, False, True),
        ("cc-by-nc-4.0", False, False, False),
        ("cc-by-nc-4.0", True, False, True),
        ("cc-by-nc-sa-4.0", True, False, True),
        ("cc-by-nd-4.0", False, False, False),
        ("cc-by-nd-4.0", False, True, True),
        ("cc-by-nc-nd-4.0", True, False, False),
        ("cc-by-nc-nd-4.0", True, True, True),
        ("all-rights-reserved", True, True, False),
        ("unknown", True, True, False),
        (None, True, True, False),
    ],
)
def test_license_options(code, nc, nd, allowed):
    row = dict(search_rows()[0], license=code)
    kept, rej = run([row], only("license", allow_nc=nc, allow_nd=nd))
    assert kept.num_rows == int(allowed)
    if not allowed:
        assert rej.column("reason").to_pylist() == [Reason.LICENSE_POLICY]


@given(st.sampled_from(["cc-by", "cc-by-nc", "cc-by-sa", "cc-by-nd", "cc-by-nc-sa", "cc-by-nc-nd", "cc0"]),
       st.sampled_from(["", "-1.0", "-2.0", "-2.5", "-3.0", "-4.0"]), st.sampled_from(["", " ", "\t"]),
       st.booleans())
def test_license_family_strips_versions(family, version, pad, upper):
    code = family + version
    code = code.upper() if upper else code
    assert license_family(pa.array([pad + code + pad])).to_pylist() == [family]


def test_basis_of_record_fossils_and_citations_always_out():
    base = search_rows()[0]
    bases = ["FOSSIL_SPECIMEN", "MaterialCitation", "PRESERVED_SPECIMEN", "HUMAN_OBSERVATION", "machine observation", None]
    rows = [dict(base, record_id=f"r{i}", basis_of_record=b) for i, b in enumerate(bases)]
    kept, rej = run(rows, only("basis_of_record", keep_specimens=True))
    assert sorted(rej.column("record_id").to_pylist()) == ["r0", "r1"]
    assert set(rej.column("reason").to_pylist()) == {Reason.BASIS_OF_RECORD}
    kept, rej = run(rows, only("basis_of_record", keep_specimens=False, exclude_basis=("MACHINE_OBSERVATION",)))
    assert sorted(rej.column("record_id").to_pylist()) == ["r0", "r1", "r2", "r4"]


def test_basis_specimens_in_real_download():
    rows = dwca_rows()
    specimens = sum(r["basis_of_record"] == "PRESERVED_SPECIMEN" for r in rows)
    assert run(rows, only("basis_of_record"))[0].num_rows == len(rows)
    kept, rej = run(rows, only("basis_of_record", keep_specimens=False))
    assert rej.num_rows == specimens == 457


@pytest.mark.parametrize("values, expected", [
    (["HumanObservation", "human observation", "HUMAN_OBSERVATION", " human-observation "], "HUMAN_OBSERVATION"),
    (["PreservedSpecimen", "preserved_specimen"], "PRESERVED_SPECIMEN"),
])
def test_normalise_basis(values, expected):
    assert set(normalise_basis(pa.array(values)).to_pylist()) == {expected}


@pytest.mark.parametrize("min_rank, require_all", [("species", False), ("genus", False), ("family", False),
                                                   ("species", True)])
def test_lineage_depth_on_real_ranks(min_rank, require_all):
    rows = dwca_rows()
    needed = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
    needed = needed[: needed.index(min_rank) + 1] if require_all else ("kingdom", min_rank)
    missing = sum(1 for r in rows if any(not r.get(k) for k in needed))
    kept, rej = run(rows, only("lineage", min_rank=min_rank, require_all_ranks=require_all))
    assert reasons(rej) == ({Reason.LINEAGE_DEPTH: missing} if missing else {})
    assert pc.all(pc.is_valid(kept.column(min_rank))).as_py()
    if min_rank == "species":
        assert missing >= 150  # the genus-rank rows of the download
        assert any(d.startswith("missing species") for d in rej.column("detail").to_pylist())


def test_non_living_kept_or_dropped_and_exempt_from_lineage():
    base = search_rows()[0]
    rows = [dict(base, record_id="alive"),
            dict({k: base[k] for k in ("source", "identifier", "license")}, record_id="detritus",
                 living=False, non_living_class="detritus", match_type="non_living")]
    names = ("lineage", "non_living")
    keep = Options(disabled_filters=tuple(n for n in ALL_OFF if n not in names), keep_non_living=True)
    drop = Options(disabled_filters=tuple(n for n in ALL_OFF if n not in names), keep_non_living=False)
    assert run(rows, keep)[0].num_rows == 2
    kept, rej = run(rows, drop)
    assert rej.to_pylist() == [{"record_id": "detritus", "stage": "curate", "reason": "non_living",
                                "detail": "non-living class detritus"}]


def test_coordinates_real_null_island_and_ranges():
    rows = dwca_rows()
    zero = sum(1 for r in rows if r["decimal_latitude"] == 0 and r["decimal_longitude"] == 0)
    assert zero == 32
    kept, rej = run(rows, only("coordinates"))
    assert reasons(rej) == {Reason.BAD_COORDINATES: zero}
    assert run(rows, only("coordinates", drop_zero_coordinates=False))[1].num_rows == 0
    no_coords = sum(1 for r in rows if r["decimal_latitude"] is None)
    assert run(rows, only("coordinates", require_coordinates=True))[1].num_rows == zero + no_coords
    base = search_rows()[0]
    odd = [dict(base, record_id="half", decimal_longitude=None),
           dict(base, record_id="north", decimal_latitude=91.0),
           dict(base, record_id="nan", decimal_latitude=float("nan"), decimal_longitude=float("nan"))]
    kept, rej = run(odd, only("coordinates"))
    details = dict(zip(rej.column("record_id").to_pylist(), rej.column("detail").to_pylist(), strict=True))
    assert details == {"half": "only one of latitude/longitude", "north": "coordinates out of range"}


def test_annotation_status_and_quality_grade():
    base = search_rows()[0]
    rows = [dict(base, record_id="v", annotation_status="validated"),
            dict(base, record_id="p", annotation_status="predicted"),
            dict(base, record_id="d", annotation_status="Dubious"),
            dict(base, record_id="none"),
            dict(base, record_id="casual", quality_grade="casual"),
            dict(base, record_id="research", quality_grade="research")]
    opts = Options(disabled_filters=tuple(n for n in ALL_OFF if n not in ("annotation_status", "quality_grade")))
    kept, rej = run(rows, opts)
    got = dict(zip(rej.column("record_id").to_pylist(), rej.column("reason").to_pylist(), strict=True))
    assert got == {"p": Reason.ANNOTATION_STATUS, "d": Reason.ANNOTATION_STATUS, "casual": Reason.NOT_RESEARCH_GRADE}
    lax = Options(disabled_filters=opts.disabled_filters, annotation_statuses=("validated", "predicted"),
                  quality_grades=None)
    assert sorted(run(rows, lax)[1].column("record_id").to_pylist()) == ["d"]


def test_image_type_by_format_or_extension():
    base = search_rows()[0]
    rows = [dict(base, record_id="jpeg", format="image/jpeg"),
            dict(base, record_id="jpg", format="JPG"),
            dict(base, record_id="sound", format="audio/mpeg"),
            dict(base, record_id="svg", format="image/svg+xml"),
            dict(base, record_id="mp4", format=None, identifier="https://example.org/v/clip.MP4?x=1"),
            dict(base, record_id="bare", format=None, identifier="https://example.org/media/123")]
    kept, rej = run(rows, only("image_type"))
    assert sorted(rej.column("record_id").to_pylist()) == ["mp4", "sound", "svg"]
    assert set(rej.column("reason").to_pylist()) == {Reason.IMAGE_TYPE}
    assert "file type .mp4" in rej.column("detail").to_pylist()


def test_image_size_when_known():
    base = search_rows()[0]
    rows = [dict(base, record_id="big", width=800, height=600), dict(base, record_id="thin", width=800, height=8),
            dict(base, record_id="unknown"), dict(base, record_id="narrow", width=10)]
    kept, rej = run(rows, only("image_size", min_width=16, min_height=16))
    assert sorted(rej.column("record_id").to_pylist()) == ["narrow", "thin"]
    assert "10x? < 16x16" in rej.column("detail").to_pylist()


def test_all_filters_first_reason_wins_and_counts_add_up():
    rows = dwca_rows() + search_rows()
    table = from_rows(rows)
    kept, rej = apply_filters(table, Options())
    assert kept.num_rows + rej.num_rows == table.num_rows
    assert rej.column("record_id").to_pylist() == list(dict.fromkeys(rej.column("record_id").to_pylist()))
    counts = reasons(rej)
    assert counts[Reason.LICENSE_POLICY] == sum(r["license"] != "cc-by-4.0" for r in rows)
    assert counts[Reason.LINEAGE_DEPTH] > 0
    assert kept.num_rows == sum(
        r["license"] == "cc-by-4.0" and bool(r["species"]) and bool(r["kingdom"])
        and not (r["decimal_latitude"] == 0 and r["decimal_longitude"] == 0) for r in rows)


def test_empty_batch():
    kept, rej = apply_filters(from_rows([]), Options())
    assert kept.num_rows == rej.num_rows == 0


def _as_dictionaries(table: pa.Table, names: list[str]) -> pa.Table:
    return pa.table([pc.dictionary_encode(c) if n in names else c for n, c in zip(table.column_names, table.columns,
                                                                                   strict=True)],
                    names=table.column_names)


@pytest.mark.parametrize("options", [Options(), Options(allow_nc=True, keep_specimens=True, keep_non_living=True),
                                     Options(min_rank="genus", require_all_ranks=True, quality_grades=("research",))])
def test_dictionary_columns_decide_as_plain_text(options):
    """The fused curate reads repeating text columns as dictionaries: every filter decides and
    describes those rows exactly as it does on plain text (real samples, blank ranks included)."""
    table = from_rows(dwca_rows() + search_rows())
    names = [f.name for f in table.schema if pa.types.is_string(f.type) and f.name not in ("record_id", "identifier")]
    kept, rej = apply_filters(table, options)
    kept_d, rej_d = apply_filters(_as_dictionaries(table, names), options)
    assert plain_text(kept_d).equals(kept)
    assert rej_d.equals(rej)
    assert rej.num_rows > 0
