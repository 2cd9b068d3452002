"""Arrow's allocator is set up by the first biocorpus import, before pyarrow loads."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PROBE = "import {module}, os; print(os.environ.get('MIMALLOC_PURGE_DELAY'))"


def _probe(module: str, **env: str) -> str:
    base = {k: v for k, v in os.environ.items() if not k.startswith("MIMALLOC_")}
    out = subprocess.run([sys.executable, "-c", PROBE.format(module=module)], cwd=REPO, env={**base, **env},
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("module", ["schemas", "sources.gbif", "pipeline.cli", "taxonomy", "shards"])
def test_every_package_keeps_freed_pages(module):
    assert _probe(module) == "-1"


def test_the_users_setting_wins():
    assert _probe("sources", MIMALLOC_PURGE_DELAY="10") == "10"
