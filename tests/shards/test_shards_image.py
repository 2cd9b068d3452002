"""Image checks and conversion: resize modes, originals kept, bombs and truncation refused, hashes."""

from __future__ import annotations

import hashlib
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from shards import status
from shards.image import ImageOptions, hamming, header_size, phash, process_image, sniff_format
from tests.shards.conftest import REAL, bomb_header, jpeg


@pytest.mark.parametrize("name", REAL)
@pytest.mark.parametrize("mode", ["longest", "shortest", "center_crop"])
def test_resize_modes_on_real_images(real_images, name, mode):
    data = real_images[name]
    w, h = Image.open(io.BytesIO(data)).size
    out = process_image(data, ImageOptions(size=256, mode=mode))
    assert out["ok"], out
    im = Image.open(io.BytesIO(out["data"]))
    im.load()
    assert im.size == (out["stored_width"], out["stored_height"])
    assert (out["width"], out["height"]) == (w, h)
    if mode == "longest":
        assert max(im.size) == 256
    elif mode == "shortest":
        assert min(im.size) == 256
    else:
        assert im.size == (256, 256)
    assert out["sha256"] == hashlib.sha256(data).hexdigest()
    assert im.mode == "RGB" and out["ext"] == "jpg"


def test_small_image_kept_byte_for_byte(real_images):
    small = jpeg(Image.open(io.BytesIO(real_images["ocelot.jpg"])).resize((200, 150)))
    out = process_image(small, ImageOptions(size=256))
    assert out["ok"] and out["data"] == small
    assert process_image(small, ImageOptions(size=256, keep_original=False))["data"] != small


def test_png_kept_as_png(real_images):
    buf = io.BytesIO()
    Image.open(io.BytesIO(real_images["vehicle.jpg"])).resize((100, 75)).save(buf, "PNG")
    out = process_image(buf.getvalue(), ImageOptions())
    assert out["ok"] and out["ext"] == "png" and out["data"] == buf.getvalue()


def test_cmyk_and_rgba_become_rgb(real_images):
    im = Image.open(io.BytesIO(real_images["ocelot.jpg"]))
    cmyk = io.BytesIO()
    im.convert("CMYK").save(cmyk, "JPEG")
    rgba = io.BytesIO()
    im.convert("RGBA").save(rgba, "PNG")
    for data in (cmyk.getvalue(), rgba.getvalue()):
        out = process_image(data, ImageOptions(size=128))
        assert out["ok"]
        assert Image.open(io.BytesIO(out["data"])).mode == "RGB"


def test_exif_orientation_applied(real_images):
    im = Image.open(io.BytesIO(real_images["ocelot.jpg"]))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    out = process_image(buf.getvalue(), ImageOptions(size=256))
    assert out["stored_height"] > out["stored_width"]


def test_bomb_refused_from_the_header(real_images):
    bomb = bomb_header(real_images["domestic_cattle.jpg"])
    assert header_size(bomb, "jpeg") == (16000, 12500)
    out = process_image(bomb, ImageOptions())
    assert out["reason"] == status.DECOMPRESSION_BOMB
    assert (out["width"], out["height"]) == (16000, 12500)
    # the same check with a low cap, on an honest image
    assert process_image(real_images["ocelot.jpg"], ImageOptions(max_pixels=1000))["reason"] == status.DECOMPRESSION_BOMB


@pytest.mark.parametrize("fraction", [0.3, 0.6, 0.95])
def test_truncated_jpeg_refused(real_images, fraction):
    data = real_images["american_black_bear.jpg"]
    out = process_image(data[: int(len(data) * fraction)], ImageOptions())
    assert out["reason"] == status.TRUNCATED_IMAGE


def test_truncated_png_refused(real_images):
    buf = io.BytesIO()
    Image.open(io.BytesIO(real_images["vehicle.jpg"])).save(buf, "PNG")
    data = buf.getvalue()
    assert process_image(data[: len(data) // 2], ImageOptions())["reason"] in (status.TRUNCATED_IMAGE,
                                                                               status.DECODE_ERROR)


def test_html_is_not_an_image():
    assert process_image(b"<!doctype html><html></html>", ImageOptions())["reason"] == status.NOT_AN_IMAGE
    assert sniff_format(b"<html>") is None
    assert sniff_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp"


def test_phash_is_perceptual(real_images):
    def ph(data, size=None):
        im = Image.open(io.BytesIO(data)).convert("RGB")
        return phash(im.resize(size) if size else im)

    bear = real_images["american_black_bear.jpg"]
    assert hamming(ph(bear), ph(bear, (300, 225))) <= 6
    assert hamming(ph(bear), ph(jpeg(Image.open(io.BytesIO(bear)), quality=30))) <= 6
    others = [ph(real_images[n]) for n in REAL if n != "american_black_bear.jpg"]
    assert all(hamming(ph(bear), o) > 12 for o in others)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2048))
def test_process_image_never_raises(data):
    out = process_image(data, ImageOptions())
    assert out["ok"] is False or out["data"]
    assert out["reason"] is None or out["reason"] in status.REASONS


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 4000))
def test_process_image_on_any_truncation_point(real_images, cut):
    data = jpeg(Image.open(io.BytesIO(real_images["ocelot.jpg"])).resize((120, 90)))
    out = process_image(data[: min(cut, len(data))], ImageOptions())
    if cut < len(data) - 2:
        assert not out["ok"]
