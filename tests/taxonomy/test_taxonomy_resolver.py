"""Backbone building and resolution against the real Catalogue of Life Vespoidea and iNaturalist slices."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

from schemas import RANKS
from taxonomy.backbone import (
    Backbone,
    build_backbone,
    build_table,
    load_backbone,
    read_coldp,
    read_gbif,
    read_inat,
)
from taxonomy.names import parse_name
from taxonomy.resolver import resolve_names

DATA = Path(__file__).resolve().parents[1] / "data" / "taxonomy"
COL = DATA / "col_coldp_vespoidea"
INAT_TREE = DATA / "inat_taxonomy_tree" / "taxonomy.csv"


@pytest.fixture(scope="module")
def col() -> Backbone:
    u, v = read_coldp(COL)
    return Backbone("col-vespoidea", "4.1", build_table(u, v))


@pytest.fixture(scope="module")
def inat() -> Backbone:
    u, v = read_inat(INAT_TREE)
    return Backbone("inat", "test", build_table(u, v))


def _col_rows() -> list[dict]:
    with open(COL / "NameUsage.tsv", encoding="utf-8") as f:
        return list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))


def _reference_lineage(rows: dict[str, dict], tid: str, parent="parentID", rank="rank", name="scientificName") -> dict:
    """Plain recursive walk, the obvious reference the vectorised walk must reproduce."""
    out: dict = {}
    seen = set()
    while tid and tid in rows and tid not in seen:
        seen.add(tid)
        r = rows[tid]
        if r[rank] in RANKS and r[rank] not in out and r[name] != "Not assigned":
            out[r[rank]] = r[name]
        tid = r[parent]
    return out


def _resolve(bb, names, **hints):
    df = pl.DataFrame({"verbatim_name": names, **hints}, schema_overrides={k: pl.String for k in ["verbatim_name", *hints]})
    return resolve_names(df, bb)


def test_every_col_synonym_resolves_to_its_accepted_lineage(col):
    rows = _col_rows()
    by_id = {r["ID"]: r for r in rows}
    syn = [r for r in rows if "synonym" in r["status"]]
    assert len(syn) > 2000
    by_name: dict[str, list[dict]] = {}
    for r in rows:  # usages meet on the canonical form ("Antodynerus o'neili" is "Antodynerus oneili")
        by_name.setdefault(parse_name(r["scientificName"]).canonical, []).append(r)
    res = _resolve(col, [r["scientificName"] for r in syn])
    got = {row["verbatim_name"]: row for row in res.iter_rows(named=True)}
    checked = 0
    for r in syn:
        same = by_name[parse_name(r["scientificName"]).canonical]
        if any("accepted" in o["status"] for o in same):
            continue  # the name is also an accepted usage: accepted wins (tested below)
        row = got[r["scientificName"]]
        targets = {o["parentID"] for o in same}
        lineages = [_reference_lineage(by_id, t) for t in targets]
        common = {k: v for k, v in lineages[0].items() if all(lin.get(k) == v for lin in lineages)}
        checked += 1
        if len(targets) > 1 and "family" not in common:
            # pro-parte synonym of taxa in different families: reported, never guessed
            assert row["match_type"] == "none" and row["taxon_id"] is None, r
            assert row["match_note"].startswith("ambiguous_homonym"), r
            continue
        assert row["match_type"] in ("synonym", "higher_rank"), r
        for rank in RANKS:
            assert row[rank] == common.get(rank), (r["scientificName"], rank, row[rank], common.get(rank))
        if len(targets) == 1:
            assert row["match_type"] == "synonym"
            assert row["taxon_id"] == r["parentID"]
            assert "synonym" in row["match_note"]
    assert checked > 1900


def test_accepted_usage_beats_a_synonym_of_the_same_name(col):
    rows = _col_rows()
    names: dict[str, set] = {}
    for r in rows:
        names.setdefault(r["scientificName"], set()).add("accepted" if "accepted" in r["status"] else "synonym")
    both = [n for n, s in names.items() if s == {"accepted", "synonym"}]
    assert both
    res = _resolve(col, both)
    assert set(res["match_type"].to_list()) <= {"exact", "higher_rank"}


def test_every_accepted_col_species_is_its_own_taxon_and_epithets_never_merge(col):
    rows = [r for r in _col_rows() if r["status"] == "accepted" and r["rank"] == "species"]
    names = [r["scientificName"] for r in rows]
    unique = [n for n in names if names.count(n) == 1]
    res = _resolve(col, unique)
    want = {r["scientificName"]: r["ID"] for r in rows if r["scientificName"] in set(unique)}
    assert {row["verbatim_name"]: row["taxon_id"] for row in res.iter_rows(named=True)} == want
    # same epithet, different genera: different taxa, species column is the full binomial
    by_epithet: dict[str, set] = {}
    for row in res.iter_rows(named=True):
        by_epithet.setdefault(row["verbatim_name"].split()[-1], set()).add((row["taxon_id"], row["species"]))
    shared = {e: s for e, s in by_epithet.items() if len(s) > 1}
    assert len(shared) > 50
    for e, s in shared.items():
        assert len({sp for _, sp in s}) == len(s)
        assert all(sp.split()[-1] == e and len(sp.split()) == 2 for _, sp in s)
    # an unknown genus with a known epithet resolves to nothing, not to a same-epithet species
    r = _resolve(col, ["Nonexistigenus australiana"]).row(0, named=True)
    assert r["match_type"] == "none" and r["species"] is None


def test_col_lineage_matches_a_plain_parent_walk(col):
    rows = _col_rows()
    by_id = {r["ID"]: r for r in rows}
    table = col.table.filter(pl.col("status") == "accepted")
    for row in table.iter_rows(named=True):
        ref = _reference_lineage(by_id, row["taxon_id"])
        assert {r: row[r] for r in RANKS if row[r]} == ref


def test_inat_ancestry_reproduced(inat):
    with open(INAT_TREE, encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}
    species = [r for r in rows.values() if r["rank"] == "species"]
    res = _resolve(inat, sorted({r["name"] for r in species}))
    got = {row["verbatim_name"]: row for row in res.iter_rows(named=True)}
    for r in species:
        row = got[r["name"]]
        ref = _reference_lineage(rows, r["id"], parent="parent_id", name="name")
        assert row["taxon_id"] == r["id"], r
        assert {k: row[k] for k in RANKS if row[k]} == ref
        assert row["match_type"] == "exact"


def test_inat_open_data_ancestry_column(tmp_path):
    """The open-data ``taxa`` form (ancestry ids) built from the real tree gives the same lineages."""
    with open(INAT_TREE, encoding="utf-8") as f:
        rows = {r["id"]: r for r in csv.DictReader(f)}

    def ancestry(tid):
        chain = []
        p = rows[tid]["parent_id"]
        while p:
            chain.append(p)
            p = rows[p]["parent_id"]
        return "/".join(reversed(chain))

    path = tmp_path / "taxa.csv"
    with open(path, "w", encoding="utf-8") as f:
        f.write("taxon_id\tancestry\trank_level\trank\tname\tactive\n")
        for tid, r in rows.items():
            f.write(f"{tid}\t{ancestry(tid)}\t10\t{r['rank']}\t{r['name']}\ttrue\n")
    a = build_table(*read_inat(path)).sort("taxon_id")
    b = build_table(*read_inat(INAT_TREE)).sort("taxon_id")
    assert a.select(*RANKS).equals(b.select(*RANKS))
    real = read_inat(DATA / "inat_open_data" / "taxa.csv")[0]
    assert real.filter(pl.col("taxon_id") == "28799")["parent_id"].item() == "91689"
    assert real.filter(pl.col("taxon_id") == "27928")["status"].item() == "inactive"


def test_same_name_at_intermediate_ranks_resolves_to_the_main_rank(inat):
    # iNaturalist has genus, subgenus and section all called Pinus; Lotus corniculatus species + complex
    res = _resolve(inat, ["Pinus", "Lotus corniculatus", "Geranium"])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    assert got["Pinus"]["taxon_id"] == "47561" and got["Pinus"]["taxon_rank"] == "genus"
    assert got["Lotus corniculatus"]["taxon_id"] == "47435"
    assert got["Geranium"]["match_type"] == "exact"


def test_homonym_across_kingdoms_settled_by_hint_or_reported(inat):
    # a two-kingdom genus built from real lineages: "Apis" under Plantae next to the real bee genus
    u, v = read_inat(INAT_TREE)
    plant_family = u.filter(pl.col("rank") == "family").join(
        build_table(u, v).filter(pl.col("kingdom") == "Plantae").select("taxon_id"), on="taxon_id").row(0, named=True)
    extra = pl.DataFrame([{"taxon_id": "900001", "parent_id": plant_family["taxon_id"], "accepted_id": None,
                           "scientific_name": "Apis", "canonical": None, "authorship": None, "rank": "genus",
                           "status": "accepted"}], schema=u.schema)
    bb = Backbone("inat+homonym", "test", build_table(pl.concat([u, extra]), v))
    bare = _resolve(bb, ["Apis"]).row(0, named=True)
    assert bare["match_type"] == "none" and bare["taxon_id"] is None and bare["kingdom"] is None
    assert bare["match_note"].startswith("ambiguous_homonym")
    animal = _resolve(bb, ["Apis"], verbatim_kingdom=["Animalia"]).row(0, named=True)
    assert (animal["taxon_id"], animal["kingdom"]) == ("47220", "Animalia")
    plant = _resolve(bb, ["Apis"], verbatim_kingdom=["plantae"]).row(0, named=True)
    assert (plant["taxon_id"], plant["kingdom"]) == ("900001", "Plantae")
    lineage = _resolve(bb, ["Apis"], verbatim_lineage=["Animalia|Arthropoda|Insecta"]).row(0, named=True)
    assert lineage["taxon_id"] == "47220"


def test_hint_conflicts_are_reported_but_backbone_decides(col):
    r = _resolve(col, ["Vespa crabro"], verbatim_family=["Apidae"]).row(0, named=True)
    assert r["family"] == "Vespidae" and r["match_type"] == "exact"
    assert "conflict: source family 'Apidae'" in r["match_note"]


@pytest.mark.parametrize("name,expected", [
    ("Vespa crabo", "Vespa crabro"), ("Vesap crabro", "Vespa crabro"), ("Abispa ephipium", "Abispa ephippium"),
    ("Polistes dominulla", "Polistes dominula"), ("Vespa crabro gribodoii", "Vespa crabro gribodoi"),
])
def test_fuzzy_misspellings(col, name, expected):
    r = _resolve(col, [name]).row(0, named=True)
    target = col.table.filter(pl.col("canonical") == expected, pl.col("status") == "accepted")
    if r["match_type"] == "exact":
        assert name == expected
        return
    assert r["match_type"] == "fuzzy"
    assert 0.85 <= r["match_score"] < 1.0
    assert r["taxon_id"] in target["taxon_id"].to_list()


def test_fuzzy_respects_the_bound(col):
    r = _resolve(col, ["Vespa cxxxro"]).row(0, named=True)
    assert r["match_type"] == "higher_rank" and r["taxon_rank"] == "genus" and r["genus"] == "Vespa"


def test_higher_rank_fallback_and_qualifiers(col):
    res = _resolve(col, ["Vespa nonexistens", "Vespa aff. crabro", "Vespa cf. crabro", "Polistes sp.",
                         "Unknownia foo"], verbatim_family=[None, None, None, None, "Vespidae"])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    assert got["Vespa nonexistens"]["match_type"] == "higher_rank"
    assert got["Vespa nonexistens"]["genus"] == "Vespa" and got["Vespa nonexistens"]["species"] is None
    assert got["Vespa aff. crabro"]["taxon_rank"] == "genus"
    assert got["Vespa cf. crabro"]["species"] == "Vespa crabro" and got["Vespa cf. crabro"]["qualifier"] == "cf."
    assert got["Polistes sp."]["match_type"] == "exact" and got["Polistes sp."]["taxon_rank"] == "genus"
    assert got["Unknownia foo"]["match_type"] == "higher_rank" and got["Unknownia foo"]["taxon_rank"] == "family"


def test_plankton_labels(inat):
    res = _resolve(inat, ["detritus", "badfocus<artefact", "tail<Appendicularia", "Copepoda", "Trichodesmium",
                          "bubble__5555", "Aves", "eggs<Aves"])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    for label, cls in [("detritus", "detritus"), ("badfocus<artefact", "bad_focus"), ("bubble__5555", "bubble")]:
        r = got[label]
        assert (r["match_type"], r["living"], r["non_living_class"]) == ("non_living", False, cls)
        assert all(r[k] is None for k in RANKS)
    assert got["tail<Appendicularia"]["qualifier"] == "tail"
    assert got["eggs<Aves"]["class"] == "Aves" and got["eggs<Aves"]["qualifier"] == "eggs"
    assert got["eggs<Aves"]["living"] is True
    assert got["Aves"]["match_type"] == "exact"
    # not in this slice: reported, not guessed
    assert got["Copepoda"]["match_type"] == "none" and got["Copepoda"]["match_note"].startswith("not_in_backbone")


def test_store_and_load_versioned(tmp_path):
    folder = build_backbone("coldp", COL, tmp_path, version="4.1", name="col-vespoidea")
    assert folder == tmp_path / "backbones" / "col-vespoidea" / "4.1"
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["rows"] == 10379  # every usage of the slice (it has no bare names to exclude)
    bb = load_backbone("col-vespoidea", tmp_path)
    assert (bb.name, bb.version, bb.table.height) == ("col-vespoidea", "4.1", manifest["rows"])
    with pytest.raises(FileNotFoundError, match="no backbone"):
        load_backbone("nope", tmp_path)


def test_gbif_dwca_from_real_api_lineage(tmp_path):
    """A Taxon.tsv written from the real GBIF usage (keys and lineage of Quercus douglasii)."""
    sp = json.loads((DATA / "gbif_backbone" / "species_2878266.json").read_text())
    chain = [("kingdomKey", "kingdom", "KINGDOM"), ("phylumKey", "phylum", "PHYLUM"), ("classKey", "class", "CLASS"),
             ("orderKey", "order", "ORDER"), ("familyKey", "family", "FAMILY"), ("genusKey", "genus", "GENUS")]
    cols = ["taxonID", "parentNameUsageID", "acceptedNameUsageID", "scientificName", "canonicalName",
            "scientificNameAuthorship", "taxonRank", "taxonomicStatus"]
    lines, parent = [], ""
    for key, rank, grank in chain:
        if key in sp and rank in sp:
            lines.append([str(sp[key]), parent, "", sp[rank], sp[rank], "", grank, "ACCEPTED"])
            parent = str(sp[key])
    lines.append([str(sp["key"]), parent, "", sp["scientificName"], sp["canonicalName"], sp["authorship"], "SPECIES",
                  "ACCEPTED"])
    lines.append(["99", "", str(sp["key"]), "Quercus douglasii var. gambelioides Hook.", "", "", "VARIETY", "SYNONYM"])
    (tmp_path / "Taxon.tsv").write_text("\n".join("\t".join(r) for r in [cols, *lines]) + "\n")
    (tmp_path / "VernacularName.tsv").write_text(
        f"taxonID\tvernacularName\tlanguage\n{sp['key']}\t{sp['vernacularName']}\ten\n{sp['genusKey']}\toaks\ten\n")
    bb = Backbone("gbif", "t", build_table(*read_gbif(tmp_path)))
    res = _resolve(bb, ["Quercus douglasii Hook. & Arn.", "Quercus douglasii gambelioides"])
    a, b = res.row(0, named=True), res.row(1, named=True)
    assert (a["taxon_id"], a["kingdom"], a["family"], a["species"]) == ("2878266", "Plantae", "Fagaceae", "Quercus douglasii")
    assert (a["vernacular_name"], a["vernacular_rank"]) == ("blue oak", "species")
    assert (b["match_type"], b["taxon_id"]) == ("synonym", "2878266")


# --- names of several taxa, uncertain epithets, homonyms met on the way up ---------------------


@pytest.fixture(scope="module")
def inat_plus() -> Backbone:
    """The real iNaturalist tree plus two made-up usages on real parents: a plant genus ``Apis``
    (a cross-kingdom homonym of the bee genus) and the named hybrid oak ``Quercus ×macdonaldii``
    under the real genus Quercus (47851)."""
    u, v = read_inat(INAT_TREE)
    plant_family = u.filter(pl.col("rank") == "family").join(
        build_table(u, v).filter(pl.col("kingdom") == "Plantae").select("taxon_id"), on="taxon_id").row(0, named=True)
    extra = pl.DataFrame([
        {"taxon_id": "900001", "parent_id": plant_family["taxon_id"], "accepted_id": None, "scientific_name": "Apis",
         "canonical": None, "authorship": None, "rank": "genus", "status": "accepted"},
        {"taxon_id": "900002", "parent_id": "47851", "accepted_id": None,
         "scientific_name": "Quercus ×macdonaldii Greene", "canonical": None, "authorship": None, "rank": "species",
         "status": "accepted"},
    ], schema=u.schema)
    return Backbone("inat+", "test", build_table(pl.concat([u, extra]), v))


def test_hybrid_formulas_resolve_to_what_the_parents_share_never_the_first_parent(col, inat_plus):
    res = _resolve(col, ["Dolichovespula media x saxonica", "Dolichovespula media x Dolichovespula saxonica",
                         "Dolichovespula media", "Dolichovespula saxonica x Vespa crabro"])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    media = got["Dolichovespula media"]
    assert media["match_type"] == "exact" and media["taxon_rank"] == "species"
    genus_id = col.table.filter(pl.col("taxon_id") == media["taxon_id"])["genus_id"].item()
    for name in ("Dolichovespula media x saxonica", "Dolichovespula media x Dolichovespula saxonica"):
        r = got[name]
        assert (r["match_type"], r["taxon_rank"], r["taxon_id"], r["species"]) == ("higher_rank", "genus", genus_id, None)
        assert "hybrid formula" in r["match_note"]
    # a parent not given ("A b x"): not the species it names
    dangling = _resolve(col, ["Dolichovespula media x"]).row(0, named=True)
    assert dangling["species"] is None and dangling["match_type"] != "exact"
    # parents in two genera: the family both genera are in
    cross = got["Dolichovespula saxonica x Vespa crabro"]
    assert (cross["match_type"], cross["taxon_rank"], cross["family"], cross["genus"]) == (
        "higher_rank", "family", "Vespidae", None)
    # on the iNaturalist tree: a real oak's formula stops at Quercus; the named hybrid still matches
    res = _resolve(inat_plus, ["Quercus agrifolia x Quercus wislizeni", "Quercus ×macdonaldii", "Quercus x macdonaldii",
                               "Quercus × macdonaldii Greene"])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    assert (got["Quercus agrifolia x Quercus wislizeni"]["taxon_id"], got["Quercus agrifolia x Quercus wislizeni"][
        "match_type"]) == ("47851", "higher_rank")
    for name in ("Quercus ×macdonaldii", "Quercus x macdonaldii", "Quercus × macdonaldii Greene"):
        assert (got[name]["taxon_id"], got[name]["match_type"], got[name]["match_score"]) == ("900002", "exact", 1.0)


def test_a_formula_with_an_unknown_or_ambiguous_parent_genus_is_not_guessed(col, inat_plus):
    r = _resolve(col, ["Vespa crabro x Nonexistigenus foo"]).row(0, named=True)
    assert r["match_type"] == "none" and r["taxon_id"] is None
    r = _resolve(inat_plus, ["Quercus agrifolia x Apis foo"]).row(0, named=True)
    assert r["match_type"] == "none" and r["match_note"].startswith("ambiguous_homonym")
    plant = _resolve(inat_plus, ["Quercus agrifolia x Apis foo"], verbatim_kingdom=["Plantae"]).row(0, named=True)
    assert plant["match_type"] == "higher_rank" and plant["kingdom"] == "Plantae" and plant["genus"] is None


def test_alternatives_resolve_to_the_genus_with_a_note(col):
    res = _resolve(col, ["Vespula germanica or vulgaris", "Vespula germanica/vulgaris", "Vespula germanica",
                         "Vespa crabro crabro/gribodoi"])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    assert got["Vespula germanica"]["match_type"] == "exact"
    for name in ("Vespula germanica or vulgaris", "Vespula germanica/vulgaris"):
        r = got[name]
        assert (r["match_type"], r["taxon_rank"], r["genus"], r["species"]) == ("higher_rank", "genus", "Vespula", None)
        assert r["match_score"] is None and "alternatives" in r["match_note"]
    # two subspecies of one species: that species
    sub = got["Vespa crabro crabro/gribodoi"]
    assert (sub["match_type"], sub["taxon_rank"], sub["species"]) == ("higher_rank", "species", "Vespa crabro")


def test_uncertain_epithets_are_never_an_exact_genus_match(col):
    res = _resolve(col, ["Vespa crabro?", "Vespa ?crabro", "Vespa cf. crabro", "Vespa crabr\ufffdo",
                         "Vespula germanica/vulgaris", "Vespa spec.", "Vespa sp."])
    got = {r["verbatim_name"]: r for r in res.iter_rows(named=True)}
    # a '?' is a doubt on the identification, as cf. is: the species, marked and noted
    for name in ("Vespa crabro?", "Vespa ?crabro", "Vespa cf. crabro"):
        r = got[name]
        assert r["species"] == "Vespa crabro" and r["qualifier"] in {"?", "cf."}
        assert "uncertain identification" in r["match_note"]
    bad = got["Vespa crabr\ufffdo"]
    assert (bad["match_type"], bad["taxon_rank"], bad["match_score"]) == ("higher_rank", "genus", None)
    assert "malformed epithet" in bad["match_note"]
    assert got["Vespula germanica/vulgaris"]["match_type"] == "higher_rank"
    # "spec." is "sp.": a genus named as such, as before
    assert {k: got["Vespa spec."][k] for k in ("match_type", "taxon_rank", "taxon_id", "qualifier")} == {
        k: got["Vespa sp."][k] for k in ("match_type", "taxon_rank", "taxon_id", "qualifier")}


def test_hyphenated_epithet_is_kept_for_the_fallback(inat):
    """The demo's ``Andrena w-scripta`` (not in this slice): matched on the whole binomial, so the
    note names it, not the genus alone."""
    r = _resolve(inat, ["Andrena w-scripta Viereck, 1904"], verbatim_order=["Hymenoptera"]).row(0, named=True)
    assert r["match_type"] == "higher_rank" and r["order"] == "Hymenoptera"
    assert "'Andrena w-scripta' not matched" in r["match_note"]


def test_genus_fallback_on_an_ambiguous_homonym_says_so(inat_plus):
    res = _resolve(inat_plus, ["Apis nonexistens", "Apis nonexistens"], verbatim_kingdom=[None, "Plantae"])
    bare, plant = res.row(0, named=True), res.row(1, named=True)
    assert bare["match_type"] == "none"
    assert bare["match_note"].startswith("ambiguous_homonym: 'Apis nonexistens' not matched and 'Apis' names 2")
    assert (plant["match_type"], plant["taxon_id"]) == ("higher_rank", "900001")
