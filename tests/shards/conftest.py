"""Fixtures for the downloader tests: the real camera-trap images, images made from them, a server."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from PIL import Image

from tests.shards.loopback import LoopbackServer

IMAGES = Path(__file__).resolve().parents[1] / "data" / "images" / "camera_traps"
REAL = sorted(p.name for p in IMAGES.glob("*.jpg"))


def jpeg(im: Image.Image, quality: int = 85) -> bytes:
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return buf.getvalue()


def bomb_header(data: bytes, width: int = 16000, height: int = 12500) -> bytes:
    """A real JPEG whose frame header claims ``width`` x ``height`` (200 MP by default)."""
    i = 2
    while i < len(data):
        marker = data[i + 1]
        length = int.from_bytes(data[i + 2 : i + 4], "big")
        if marker in (0xC0, 0xC1, 0xC2):
            return data[: i + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[i + 9 :]
        i += 2 + length
    raise ValueError("no SOF marker")


@pytest.fixture(scope="session")
def real_images() -> dict[str, bytes]:
    return {name: (IMAGES / name).read_bytes() for name in REAL}


@pytest.fixture(scope="session")
def made_images(real_images) -> dict[str, bytes]:
    """Images derived from the real ones for each case the downloader must handle."""
    bear = Image.open(io.BytesIO(real_images["american_black_bear.jpg"]))
    ocelot = Image.open(io.BytesIO(real_images["ocelot.jpg"])).convert("RGB")
    small = ocelot.resize((200, 153))
    png = io.BytesIO()
    small.save(png, "PNG")
    cattle = real_images["domestic_cattle.jpg"]
    return {
        "small.jpg": jpeg(small),
        "small.png": png.getvalue(),
        "big8000.jpg": jpeg(bear.resize((8000, 8000), Image.Resampling.NEAREST), quality=70),
        "bomb.jpg": bomb_header(cattle),
        "truncated.jpg": cattle[: len(cattle) * 6 // 10],
    }


@pytest.fixture(scope="session")
def served_images(real_images, made_images) -> dict[str, bytes]:
    return {**real_images, **made_images}


@pytest.fixture(scope="session")
def server(served_images):
    with LoopbackServer(served_images, slow_seconds=3.0) as srv:
        yield srv
