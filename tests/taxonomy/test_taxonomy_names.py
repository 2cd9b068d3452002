"""The name normaliser on real name strings (GBIF name-parser test resources, CoL, EcoTaxa, IFCB) and its properties."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from taxonomy.names import fix_mojibake, parse_name, parse_names

DATA = Path(__file__).resolve().parents[1] / "data" / "taxonomy" / "name_strings"


def _lines(name: str) -> list[str]:
    return [ln.rstrip("\n") for ln in (DATA / name).read_text(encoding="utf-8").splitlines()
            if ln.strip() and not ln.startswith("#")]


# (input exactly as in the real files, canonical, authorship, rank)
REAL = [
    ("Chlamydomonas curvicauda A. Pascher & V. Czurda", "Chlamydomonas curvicauda", "A. Pascher & V. Czurda", "species"),
    ("Fragilaria mesolepta G.L. Rabenhorst, 1861", "Fragilaria mesolepta", "G.L. Rabenhorst, 1861", "species"),
    ("Lophoglossus complanatus (Dejean, 1828)", "Lophoglossus complanatus", "(Dejean, 1828)", "species"),
    ("Cantharus lineolatus Valenciennes in Cuvier & Valenciennes, 1830", "Cantharus lineolatus",
     "Valenciennes in Cuvier & Valenciennes, 1830", "species"),
    ("Gemmata Franzmann & Skerman, 1985, 1984", "Gemmata", "Franzmann & Skerman, 1985, 1984", "uninomial"),
    ("Nitzschia linearis var. subsigmoidea Grunow in Van Heurck, 1880-1885, 1882-1885",
     "Nitzschia linearis subsigmoidea", "Grunow in Van Heurck, 1880-1885, 1882-1885", "variety"),
    ("Amphora gracilis f. parva Truan y Luard, 1884", "Amphora gracilis parva", "Truan y Luard, 1884", "form"),
    ("Abalistes stellaris (Bloch & Schneider, 1801)", "Abalistes stellaris", "(Bloch & Schneider, 1801)", "species"),
    ("Navicula ambigua f. craticularis Istv?nffi, 1898, 1897", "Navicula ambigua craticularis", None, "form"),
    ("Acalypha hochstetteriana Müll.Arg.", "Acalypha hochstetteriana", "Müll.Arg.", "species"),
    ("Alchornea villosa (Benth.) Müll.Arg. var. lanceolata Müll.Arg.", "Alchornea villosa lanceolata",
     "Müll.Arg.", "variety"),
    ("Acer campestre L. cv. 'Elsrijk' Broerse", "Acer campestre", "L.", "species"),
    ("Acranthera athroophlebia Bremek. var.", "Acranthera athroophlebia", "Bremek.", "species"),
    ("Alangium sundanum Miq. var. ß", "Alangium sundanum", "Miq.", "species"),
    ("Aster  cv. 'Sunor'", "Aster", None, "uninomial"),
    ("Prunus sp. cv. 'Bandolero'", "Prunus", None, "genus"),
    ("Baccharis coridifolia ssp. bicolor Joch.Müll.", "Baccharis coridifolia bicolor", "Joch.Müll.", "subspecies"),
    ("Centaurea subciliaris Boiss. & Heldr. sssp. acarnanica Matthas", "Centaurea subciliaris acarnanica",
     "Matthas", "subspecies"),
    ("Cyclostoma (Cyclophorus vel Leptopoma) thersites Shuttleworth 1852", "Cyclostoma thersites",
     "Shuttleworth 1852", "species"),
    ("Deinbollia voltensis Hutch. ex Burtt Davy & Hoyle(nom. nud.)", "Deinbollia voltensis", None, "species"),
    ("Pentapanax  angelicifoliusGriseb.", "Pentapanax angelicifolius", "Griseb.", "species"),
    ("Glossopholis ? jollyana Pierre", "Glossopholis jollyana", "Pierre", "species"),
    ("Hieracium laevigatum Willd. subsp. levigans var. levigans f. platyphyllum Zahn lusus scopiforme Schack & Zahn",
     "Hieracium laevigatum scopiforme", "Schack & Zahn", "lusus"),
    ("Jungermannia pallescens Ehrh. var. ? rivularis Schrad.", "Jungermannia pallescens rivularis", "Schrad.", "variety"),
    ("Lamprotornis acuticaudus acuticaudus (Barboza du Bocage, 1870)", "Lamprotornis acuticaudus acuticaudus",
     "(Barboza du Bocage, 1870)", "subspecies"),
    ("Loranthus incanus Schumach. & Thonn.  sessilis Sprague", "Loranthus incanus sessilis", "Sprague", "subspecies"),
    ("Melosira granulata f. curvata vel spiralis Hust.", "Melosira granulata curvata", None, "form"),
    ("Mesalia zinkeni (Dunker 1851) & Promathildia turritella (Dunker 1851)", "Mesalia zinkeni", "(Dunker 1851)", "species"),
    ("Nasa pteridophylla Weigend & Dostert ssp. Pteridophylla", "Nasa pteridophylla pteridophylla", None, "subspecies"),
    ("Oxypoda ((incertae sedis)) inimica Casey, 1911", "Oxypoda inimica", "Casey, 1911", "species"),
    ("Pilotrichella krausei Lorentz (\"kraussei\")", "Pilotrichella krausei", "Lorentz", "species"),
    ("Rhytidophyllum acuñae C.V.Morton", "Rhytidophyllum acunae", "C.V.Morton", "species"),
    ("Rubus hirtus Rchb. microg pectinatus Sudre & Gavet", "Rubus hirtus pectinatus", "Sudre & Gavet", "microgene"),
    ("Sedum hommelsii 't Hart", "Sedum hommelsii", "'t Hart", "species"),
    ("Symbryon tetrastachyum Griseb. (\"Piperaceae\") !", "Symbryon tetrastachyum", "Griseb.", "species"),
    ("Turritella aff. adulterata Deshayes 1820-1851", "Turritella adulterata", "Deshayes 1820-1851", "species"),
    ("Wuerschmittia abyssinica Sch.Bip. ex A.Rich.", "Wuerschmittia abyssinica", "Sch.Bip. ex A.Rich.", "species"),
    ("Würschmittia abyssinica Sch.Bip. ex A.Rich.", "Wuerschmittia abyssinica", "Sch.Bip. ex A.Rich.", "species"),
    ("Villarsia exiliflora F. v. Muell.", "Villarsia exiliflora", "F. v. Muell.", "species"),
    ("Acer campestre x lobelii", "Acer campestre × Acer lobelii", None, "hybrid formula"),
    ("Symphoricarpos x chenaultii Rehder cv. 'Magic Berry'", "Symphoricarpos chenaultii", "Rehder", "species"),
    ("Poa indeterminate", "Poa", None, "genus"),
    ("Pezizomycotina, ordines incertae sedis", "Pezizomycotina", None, "subphylum"),
    ("BOLD:AAA0001", "BOLD:AAA0001", None, "unranked"),
    ("SH1957732.10FU", "SH1957732.10FU", None, "unranked"),
    # CoL / iNaturalist / plankton labels
    ("Abispa ephippium australis", "Abispa ephippium australis", None, "subspecies"),
    ("Mesodinium_rubrum", "Mesodinium rubrum", None, "species"),
    ("Strombidium-like", "Strombidium", None, "uninomial"),
    ("Amphidinium-like", "Amphidinium", None, "uninomial"),
    ("Copepoda__6666", "Copepoda", None, "uninomial"),
    ("Trichodesmium", "Trichodesmium", None, "uninomial"),
    ("Eumenidae", "Eumenidae", None, "family"),
    ("COPEPODA", "Copepoda", None, "uninomial"),
    ("vespa crabro", "Vespa crabro", None, "species"),
    ("Vespa  Crabro", "Vespa crabro", None, "species"),
]


def _id(case):
    return re.sub(r"\W+", "_", case[0])[:40]


@pytest.mark.parametrize("raw,canonical,authorship,rank", REAL, ids=[_id(c) for c in REAL])
def test_real_name_canonical_forms(raw, canonical, authorship, rank):
    p = parse_name(raw)
    assert p.canonical == canonical
    assert p.rank == rank
    if authorship is not None:
        assert p.authorship == authorship


@pytest.mark.parametrize("raw,qualifier", [
    ("Vespa cf. crabro", "cf."), ("Turritella aff. adulterata Deshayes 1820-1851", "aff."),
    ("Acer campestre L. cv. 'Elsrijk' Broerse", "cv. 'Elsrijk'"), ("Prunus sp. cv. 'Bandolero'", "sp.; cv. 'Bandolero'"),
    ("Symphoricarpos x chenaultii Rehder cv. 'Erect' Door. ex Koppeschaar", "×; cv. 'Erect'"),
    ("Strombidium-like", "like"), ("Carex spp.", "spp."), ("Oithona nr. similis", "nr."),
])
def test_qualifiers_are_kept(raw, qualifier):
    assert parse_name(raw).qualifier == qualifier


def test_every_real_occurrence_name_gives_a_clean_canonical():
    lines = _lines("occurrence-names.txt")
    assert len(lines) > 800
    clean = re.compile(r"^[A-Z][a-z\-]+(?: [a-z\-]+){0,2}$")
    bad = []
    for line in lines:
        p = parse_name(line)
        if p.canonical is None or not clean.match(p.canonical):
            bad.append((line, p.canonical))
    assert bad == []


def test_mojibake_is_repaired_and_clean_text_untouched():
    """Real non-ASCII names, damaged the way a Latin-1 reader damages UTF-8 (once and twice),
    parse exactly as the clean originals."""
    lines = [ln for ln in _lines("occurrence-names.txt") if not ln.isascii()]
    assert len(lines) > 100
    for line in lines:
        once = line.encode("utf-8").decode("latin-1")
        twice = once.encode("utf-8").decode("latin-1")
        assert fix_mojibake(line) == line
        assert parse_name(once) == parse_name(line), line
        assert parse_name(twice) == parse_name(line), line


def test_real_placeholders_otus_and_viruses_are_not_taken_for_taxa():
    placeholders = _lines("placeholder.txt")
    kinds = {ln: parse_name(ln).kind for ln in placeholders}
    assert kinds["Undescribed genus"] == "placeholder"
    assert kinds["? unclassed"] == "placeholder"
    assert kinds["Undet"] == "placeholder"
    assert all(parse_name(ln).kind == "otu" for ln in _lines("otu.txt"))
    viruses = _lines("viruses.txt")
    as_virus = sum(parse_name(v).kind == "virus" for v in viruses)
    assert as_virus / len(viruses) > 0.99


def test_hybrid_formulas_from_the_real_file():
    for line in _lines("hybrids.txt"):
        p = parse_name(line)
        assert p.kind == "hybrid_formula", line
        assert "×" in p.canonical


@pytest.mark.parametrize("label,cls", [
    ("detritus", "detritus"), ("badfocus<artefact", "bad_focus"), ("bubble__5555", "bubble"),
    ("fiber__9999", "fiber"), ("darksphere", "particle"), ("det_fiber", "fiber"),
    ("det_aggregate_dark", "detritus"), ("marine snow", "marine_snow"), ("feces", "fecal_pellet"),
    ("fiber<detritus", "fiber"), ("molt<Crustacea", "molt"), ("exuvia", "molt"), ("artifact", "artefact"),
    ("bad focus", "bad_focus"), ("bead", "bead"), ("plastic", "plastic"), ("sand", "sand"),
])
def test_non_living_labels(label, cls):
    p = parse_name(label)
    assert p.kind == "non_living"
    assert p.non_living_class == cls
    assert p.canonical is None


@pytest.mark.parametrize("label,canonical,qualifier,hint", [
    ("tail<Appendicularia", "Appendicularia", "tail", None),
    ("eggs<Actinopterygii", "Actinopterygii", "eggs", None),
    ("nauplii<Crustacea", "Crustacea", "nauplii", None),
    ("Oithona<Oithonidae", "Oithona", None, "Oithonidae"),
    ("rhizaria_radiolaria_collodaria_solitary_black", "Collodaria", "solitary black", "Rhizaria|Radiolaria"),
    ("Acantharea__1111", "Acantharea", None, None),
])
def test_ecotaxa_labels_keep_taxon_and_qualifier(label, canonical, qualifier, hint):
    p = parse_name(label)
    assert (p.canonical, p.qualifier, p.parent_hint) == (canonical, qualifier, hint)


def test_temporary_codes_are_placeholders_not_non_living():
    p = parse_name("t001")
    assert p.kind == "placeholder"
    assert p.non_living_class is None


def test_parse_names_dedupes_and_keeps_order():
    names = ["Vespa crabro L.", None, "Vespa crabro L.", "detritus", "Vespa crabro"]
    df = parse_names(names)
    assert df["input"].to_list() == names
    assert df["canonical"].to_list() == ["Vespa crabro", None, "Vespa crabro", None, "Vespa crabro"]


# --- properties -------------------------------------------------------------------------------

genus = st.from_regex(r"[A-Z][a-z]{2,10}", fullmatch=True)
epithet = st.from_regex(r"[a-z]{3,12}", fullmatch=True).filter(
    lambda e: e not in {"var", "ssp", "spp", "sp", "subsp", "cf", "aff", "form", "forma", "indet", "undet",
                        "and", "del", "der", "den", "des", "van", "von", "bis", "non", "nec", "vel", "pro", "species",
                        "spec", "gen", "ten", "ter", "dos", "les", "near", "prope", "sensu", "auct", "parte",
                        "microg", "lusus", "race", "convar", "morph", "subvar", "subf", "variety", "agg", "emend",
                        "subspecies", "indeterminate", "cultivar", "nothosubsp", "nothovar", "fo"})
bare_names = st.tuples(genus, st.lists(epithet, min_size=0, max_size=2)).map(lambda t: " ".join([t[0], *t[1]]))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=80))
def test_never_raises_on_any_text(text):
    p = parse_name(text)
    assert p.canonical is None or isinstance(p.canonical, str)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=60))
def test_idempotent(text):
    first = parse_name(text).canonical
    if first is not None:
        assert parse_name(first).canonical == first


@settings(max_examples=300, deadline=None)
@given(bare_names, st.sampled_from([str.lower, str.upper, str.title, lambda s: s]),
       st.sampled_from(["  ", "\t", " \u00a0", " "]))
def test_whitespace_and_case_invariance(name, case, space):
    expected = parse_name(name).canonical
    assert expected == name
    variant = space + case(name).replace(" ", space) + space
    assert parse_name(variant).canonical == expected


@settings(max_examples=200, deadline=None)
@given(bare_names, st.sampled_from(["L.", "(Linnaeus, 1758)", "Mitchell, 1838", "Sch.Bip. ex A.Rich.", "Müll.Arg."]))
def test_authorship_is_split_off(name, author):
    p = parse_name(f"{name} {author}")
    assert p.canonical == name
    assert p.authorship == author
