"""Webdataset shards for the training tests, built from the real camera-trap and IFCB images."""

from __future__ import annotations

import csv
import io
import json
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from schemas import RANKS

TESTS = Path(__file__).resolve().parents[1]
DATA = TESTS / "data"
SHARED = TESTS.parents[0] / ".." / "shared" / "data"
IFCB_PARTS = Path("plankton") / "ifcb_labeled"

# the accepted lineage of each label (GBIF backbone / WoRMS); None where the label stops above that
# rank; "vehicle" is a non-organism negative that knows no rank: the trainer rejects it (lineage_depth)
LINEAGES = json.loads((DATA / "images" / "lineages.json").read_text())
CAMERA_TRAPS = {k: tuple(v) for k, v in LINEAGES["camera_traps"].items()}
IFCB_LABELS = {k: tuple(v) for k, v in LINEAGES["ifcb"].items()}
# the downloader stores resized images; this keeps decode time in the tests small
SHARD_IMAGE_SIDE = 96


def _ifcb_dir() -> Path | None:
    for root in (DATA / IFCB_PARTS, SHARED / IFCB_PARTS):
        if (root / "png").is_dir() and any((root / "png").glob("*.png")):
            return root
    return None


def real_samples() -> list[dict]:
    """(key, jpeg bytes, record) for every real image available: camera traps always, IFCB when present."""
    samples = []
    for name, lineage in CAMERA_TRAPS.items():
        samples.append(
            _sample(
                f"cameratrap_{name}",
                DATA / "images" / "camera_traps" / f"{name}.jpg",
                lineage,
                "cameratrapai",
            )
        )
    root = _ifcb_dir()
    if root is not None:
        labels_csv = next(
            (
                p
                for p in (
                    root / "D20220522T000439_IFCB134_classes.csv",
                    SHARED / IFCB_PARTS / "D20220522T000439_IFCB134_classes.csv",
                )
                if p.exists()
            ),
            None,
        )
        if labels_csv is not None:
            with open(labels_csv, newline="") as fh:
                for row in csv.DictReader(fh):
                    png = root / "png" / row["file_name"]
                    key = "ifcb_" + png.stem.replace(".", "_")
                    samples.append(_sample(key, png, IFCB_LABELS[row["class_name"]], "ifcb"))
    return samples


def _sample(key: str, path: Path, lineage, source: str) -> dict:
    img = Image.open(path).convert("RGB")
    img.thumbnail((SHARD_IMAGE_SIDE, SHARD_IMAGE_SIDE))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=90)
    record = {
        "record_id": key,
        "source": source,
        "identifier": path.name,
        **dict(zip(RANKS, lineage, strict=True)),
    }
    return {"key": key, "jpg": buf.getvalue(), "record": record}


def write_shard(path: Path, samples: list[dict], extra_members: dict[str, bytes] | None = None) -> None:
    """A webdataset tar: ``{key}.cls|jpg|json|txt`` members grouped by key, fixed mtime (no ``.cls``
    for a record without ranks, as in the shards of a URL list)."""
    with tarfile.open(path, "w") as tar:
        for sample in samples:
            record = sample["record"]
            name = record.get("species") or next(
                (v for v in reversed([record.get(r) for r in RANKS]) if v), "unknown"
            )
            members = {
                "cls": b"-1",
                "jpg": sample["jpg"],
                "json": json.dumps(record).encode(),
                "txt": f"a photo of {name}.".encode(),
            }
            if not any(r in record for r in RANKS):
                del members["cls"]
            for suffix, data in members.items():
                _add(tar, f"{sample['key']}.{suffix}", data)
        for name, data in (extra_members or {}).items():
            _add(tar, name, data)


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def url_list_samples(samples: list[dict], prefix: str = "url") -> list[dict]:
    """The samples as a URL-list download shards them: the ``.json`` holds caption, key and url, no taxon."""
    out = []
    for sample in samples:
        key = f"{prefix}_{sample['key']}"
        record = {"caption": sample["key"], "key": key, "url": f"file:///images/{sample['key']}.jpg"}
        out.append({"key": key, "jpg": sample["jpg"], "record": record})
    return out


def write_sidecar(tar_path: Path, ok_keys: list[str], failed_keys: tuple[str, ...] = ()) -> None:
    """The download stage's sidecar of a shard (``key`` and ``status`` columns are what the trainer reads)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    keys = [*ok_keys, *failed_keys]
    statuses = ["ok"] * len(ok_keys) + ["failed"] * len(failed_keys)
    pq.write_table(pa.table({"key": keys, "status": statuses}), tar_path.with_suffix(".parquet"))


@pytest.fixture(scope="session")
def samples() -> list[dict]:
    return real_samples()


@pytest.fixture(scope="session")
def shards_dir(tmp_path_factory, samples) -> Path:
    """train-000000 (camera traps), train-000001 (IFCB, when present), val-000000 (every image again)."""
    root = tmp_path_factory.mktemp("shards")
    cameras = [s for s in samples if s["key"].startswith("cameratrap_")]
    plankton = [s for s in samples if s["key"].startswith("ifcb_")]
    write_shard(root / "train-000000.tar", cameras)
    if plankton:
        write_shard(root / "train-000001.tar", plankton)
    write_shard(root / "val-000000.tar", samples)
    return root


@pytest.fixture(scope="session")
def shard_writer():
    """``write_shard(path, samples, extra_members)`` for tests that build their own (broken) shards."""
    return write_shard
