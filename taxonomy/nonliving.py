"""Plankton labels that are not organisms (detritus, bubbles, artefacts) and the part / life-stage words that qualify a taxon.

Plankton instruments (UVP, ZooScan, IFCB, FlowCam) are annotated in EcoTaxa with categories that mix
taxa with things that are not organisms. Those must never be resolved against a backbone (a
"bubble" is not a genus) but they must not be thrown away either: they are useful negatives for a
classifier. Words for parts and life stages (``tail<Appendicularia``, ``egg``, ``nauplii``) keep
their taxon and become a qualifier.

Decisions on ambiguous labels, made on purpose:

* ``darksphere`` (UVP) is a dark round particle of unknown nature: it is *not* a taxon and cannot
  be resolved, so it is classed non-living ``particle`` rather than guessed as an egg or a cell.
* ``t001``-style codes are EcoTaxa *temporary* categories: their meaning is project-specific, so
  they are neither living nor non-living; the name parser reports them as placeholders.
* ``house`` (the mucous house of appendicularians) is kept as a part of its taxon.
* ``dead`` keeps the taxon (a dead copepod is still a copepod) and becomes the qualifier.
"""

from __future__ import annotations

import re

# label word (lower case, spaces/underscores/hyphens removed) -> non-living class
NON_LIVING: dict[str, str] = {
    "detritus": "detritus",
    "det": "detritus",
    "detritic": "detritus",
    "aggregate": "detritus",
    "aggregates": "detritus",
    "aggregat": "detritus",
    "flocs": "detritus",
    "floc": "detritus",
    "fluffy": "detritus",
    "marinesnow": "marine_snow",
    "snow": "marine_snow",
    "feces": "fecal_pellet",
    "faeces": "fecal_pellet",
    "fecal": "fecal_pellet",
    "faecal": "fecal_pellet",
    "fecalpellet": "fecal_pellet",
    "fecalpellets": "fecal_pellet",
    "faecalpellet": "fecal_pellet",
    "faecalpellets": "fecal_pellet",
    "pellet": "fecal_pellet",
    "pellets": "fecal_pellet",
    "fibre": "fiber",
    "fiber": "fiber",
    "fibres": "fiber",
    "fibers": "fiber",
    "filament": "fiber",
    "molt": "molt",
    "moult": "molt",
    "molts": "molt",
    "exuvia": "molt",
    "exuviae": "molt",
    "exuvium": "molt",
    "bubble": "bubble",
    "bubbles": "bubble",
    "artefact": "artefact",
    "artifact": "artefact",
    "artefacts": "artefact",
    "artifacts": "artefact",
    "badfocus": "bad_focus",
    "outoffocus": "bad_focus",
    "blurry": "bad_focus",
    "bead": "bead",
    "beads": "bead",
    "plastic": "plastic",
    "microplastic": "plastic",
    "microplastics": "plastic",
    "sand": "sand",
    "mineral": "mineral",
    "minerals": "mineral",
    "crystal": "mineral",
    "darksphere": "particle",
    "particle": "particle",
    "particles": "particle",
    "notliving": "non_living",
    "nonliving": "non_living",
    "nonlive": "non_living",
    "nonorganism": "non_living",
    "reflection": "artefact",
    "shadow": "artefact",
    "scratch": "artefact",
    "noise": "artefact",
    "blank": "artefact",
    "empty": "artefact",
    "dust": "artefact",
}

# part / life stage / form words: the taxon is kept, the word becomes the qualifier
QUALIFIERS: frozenset[str] = frozenset(
    """
    tail tails head heads trunk trunks body part parts piece pieces fragment fragments egg eggs
    larva larvae larval nauplius nauplii metanauplius metanauplii zoea zoeae megalopa megalopae
    cyphonaute cyphonautes juvenile juveniles adult adults colony colonies colonial multiple
    solitary chain chains single scale scales spine spines shell shells house houses dead
    pupa pupae cocoon cyst cysts spore spores seed seeds ephyra ephyrae medusa medusae polyp
    polyps gonophore gonophores nectophore nectophores bract bracts eudoxie eudoxid calyptopis
    furcilia cypris protozoea phyllosoma veliger trochophore pluteus siphonula like small big
    large dark black light grey gray elongated round other others unknown
    """.split()
)

_SQUASH = re.compile(r"[\s_\-]+")


def squash(word: str) -> str:
    """Lower-case a label and drop separators so ``bad focus``, ``bad_focus``, ``badfocus`` meet."""
    return _SQUASH.sub("", word.strip().lower())


def non_living_class(label: str | None) -> str | None:
    """The non-living class of a whole label (``"marine snow"`` -> ``marine_snow``), else None."""
    if not label:
        return None
    return NON_LIVING.get(squash(label))


def classify_tokens(tokens: list[str]) -> str | None:
    """The non-living class of a tokenised label (``det_fiber`` -> ``fiber``): the most specific,
    i.e. the last non-living token wins; ``None`` when no token is a non-living word."""
    found = None
    for tok in tokens:
        cls = NON_LIVING.get(squash(tok))
        if cls is not None:
            found = cls
    joined = NON_LIVING.get(squash("".join(tokens)))
    return joined or found


def is_qualifier(word: str) -> bool:
    """True when ``word`` names a part, life stage or appearance rather than a taxon."""
    return squash(word) in QUALIFIERS
