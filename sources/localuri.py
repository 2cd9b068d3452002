"""Local image addresses (file://, zip://, ifcb://): build them at ingest, read them back as encoded bytes.

Local sources (EcoTaxa exports, IFCB bins, class folders) put one of these URIs in the record's
``identifier`` so the download stage reads a local image exactly as it fetches a URL: one call,
encoded image bytes back, nothing copied or unpacked by hand beforehand.

- ``file:///abs/path/img.png``: a file on disk (``Path.as_uri()`` form, percent-encoded).
- ``zip:///abs/export.zip!/member.jpg``: a member of a zip archive (EcoTaxa export with images);
  both parts are percent-encoded, so the literal ``!/`` only ever appears as the separator.
- ``ifcb:///abs/dir/BIN.roi?offset=O&width=W&height=H``: one region of interest of an IFCB ``.roi``
  file, W*H bytes of 8-bit grayscale from byte O, row-major; encoded to PNG when read.
"""

from __future__ import annotations

import os
import struct
import zipfile
import zlib
from pathlib import Path
from urllib.parse import parse_qs, quote, unquote, unquote_to_bytes, urlsplit

import numpy as np

LOCAL_SCHEMES: tuple[str, ...] = ("file", "zip", "ifcb")

# zip members larger than this are refused: a local "image" that big is a mistake or a bomb.
MAX_MEMBER_BYTES = 256 * 1024 * 1024


def file_uri(path: str | os.PathLike) -> str:
    """``file://`` URI of an absolute (or made absolute) path (its bytes percent-encoded)."""
    return Path(path).resolve().as_uri()


def _quoted_path(path: str | os.PathLike) -> str:
    # the path's own bytes, percent-encoded: a name that is not UTF-8 (a latin-1 file system) too
    return quote(os.fsencode(Path(path).resolve()))


def _path(quoted: str) -> Path:
    """The path of a percent-encoded URI part, byte for byte (the inverse of :func:`_quoted_path`)."""
    return Path(os.fsdecode(unquote_to_bytes(quoted)))


def zip_uri(zip_path: str | os.PathLike, member: str) -> str:
    """``zip://`` URI of ``member`` inside the archive at ``zip_path``."""
    return zip_member_uri(zip_uri_prefix(zip_path), member)


def zip_uri_prefix(zip_path: str | os.PathLike) -> str:
    """What every :func:`zip_uri` of the archive at ``zip_path`` starts with (its path resolved
    once, for callers that name many members: :func:`zip_member_uri`)."""
    return f"zip://{_quoted_path(zip_path)}!/"


def zip_member_uri(prefix: str, member: str) -> str:
    """:func:`zip_uri` of ``member`` in the archive whose :func:`zip_uri_prefix` is ``prefix``."""
    return prefix + quote(member.lstrip("/"))


