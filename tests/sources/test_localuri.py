"""Local image URIs: built by the plankton connectors, read back as encoded image bytes."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from sources.localuri import (
    FolderFiles,
    file_uri,
    gray_png,
    ifcb_uri,
    is_local,
    parse_ifcb_uri,
    read_local,
    split_zip_uri,
    zip_uri,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "plankton"
BIN = DATA / "ifcb_labeled" / "D20220522T000439_IFCB134"
PNG = DATA / "ifcb_labeled" / "png" / "D20220522T000439_IFCB134_00002.png"


@pytest.mark.parametrize("name", ["plain.png", "with space.png", "bang!/x.png", "ünïcode %20.png"],
                         ids=["plain", "space", "bang", "unicode-percent"])
def test_file_uri_reads_back_the_file(tmp_path, name):
    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(PNG.read_bytes())
    uri = file_uri(target)
    assert uri.startswith("file:///") and is_local(uri)
    assert read_local(uri) == PNG.read_bytes()


@pytest.mark.parametrize("member", ["a.png", "sample 1/obj!1.png", "deep/er/ü.png"], ids=["root", "bang", "deep"])
def test_zip_uri_reads_back_the_member(tmp_path, member):
    archive = tmp_path / "export !x.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr(member, PNG.read_bytes())
        zf.writestr("other.txt", b"x")
    uri = zip_uri(archive, member)
    assert split_zip_uri(uri) == (archive.resolve(), member)
    assert read_local(uri) == PNG.read_bytes()


def test_ifcb_uri_encodes_the_roi_as_png():
    # ROI 2 of the real bin: 160x74 at byte 0 (ADC row 2)
    uri = ifcb_uri(BIN.with_suffix(".roi"), 0, 160, 74)
    assert parse_ifcb_uri(uri)[1:] == (0, 160, 74)
    png = read_local(uri)
    im = Image.open(io.BytesIO(png))
    assert im.format == "PNG" and im.mode == "L" and im.size == (160, 74)
    raw = np.frombuffer(BIN.with_suffix(".roi").read_bytes()[:160 * 74], np.uint8).reshape(74, 160)
    assert np.array_equal(np.array(im), raw)


@pytest.mark.parametrize(
    "uri, error",
    [
        ("file:///no/such/file.png", FileNotFoundError),
        ("zip:///no/such/archive.zip!/a.png", FileNotFoundError),
        ("zip:///no/separator.zip", ValueError),
        ("http://example.org/a.png", ValueError),
        ("not a uri", ValueError),
        ("ifcb:///x.roi?offset=0&width=10", ValueError),
        ("ifcb:///x.roi?offset=-1&width=10&height=10", ValueError),
        ("ifcb:///no/such.roi?offset=0&width=10&height=10", FileNotFoundError),
        ("file://remotehost/a.png", ValueError),
    ],
    ids=["file-missing", "zip-missing", "zip-no-member", "http", "garbage", "ifcb-no-height", "ifcb-negative",
         "ifcb-missing", "file-remote-host"],
)
def test_bad_uris_raise_clear_errors_naming_the_uri(uri, error):
    with pytest.raises(error) as exc:
        read_local(uri)
    assert uri in str(exc.value)


def test_missing_zip_member_and_roi_past_the_end(tmp_path):
    archive = tmp_path / "e.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("a.png", b"x")
    with pytest.raises(FileNotFoundError, match="b.png"):
        read_local(zip_uri(archive, "b.png"))
    size = BIN.with_suffix(".roi").stat().st_size
    with pytest.raises(ValueError, match="past the end"):
        read_local(ifcb_uri(BIN.with_suffix(".roi"), size - 10, 10, 10))
    (tmp_path / "bad.zip").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable zip"):
        read_local(zip_uri(tmp_path / "bad.zip", "a.png"))


@pytest.mark.parametrize("uri, local", [
    ("file:///a.png", True), ("ZIP:///a.zip!/b.png", True), ("ifcb:///a.roi?offset=0&width=1&height=1", True),
    ("https://x/a.png", False), ("", False), (None, False), ("file.png", False),
])
def test_is_local(uri, local):
    assert is_local(uri) is local


@settings(max_examples=60, deadline=None)
@given(member=st.text(st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40)
       .filter(lambda m: not m.startswith("/")),
       folder=st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/\\"),
                      min_size=1, max_size=20))
def test_zip_uri_round_trips_any_names(member, folder):
    archive = Path("/tmp") / folder / "x.zip"
    got_archive, got_member = split_zip_uri(zip_uri(archive, member))
    assert got_member == member
    assert got_archive == archive.resolve()


def test_uris_of_paths_that_are_not_utf8_read_back(tmp_path):
    """A folder named in latin-1 (bytes ``caf\\xe9``): zip:// and ifcb:// could not be built
    (UnicodeEncodeError) and file:// read back the wrong path (``%E9`` decoded as U+FFFD)."""
    import os
    import shutil

    folder = Path(os.fsdecode(os.path.join(os.fsencode(tmp_path), b"caf\xe9")))
    folder.mkdir()
    shutil.copy(PNG, folder / "a.png")
    for ext in (".adc", ".hdr", ".roi"):
        shutil.copy(BIN.with_suffix(ext), folder / (BIN.name + ext))
    with zipfile.ZipFile(folder / "x.zip", "w") as zf:
        zf.writestr("img/a.png", PNG.read_bytes())
    uris = [file_uri(folder / "a.png"), zip_uri(folder / "x.zip", "img/a.png"),
            ifcb_uri(folder / (BIN.name + ".roi"), 0, 160, 74)]
    assert all("caf%E9" in u and u.isascii() for u in uris)
    assert read_local(uris[0]) == read_local(uris[1]) == PNG.read_bytes()
    assert read_local(uris[2]) == read_local(ifcb_uri(BIN.with_suffix(".roi"), 0, 160, 74))


