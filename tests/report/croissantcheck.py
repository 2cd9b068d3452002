"""Checks a croissant.json against the structure Croissant 1.0 requires, with every reference resolving."""

from __future__ import annotations

import fnmatch
import hashlib
import re
import tarfile
from pathlib import Path

IMAGE_EXTS = ("jpg", "png", "webp", "jpeg")


def validate_croissant(doc: dict, root: Path) -> None:
    """The structure Croissant 1.0 requires, and every reference resolving inside the document."""
    ctx = doc["@context"]
    assert ctx["@vocab"] == "https://schema.org/" and ctx["cr"] == "http://mlcommons.org/croissant/"
    for term in ("sc", "dct", "conformsTo", "recordSet", "field", "fileSet", "fileObject", "source", "extract",
                 "includes", "column", "fileProperty", "references", "key", "data", "dataType"):
        assert term in ctx, term
    assert doc["@type"] == "sc:Dataset"
    assert doc["conformsTo"] == "http://mlcommons.org/croissant/1.0"
    for key in ("name", "description", "license", "url", "creator", "datePublished", "version"):
        assert doc.get(key), key
    # schema.org's license is a URL or a CreativeWork: one form for every entry, never a bare code
    for lic in doc["license"]:
        assert isinstance(lic, dict) and lic["@type"] == "sc:CreativeWork" and lic["name"], lic
        assert lic.get("url", "https://").startswith("https://"), lic
    # a published dataset's url is no path of the machine that built it
    assert not doc["url"].startswith("file:") and not doc["url"].startswith("/"), doc["url"]
    # the dataset's version, MAJOR.MINOR.PATCH as Croissant recommends
    assert re.fullmatch(r"\d+\.\d+\.\d+", doc["version"]), doc["version"]
    ids = {}
    files = [p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()]
    for d in doc["distribution"]:
        assert d["@type"] in ("cr:FileObject", "cr:FileSet") and d["encodingFormat"] and d["name"]
        assert d["@id"] not in ids
        ids[d["@id"]] = d
        if d["@type"] == "cr:FileObject":
            data = (root / d["contentUrl"]).read_bytes()  # paths are relative to the data root
            assert hashlib.sha256(data).hexdigest() == d["sha256"] and d["contentSize"] == f"{len(data)} B"
        elif "containedIn" in d:
            assert d["containedIn"] and all(c["@id"] in ids for c in d["containedIn"])
        else:
            # loaders match includes with fnmatch over paths relative to the data root
            assert [f for f in files if fnmatch.fnmatch(f, d["includes"])], d["includes"]
    field_ids = {f["@id"] for rs in doc["recordSet"] for f in rs["field"]}
    for rs in doc["recordSet"]:
        assert rs["@type"] == "cr:RecordSet" and rs["field"]
        if "key" in rs:  # one field or a composite key
            keys = rs["key"] if isinstance(rs["key"], list) else [rs["key"]]
            assert keys and all(k["@id"] in field_ids for k in keys)
        for f in rs["field"]:
            assert f["@type"] == "cr:Field" and f["@id"].startswith(rs["@id"] + "/") and f["dataType"].startswith("sc:")
            src = f["source"]
            assert (src.get("fileSet") or src.get("fileObject"))["@id"] in ids
            assert set(src["extract"]) <= {"column", "fileProperty", "jsonPath"}
            if "references" in f:
                assert f["references"]["field"]["@id"] in field_ids


def tar_members(root: Path) -> list[str]:
    """The member names of every tar in ``root/shards/``."""
    names = []
    for tar in sorted((Path(root) / "shards").glob("*.tar")):
        with tarfile.open(tar) as t:
            names += [m.name for m in t.getmembers() if m.isfile()]
    return names


def image_filesets(doc: dict) -> dict[str, dict]:
    """The FileSets of images inside the shards, by id."""
    return {d["@id"]: d for d in doc["distribution"]
            if d["@type"] == "cr:FileSet" and d.get("encodingFormat", "").startswith("image/")}


def assert_images_covered(doc: dict, root: Path) -> None:
    """Every image member of the shards is in exactly one image FileSet, whose encodingFormat is its format."""
    members = [m for m in tar_members(root) if m.rsplit(".", 1)[-1] in IMAGE_EXTS]
    sets = image_filesets(doc)
    mime = {"jpg": "image/jpeg", "png": "image/png"}
    for m in members:
        matching = [d for d in sets.values() if any(fnmatch.fnmatch(m, p) for p in _includes(d))]
        assert len(matching) == 1, (m, list(sets))
        assert matching[0]["encodingFormat"] == mime[m.rsplit(".", 1)[-1]], m
    for d in sets.values():  # no FileSet that matches nothing
        assert any(fnmatch.fnmatch(m, p) for m in members for p in _includes(d)), d["@id"]


def _includes(d: dict) -> list[str]:
    inc = d["includes"]
    return inc if isinstance(inc, list) else [inc]
