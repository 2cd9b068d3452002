"""Captions in BioCLIP's text types (common, scientific, taxonomic, with common name, taxonTag).

The templates follow BioCLIP's training shards (``sci``, ``com``, ``taxon``, ``taxonTag``,
``sci_com``, ``taxon_com``, ``taxonTag_com``): "a photo of <name>." and "a photo of <name> with
common name <common>.", the taxonomic name being "Kingdom Phylum Class Order Family Genus
epithet" and the tagged form "kingdom K phylum P ... genus G species e". As in BioCLIP, a missing
common name falls back to the scientific name. All columns are computed with Arrow kernels.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from schemas import RANKS

# option value -> BioCLIP's member suffix
CAPTION_TYPES = {
    "common": "com",
    "scientific": "sci",
    "taxonomic": "taxon",
    "scientific+common": "sci_com",
    "taxonomic+common": "taxon_com",
    "taxonTag": "taxonTag",
    "taxonTag+common": "taxonTag_com",
}
NAME_COLUMNS = ("scientific_name", "taxonomic_name", "common_name")
CAPTION_COLUMNS = tuple(f"caption_{v}" for v in CAPTION_TYPES.values())


def _column(table: pa.Table, name: str) -> pa.Array:
    if name not in table.column_names:
        return pa.nulls(table.num_rows, pa.string())
    col = table.column(name)
    col = col.combine_chunks() if col.num_chunks else pa.array([], col.type)
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    col = pc.utf8_trim_whitespace(col)
    return pc.if_else(pc.equal(col, ""), pa.scalar(None, pa.string()), col)


def _join(*parts) -> pa.Array:
    """Space-join the non-null parts (null when all are null), whitespace collapsed as BioCLIP does."""
    # null_handling="skip" returns an empty array when every input is null (pyarrow 25): replace instead
    joined = pc.binary_join_element_wise(*parts, " ", null_handling="replace", null_replacement="")
    joined = pc.utf8_trim_whitespace(pc.replace_substring_regex(joined, r"\s+", " "))
    return pc.if_else(pc.equal(joined, ""), pa.scalar(None, pa.string()), joined)


def _cat(*parts) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def caption_columns(table: pa.Table) -> dict[str, pa.Array]:
    """Name and caption columns for every row, keyed by column name."""
    ranks = {r: _column(table, r) for r in RANKS}
    # species holds the full binomial; BioCLIP's names end with the epithet alone
    epithet = pc.utf8_lower(pc.replace_substring_regex(ranks["species"], r"^\S+\s+", ""))
    genus = ranks["genus"]
    higher = [ranks[r] for r in reversed(RANKS[:-2])]
    non_living = _column(table, "non_living_class")
    binomial = pc.if_else(pc.is_valid(genus), _join(genus, epithet), ranks["species"])
    scientific = pc.coalesce(binomial, *higher, non_living, pa.scalar("unknown organism"))
    taxonomic = pc.coalesce(_join(*[ranks[r] for r in RANKS[:-1]], epithet), scientific)
    tags = [_cat(f"{r} ", ranks[r]) for r in RANKS[:-1]] + [_cat("species ", epithet)]
    taxon_tag = pc.coalesce(_join(*tags), scientific)
    common = pc.coalesce(_column(table, "vernacular_name"), scientific)
    with_common = _cat(" with common name ", common)
    return {
        "scientific_name": scientific,
        "taxonomic_name": taxonomic,
        "common_name": common,
        "caption_com": _cat("a photo of ", common, "."),
        "caption_sci": _cat("a photo of ", scientific, "."),
        "caption_taxon": _cat("a photo of ", taxonomic, "."),
        "caption_sci_com": _cat("a photo of ", scientific, with_common, "."),
        "caption_taxon_com": _cat("a photo of ", taxonomic, with_common, "."),
        "caption_taxonTag": _cat("a photo of ", taxon_tag, "."),
        "caption_taxonTag_com": _cat("a photo of ", taxon_tag, with_common, "."),
    }


NAME_INPUTS = (*RANKS, "vernacular_name", "non_living_class")


def name_groups(table: pa.Table) -> np.ndarray:
    """A group code per row, equal for rows whose name inputs are equal (numbered by first appearance).

    Each column is dictionary-encoded on its own and the codes are combined in mixed radix, so no
    string is built per row; when the radix would overflow 62 bits the partial key is re-encoded.
    """
    n = table.num_rows
    key = np.zeros(n, np.int64)
    size = 1
    for name in NAME_INPUTS:
        if name not in table.column_names:
            continue
        col = table.column(name)
        enc = pc.dictionary_encode(col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col)
        if isinstance(enc, pa.ChunkedArray):
            enc = enc.combine_chunks()
        m = len(enc.dictionary) + 1  # + 1: null
        if size * m >= 1 << 62:
            key, size = _encode(key)
        key = key * m + np.asarray(pc.fill_null(enc.indices, m - 1).to_numpy(zero_copy_only=False), np.int64)
        size *= m
    return _encode(key)[0]


def _encode(key: np.ndarray) -> tuple[np.ndarray, int]:
    enc = pc.dictionary_encode(pa.array(key))
    return np.asarray(enc.indices.to_numpy(zero_copy_only=False), np.int64), len(enc.dictionary)


def add_captions(table: pa.Table, caption_type: str) -> pa.Table:
    """Append the name columns, every ``caption_<type>`` column and ``caption`` (the chosen type).

    Captions depend only on the names, so they are built once per distinct lineage + common
    name and taken back to the rows (tens of thousands of taxa for millions of rows).
    """
    if table.num_rows == 0:
        cols = caption_columns(table)
    else:
        codes = name_groups(table)
        # group codes are numbered in order of first appearance: code k's first row is where the
        # running maximum first reaches k
        top = np.maximum.accumulate(codes)
        firsts = np.nonzero(np.concatenate(([True], top[1:] > top[:-1])))[0]
        codes = pa.array(codes.astype(np.int32))
        distinct = caption_columns(table.select([c for c in NAME_INPUTS if c in table.column_names]).take(pa.array(firsts)))
        # dictionary columns: millions of rows share a few thousand captions, nothing is copied
        cols = {k: pa.DictionaryArray.from_arrays(codes, v) for k, v in distinct.items()}
    for name, values in cols.items():
        table = _set(table, name, values)
    return _set(table, "caption", cols[f"caption_{CAPTION_TYPES[caption_type]}"])


def _set(table: pa.Table, name: str, values: pa.Array) -> pa.Table:
    if name in table.column_names:
        return table.set_column(table.column_names.index(name), name, values)
    return table.append_column(name, values)