@settings(max_examples=60, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1,
                    max_size=30))
def test_uris_of_utf8_paths_are_as_before(name):
    """Percent-encoding a path's bytes gives what percent-encoding its text did for UTF-8 names."""
    from urllib.parse import quote

    path = Path("/tmp") / name / "x.roi"
    assert zip_uri(path, "m.png") == f"zip://{quote(str(path.resolve()))}!/m.png"
    assert ifcb_uri(path, 1, 2, 3) == f"ifcb://{quote(str(path.resolve()))}?offset=1&width=2&height=3"
    assert parse_ifcb_uri(ifcb_uri(path, 1, 2, 3))[0] == path.resolve()


@pytest.fixture(scope="module")
def listed(tmp_path_factory):
    """A folder of what an export's images can be: files, a link to a file elsewhere, a folder,
    a dangling link, a file one level down."""
    root = tmp_path_factory.mktemp("listed")
    folder = root / "export dir"
    (folder / "sub").mkdir(parents=True)
    for name in ("a.png", "with space.png", "ü %20#?.png"):
        (folder / name).write_bytes(b"x")
    (folder / "sub" / "b.png").write_bytes(b"x")
    (root / "elsewhere.png").write_bytes(b"x")
    (folder / "link.png").symlink_to(root / "elsewhere.png")
    (folder / "dangling.png").symlink_to(root / "gone.png")
    (folder / "dir.png").mkdir()
    return folder


_NAMES = st.one_of(
    st.sampled_from(["a.png", "with space.png", "ü %20#?.png", "sub/b.png", "link.png", "dangling.png", "dir.png",
                     "missing.png", "sub/missing.png", "../elsewhere.png", "./a.png", "sub", ".", ".."]),
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12))


@settings(max_examples=150, deadline=None)
@given(name=_NAMES)
def test_a_listed_folder_answers_as_a_stat_and_a_resolve_would(listed, name):
    files = FolderFiles(listed)
    assert files.is_file(name) == (listed / name).is_file()
    assert files.uri(name) == file_uri(listed / name)


@given(st.integers(1, 40), st.integers(1, 40), st.data(), st.sampled_from([0, 1, 6, 9]))
def test_gray_png_decodes_to_its_pixels(width, height, data, level):
    """The PNG written directly (Sub filter, any level) decodes with Pillow to exactly its pixels,
    from bytes or from an array view that is not contiguous."""
    from sources.ifcb import encode_png

    pixels = data.draw(st.binary(min_size=width * height, max_size=width * height))
    image = Image.open(io.BytesIO(gray_png(pixels, width, height, level)))
    assert image.mode == "L" and image.size == (width, height)
    assert image.tobytes() == pixels
    array = np.frombuffer(pixels, np.uint8).reshape(height, width)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(encode_png(array.T)))), array.T)


@pytest.mark.parametrize("width, height, size", [(0, 3, 0), (3, 0, 0), (2, 2, 3), (2, 2, 5)])
def test_gray_png_refuses_a_wrong_size(width, height, size):
    with pytest.raises(ValueError, match="gray image"):
        gray_png(b"\0" * size, width, height)
