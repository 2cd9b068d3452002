"""Licence normaliser: real values from the samples, codes, URLs, and properties over generated ones."""

import json
import re

import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.licenses import license_family, normalise_license, normalise_license_column
from tests.sources.conftest import DATA

VOCAB = re.compile(r"^(cc0-1\.0|cc-by(-nc)?(-sa|-nd)?(-\d\.\d)?|public-domain|all-rights-reserved|unknown)$")


@pytest.mark.parametrize("raw, code", [
    ("http://creativecommons.org/licenses/by/4.0/legalcode", "cc-by-4.0"),
    ("https://creativecommons.org/licenses/by/4.0/", "cc-by-4.0"),
    ("http://creativecommons.org/licenses/by/4.0/deed.en_US", "cc-by-4.0"),
    ("http://creativecommons.org/licenses/by-nc/4.0/", "cc-by-nc-4.0"),
    ("http://creativecommons.org/licenses/by-nc-sa/2.0/", "cc-by-nc-sa-2.0"),
    ("https://creativecommons.org/licenses/by-nc-nd/3.0/us/", "cc-by-nc-nd-3.0"),
    ("http://creativecommons.org/publicdomain/zero/1.0/legalcode", "cc0-1.0"),
    ("http://creativecommons.org/publicdomain/mark/1.0/", "public-domain"),
    ("http://creativecommons.org/licenses/publicdomain/", "public-domain"),
    ("CC_BY_NC_4_0", "cc-by-nc-4.0"),
    ("CC_BY_4_0", "cc-by-4.0"),
    ("CC0_1_0", "cc0-1.0"),
    ("cc-by-nc", "cc-by-nc"),
    ("CC-BY-NC-SA", "cc-by-nc-sa"),
    ("cc-by-nc-sa 3.0", "cc-by-nc-sa-3.0"),
    ("cc-by 2.0", "cc-by-2.0"),
    ("CC BY-NC 4.0", "cc-by-nc-4.0"),
    ("Attribution-NonCommercial-ShareAlike 4.0 International", "cc-by-nc-sa-4.0"),
    ("cc0", "cc0-1.0"),
    ("CC0 1.0", "cc0-1.0"),
    ("public domain", "public-domain"),
    ("No known copyright restrictions", "public-domain"),
    ("All Rights Reserved", "all-rights-reserved"),
    ("© The Board of Trustees of the Royal Botanic Gardens, Kew.", "all-rights-reserved"),
    ("&copy; 2001 California Academy of Sciences", "all-rights-reserved"),
    ("http://fieldmuseum.org/about/copyright-information", "unknown"),
    ("UNSPECIFIED", "unknown"),
    ("cc-by-sa-nd", "unknown"),
    ("", "unknown"),
    (None, "unknown"),
    ("free for everyone", "unknown"),
])
def test_known_spellings(raw, code):
    assert normalise_license(raw) == code


def test_every_licence_in_the_samples_is_recognised():
    store = json.loads((DATA / "eol/publishing_store/store-328598.json").read_text())
    gbif = json.loads((DATA / "gbif/api/occurrence_search_taxonKey3329049_limit300.json").read_text())
    raws = {m["license"]["name"] for m in store["media"]} | {m["license"]["source_url"] for m in store["media"]}
    raws |= {r["license"] for r in gbif["results"]} | {m["license"] for r in gbif["results"] for m in r.get("media", [])}
    photos = (DATA / "inaturalist/open_data/photos.csv").read_text().splitlines()[1:]
    raws |= {line.split("\t")[5] for line in photos}
    codes = {raw: normalise_license(raw) for raw in raws}
    assert all(c != "unknown" for c in codes.values()), codes
    assert codes["cc-by-nc-sa 3.0"] == codes["http://creativecommons.org/licenses/by-nc-sa/3.0/"]


def test_column_form_matches_scalar_form():
    raw = pa.array(["CC_BY_4_0", None, "cc-by-nc", "CC_BY_4_0", "nonsense"])
    assert normalise_license_column(raw).to_pylist() == ["cc-by-4.0", "unknown", "cc-by-nc", "cc-by-4.0", "unknown"]


def test_family_drops_the_version():
    assert license_family("cc-by-nc-4.0") == "cc-by-nc"
    assert license_family("cc0-1.0") == "cc0-1.0"


ELEMENTS = st.sampled_from(["by", "by-nc", "by-sa", "by-nd", "by-nc-sa", "by-nc-nd"])
VERSIONS = st.sampled_from(["1.0", "2.0", "2.5", "3.0", "4.0"])


@given(ELEMENTS, VERSIONS, st.sampled_from(["", "legalcode", "deed.en", "deed.fr", "us/"]),
       st.sampled_from(["http", "https"]))
def test_url_and_code_spellings_agree(kind, version, suffix, scheme):
    url = f"{scheme}://creativecommons.org/licenses/{kind}/{version}/{suffix}"
    gbif_code = "CC_" + kind.upper().replace("-", "_") + "_" + version.replace(".", "_")
    expected = f"cc-{kind}-{version}"
    assert normalise_license(url) == expected
    assert normalise_license(gbif_code) == expected
    assert normalise_license(f"cc-{kind} {version}") == expected
    assert normalise_license(f"CC {kind.upper()} {version}") == expected


@given(st.text(max_size=60))
def test_any_text_maps_into_the_vocabulary_and_is_idempotent(raw):
    code = normalise_license(raw)
    assert VOCAB.match(code), code
    assert normalise_license(code) == code
