"""The report page rendered by headless Chromium (Debian's ``chromium``): sections in the DOM, images decoded, a real screenshot."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from pipeline.stages.report import SECTIONS

pytestmark = pytest.mark.chromium

# No network, no first-run work, no background services: the page must render from the file alone.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage")


def _chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip("chromium not installed (`make chromium` installs Debian's package)")
    return exe


def _run(args: list[str], tmp: Path) -> subprocess.CompletedProcess:
    cmd = [_chromium(), *FLAGS, f"--user-data-dir={tmp / 'profile'}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=90, check=False)


def test_dom_has_every_section_and_every_image_decodes(full_root, tmp_path):
    page = (full_root["report"] / "index.html").resolve()
    done = _run(["--virtual-time-budget=5000", "--dump-dom", page.as_uri()], tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for sid, _ in SECTIONS:
        assert f'<section id="{sid}">' in dom, sid
    total = int(re.search(r'data-images-total="(\d+)"', dom).group(1))
    loaded = int(re.search(r'data-images-loaded="(\d+)"', dom).group(1))
    expected = sum(len(keys) for keys in full_root["shard_members"].values())
    assert total == expected and loaded == total
    assert dom.count("<svg") >= 10


def test_screenshot_is_a_real_picture(full_root, tmp_path):
    page = (full_root["report"] / "index.html").resolve()
    shot = tmp_path / "shot.png"
    done = _run([f"--screenshot={shot}", "--window-size=1280,2000", "--hide-scrollbars", page.as_uri()], tmp_path)
    assert done.returncode == 0 and shot.is_file(), done.stderr[-2000:]
    assert shot.stat().st_size > 20_000
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colours = img.getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) > 50  # text, bars and axes, not a blank page
    # the bars of the first charts are drawn in the palette's blue
    blue = sum(n for n, c in (colours or []) if c == (0x2B, 0x7B, 0xB9))
    assert colours is None or blue > 1000
