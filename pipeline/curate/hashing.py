"""Stable, vectorised 64-bit hashes of string columns, the source of every seeded decision in curation.

Python's ``hash`` is salted per process and Polars/DuckDB hashes may change between releases, so
splits, caps and shuffles would move between runs or runners. This FNV-1a over the UTF-8 bytes,
finished with the splitmix64 mixer, is computed column-wise with numpy and never changes.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads FNV's weak low bits over the whole word."""
    with np.errstate(over="ignore"):
        h = h ^ (h >> np.uint64(30))
        h = h * np.uint64(0xBF58476D1CE4E5B9)
        h = h ^ (h >> np.uint64(27))
        h = h * np.uint64(0x94D049BB133111EB)
        h = h ^ (h >> np.uint64(31))
    return h


def _seed_word(seed: int | str) -> np.uint64:
    data = str(seed).encode()
    h = int(_FNV_OFFSET)
    for b in data:
        h = ((h ^ b) * int(_FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def hash_strings(values: pa.Array | pa.ChunkedArray, seed: int | str = 0) -> np.ndarray:
    """Hash every string of ``values`` with ``seed``; returns a ``uint64`` array (nulls hash as "")."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks() if values.num_chunks else pa.array([], pa.string())
    values = pc.fill_null(values.cast(pa.large_string()), "")
    n = len(values)
    if n == 0:
        return np.zeros(0, np.uint64)
    buffers = values.buffers()
    offsets = np.frombuffer(buffers[1], dtype=np.int64, count=n + 1, offset=values.offset * 8)
    data = np.frombuffer(buffers[2], dtype=np.uint8) if buffers[2] is not None else np.zeros(0, np.uint8)
    starts = offsets[:-1]
    lengths = offsets[1:] - starts
    h = np.full(n, _seed_word(seed), dtype=np.uint64)
    if n and lengths.min() == lengths.max():
        # equal-length strings (record ids, hex digests): the bytes form an n x L matrix
        width = int(lengths[0])
        mat = data[starts[0]:starts[0] + n * width].reshape(n, width)
        with np.errstate(over="ignore"):
            for j in range(width):
                h = (h ^ mat[:, j].astype(np.uint64)) * _FNV_PRIME
        return _mix(h)
    active = np.nonzero(lengths > 0)[0]
    pos = 0
    with np.errstate(over="ignore"):
        # one pass per byte position over the strings still that long: total work = total bytes
        while active.size:
            byte = data[starts[active] + pos].astype(np.uint64)
            h[active] = (h[active] ^ byte) * _FNV_PRIME
            pos += 1
            active = active[lengths[active] > pos]
    return _mix(h)


def unit_interval(h: np.ndarray) -> np.ndarray:
    """Map uint64 hashes to floats uniform in [0, 1) using the top 53 bits."""
    return (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)


def order_by_hash(h: np.ndarray, keys: pa.Array) -> np.ndarray:
    """Row order by ``h``; rows whose hashes collide are ordered by their key text.

    Sorting uint64 hashes is far cheaper than sorting strings and, unlike the input position,
    never depends on file or row order. Equal keys (same text) may come in any order: callers
    use this where keys are unique or where such rows are interchangeable.
    """
    order = np.argsort(h, kind="stable")
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
