"""Check, decode, resize and hash one image's bytes (pure and picklable: runs in a process pool)."""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from typing import Literal

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from shards import status

ResizeMode = Literal["longest", "shortest", "center_crop", "none"]

# Magic numbers of the formats we accept; anything else (an HTML error page, JSON, a video) is
# not an image whatever its Content-Type says.
_MAGIC: tuple[tuple[bytes, int, str], ...] = (
    (b"\xff\xd8\xff", 0, "jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "png"),
    (b"GIF87a", 0, "gif"),
    (b"GIF89a", 0, "gif"),
    (b"WEBP", 8, "webp"),
    (b"II*\x00", 0, "tiff"),
    (b"MM\x00*", 0, "tiff"),
    (b"BM", 0, "bmp"),
)

# Formats whose original bytes may go into a shard unchanged (trainers decode both).
_KEEPABLE = {"jpeg": "jpg", "png": "png"}
_ROTATED = {5, 6, 7, 8}  # EXIF orientations that swap width and height
_DCT_SIZE = 32
_REDUCING_GAP = 3.0  # box-reduce first only when the image is over 3x the target (Pillow: "indistinguishable")


def sniff_format(head: bytes) -> str | None:
    """The image format named by the first bytes, or ``None`` when they are no known image."""
    for magic, offset, name in _MAGIC:
        if head[offset : offset + len(magic)] == magic:
            if name == "webp" and head[:4] != b"RIFF":
                continue
            return name
    return None


@dataclass(frozen=True)
class ImageOptions:
    """How stored images are made: size and resize mode, pixel cap, JPEG quality."""

    size: int = 256
    mode: ResizeMode = "longest"
    max_pixels: int = 89_478_485  # Pillow's own default bomb limit
    quality: int = 90
    keep_original: bool = True


def target_size(width: int, height: int, opts: ImageOptions) -> tuple[int, int]:
    """Size before any crop: longest/shortest side scaled to ``opts.size``, never upscaled
    except for ``center_crop`` (whose output must be exactly ``size`` x ``size``)."""
    n = opts.size
    if opts.mode == "none":
        return width, height
    side = max(width, height) if opts.mode == "longest" else min(width, height)
    if side <= n and opts.mode != "center_crop":
        return width, height
    scale = n / side
    return max(1, round(width * scale)), max(1, round(height * scale))


def fits_already(width: int, height: int, opts: ImageOptions) -> bool:
    if opts.mode == "center_crop":
        return width == height == opts.size
    return target_size(width, height, opts) == (width, height)


def header_size(data: bytes, fmt: str) -> tuple[int, int] | None:
    """Width and height as the JPEG/PNG/GIF header claims them, without decoding anything."""
    if fmt == "png" and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if fmt == "gif" and len(data) >= 10:
        return int.from_bytes(data[6:8], "little"), int.from_bytes(data[8:10], "little")
    if fmt == "jpeg":
        i = 2
        while i + 9 <= len(data):
            if data[i] != 0xFF:
                return None
            marker = data[i + 1]
            if marker == 0xFF:  # fill byte
                i += 1
                continue
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                return int.from_bytes(data[i + 7 : i + 9], "big"), int.from_bytes(data[i + 5 : i + 7], "big")
            i += 2 + int.from_bytes(data[i + 2 : i + 4], "big")
    return None


def _jpeg_has_eoi(data: bytes) -> bool:
    """A complete JPEG ends with the EOI marker (some cameras pad or append a trailer after it)."""
    tail = data.rstrip(b"\x00\r\n\t ")
    if tail.endswith(b"\xff\xd9"):
        return True
    sos = data.find(b"\xff\xda")
    return sos >= 0 and data.find(b"\xff\xd9", sos) >= 0


def phash(im: Image.Image) -> str:
    """64-bit DCT perceptual hash as 16 hex digits: bits of the 8x8 lowest frequencies of a
    32x32 grey thumbnail above their median (DC term excluded from the median)."""
    grey = np.asarray(im.convert("L").resize((_DCT_SIZE, _DCT_SIZE), Image.Resampling.BILINEAR), np.float64)
    low = _DCT8 @ grey @ _DCT8.T
    coeffs = low.ravel()
    bits = coeffs > np.median(coeffs[1:])
    return f"{int(np.packbits(bits).view('>u8')[0]):016x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two hex hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def _dct_matrix(rows: int, n: int) -> np.ndarray:
    k = np.arange(rows)[:, None]
    x = np.arange(n)[None, :]
    return np.cos(np.pi * (2 * x + 1) * k / (2 * n))


_DCT8 = _dct_matrix(8, _DCT_SIZE)


def _failure(reason: str, **known) -> dict:
    return {"ok": False, "reason": status.check_reason(reason), **known}


def _to_storable(im: Image.Image) -> Image.Image:
    if im.mode in ("RGB", "L"):
        return im
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGB", rgba.size, (255, 255, 255))
        white.paste(rgba, mask=rgba.getchannel("A"))
        return white
    return im.convert("RGB")


def process_image(data: bytes, opts: ImageOptions) -> dict:
    """Check and convert one image. Returns a dict with ``ok`` and, on success, ``data`` (the
    stored bytes), ``ext`` (jpg/png), ``width``/``height`` (original), ``stored_width``/
    ``stored_height``, ``sha256`` of the original bytes and ``phash`` of the stored image; on
    failure ``reason`` from ``shards.status``. Never raises."""
    try:
        return _process(data, opts)
    except MemoryError:
        return _failure(status.DECOMPRESSION_BOMB, bytes=len(data))
    except Exception:  # a decoder bug must become a status row, never kill the worker pool
        return _failure(status.DECODE_ERROR, bytes=len(data))


def _process(data: bytes, opts: ImageOptions) -> dict:
    known = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    fmt = sniff_format(data[:16])
    if fmt is None:
        return _failure(status.NOT_AN_IMAGE, **known)
    known["format"] = fmt
    claimed = header_size(data, fmt)
    if claimed is not None:
        known.update(width=claimed[0], height=claimed[1])
        # Refuse on the header's claim, before a single pixel is decoded.
        if claimed[0] * claimed[1] > opts.max_pixels:
            return _failure(status.DECOMPRESSION_BOMB, **known)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data))  # reads the header only
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        return _failure(status.DECOMPRESSION_BOMB, **known)
    except UnidentifiedImageError:
        return _failure(status.NOT_AN_IMAGE, **known)
    except (OSError, SyntaxError, ValueError):
        return _failure(status.DECODE_ERROR, **known)
    width, height = im.size
    known.update(width=width, height=height)
    if width <= 0 or height <= 0:
        return _failure(status.DECODE_ERROR, **known)
    # Refuse on the header's claim, before a single pixel is decoded.
    if width * height > opts.max_pixels:
        return _failure(status.DECOMPRESSION_BOMB, **known)
    if fmt == "jpeg" and not _jpeg_has_eoi(data):
        return _failure(status.TRUNCATED_IMAGE, **known)

    orientation = im.getexif().get(0x0112, 1) if fmt in ("jpeg", "tiff", "webp", "png") else 1
    shown_w, shown_h = (height, width) if orientation in _ROTATED else (width, height)
    tw, th = target_size(shown_w, shown_h, opts)
    keep = (
        opts.keep_original
        and fmt in _KEEPABLE
        and orientation == 1
        and getattr(im, "n_frames", 1) == 1
        and fits_already(width, height, opts)
    )
    if fmt == "jpeg" and not keep and (tw, th) != (shown_w, shown_h):
        # DCT-domain downscale by 1/2, 1/4 or 1/8 while decoding: most of the speed-up.
        request = (th, tw) if orientation in _ROTATED else (tw, th)
        im.draft(im.mode if im.mode in ("RGB", "L") else None, request)
    try:
        if ImageFile.LOAD_TRUNCATED_IMAGES:
            raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is on: truncated images would pass")
        im.load()
    except OSError as exc:
        reason = status.TRUNCATED_IMAGE if "truncated" in str(exc) else status.DECODE_ERROR
        return _failure(reason, **known)
    except (SyntaxError, ValueError):
        return _failure(status.DECODE_ERROR, **known)

    if keep:
        stored = _to_storable(im)
        out, ext = data, _KEEPABLE[fmt]
    else:
        if orientation != 1:
            im = ImageOps.exif_transpose(im)
        stored = _to_storable(im)
        if stored.size != (tw, th):
            # After the draft a JPEG is at most 2x the target, where an antialiased bilinear
            # filter looks the same as bicubic at half the cost (~1.5 ms of ~8 per photo here);
            # undrafted images (PNG, WebP) are box-reduced by a whole factor first.
            stored = stored.resize((tw, th), Image.Resampling.BILINEAR, reducing_gap=_REDUCING_GAP)
        if opts.mode == "center_crop":
            left, top = (tw - opts.size) // 2, (th - opts.size) // 2
            stored = stored.crop((left, top, left + opts.size, top + opts.size))
        buf = io.BytesIO()
        stored.save(buf, "JPEG", quality=opts.quality)
        out, ext = buf.getvalue(), "jpg"
    return {
        "ok": True,
        "reason": None,
        **known,
        "data": out,
        "ext": ext,
        "stored_width": stored.size[0],
        "stored_height": stored.size[1],
        "stored_bytes": len(out),
        "phash": phash(stored),
    }


def process_images(datas: list[bytes], opts: ImageOptions) -> list[dict]:
    """``process_image`` over a batch, in order: one pool task (one pickle, one round trip)
    for several images."""
    return [process_image(data, opts) for data in datas]
