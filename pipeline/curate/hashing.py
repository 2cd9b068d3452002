"""The hashes behind every seeded decision in curation: :func:`schemas.hashing.hash_strings`,
mapped to the unit interval or used as a row order.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa

from schemas.hashing import hash_strings

__all__ = ["HASH_VERSION", "hash_strings", "order_by_hash", "unit_interval"]

# part of every curate fingerprint: a new hash definition moves caps, splits and chunk order, so
# outputs curated with an older one are redone rather than reused
HASH_VERSION = 2


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats uniform in [0, 1) using the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def order_by_hash(h: np.ndarray, keys: pa.Array) -> np.ndarray:
    """Row order by ``h``; rows whose hashes collide are ordered by their key text.

    Sorting uint64 hashes is far cheaper than sorting strings and, unlike the input position,
    never depends on file or row order. Equal keys (same text) may come in any order: callers
    use this where keys are unique or where such rows are interchangeable.
    """
    # a stable sort (equal hashes keep their input order before the text tie-break), on every core
    order = pl.DataFrame({"h": h}).with_row_index().sort("h", maintain_order=True)["index"].to_numpy() \
        .astype(np.int64, copy=False) if len(h) else np.zeros(0, np.int64)
    hs = h[order]
    ties = np.nonzero(hs[1:] == hs[:-1])[0]
    if ties.size:
        texts = keys.to_pylist() if not isinstance(keys, list) else keys
        starts = ties[np.concatenate(([True], np.diff(ties) > 1))]
        for s in starts.tolist():
            e = s + 1
            while e < len(hs) and hs[e] == hs[s]:
                e += 1
            run = order[s:e]
            order[s:e] = run[np.argsort(np.asarray([texts[i] or "" for i in run.tolist()], dtype=object),
                                        kind="stable")]
    return order
