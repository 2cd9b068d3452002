"""Stable, vectorised 64-bit hashes of string columns, the source of every seeded decision in curation.

Python's ``hash`` is salted per process and Polars/DuckDB hashes may change between releases, so
splits, caps and shuffles would move between runs or runners. This hash never changes: the seed's
FNV-1a word, then for each 8-byte little-endian word of the UTF-8 bytes (the last one zero-padded)
``h = splitmix64(h ^ word)``, and finally ``splitmix64(h ^ byte length)``. It is computed
column-wise with numpy, one pass per word position over row blocks that fit the cache, so
hashing millions of ids costs a fraction of a second.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

# part of every curate fingerprint: a new hash definition moves caps, splits and chunk order, so
# outputs curated with an older one are redone rather than reused
HASH_VERSION = 2
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_M1, _M2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser (in place on ``h``, which is returned)."""
    with np.errstate(over="ignore"):
        h ^= h >> _S30
        h *= _M1
        h ^= h >> _S27
        h *= _M2
        h ^= h >> _S31
    return h


def _seed_word(seed: int | str) -> np.uint64:
    h = int(_FNV_OFFSET)
    for b in str(seed).encode():
        h = ((h ^ b) * int(_FNV_PRIME)) & 0xFFFFFFFFFFFFFFFF
    return np.uint64(h)


def _tail_masks() -> np.ndarray:
    """``_tail_masks()[r]`` keeps the low ``r`` bytes of a little-endian word (r = 0..8)."""
    return np.array([(1 << (8 * r)) - 1 for r in range(8)] + [(1 << 64) - 1], np.uint64)


_TAIL = _tail_masks()


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
    padded = None
    # blocks of rows small enough for the cache: each numpy pass then runs at cache speed
    for lo in range(0, n, _BLOCK):
        hi = min(n, lo + _BLOCK)
        s, ln = starts[lo:hi], lengths[lo:hi]
        if ln[0] == ln.min() == ln.max():
            width = int(ln[0])
            _hash_equal_lengths(h[lo:hi], data[s[0]:s[0] + (hi - lo) * width].reshape(hi - lo, width))
        else:
            if padded is None:
                padded = np.zeros(len(data) + 16, np.uint8)
                padded[:len(data)] = data
            _hash_any_lengths(h[lo:hi], padded, s, ln)
    h ^= lengths.astype(np.uint64)
    return _mix(h)


_BLOCK = 1 << 15


def _hash_equal_lengths(h: np.ndarray, mat: np.ndarray) -> None:
    """Strings of one byte length (record ids, hex digests) as an ``n x L`` byte matrix."""
    n, width = mat.shape
    words = -(-width // 8)
    if width % 8:
        padded = np.zeros((n, words * 8), np.uint8)
        padded[:, :width] = mat
        mat = padded
    w = np.ascontiguousarray(mat).view("<u8").reshape(n, words)
    for j in range(words):
        h ^= w[:, j]
        _mix(h)


def _hash_any_lengths(h: np.ndarray, padded: np.ndarray, starts: np.ndarray, lengths: np.ndarray) -> None:
    """Strings of any lengths: word ``j`` of every string still that long, per alignment of its start.

    A string's words all share its start's alignment (mod 8), so the strings are grouped by it and
    each group reads whole words from one uint64 view of the data buffer (``padded``: followed by
    at least 8 zero bytes, so a last word never reads past the end).
    """
    align = starts % 8
    for a in range(8):
        members = np.flatnonzero((align == a) & (lengths > 0))
        if not members.size:
            continue
        view = np.frombuffer(padded.data, dtype="<u8", offset=a, count=(len(padded) - a) // 8)
        base = (starts[members] - a) // 8
        left = lengths[members]
        j = 0
        while members.size:
            word = view[base + j]
            word &= _TAIL[np.minimum(left, 8)]
            h[members] = _mix(h[members] ^ word)
            left = left - 8
            j += 1
            more = left > 0
            if not more.all():
                members, base, left = members[more], base[more], left[more]


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
