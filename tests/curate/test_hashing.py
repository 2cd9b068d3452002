"""The stable string hash behind every seeded decision: equal to its definition, slice-safe."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.curate.hashing import hash_strings, order_by_hash, unit_interval
from schemas import hashing

M = (1 << 64) - 1


def mix(h: int) -> int:
    h ^= h >> 30
    h = (h * 0xBF58476D1CE4E5B9) & M
    h ^= h >> 27
    h = (h * 0x94D049BB133111EB) & M
    return h ^ (h >> 31)


def reference(text: str | None, seed) -> int:
    """The definition, one string at a time: seed word, then each 8-byte word, then the length."""
    h = 0xCBF29CE484222325
    for b in str(seed).encode():
        h = ((h ^ b) * 0x100000001B3) & M
    data = (text or "").encode()
    for i in range(0, len(data), 8):
        h = mix(h ^ int.from_bytes(data[i:i + 8], "little"))
    return mix(h ^ len(data))


@given(st.lists(st.one_of(st.none(), st.text(max_size=30)), max_size=30), st.integers(0, 5), st.integers(0, 3))
def test_equals_definition_on_any_strings_and_slices(values, seed, cut):
    arr = pa.array(values, pa.string()).slice(min(cut, len(values)))
    want = [reference(v, seed) for v in values[min(cut, len(values)):]]
    assert hash_strings(arr, seed).tolist() == want


@given(st.one_of(st.none(), st.text(max_size=40)), st.one_of(st.integers(0, 5), st.text(max_size=6)))
def test_one_value_in_plain_python_is_the_same_hash(value, seed):
    assert hashing.hash_string(value, seed) == reference(value, seed)


@given(st.lists(st.text(alphabet="0123456789abcdef", min_size=16, max_size=16), min_size=1, max_size=30))
def test_equal_length_fast_path(values):
    assert hash_strings(pa.array(values), "s").tolist() == [reference(v, "s") for v in values]


@given(st.lists(st.one_of(st.text(max_size=20), st.text(alphabet="ab", min_size=9, max_size=9)), max_size=40),
       st.integers(1, 7))
def test_blocks_of_mixed_lengths(values, block_bits):
    """Row blocks (some all one length, some mixed) give the definition whatever the block size."""
    old = hashing._BLOCK
    hashing._BLOCK = 1 << block_bits
    try:
        got = hash_strings(pa.array(values, pa.string()), 3).tolist()
    finally:
        hashing._BLOCK = old
    assert got == [reference(v, 3) for v in values]


def test_prefixes_and_zero_bytes_differ():
    """Zero padding of the last word must not make "a" and "a\\0" (or "" and "\\0") collide."""
    h = hash_strings(pa.array(["", "\x00", "a", "a\x00", "a" * 8, "a" * 8 + "\x00"]), 0)
    assert len(set(h.tolist())) == 6


def test_unit_interval_and_order():
    h = hash_strings(pa.array([f"r{i}" for i in range(1000)]), 1)
    u = unit_interval(h)
    assert ((u >= 0) & (u < 1)).all() and 0.4 < u.mean() < 0.6
    keys = pa.array(["b", "a", "c"])
    assert order_by_hash(np.array([5, 5, 1], np.uint64), keys).tolist() == [2, 1, 0]