class FolderFiles:
    """The regular files directly in one folder, listed once: whether a name is one, and its
    :func:`file_uri`, without a ``stat`` and a ``resolve`` per file (a TSV beside 100,000 images).

    Names with a ``/``, and symbolic links (whose URI is their target's), take the general path.
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self._files: set[str] = set()  # regular files, and links to them
        self._links: set[str] = set()  # symbolic links, to anything or nothing
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.is_file():
                        self._files.add(entry.name)
                    if entry.is_symlink():
                        self._links.add(entry.name)
        except OSError:
            pass
        self._prefix = file_uri(self.folder).rstrip("/") + "/"

    def names(self) -> list[str]:
        """The regular files (and links to them) directly in the folder, sorted."""
        return sorted(self._files)

    @staticmethod
    def _plain(name: str) -> bool:
        return "/" not in name and name not in ("", ".", "..") and "\0" not in name

    def is_file(self, name: str) -> bool:
        """``(folder / name).is_file()``."""
        return name in self._files if self._plain(name) else (self.folder / name).is_file()

    def uri(self, name: str) -> str:
        """``file_uri(folder / name)`` (of a name not in the folder too: resolved, it is the folder's)."""
        if self._plain(name) and name not in self._links:
            return self._prefix + quote(os.fsencode(name))
        return file_uri(self.folder / name)


def ifcb_uri(roi_path: str | os.PathLike, offset: int, width: int, height: int) -> str:
    """``ifcb://`` URI of one ROI: ``width*height`` bytes at ``offset`` of the ``.roi`` file."""
    return f"ifcb://{_quoted_path(roi_path)}?offset={int(offset)}&width={int(width)}&height={int(height)}"


def is_local(uri: str | None) -> bool:
    """True when ``uri`` is one of the local schemes this module reads."""
    if not uri:
        return False
    scheme, sep, _ = uri.partition("://")
    return bool(sep) and scheme.lower() in LOCAL_SCHEMES


def read_local(uri: str) -> bytes:
    """Encoded image bytes behind a local URI (PNG for ``ifcb://``, the stored bytes otherwise).

    Raises ``FileNotFoundError`` (file, archive, member missing) or ``ValueError`` (bad URI,
    ROI outside the file), each naming the URI.
    """
    scheme, sep, _ = uri.partition("://")
    scheme = scheme.lower()
    if not sep or scheme not in LOCAL_SCHEMES:
        raise ValueError(f"not a local image URI (want file://, zip:// or ifcb://): {uri!r}")
    if scheme == "file":
        return _read_file(uri)
    if scheme == "zip":
        return _read_zip(uri)
    return _read_ifcb(uri)


def _read_file(uri: str) -> bytes:
    parts = urlsplit(uri)
    if parts.netloc not in ("", "localhost"):
        raise ValueError(f"file URI with a remote host is not local: {uri!r}")
    path = _path(parts.path)
    if not path.is_file():
        raise FileNotFoundError(f"no file for {uri!r}")
    return path.read_bytes()


def split_zip_uri(uri: str) -> tuple[Path, str]:
    """``(archive path, member name)`` of a ``zip://`` URI."""
    body = uri.partition("://")[2]
    archive, sep, member = body.partition("!/")
    if not sep or not archive or not member:
        raise ValueError(f"zip URI must look like zip:///abs/archive.zip!/member: {uri!r}")
    return _path(archive), unquote(member)


def _read_zip(uri: str) -> bytes:
    archive, member = split_zip_uri(uri)
    if not archive.is_file():
        raise FileNotFoundError(f"no archive {str(archive)!r} for {uri!r}")
    try:
        with zipfile.ZipFile(archive) as zf:
            try:
                info = zf.getinfo(member)
            except KeyError:
                raise FileNotFoundError(f"no member {member!r} in archive for {uri!r}") from None
            if info.file_size > MAX_MEMBER_BYTES:
                raise ValueError(f"zip member of {info.file_size} bytes is too large for {uri!r}")
            return zf.read(info)
    except zipfile.BadZipFile as e:
        raise ValueError(f"not a readable zip archive for {uri!r}: {e}") from None


def parse_ifcb_uri(uri: str) -> tuple[Path, int, int, int]:
    """``(roi path, offset, width, height)`` of an ``ifcb://`` URI."""
    parts = urlsplit(uri)
    query = parse_qs(parts.query)
    try:
        offset, width, height = (int(query[k][0]) for k in ("offset", "width", "height"))
    except (KeyError, ValueError, IndexError):
        raise ValueError(f"ifcb URI needs integer offset, width and height: {uri!r}") from None
    if offset < 0 or width <= 0 or height <= 0:
        raise ValueError(f"ifcb URI needs offset >= 0 and a positive size: {uri!r}")
    return _path(parts.netloc + parts.path), offset, width, height


def gray_png(pixels: bytes | np.ndarray, width: int, height: int, compress_level: int = 1) -> bytes:
    """PNG bytes of ``height`` rows of ``width`` 8-bit gray pixels, written directly: each row
    with PNG's Sub filter (the difference to the pixel on its left), deflated at
    ``compress_level``. Pillow's encoder gives the same pixels ~3x slower on IFCB ROIs, its bytes
    ~3% smaller. ROIs are small and read once per download: level 6 costs ~3x the time of level 1
    for a few percent of bytes.
    """
    size = pixels.size if isinstance(pixels, np.ndarray) else len(pixels)
    if width <= 0 or height <= 0 or size != width * height:
        raise ValueError(f"not a {width}x{height} gray image: {size} bytes")
    px = (pixels if isinstance(pixels, np.ndarray) else np.frombuffer(pixels, np.uint8)).reshape(height, width)
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 1  # filter type Sub
    rows[:, 1] = px[:, 0]
    np.subtract(px[:, 1:], px[:, :-1], out=rows[:, 2:])  # modulo 256, as PNG defines it

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(data, zlib.crc32(kind)))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit gray, no interlace
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), compress_level)) + chunk(b"IEND", b""))


def _read_ifcb(uri: str) -> bytes:
    path, offset, width, height = parse_ifcb_uri(uri)
    size = width * height
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            pixels = f.read(size)
    except FileNotFoundError:
        raise FileNotFoundError(f"no .roi file for {uri!r}") from None
    if len(pixels) != size:
        raise ValueError(f"ROI runs past the end of the .roi file ({len(pixels)} of {size} bytes): {uri!r}")
    return gray_png(pixels, width, height)
