"""Webdataset shard writing: per-image spool for resume, deterministic tar and sidecar Parquet.

A shard ``{split}-{n:06d}.tar`` holds, per image, ``{key}.jpg`` (or ``.png`` when the original
PNG was kept), ``{key}.json`` (the record, with license and attribution), ``{key}.txt`` (caption),
``{key}.cls`` (class index) and BioCLIP's text types (``{key}.sci.txt``, ``{key}.taxonTag_com.txt``,
``{key}.common_name.txt``..., as in the TreeOfLife shards) when given. Members are sorted by key
then extension and carry a fixed mtime, owner and mode, so the same images always give the same
bytes. Beside it,
``{split}-{n:06d}.parquet`` lists every attempted image (``shards.status.STATUS_SCHEMA``). Both
are written to ``<name>.tmp`` and renamed; the Parquet is written last, so a shard is finished
exactly when its Parquet exists.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import tarfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import fsspec
import pyarrow.parquet as pq

from shards.status import STATUS_COLUMNS, status_table

MTIME = 0  # fixed member mtime: byte-identical shards across runs and machines
_KEY = re.compile(r"^[A-Za-z0-9_-]+$")
_TEXT_TYPE = re.compile(r"^[A-Za-z0-9_]+$")
_STATUS_FILE = "_status.jsonl"


def shard_name(split: str, n: int) -> str:
    """``{split}-{n:06d}``; the split must be a plain word (no dot, no slash)."""
    if not _KEY.match(split):
        raise ValueError(f"split {split!r} must match [A-Za-z0-9_-]+")
    return f"{split}-{n:06d}"


def check_key(key: str) -> str:
    """Return ``key`` or raise: webdataset splits a member name at the first dot of its basename,
    so a dotted key would scatter one sample over several."""
    if not isinstance(key, str) or not _KEY.match(key):
        raise ValueError(f"sample key {key!r} must be non-empty and match [A-Za-z0-9_-]+ (no dots)")
    return key


def safe_key(raw: str) -> str:
    """Map a user-given key to a dot-free one (every character outside [A-Za-z0-9_-] becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", str(raw)) or "_"


def sample_members(
    key: str,
    image: bytes,
    ext: str,
    record: Mapping | None,
    caption: str | None = None,
    cls: int | None = None,
    texts: Mapping[str, str | None] | None = None,
) -> dict[str, bytes]:
    """The members of one sample, extension -> bytes. ``texts`` maps a text type (``sci``,
    ``taxonTag_com``, ``common_name``...) to its text, written as ``{key}.{type}.txt``; webdataset
    splits a member name at the first dot of its base name, so the sample gets the extension
    ``{type}.txt`` and its default decoder reads it as text."""
    check_key(key)
    members = {ext: image}
    if record is not None:
        members["json"] = json.dumps(record, sort_keys=True, ensure_ascii=False, default=str).encode()
    if caption is not None:
        members["txt"] = str(caption).encode()
    if cls is not None:
        members["cls"] = str(int(cls)).encode()
    for name, text in (texts or {}).items():
        if not _TEXT_TYPE.match(name):
            raise ValueError(f"text type {name!r} must match [A-Za-z0-9_]+ (it becomes the member {{key}}.{name}.txt)")
        if text is not None:
            members[f"{name}.txt"] = str(text).encode()
    return members


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = MTIME
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def _open_target(url: str):
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def sidecar_path(tar_url: str) -> str:
    return tar_url[: -len(".tar")] + ".parquet" if tar_url.endswith(".tar") else tar_url + ".parquet"


def write_shard(
    tar_url: str,
    samples: Mapping[str, Mapping[str, bytes | Path] | Path],
    status_rows: Iterable[dict],
) -> None:
    """Write the tar (members sorted, fixed metadata) and its sidecar Parquet to any fsspec URL.

    Both go to ``.tmp`` names first; then an old sidecar is removed (the shard is unfinished
    from here on), the tar is renamed into place and the sidecar last. Member values are bytes
    or local paths, or a sample is the path of its spooled ``.sample`` file (read one at a time, so
    memory stays at one image)."""

    def write_tar(f) -> None:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.GNU_FORMAT) as tar:
            for key in sorted(samples):
                check_key(key)
                members = samples[key]
                if isinstance(members, Path):  # a spooled sample: every member in one file
                    members = read_pack(members)
                for ext in sorted(members):
                    value = members[ext]
                    data = value if isinstance(value, bytes) else Path(value).read_bytes()
                    tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))

    table = status_table(list(status_rows))
    fs, tar_path = _open_target(tar_url)
    side_path = _open_target(sidecar_path(tar_url))[1]
    parent = tar_path.rsplit("/", 1)[0] if "/" in tar_path else ""
    if parent:
        fs.makedirs(parent, exist_ok=True)
    with fs.open(tar_path + ".tmp", "wb") as f:
        write_tar(f)
    with fs.open(side_path + ".tmp", "wb") as f:
        pq.write_table(table, f, compression="zstd")
    if fs.exists(side_path):
        fs.rm(side_path)
    fs.mv(tar_path + ".tmp", tar_path)
    fs.mv(side_path + ".tmp", side_path)


def shard_finished(tar_url: str) -> bool:
    fs, path = _open_target(sidecar_path(tar_url))
    return fs.exists(path) and fs.exists(_open_target(tar_url)[1])


