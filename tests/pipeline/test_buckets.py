"""Global stages route rows by a bucket that must be the same in every process, run and version."""

from __future__ import annotations

import zlib

import pyarrow as pa
from hypothesis import given
from hypothesis import strategies as st

from pipeline.runners.tasks import bucket_of


@given(st.lists(st.one_of(st.none(), st.text(max_size=40)), max_size=60), st.integers(1, 64))
def test_bucket_is_crc32_of_the_utf8_key(keys, buckets):
    expected = [zlib.crc32(k.encode()) % buckets if k is not None else 0 for k in keys]
    assert list(bucket_of(pa.array(keys, pa.string()), buckets)) == expected


def test_bucket_of_a_sliced_array():
    arr = pa.array(["a", "bb", "ccc", None, "é"], pa.string()).slice(1, 3)
    assert list(bucket_of(arr, 7)) == [zlib.crc32(b"bb") % 7, zlib.crc32(b"ccc") % 7, 0]
