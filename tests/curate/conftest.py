"""Record tables for the curate tests, built from real samples: a GBIF DwC-A download and a GBIF
occurrence-search response (names, lineages, licences, coordinates exactly as published)."""

from __future__ import annotations

import csv
import io
import json
import zipfile
from pathlib import Path

import pyarrow as pa
import pytest

from schemas import make_record_id
from schemas.record import from_rows

DATA = Path(__file__).resolve().parents[1] / "data"
DWCA = DATA / "gbif" / "dwca" / "0000066-140928181241064.zip"
SEARCH = DATA / "gbif" / "api" / "occurrence_search_taxonKey3329049_limit300.json"
QUERCUS = DATA / "taxonomy" / "gbif_backbone" / "species_2878266.json"
RANK_COLUMNS = ("kingdom", "phylum", "class", "order", "family", "genus")


def cc_code(url: str | None) -> str:
    """The licence codes of the project vocabulary for the CC URLs these samples use."""
    from sources.licenses import normalise_license

    return normalise_license(url)


def _tsv(z: zipfile.ZipFile, name: str) -> list[dict]:
    return list(csv.DictReader(io.TextIOWrapper(z.open(name), "utf-8"), delimiter="\t", quoting=csv.QUOTE_NONE))


def _float(v: str | None) -> float | None:
    return float(v) if v not in (None, "") else None


def dwca_rows() -> list[dict]:
    """One record per occurrence of the DwC-A (470), resolved lineage = GBIF's interpreted one.

    The image is the occurrence's first multimedia row; occurrences without one point at their
    GBIF API page, so that all 470 real names, lineages and coordinates (32 at 0,0) take part.
    """
    with zipfile.ZipFile(DWCA) as z:
        occurrences = _tsv(z, "occurrence.txt")
        media = {}
        for m in _tsv(z, "multimedia.txt"):
            media.setdefault(m["gbifID"], m)
    rows = []
    for o in occurrences:
        m = media.get(o["gbifID"]) or {
            "gbifID": o["gbifID"], "identifier": f"https://api.gbif.org/v1/occurrence/{o['gbifID']}",
            "format": "", "license": ""}
        rank = (o["taxonRank"] or "").lower() or None
        rows.append({
            "record_id": make_record_id("gbif", f"{m['gbifID']}/{m['identifier']}"),
            "source": "gbif",
            "source_dataset": o["datasetKey"],
            "occurrence_id": o["occurrenceID"] or o["gbifID"],
            "media_id": m["identifier"],
            "identifier": m["identifier"],
            "format": m["format"] or None,
            "license": cc_code(m["license"] or o["rights"] or None),
            "license_raw": m["license"] or o["rights"] or None,
            "verbatim_name": o["scientificName"],
            "taxon_id": o["taxonKey"] or None,
            **{("class" if r == "class" else r): (o[r] or None) for r in RANK_COLUMNS},
            "species": o["species"] or None,
            "taxon_rank": rank,
            "match_type": "exact",
            "decimal_latitude": _float(o["decimalLatitude"]),
            "decimal_longitude": _float(o["decimalLongitude"]),
            "basis_of_record": o["basisOfRecord"] or None,
            "country_code": o["countryCode"] or None,
            "event_date": o["eventDate"] or None,
        })
    return rows


def search_rows() -> list[dict]:
    """One record per media item of the occurrence-search response (Amanita muscaria)."""
    results = json.loads(SEARCH.read_text())["results"]
    rows = []
    for occ in results:
        for m in occ.get("media", []):
            lic = m.get("license") or occ.get("license")
            rows.append({
                "record_id": make_record_id("gbif", f"{occ['key']}/{m['identifier']}"),
                "source": "gbif",
                "source_dataset": occ.get("datasetKey"),
                "occurrence_id": occ.get("occurrenceID") or str(occ["key"]),
                "media_id": m["identifier"],
                "identifier": m["identifier"],
                "format": m.get("format"),
                "license": cc_code(lic),
                "license_raw": lic,
                "verbatim_name": occ.get("scientificName"),
                "taxon_id": str(occ["taxonKey"]),
                **{r: occ.get(r) for r in RANK_COLUMNS},
                "species": occ.get("species"),
                "taxon_rank": (occ.get("taxonRank") or "").lower() or None,
                "match_type": "exact",
                "vernacular_name": occ.get("vernacularName"),
                "decimal_latitude": occ.get("decimalLatitude"),
                "decimal_longitude": occ.get("decimalLongitude"),
                "basis_of_record": occ.get("basisOfRecord"),
            })
    return rows


def quercus_row() -> dict:
    """Quercus douglasii (blue oak, its GBIF vernacular name) with the backbone's lineage."""
    sp = json.loads(QUERCUS.read_text())
    return {
        "record_id": make_record_id("gbif", "quercus-douglasii-example"),
        "source": "gbif",
        "identifier": "https://example.org/quercus.jpg",
        "license": "cc-by-4.0",
        "taxon_id": str(sp["key"]),
        **{r: sp.get(r) for r in RANK_COLUMNS},
        "species": sp["species"],
        "taxon_rank": sp["rank"].lower(),
        "vernacular_name": sp["vernacularName"],
        "match_type": "exact",
    }


@pytest.fixture(scope="session")
def dwca_table() -> pa.Table:
    return from_rows(dwca_rows())


@pytest.fixture(scope="session")
def search_table() -> pa.Table:
    return from_rows(search_rows())


def plain_text(table: pa.Table) -> pa.Table:
    """``table`` with its dictionary columns decoded: compares values, not their encoding."""
    return pa.table([col.cast(col.type.value_type) if pa.types.is_dictionary(col.type) else col
                     for col in table.columns], names=table.column_names)