def read_shard(tar_url: str) -> dict[str, dict[str, bytes]]:
    """All samples of a finished shard: key -> extension -> bytes."""
    fs, path = _open_target(tar_url)
    out: dict[str, dict[str, bytes]] = {}
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in tar:
            if not member.isfile():
                continue
            key, ext = member.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return out


def read_status(tar_url: str) -> list[dict]:
    """The sidecar rows of a finished shard as dicts."""
    fs, path = _open_target(sidecar_path(tar_url))
    with fs.open(path, "rb") as f:
        return pq.read_table(f).to_pylist()


class ShardSpool:
    """One unfinished shard on local disk: each finished image's members and its status line, so
    a run killed at any point resumes with the images already done (per image, not per shard).

    An image counts as done once its status line is complete; member files are renamed into
    place before that line is appended, so a kill in between leaves an image that is simply
    fetched again."""

    def __init__(self, directory: str | Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self._status = self.dir / _STATUS_FILE
        self._rows: dict[str, dict] = {}
        self._members: dict[str, Path | dict[str, Path]] = {}
        self._exts: dict[str, list[str]] = {}  # the members of each spooled image
        self._load()

    def _load(self) -> None:
        if not self._status.exists():
            return
        for line in self._status.read_bytes().splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue  # the line being written when the run was killed
            if not isinstance(row, dict) or "key" not in row:
                continue
            exts = row.pop("_members", [])
            if row.pop("_pack", False):  # one file per image: {key}.sample
                pack = self.dir / f"{row['key']}{_PACK}"
                stored: Path | dict[str, Path] | None = pack if pack.exists() else None
            else:  # a file per member (spools of earlier versions)
                paths = {ext: self.dir / f"{row['key']}.{ext}" for ext in exts}
                stored = paths if all(p.exists() for p in paths.values()) else None
            if stored is not None or not exts:
                self._rows[row["key"]] = {k: row.get(k) for k in STATUS_COLUMNS}
                self._members[row["key"]] = stored if exts else {}
                self._exts[row["key"]] = sorted(exts)
        # rewrite cleanly so a torn last line cannot glue onto the next append
        self._rewrite()

    def _rewrite(self) -> None:
        tmp = self._status.with_suffix(".tmp")
        with open(tmp, "wb") as f:
            for key, row in self._rows.items():
                f.write(self._line(row, self._exts.get(key, []), isinstance(self._members.get(key), Path)))
        os.replace(tmp, self._status)

    @staticmethod
    def _line(row: dict, exts: list[str], packed: bool) -> bytes:
        return json.dumps({**row, "_members": exts, **({"_pack": True} if packed else {})},
                          sort_keys=True).encode() + b"\n"

    @property
    def done(self) -> dict[str, dict]:
        """key -> status row of the images already finished in this shard."""
        return self._rows

    def add(self, row: dict, members: Mapping[str, bytes] | None = None) -> None:
        """Record one finished image: its members in one file (``{key}.sample``, written and
        renamed, so a sample with BioCLIP's ten text members costs one file, not fourteen), then
        its status line."""
        key = check_key(row["key"])
        stored: Path | dict = {}
        exts: list[str] = []
        if members:
            stored = self.dir / f"{key}{_PACK}"
            tmp = self.dir / f"{key}{_PACK}.part"
            tmp.write_bytes(pack_members(members))
            os.replace(tmp, stored)
            exts = sorted(members)
        row = {k: row.get(k) for k in STATUS_COLUMNS}
        with open(self._status, "ab") as f:
            f.write(self._line(row, exts, bool(exts)))
        self._rows[key] = row
        self._members[key] = stored
        self._exts[key] = exts

    def discard(self, key: str) -> None:
        """Forget an image (retry_failed redoes it)."""
        self._rows.pop(key, None)
        self._exts.pop(key, None)
        stored = self._members.pop(key, {})
        for path in [stored] if isinstance(stored, Path) else stored.values():
            path.unlink(missing_ok=True)
        self._rewrite()

    def finalise(self, tar_url: str) -> None:
        """Write the shard from the spool, then delete the spool."""
        samples = {key: stored for key, stored in self._members.items() if stored}
        write_shard(tar_url, samples, self._rows.values())
        shutil.rmtree(self.dir, ignore_errors=True)


_PACK = ".sample"
_PACK_HEAD = struct.Struct("<HQ")  # extension length, data length


def pack_members(members: Mapping[str, bytes]) -> bytes:
    """One sample's members as one byte string: per member, ``<u16 ext length><u64 data length>``,
    the extension (UTF-8), the data."""
    parts = []
    for ext, data in members.items():
        name = ext.encode()
        parts += [_PACK_HEAD.pack(len(name), len(data)), name, data]
    return b"".join(parts)


def read_pack(path: Path) -> dict[str, bytes]:
    """The members of a ``{key}.sample`` file written by :func:`pack_members`."""
    data = path.read_bytes()
    out, pos = {}, 0
    while pos < len(data):
        if pos + _PACK_HEAD.size > len(data):
            raise ValueError(f"{path}: cut short in a member header; delete the spool folder to fetch its images again")
        n_name, n_data = _PACK_HEAD.unpack_from(data, pos)
        pos += _PACK_HEAD.size
        name = data[pos:pos + n_name].decode(errors="replace")
        pos += n_name
        if pos + n_data > len(data):
            raise ValueError(f"{path}: cut short in member {name!r}; delete the spool folder to fetch its images again")
        out[name] = data[pos:pos + n_data]
        pos += n_data
    return out
