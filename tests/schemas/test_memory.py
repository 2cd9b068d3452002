"""Arrow's allocator is set up by the first biocorpus import, before pyarrow loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "import {module}, os; print(*map(os.environ.get, ('MIMALLOC_PURGE_DELAY', 'MIMALLOC_ALLOW_THP', 'OPENBLAS_NUM_THREADS')))"
# touches a 64 MiB Arrow buffer and prints how much of the process is in transparent huge pages
HUGE_PAGES = """
import ctypes, schemas, pyarrow as pa
b = pa.allocate_buffer(64 << 20)
ctypes.memset(b.address, 1, b.size)
print(next(int(l.split()[1]) for l in open('/proc/self/smaps_rollup') if l.startswith('AnonHugePages')))
"""
THP = Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _run(code: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("MIMALLOC_", "OPENBLAS_"))}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**base, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


def _probe(module: str, **env: str) -> str:
    return _run(PROBE.format(module=module), **env)


@pytest.mark.parametrize("module", ["schemas", "sources.gbif", "pipeline.cli", "taxonomy", "shards"])
def test_every_package_sets_the_defaults(module):
    assert _probe(module) == "-1 0 1"


def test_the_users_setting_wins():
    assert _probe("sources", MIMALLOC_PURGE_DELAY="10", MIMALLOC_ALLOW_THP="1", OPENBLAS_NUM_THREADS="2") == "10 1 2"


@pytest.mark.skipif(not Path("/proc/self/smaps_rollup").exists(), reason="needs Linux's /proc")
def test_arrow_memory_is_not_in_huge_pages():
    if not THP.exists() or "[never]" in THP.read_text() or int(_run(HUGE_PAGES, MIMALLOC_ALLOW_THP="1")) == 0:
        pytest.skip("this kernel gives no transparent huge pages here, so there is nothing to turn off")
    assert _run(HUGE_PAGES) == "0"
