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


# --- hyphenated epithets, uncertain epithets, names of several taxa -------------------------------

# real names with a one-letter first element (ICZN Art. 32.5.2.4.3): the GBIF DwC-A sample's
# Andrena w-scripta, and the classic Lepidoptera c-album / c-nigrum / l-album
@pytest.mark.parametrize("raw,canonical,authorship", [
    ("Andrena w-scripta Viereck, 1904", "Andrena w-scripta", "Viereck, 1904"),
    ("Polygonia c-album (Linnaeus, 1758)", "Polygonia c-album", "(Linnaeus, 1758)"),
    ("Agrotis c-nigrum", "Agrotis c-nigrum", None),
    ("Mythimna l-album (Linnaeus, 1767)", "Mythimna l-album", "(Linnaeus, 1767)"),
    ("POLYGONIA C-ALBUM", "Polygonia c-album", None),
])
def test_one_letter_hyphenated_epithets_are_epithets(raw, canonical, authorship):
    p = parse_name(raw)
    assert (p.canonical, p.authorship, p.rank, p.epithet) == (canonical, authorship, "species", canonical.split()[1])


letter_epithet = st.builds(lambda a, b: f"{a}-{b}", st.sampled_from("abcdefghijklmnopqrstuvwxyz"),
                           st.from_regex(r"[a-z]{3,10}", fullmatch=True))


@settings(max_examples=200, deadline=None)
@given(genus, letter_epithet, st.sampled_from(["", " L.", " (Linnaeus, 1758)", " Viereck, 1904", " Müll.Arg."]))
def test_hyphenated_epithet_property(g, ep, author):
    p = parse_name(f"{g} {ep}{author}")
    assert p.canonical == f"{g} {ep}" and p.rank == "species"
    assert p.authorship == (author.strip() or None)


@pytest.mark.parametrize("raw,canonical,qualifier,kind", [
    # a doubt on the epithet: kept, and said, as "cf." is
    ("Vespa crabro?", "Vespa crabro", "?", "scientific"),
    ("Vespa ?crabro", "Vespa crabro", "?", "scientific"),
    ("Glossopholis ? jollyana Pierre", "Glossopholis jollyana", "?", "scientific"),
    # "spec." and numbered morphospecies are "sp."
    ("Vespa spec.", "Vespa", "sp.", "scientific"),
    ("Vespa sp1", "Vespa", "sp.", "scientific"),
    # a slash between epithets is a choice, as "or" is
    ("Vespula germanica/vulgaris", "Vespula germanica or Vespula vulgaris", None, "alternatives"),
    ("Vespula germanica or vulgaris", "Vespula germanica or Vespula vulgaris", None, "alternatives"),
    # a character no epithet has (U+FFFD from a non-UTF-8 file, a digit, a Cyrillic homoglyph)
    ("Quercus d\ufffdouglasii", "Quercus d\ufffdouglasii", "malformed epithet", "scientific"),
    ("Vespa crabro2", "Vespa crabro2", "malformed epithet", "scientific"),
    ("Vespa crabr\u043e", "Vespa crabr\u043e", "malformed epithet", "scientific"),
])
def test_uncertain_epithets_are_never_authorship(raw, canonical, qualifier, kind):
    p = parse_name(raw)
    assert (p.canonical, p.qualifier, p.kind) == (canonical, qualifier, kind)
    assert p.authorship is None or raw.split()[1] not in p.authorship


def test_authors_in_the_epithets_place_stay_authors():
    """What the uncertain-epithet rule must not take: author strings that start lower case."""
    assert parse_name("Globigerina d'Orbigny, 1826").canonical == "Globigerina"
    assert parse_name("Globigerina d'Orbigny, 1826").authorship == "d'Orbigny, 1826"
    assert parse_name("Gemmata Franzmann & Skerman, 1985").qualifier is None
    assert parse_name("Turritella rigida Sowerby ? 1829").qualifier is None  # the year's doubt, not the name's


@settings(max_examples=200, deadline=None)
@given(bare_names.filter(lambda n: " " in n), st.sampled_from(["{}?", "?{}", "{}/{}", "{}2", "{}\ufffd"]))
def test_a_damaged_epithet_never_leaves_the_genus_alone(name, form):
    """Whatever decorates the epithet, the parser never reports the bare genus with the epithet as
    its author: the name keeps the epithet (with a '?' qualifier), becomes alternatives, or is
    marked malformed."""
    g, *eps = name.split(" ")
    damaged = form.format(eps[0], eps[0])
    p = parse_name(" ".join([g, damaged, *eps[1:]]))
    assert p.canonical != g
    assert p.authorship is None or damaged not in p.authorship
    assert p.kind == "alternatives" or p.qualifier in {"?", "malformed epithet"}


def test_three_parent_formula_from_the_real_file_keeps_three_parents():
    line = next(ln for ln in _lines("hybrids.txt") if ln.count(" x ") == 2)
    p = parse_name(line)
    assert p.kind == "hybrid_formula"
    assert p.canonical.split(" × ") == ["Symphoricarpos albus laevigatus", "Symphoricarpos microphyllus",
                                        "Symphoricarpos orbiculatus"]
    assert p.epithet is None and p.genus == "Symphoricarpos"


def test_named_hybrids_are_one_taxon_not_a_formula():
    for raw in ("Mentha ×piperita", "Mentha × piperita L.", "Mentha x piperita"):
        p = parse_name(raw)
        assert (p.canonical, p.kind, p.qualifier) == ("Mentha piperita", "scientific", "×"), raw


@settings(max_examples=200, deadline=None)
@given(genus, st.lists(epithet, min_size=2, max_size=4, unique=True), st.sampled_from([" x ", " × ", " or ", "/"]),
       st.booleans())
def test_several_taxa_keep_every_part(g, eps, sep, repeat_genus):
    """``G a x b x c`` (or ``G a or b``, ``G a/b``): one part per taxon, each a full binomial, the
    genus set only because they share it, and the canonical form parses to itself."""
    if sep == "/":
        raw = f"{g} {'/'.join(eps)}"
    else:
        raw = f"{g} {eps[0]}" + "".join(sep + (f"{g} {e}" if repeat_genus else e) for e in eps[1:])
    p = parse_name(raw)
    joiner = " × " if sep.strip() in {"x", "×"} else " or "
    assert p.kind == ("hybrid_formula" if joiner == " × " else "alternatives")
    assert p.canonical == joiner.join(f"{g} {e}" for e in eps)
    assert (p.genus, p.epithet) == (g, None)
    assert parse_name(p.canonical) == p
