"""Scientific-name normalisation: any label string to a canonical form, authorship, rank guess and qualifiers.

A pure-Python parser tuned on real strings (GBIF occurrence names, ZOBODAT/CoL, iNaturalist,
EcoTaxa and IFCB labels). It returns the *simple canonical* form used for matching (genus,
epithets, no rank markers, no authorship: ``Alchornea villosa lanceolata``), and keeps what it
removed: the authorship of the terminal epithet, the rank implied by markers or suffixes,
qualifiers (``cf.``, ``aff.``, ``sp.``, ``?``, cultivars, parts and life stages) and the parent
hint of EcoTaxa ``name<parent`` labels. Epithets follow ICN Art. 60 spelling: diacritics are
removed (``ü`` -> ``ue``), so ``Würschmittia`` and ``Wuerschmittia`` meet. Names of several taxa
(hybrid formulas ``A x B``, alternatives ``A or B`` and ``A a/b``) keep every part in their
canonical form (``Vespula germanica or Vespula vulgaris``) and a kind of their own, so that the
resolver never takes the first part for the whole.

:func:`parse_names` is the vectorised entry point: it parses each *unique* string once and joins
the result back, so a million records with 50 000 distinct names cost 50 000 parses.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, replace
from functools import lru_cache

import polars as pl

from taxonomy import nonliving

PARSED_COLUMNS: dict[str, pl.DataType] = {
    "canonical": pl.String,
    "authorship": pl.String,
    "rank": pl.String,
    "kind": pl.String,
    "qualifier": pl.String,
    "parent_hint": pl.String,
    "non_living_class": pl.String,
    "genus": pl.String,
    "epithet": pl.String,
}

# kind values
SCIENTIFIC, PLACEHOLDER, OTU, VIRUS, HYBRID_FORMULA, ALTERNATIVES, NON_LIVING, EMPTY = (
    "scientific", "placeholder", "otu", "virus", "hybrid_formula", "alternatives", "non_living", "empty",
)
# how the parts of a several-taxa name are joined in its canonical form
PART_SEPARATORS: dict[str, str] = {HYBRID_FORMULA: " × ", ALTERNATIVES: " or "}
# the part of a hybrid formula whose parent is not given ("Salix alba x", "Salix alba x ?")
UNKNOWN_PARENT = "?"
# qualifier of a binomial whose epithet is no epithet (``crabr\ufffdo``, ``crabro2``): matched no lower than the genus
MALFORMED_EPITHET = "malformed epithet"


@dataclass(frozen=True)
class ParsedName:
    """What the parser made of one string; ``canonical`` is None when there is no name to match."""

    canonical: str | None
    authorship: str | None = None
    rank: str | None = None
    kind: str = SCIENTIFIC
    qualifier: str | None = None
    parent_hint: str | None = None
    non_living_class: str | None = None
    genus: str | None = None
    epithet: str | None = None


# infraspecific rank markers -> rank
INFRA_MARKERS: dict[str, str] = {
    "subsp": "subspecies", "ssp": "subspecies", "sssp": "subspecies", "subspecies": "subspecies",
    "nothosubsp": "subspecies", "var": "variety", "variety": "variety", "nothovar": "variety",
    "subvar": "subvariety", "f": "form", "fo": "form", "form": "form", "forma": "form",
    "subf": "subform", "m": "morph", "morph": "morph", "lusus": "lusus", "microg": "microgene",
    "ab": "aberration", "race": "race", "convar": "convariety", "agg": "aggregate",
}
# what follows the genus and means "not identified further"
_UNDETERMINED = {"sp", "spp", "ssp.", "sp.", "spp.", "indet", "indet.", "indeterminate", "undet",
                 "undet.", "gen", "gen.", "sp.nov.", "sp.n.", "spec", "spec.", "species"}
# numbered morphospecies glued to the marker: "sp1", "sp.2", "spp3", "spec.4"
_NUMBERED_SP = re.compile(r"^(?:sp|spp|spec)\.?\d+$")
_QUALIFIER_WORDS = {"cf": "cf.", "cf.": "cf.", "aff": "aff.", "aff.": "aff.", "nr": "nr.",
                    "nr.": "nr.", "near": "nr.", "prope": "nr.", "?": "?", "cfr.": "cf."}
# lower-case words that belong to author strings, never epithets
_AUTHOR_PARTICLES = {"ex", "ex.", "in", "et", "&", "y", "van", "von", "de", "du", "da", "del",
                     "della", "der", "den", "di", "la", "le", "les", "des", "do", "dos", "ten", "ter",
                     "zu", "bis", "al", "al.", "non", "nec", "emend", "emend.", "auct", "auct.",
                     "sensu", "s.l.", "s.str.", "s.s.", "s.lat.", "p.p.", "pro", "parte", "comb.",
                     "nov.", "stat.", "orth.", "var.?", "e", "i"}
# a token after which nothing more is part of the name
_STOP_WORDS = {"sensu", "auct", "auct.", "non", "nec", "vel", "or", "emend", "emend.", "s.l.",
               "s.str.", "sensu_lato", "p.p."}
_HYBRID_SIGNS = {"×", "x", "X"}
_DROP_ANNOTATIONS = re.compile(
    r"\((?:[^()]*?(?:nom\.|ined|sched|\"|comb\.|sp\. nov|publ)[^()]*?)\)"  # (nom. nud.), (ined.), ("x")
    r"|\"[^\"]*\"|\"|\s!+"
    r"|,?\s*\bnom\.\s*(?:nud|illeg|inval|herb|cons|rej|superfl|dub)\.?(?:\s*prop\.)?"
    r"|\b(?:ms|mscr|ined|in\s+sched)\.?(?=\s|$)",
    re.IGNORECASE,
)
_INCERTAE = re.compile(r"\(*\s*incertae\s+sedis\s*\)*|,?\s*\b(?:ordines|families|genera|classes)\b",
                       re.IGNORECASE)
_FOLDER_ID = re.compile(r"__\d+$")
_OTU = re.compile(r"^(?:BOLD:[A-Z]{3}\d{4}|SH\d+\.\d+FU)$", re.IGNORECASE)
_VIRUS = re.compile(r"(?i)(?:virus|viruses|viroids?|phages?|satellites?|virinae|viridae|virales|viricetes)\b"
                    r"|(?i:\b(?:particles?|prions?|agents?|phagein|vector))\b|(?-i:\b(?:RNA|DNA)\b)"
                    r"|^(?:[MS]?NPV|GV)(?:-\w+)?$")
_VIRUS_ANY = re.compile(r"(?i)vir|phage|satellite|particle|prion|agent|RNA|DNA|vector|NPV|GV")
_FAST_BINOMIAL = r"^[A-Z][a-z]{2,} [a-z]{3,}$"
_TEMP_CODE = re.compile(r"^t\d{3,}$", re.IGNORECASE)
_PLACEHOLDER = re.compile(
    r"^(?:\?+|unknown|unknowns|undetermined|undet|indet|unidentified|unclassified|unassigned|"
    r"not\s+assigned|incertae\s+sedis|undescribed(?:\s+\w+)?|\?\s*unclassed|unclassed|other|others|"
    r"none|null|na|n/a|living|organism|organisms|biota|life|various|mix|mixed|misc|"
    r"miscellaneous|todo|tocheck|othertocheck|to\s+check)$",
    re.IGNORECASE,
)
_GENUS = re.compile(r"^[A-Z][a-z]+(?:-[A-Za-z][a-z]+)?$")
# ICZN Art. 32.5.2.4.3: a hyphen follows a single letter that stands for a mark (c-album, w-scripta)
_EPITHET = re.compile(r"^(?:[a-z]-[a-z]{2,}|[a-z][a-z]+)(?:-[a-z]+)*$")
_GLUED_AUTHOR = re.compile(r"^([a-z]{3,})([A-Z][A-Za-z.\-]*.*)$")
_MOJIBAKE_HINT = re.compile("[\u00c2\u00c3\u00c5\u00c4\u00e2\u00c2][\u0080-\u00bf\u2018-\u203a\u0152-\u0192]")
_WS = re.compile(r"\s+")
_ICN_FOLD = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "Ae", "Ö": "Oe", "Ü": "Ue",
                           "æ": "ae", "œ": "oe", "Æ": "Ae", "Œ": "Oe", "ß": "ss", "ø": "o", "Ø": "O",
                           "ł": "l", "đ": "d"})
_SUFFIX_RANKS: tuple[tuple[str, str], ...] = (
    ("viridae", "family"), ("virinae", "subfamily"), ("virales", "order"),
    ("oidea", "superfamily"), ("idae", "family"), ("inae", "subfamily"), ("aceae", "family"),
    ("oideae", "subfamily"), ("mycetes", "class"), ("mycota", "phylum"), ("mycotina", "subphylum"),
    ("phyceae", "class"), ("phycidae", "subclass"), ("opsida", "class"), ("phyta", "phylum"),
    ("phytina", "subphylum"), ("ales", "order"), ("ineae", "suborder"), ("ini", "tribe"),
)


def fix_mojibake(text: str) -> str:
    """Undo UTF-8 text that was decoded as Latin-1/cp1252 (``MÃ¼ll.Arg.`` -> ``Müll.Arg.``),
    up to twice for double damage; text that does not round-trip is left as it was."""
    for _ in range(2):
        if not _MOJIBAKE_HINT.search(text):
            break
        fixed = None
        for codec in ("cp1252", "latin-1"):
            try:
                fixed = text.encode(codec).decode("utf-8")
                break
            except (UnicodeEncodeError, UnicodeDecodeError):
                continue
        if fixed is None or fixed == text:
            break
        text = fixed
    return text


def fold_epithet(word: str) -> str:
    """ICN spelling of a name element: umlauts to ``ae/oe/ue``, other diacritics and apostrophes removed."""
    word = word.translate(_ICN_FOLD)
    if not word.isascii():
        word = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c))
    return word.replace("'", "").replace("\u2019", "")


def guess_uninomial_rank(name: str) -> str:
    """Rank implied by a uninomial's ending (``-idae`` family, ``-ales`` order...), else ``genus``
    when it looks like one; the backbone, not this guess, decides."""
    low = name.lower()
    for suffix, rank in _SUFFIX_RANKS:
        if low.endswith(suffix) and len(low) > len(suffix) + 2:
            return rank
    return "uninomial"


def clean_text(raw: str) -> str:
    """Whitespace, Unicode form and encoding damage: the string every later step sees."""
    text = fix_mojibake(raw)
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\u00a0", " ").replace("\u2009", " ").replace("\ufeff", "")
    return _WS.sub(" ", text).strip()


@lru_cache(maxsize=200_000)
def parse_name(raw: str | None) -> ParsedName:
    """Parse one label. Never raises: anything unparseable comes back with ``canonical=None``."""
    if raw is None:
        return ParsedName(None, kind=EMPTY)
    try:
        return _parse(str(raw))
    except (ValueError, IndexError, KeyError, TypeError, UnicodeError, RecursionError):
        return ParsedName(None, kind=PLACEHOLDER)


def _parse(raw: str) -> ParsedName:
    text = _FOLDER_ID.sub("", clean_text(raw))
    if not text:
        return ParsedName(None, kind=EMPTY)
    if "<" in text:
        return _parse_ecotaxa(text)
    nl = nonliving.non_living_class(text)
    if nl is not None:
        return ParsedName(None, kind=NON_LIVING, non_living_class=nl)
    if "_" in text:
        return _parse_underscored(text)
    return _parse_scientific(text)


def _parse_ecotaxa(text: str) -> ParsedName:
    """EcoTaxa ``name<parent`` (``tail<Appendicularia``, ``badfocus<artefact``, ``Oithona<Oithonidae``)."""
    parts = [p.strip() for p in text.split("<") if p.strip()]
    if not parts:
        return ParsedName(None, kind=PLACEHOLDER)
    left, parents = parts[0], parts[1:]
    left_nl = nonliving.classify_tokens(re.split(r"[\s_]+", left))
    parent_nl = next((c for c in (nonliving.non_living_class(p) for p in parents) if c), None)
    if left_nl or parent_nl:
        return ParsedName(None, kind=NON_LIVING, non_living_class=left_nl or parent_nl)
    if len(parents) == 0:
        return _parse(left)
    words = re.split(r"[\s_]+", left)
    if all(nonliving.is_qualifier(w) for w in words):
        inner = _parse(parents[0])
        qual = " ".join(w.lower() for w in words)
        if inner.qualifier:
            qual = f"{qual}; {inner.qualifier}"
        hint = "|".join(reversed(parents[1:])) or inner.parent_hint
        return _replace(inner, qualifier=qual, parent_hint=hint)
    inner = _parse(left)
    if inner.kind == NON_LIVING:
        return inner
    hint = "|".join(reversed(parents))
    return _replace(inner, parent_hint=hint)


def _parse_underscored(text: str) -> ParsedName:
    """IFCB / ZooScan style labels: ``Mesodinium_rubrum``, ``det_fiber``, ``rhizaria_radiolaria_collodaria``."""
    tokens = [t for t in text.split("_") if t]
    nl = nonliving.classify_tokens(tokens)
    if nl is not None:
        return ParsedName(None, kind=NON_LIVING, non_living_class=nl)
    if len(tokens) >= 2 and _GENUS.match(tokens[0]) and all(_EPITHET.match(t) for t in tokens[1:3]) \
            and len(tokens) <= 3:
        return _parse_scientific(" ".join(tokens))
    quals = [t.lower() for t in tokens if nonliving.is_qualifier(t)]
    taxa = [t for t in tokens if not nonliving.is_qualifier(t)]
    if not taxa:
        return ParsedName(None, kind=PLACEHOLDER, qualifier=" ".join(quals) or None)
    inner = _parse_scientific(taxa[-1])
    hint = "|".join(t.capitalize() for t in taxa[:-1]) or None
    return _replace(inner, qualifier=_join_q(inner.qualifier, " ".join(quals) or None), parent_hint=hint)


def _replace(p: ParsedName, **kw) -> ParsedName:
    return replace(p, **kw)


def _join_q(*parts: str | None) -> str | None:
    kept = [p for p in parts if p]
    return "; ".join(kept) if kept else None


def _normalise_case(tokens: list[str]) -> list[str]:
    """Case-damaged bare names (``COPEPODA``, ``vespa crabro``, ``Vespa Crabro``): genus capitalised,
    the rest lower case. Only when every token is alphabetic, so author strings are left alone."""
    if not tokens or not all(t.replace("-", "").isalpha() for t in tokens) or len(tokens) > 4:
        return tokens
    if any(t.lower() in INFRA_MARKERS or t.lower() in _AUTHOR_PARTICLES for t in tokens[1:]):
        first_ok = tokens[0][:1].isupper() and tokens[0][1:].islower()
        return tokens if first_ok else [tokens[0].capitalize()] + tokens[1:]
    damaged = all(t.isupper() for t in tokens) or all(t.islower() for t in tokens) \
        or (len(tokens) > 1 and all(t[:1].isupper() and t[1:].islower() for t in tokens))
    if not damaged:
        return tokens
    return [tokens[0].capitalize()] + [t.lower() for t in tokens[1:]]


def _split_like(text: str) -> tuple[str, str | None]:
    m = re.match(r"^(.*?)[\s\-_]like$", text, re.IGNORECASE)
    if m and m.group(1).strip():
        return m.group(1).strip(), "like"
    return text, None


def _parse_scientific(text: str) -> ParsedName:
    text, like = _split_like(text)
    low = text.lower()
    if _TEMP_CODE.match(text) or _PLACEHOLDER.match(low):
        return ParsedName(None, kind=PLACEHOLDER, qualifier=like)
    if _OTU.match(text):
        return ParsedName(text.upper(), rank="unranked", kind=OTU)
    if _VIRUS_ANY.search(text) and any(_VIRUS.search(t) for t in text.split(" ")):
        return ParsedName(_WS.sub(" ", text).strip(), kind=VIRUS)
    incertae = bool(_INCERTAE.search(text))
    if incertae:
        text = _INCERTAE.sub(" ", text)
    text = _DROP_ANNOTATIONS.sub(" ", text)
    # "Mesalia zinkeni (Dunker 1851) & Promathildia turritella (Dunker 1851)": keep the first name
    two = re.search(r"\s&\s+[A-Z][a-z]+\s+[a-z]{3,}\b(?!\.)", text)
    if two:
        text = text[: two.start()]
    text = text.replace("×", " × ").replace(",", ", ")
    words = [t for t in _WS.split(text.strip()) if t and t not in {",", "!"}]
    tokens = [t for t in words if t not in {"?", "?."}]
    if not tokens:
        return ParsedName(None, kind=PLACEHOLDER)
    tokens = _normalise_case(tokens)
    out = _walk(tokens)
    # "Glossopholis ? jollyana": a doubt on the epithet, as "crabro?" or "cf." (a "?" after the
    # epithet is the author's or the year's: "Turritella rigida Sowerby ? 1829")
    doubt = len(words) > 2 and words[1] in {"?", "?."} and out.epithet is not None \
        and out.kind == SCIENTIFIC and "?" not in (out.qualifier or "").split("; ")
    qual = _join_q("?" if doubt else None, out.qualifier, like, "incertae sedis" if incertae else None)
    return _replace(out, qualifier=qual)


def _walk(tokens: list[str]) -> ParsedName:
    """The token state machine: genus, [subgenus], [qualifier], epithet, authorship, infraspecifics."""
    i = 0
    hybrid = False
    if tokens[0] in {"×", "x", "X"} and len(tokens) > 1:
        hybrid, i = True, 1
    first = fold_epithet(tokens[i])
    if first.isalpha() and (first.isupper() or first.islower()) and len(first) > 1:
        first = first.capitalize()
    if not _GENUS.match(first):
        return ParsedName(None, kind=PLACEHOLDER)
    genus = first
    i += 1
    n = len(tokens)
    # subgenus or an informal group in parentheses right after the genus
    if i < n and tokens[i].startswith("(") and not re.search(r"[.,\d]", tokens[i]):
        j = i
        while j < n and not tokens[j].endswith(")"):
            j += 1
        if j < n and j + 1 < n and _EPITHET.match(fold_epithet(tokens[j + 1])):
            i = j + 1
        elif j < n and j + 1 == n:
            i = j + 1
    qualifiers: list[str] = []
    epithet = None
    infra: str | None = None
    infra_rank: str | None = None
    author_tokens: list[str] = []
    rank = None
    kind = SCIENTIFIC
    formula_rest: list[str] | None = None
    several: ParsedName | None = None
    cultivar = None
    while i < n:
        raw_tok = tokens[i]
        tok = raw_tok.rstrip(",;") or raw_tok
        low = tok.lower()
        if tok in _HYBRID_SIGNS:
            if epithet is None and i + 1 < n and _EPITHET.match(fold_epithet(tokens[i + 1])):
                hybrid = True
                i += 1
                continue
            formula_rest = tokens[i:]
            break
        if tok == "or" and i + 1 < n:
            formula_rest = tokens[i:]
            break
        if epithet is None and infra is None:
            if low in _QUALIFIER_WORDS:
                qualifiers.append(_QUALIFIER_WORDS[low])
                i += 1
                continue
            if low in _UNDETERMINED or low.rstrip(".") in {"sp", "spp", "indet", "undet"} \
                    or _NUMBERED_SP.match(low):
                qualifiers.append("spp." if low.startswith("spp") else
                                  ("indet." if low.startswith(("indet", "undet")) else "sp."))
                # anything after "sp." (a number, a cultivar, an author) is not part of the name
                cv = _cultivar(tokens, i + 1)
                if cv:
                    qualifiers.append(cv)
                break
        if low in _STOP_WORDS:
            break
        if low in {"cv.", "cv", "cultivar"} or (tok.startswith("'") and len(tok) > 1 and tok[1:2].isupper()):
            cultivar = _cultivar(tokens, i if not low.startswith("cv") and low != "cultivar" else i)
            break
        marker = low.rstrip(".")
        if marker in INFRA_MARKERS and epithet is not None and tok.islower() \
                and (tok.endswith(".") or marker not in {"f", "m", "ab"}):
            nxt = i + 1
            while nxt < n and tokens[nxt] in {"?", "?."}:
                nxt += 1
            cand = fold_epithet(tokens[nxt]).lower() if nxt < n else ""
            follows_author = bool(author_tokens)
            if nxt < n and len(cand) >= 3 and _EPITHET.match(cand) and not tokens[nxt].endswith(".") \
                    and cand not in _AUTHOR_PARTICLES:
                if marker == "f" and follows_author and not tok.endswith("."):
                    author_tokens.append(tok)
                    i += 1
                    continue
                infra, infra_rank = cand, INFRA_MARKERS[marker]
                author_tokens = []
                i = nxt + 1
                continue
            if marker == "f" and follows_author:
                author_tokens.append(tok)  # "L. f." is filius, part of the author
                i += 1
                continue
            # marker without an epithet ("var.", "var. b", "var. ß"): nothing more to name
            i = nxt + 1 if nxt < n and len(tokens[nxt]) <= 2 else nxt
            continue
        folded = fold_epithet(tok)
        if infra is None and not author_tokens and ("?" in tok or "/" in tok or not _EPITHET.match(folded)):
            # the place of an epithet (or of an unmarked infraspecific one) holds a word that is
            # not one: "crabro?", "germanica/vulgaris", "crabr\ufffdo" (not an author: those start
            # upper case, or are particles, abbreviations or bracketed); a plain epithet is none
            # of these, and is not looked at twice
            odd, value = _odd_epithet(tok)
            if odd == "doubt":
                if "?" not in qualifiers:
                    qualifiers.append("?")
            elif odd == "alternatives":
                stem = f"{genus} {epithet}" if epithet is not None else genus
                several = _several(ALTERNATIVES, [f"{stem} {v}" for v in value], [" or "] * (len(value) - 1),
                                   qualifiers)
                break
            elif odd == MALFORMED_EPITHET and MALFORMED_EPITHET not in qualifiers:
                qualifiers.append(MALFORMED_EPITHET)
            if odd in ("doubt", MALFORMED_EPITHET):
                if epithet is None:
                    epithet = value
                else:
                    infra, infra_rank = value, "subspecies"
                i += 1
                continue
        glued = _GLUED_AUTHOR.match(folded) if i > 0 else None
        if glued and epithet is None and not author_tokens:
            epithet = glued.group(1)
            author_tokens = [tok[len(glued.group(1)):]]
            i += 1
            continue
        if _EPITHET.match(folded) and low not in _AUTHOR_PARTICLES and not tok.endswith("."):
            if epithet is None and not author_tokens:
                epithet = folded
                i += 1
                continue
            if epithet is not None and infra is None and \
                    (not author_tokens or (len(folded) >= 4 and _is_bare_infra(tokens, i))):
                infra, infra_rank = folded, "subspecies"
                author_tokens = []
                i += 1
                continue
        author_tokens.append(raw_tok)
        i += 1
    if several is not None:
        return several
    authorship = _clean_author(author_tokens)
    if epithet is None:
        canonical = genus
        rank = "genus" if qualifiers or hybrid else guess_uninomial_rank(genus)
    else:
        canonical = f"{genus} {epithet}" + (f" {infra}" if infra else "")
        rank = infra_rank if infra else "species"
    if formula_rest is not None:
        seps, others = _sides(formula_rest, genus)
        if others:
            kind = HYBRID_FORMULA if seps[0] == PART_SEPARATORS[HYBRID_FORMULA] else ALTERNATIVES
            return _several(kind, [canonical, *others], seps, qualifiers)
        if epithet is not None and formula_rest[0] in _HYBRID_SIGNS:
            # "Salix alba x" / "x ?": a hybrid of this species and an unknown parent, not the species
            return _several(HYBRID_FORMULA, [canonical, UNKNOWN_PARENT], [PART_SEPARATORS[HYBRID_FORMULA]],
                            qualifiers)
    if hybrid:
        qualifiers.append("×")
    if cultivar:
        qualifiers.append(cultivar)
    return ParsedName(canonical, authorship, rank, kind, _join_q(*qualifiers), genus=genus, epithet=epithet)


def _is_bare_infra(tokens: list[str], i: int) -> bool:
    """A lower-case word after an author string is an unmarked infraspecific epithet only when the
    previous token closes an author (ends in '.', ')' or is capitalised) and it is not a particle."""
    prev = tokens[i - 1]
    return prev.endswith((".", ")")) or (prev[:1].isupper() and not prev.endswith(","))


def _cultivar(tokens: list[str], start: int) -> str | None:
    rest = " ".join(tokens[start:])
    m = re.search(r"'([^']+)'", rest)
    return f"cv. '{m.group(1)}'" if m else None


def _odd_epithet(tok: str) -> tuple[str | None, object]:
    """What a word in an epithet's place is when it is no plain epithet: ``("doubt", "crabro")``
    for ``crabro?`` / ``?crabro``, ``("alternatives", ["germanica", "vulgaris"])`` for
    ``germanica/vulgaris``, ``(MALFORMED_EPITHET, tok)`` for a lower-case word with a character
    no epithet has (``crabr\ufffdo``, ``crabro2``, a homoglyph), ``(None, None)`` otherwise."""
    if "?" in tok:
        bare = tok.strip("?")
        folded = fold_epithet(bare)
        if bare and "?" not in bare and _EPITHET.match(folded) and folded not in _AUTHOR_PARTICLES:
            return "doubt", folded
    if "/" in tok:
        parts = [fold_epithet(x) for x in tok.split("/")]
        if all(_EPITHET.match(x) and x not in _AUTHOR_PARTICLES for x in parts):
            return "alternatives", parts
    # abbreviations ("hort."), brackets and apostrophes ("d'Orbigny") belong to author strings
    if (tok[:1].islower() or tok[:1] in "?\ufffd") and tok == tok.lower() and not any(c in tok for c in ".()[]'&") \
            and sum(c.isalpha() for c in tok) >= 2:
        folded = fold_epithet(tok)
        if not _EPITHET.match(folded) and (not folded.isascii() or any(not (c.isalpha() or c == "-") for c in tok)):
            return MALFORMED_EPITHET, tok
    return None, None


def _sides(tokens: list[str], genus: str) -> tuple[list[str], list[str]]:
    """The other parts of ``A x B [x C]`` formulas and ``A or B`` alternatives: ``tokens`` starts
    with a separator; returns the separators (as in :data:`PART_SEPARATORS`) and the parts'
    canonical forms (epithet-only parts take the genus), or two empty lists."""
    seps: list[str] = []
    groups: list[list[str]] = []
    for j, t in enumerate(tokens):
        sep = PART_SEPARATORS[HYBRID_FORMULA] if t in _HYBRID_SIGNS else (
            PART_SEPARATORS[ALTERNATIVES] if t == "or" else None)
        # "Mentha ×piperita" inside a formula: the sign after a bare genus makes a nothospecies
        if sep and sep.strip() == "×" and groups and len(groups[-1]) == 1 and groups[-1][0][:1].isupper() \
                and j + 1 < len(tokens) and _EPITHET.match(fold_epithet(tokens[j + 1])):
            continue
        if sep:
            seps.append(sep)
            groups.append([])
        else:
            groups[-1].append(t)
    parts: list[str] = []
    for g in groups:
        if not g:
            return [], []
        toks = [genus, *g] if g[0][:1].islower() else g
        sub = _walk(toks)
        if sub.canonical is None or sub.kind not in (SCIENTIFIC, ALTERNATIVES):
            return [], []
        parts.append(sub.canonical)
    return seps, parts


def _several(kind: str, parts: list[str], seps: list[str], qualifiers: list[str]) -> ParsedName:
    """A name of several taxa: its parts joined by their separators; the genus only when they share it."""
    canonical = parts[0] + "".join(sep + part for sep, part in zip(seps, parts[1:], strict=True))
    genera = {p.split(" ")[0] for p in parts if p != UNKNOWN_PARENT}
    rank = "hybrid formula" if kind == HYBRID_FORMULA else "alternatives"
    return ParsedName(canonical, None, rank, kind, _join_q(*qualifiers),
                      genus=genera.pop() if len(genera) == 1 and UNKNOWN_PARENT not in parts else None)


def _clean_author(tokens: list[str]) -> str | None:
    if not tokens:
        return None
    text = " ".join(tokens).strip(" ,;")
    text = re.sub(r"\s+,", ",", text).replace(",,", ",")
    return text or None


def parse_names(names: Iterable[str | None] | pl.Series) -> pl.DataFrame:
    """Parse many names, each unique string once. Returns one row per input, in input order, with
    ``input`` and the :data:`PARSED_COLUMNS`."""
    series = names if isinstance(names, pl.Series) else pl.Series("input", list(names), dtype=pl.String)
    series = series.cast(pl.String).alias("input")
    uniq = series.unique(maintain_order=True).to_frame()
    # plain binomials ("Vespa crabro"), most of any label list, skip the Python parser
    second = pl.col("input").str.split(" ").list.get(1, null_on_oob=True)
    fast_mask = pl.col("input").str.contains(_FAST_BINOMIAL).fill_null(False) & ~second.is_in(_NOT_EPITHETS)
    fast = uniq.filter(fast_mask).with_columns(
        pl.col("input").alias("canonical"), pl.lit(None, dtype=pl.String).alias("authorship"),
        pl.lit("species").alias("rank"), pl.lit(SCIENTIFIC).alias("kind"),
        pl.lit(None, dtype=pl.String).alias("qualifier"), pl.lit(None, dtype=pl.String).alias("parent_hint"),
        pl.lit(None, dtype=pl.String).alias("non_living_class"),
        pl.col("input").str.split(" ").list.first().alias("genus"), second.alias("epithet"),
    )
    slow = uniq.filter(~fast_mask)["input"]
    parsed = [parse_name(v) for v in slow.to_list()]
    table = pl.DataFrame(
        {"input": slow, **{c: [getattr(p, c) for p in parsed] for c in PARSED_COLUMNS}},
        schema={"input": pl.String, **PARSED_COLUMNS},
    )
    table = pl.concat([fast.select("input", *PARSED_COLUMNS).cast(PARSED_COLUMNS), table])
    return series.to_frame().join(table, on="input", how="left", nulls_equal=True, maintain_order="left")


# second words that make a two-word string something other than a plain binomial
_NOT_EPITHETS = sorted(set(_UNDETERMINED) | {w.rstrip(".") for w in _UNDETERMINED} | set(_QUALIFIER_WORDS)
                       | set(INFRA_MARKERS) | set(_AUTHOR_PARTICLES) | set(_STOP_WORDS) | nonliving.QUALIFIERS
                       | {"like", "virus", "viruses", "phage", "satellite", "satellites", "particles", "incertae",
                          "genus", "sedis", "indeterminate", "unclassed", "assigned"})


def match_key(canonical: pl.Expr) -> pl.Expr:
    """The join key for canonical names: case-insensitive (labels are often lower-cased)."""
    return canonical.str.to_lowercase()
