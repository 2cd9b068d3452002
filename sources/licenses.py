"""Licence normaliser: any source's licence string (URL, code, name) to one vocabulary of codes.

The vocabulary: ``cc0-1.0``, ``cc-by[-nc][-sa|-nd][-<version>]`` (the version is kept when the
source gives one, e.g. ``cc-by-nc-4.0``; iNaturalist codes like ``cc-by-nc`` carry none),
``public-domain``, ``all-rights-reserved`` and ``unknown``.
"""

from __future__ import annotations

import html
import re
from functools import lru_cache

import pyarrow as pa
import pyarrow.compute as pc

UNKNOWN = "unknown"
PUBLIC_DOMAIN = "public-domain"
ALL_RIGHTS_RESERVED = "all-rights-reserved"
CC0 = "cc0-1.0"

# Creative Commons licence elements in canonical order; "by" always comes first.
_ELEMENTS = ("by", "nc", "sa", "nd")
_WORDS = {
    "attribution": "by",
    "noncommercial": "nc",
    "non-commercial": "nc",
    "sharealike": "sa",
    "share-alike": "sa",
    "noderivatives": "nd",
    "noderivs": "nd",
    "no-derivatives": "nd",
}
_VERSION = re.compile(r"(?<![\d.])([1-4])(?:[._ ]?([05]))?(?![\d])")
_CC_URL = re.compile(
    r"creativecommons\.org/(?:licenses|licences)/([a-z-]+)(?:/(\d(?:\.\d)?))?", re.IGNORECASE
)
_PD_URL = re.compile(r"creativecommons\.org/publicdomain/(zero|mark|publicdomain)?", re.IGNORECASE)


def license_family(code: str) -> str:
    """The code without its version: ``cc-by-nc-4.0`` -> ``cc-by-nc`` (other codes unchanged)."""
    return re.sub(r"-\d(\.\d)?$", "", code) if code.startswith("cc-by") else code


def is_known(code: str) -> bool:
    return code != UNKNOWN


def _cc_code(elements: set[str], version: str | None) -> str | None:
    if "by" not in elements:
        return None
    if "sa" in elements and "nd" in elements:
        return None  # no such licence: ShareAlike and NoDerivatives exclude each other
    code = "cc-" + "-".join(e for e in _ELEMENTS if e in elements)
    return f"{code}-{version}" if version else code


def _version(text: str) -> str | None:
    m = _VERSION.search(text)
    if not m:
        return None
    major, minor = m.group(1), m.group(2) or "0"
    return f"{major}.{minor}"


@lru_cache(maxsize=65536)
def normalise_license(raw: str | None) -> str:
    """Map a licence as a source wrote it to the vocabulary; ``unknown`` when unrecognised."""
    if raw is None:
        return UNKNOWN
    text = html.unescape(str(raw)).strip()
    if not text:
        return UNKNOWN
    low = text.lower()

    # URLs first: the path is authoritative, whatever the page suffix (deed.en, legalcode).
    m = _PD_URL.search(low)
    if m:
        return CC0 if m.group(1) == "zero" else PUBLIC_DOMAIN
    m = _CC_URL.search(low)
    if m:
        kind, version = m.group(1).strip("-"), m.group(2)
        if kind in ("publicdomain",):
            return PUBLIC_DOMAIN
        if version and "." not in version:
            version = f"{version}.0"
        code = _cc_code(set(kind.split("-")), version)
        return code or UNKNOWN
    if "://" in low:
        return UNKNOWN  # a terms-of-use page of some institution: not a licence we can name

    # Codes and names: CC_BY_NC_4_0, cc-by-nc, "cc-by-nc-sa 3.0", "CC BY-NC 4.0",
    # "Attribution-NonCommercial 4.0 International", "cc0", "CC0 1.0", "public domain".
    flat = re.sub(r"[\s_/,()]+", " ", low).strip()
    if re.fullmatch(r"(cc[ -]?0|cc[ -]?zero|cc0 1 0|cc0 1\.0|cc0-1\.0|cc-?0 ?1\.0|creative commons zero.*)",
                    flat) or flat.startswith("cc0") or flat.startswith("cc-0"):
        return CC0
    if flat in ("pd", "pdm", "public domain", "publicdomain", "public-domain", "public domain mark",
                "no known copyright restrictions", "pd-1.0", "pdm-1.0", "public domain mark 1.0") \
            or flat.startswith("public domain"):
        return PUBLIC_DOMAIN
    if flat in ("all-rights-reserved", "all rights reserved", "arr", "c", "copyright") \
            or low.startswith(("©", "(c)", "copyright")) or "all rights reserved" in low:
        return ALL_RIGHTS_RESERVED

    tokens = re.split(r"[\s\-]+", flat)
    elements: set[str] = set()
    saw_cc = False
    for tok in tokens:
        if tok in ("cc", "creative", "commons", "license", "licence", "international", "generic",
                   "unported", "v", "version"):
            saw_cc = saw_cc or tok in ("cc", "creative")
            continue
        if tok in _ELEMENTS:
            elements.add(tok)
            continue
        if tok in _WORDS:
            elements.add(_WORDS[tok])
            continue
        if tok.startswith("cc") and tok[2:] in _ELEMENTS:
            elements.add(tok[2:])
            saw_cc = True
            continue
        if re.fullmatch(r"\d+(\.\d+)?", tok):
            continue
        return UNKNOWN
    if not elements or (not saw_cc and "by" not in elements):
        return UNKNOWN
    return _cc_code(elements, _version(flat)) or UNKNOWN


def unknown_license_detail(raw: object) -> str:
    """The reject detail of an ``unknown_license`` record: the licence text it gave, or that it gave none."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return "no licence given"
    return f"licence {raw!r} not recognised"


def normalise_license_column(raw: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Vectorised :func:`normalise_license`: normalises each distinct value once."""
    raw = raw.combine_chunks() if isinstance(raw, pa.ChunkedArray) else raw
    raw = raw.cast(pa.string())
    uniques = pc.unique(raw)
    codes = pa.array([normalise_license(v) for v in uniques.to_pylist()], pa.string())
    idx = pc.index_in(raw, value_set=uniques)
    out = pc.take(codes, idx)
    return pc.fill_null(out, UNKNOWN)
