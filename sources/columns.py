"""Column-wise helpers the connectors share: Python's own rules, run once per distinct value.

Adapters build records from Arrow columns; where a value needs Python (``repr`` in a reject
detail, ``str.strip``, a name cleaner) it is computed once per distinct value (or tuple of
values across parallel columns) and gathered back to the rows.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def distinct(*cols: pa.Array) -> tuple[list[tuple], np.ndarray]:
    """The distinct value tuples of parallel columns (null is a value), in order of their codes,
    and each row's index into them."""
    dicts, codes = [], []
    for c in cols:
        d = pc.dictionary_encode(c, null_encoding="encode")
        dicts.append(d.dictionary.to_pylist())
        codes.append(d.indices.to_numpy(zero_copy_only=False).astype(np.int64))
    key = codes[0]
    for c, d in zip(codes[1:], dicts[1:], strict=True):
        key = key * len(d) + c
    _, first, inverse = np.unique(key, return_index=True, return_inverse=True)
    return [tuple(d[c[i]] for d, c in zip(dicts, codes, strict=True)) for i in first], inverse.ravel()


def per_distinct(fn: Callable[..., str | None], *cols: pa.Array) -> pa.Array:
    """``fn(*values)`` of every row as a string column (``None`` for a null value), called once
    per distinct tuple of values."""
    if not len(cols[0]):
        return pa.array([], pa.string())
    uniques, inverse = distinct(*cols)
    return pc.take(pa.array([fn(*u) for u in uniques], pa.string()), pa.array(inverse))
