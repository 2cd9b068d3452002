"""BioCLIP's text types on real names: common, scientific, taxonomic, with common name, taxonTag."""

from __future__ import annotations

import pytest

from pipeline.curate.captions import CAPTION_TYPES, add_captions, caption_columns
from schemas.record import from_rows
from tests.curate.conftest import dwca_rows, quercus_row

TAXONOMIC = "Plantae Tracheophyta Magnoliopsida Fagales Fagaceae Quercus douglasii"
TAG = ("kingdom Plantae phylum Tracheophyta class Magnoliopsida order Fagales family Fagaceae "
       "genus Quercus species douglasii")


@pytest.mark.parametrize("column, expected", [
    ("caption_com", "a photo of blue oak."),
    ("caption_sci", "a photo of Quercus douglasii."),
    ("caption_taxon", f"a photo of {TAXONOMIC}."),
    ("caption_sci_com", "a photo of Quercus douglasii with common name blue oak."),
    ("caption_taxon_com", f"a photo of {TAXONOMIC} with common name blue oak."),
    ("caption_taxonTag", f"a photo of {TAG}."),
    ("caption_taxonTag_com", f"a photo of {TAG} with common name blue oak."),
    ("scientific_name", "Quercus douglasii"),
    ("taxonomic_name", TAXONOMIC),
    ("common_name", "blue oak"),
])
def test_types_for_a_species_with_a_common_name(column, expected):
    assert caption_columns(from_rows([quercus_row()]))[column].to_pylist() == [expected]


@pytest.mark.parametrize("caption_type", list(CAPTION_TYPES))
def test_caption_column_is_the_chosen_type(caption_type):
    table = add_captions(from_rows([quercus_row()]), caption_type)
    suffix = CAPTION_TYPES[caption_type]
    assert table.column("caption").to_pylist() == table.column(f"caption_{suffix}").to_pylist()


def test_common_name_falls_back_to_scientific_and_genus_rank_names():
    rows = dwca_rows()
    species = next(r for r in rows if r["species"] == "Bombus rufocinctus")
    genus_only = next(r for r in rows if r["genus"] == "Colletes" and not r["species"])
    cols = caption_columns(from_rows([species, genus_only]))
    assert cols["caption_sci_com"].to_pylist() == [
        "a photo of Bombus rufocinctus with common name Bombus rufocinctus.",
        "a photo of Colletes with common name Colletes."]
    assert cols["caption_taxon"].to_pylist()[1] == \
        "a photo of Animalia Arthropoda Insecta Hymenoptera Colletidae Colletes."
    assert cols["caption_taxonTag"].to_pylist()[1].endswith("family Colletidae genus Colletes.")


def test_non_living_class_is_its_own_name():
    row = {"record_id": "ecotaxa-1", "source": "ecotaxa", "identifier": "file:///x.png", "living": False,
           "non_living_class": "detritus"}
    cols = caption_columns(from_rows([row]))
    assert cols["caption_taxon_com"].to_pylist() == ["a photo of detritus with common name detritus."]
