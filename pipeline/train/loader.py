"""Streaming training input: per-rank class maps from the curated taxa, Pillow/numpy augmentations and
webdataset loaders (shuffle buffer, workers, shard resampling) that yield uint8 image batches.

Everything above ``make_train_loader`` works without torch (the benchmark's plain loop and the
class-map code use it); torch and the DataLoader are imported inside the loader builders.
"""

from __future__ import annotations

import collections
import io
import json
import math
import os
import random
import re
import tarfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from schemas import RANKS, Reason
from shards import status

IMAGE_MEMBERS: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
# ImageNet statistics: the usual choice for a CNN trained from scratch on natural images too
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)
IGNORE = -1
# a tar ends with all-zero 512-byte blocks; tarfile stops quietly at any header it cannot read
END_OF_ARCHIVE = bytes(tarfile.BLOCKSIZE)
# webdataset's skip_meta: members such as __index__ are not samples
META_MEMBER = re.compile(r"__[^/]*__($|/)")
UNLABELLED = "its .json names no taxon at any rank (an unlabelled sample, as from a URL-list download)"


class ShardFormatError(ValueError):
    """A shard folder or a shard's contents cannot be used for training."""


# ---------------------------------------------------------------------------------------------
# shards and class maps


def discover_shards(shards_dir: str | Path) -> dict[str, list[str]]:
    """Map split name -> sorted shard paths for the ``{split}-{n:06d}.tar`` files in ``shards_dir``."""
    root = Path(shards_dir)
    if not root.is_dir():
        raise ShardFormatError(f"shard folder {root} does not exist")
    splits: dict[str, list[str]] = {}
    for path in sorted(root.glob("*.tar")):
        split, sep, number = path.stem.rpartition("-")
        if not sep or not number.isdigit():
            continue
        splits.setdefault(split, []).append(str(path))
    return splits


def _blank(value) -> bool:
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and not value.strip())
    )


def rank_values(record: Mapping) -> list[str | None]:
    """The 7 rank names of a shard ``.json`` record (``class`` may also be spelt ``class_``); blanks are None."""
    values = []
    for rank in RANKS:
        value = record.get(rank, record.get("class_")) if rank == "class" else record.get(rank)
        values.append(None if _blank(value) else str(value).strip())
    return values


def lineage_keys(values: Sequence[str | None]) -> list[str | None]:
    """Class key per rank: the lineage from kingdom down to that rank joined by ``|``, None where unknown.

    Keying on the lineage rather than the bare name keeps homonyms (a genus name used in two
    kingdoms) apart as two classes.
    """
    keys: list[str | None] = []
    for i, value in enumerate(values):
        keys.append(None if value is None else "|".join(v or "" for v in values[: i + 1]))
    return keys


@dataclass(frozen=True)
class ClassMaps:
    """Per-rank class lists; a class index is a position in its rank's sorted tuple of lineage keys."""

    classes: dict[str, tuple[str, ...]]
    _index: dict[str, dict[str, int]] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_index", {r: {k: i for i, k in enumerate(self.classes[r])} for r in RANKS})

    @classmethod
    def from_lineages(cls, lineages: Iterable[Sequence[str | None]]) -> ClassMaps:
        found: dict[str, set[str]] = {rank: set() for rank in RANKS}
        for values in lineages:
            for rank, key in zip(RANKS, lineage_keys(values), strict=True):
                if key is not None:
                    found[rank].add(key)
        return cls({rank: tuple(sorted(keys)) for rank, keys in found.items()})

    @classmethod
    def from_dict(cls, data: Mapping[str, Sequence[str]]) -> ClassMaps:
        return cls({rank: tuple(data.get(rank, ())) for rank in RANKS})

    def to_dict(self) -> dict[str, list[str]]:
        return {rank: list(keys) for rank, keys in self.classes.items()}

    def num_classes(self) -> dict[str, int]:
        return {rank: len(self.classes[rank]) for rank in RANKS}

    def targets(self, record: Mapping) -> list[int]:
        """Class index per rank for one record; -1 (ignored by the loss) where the rank is unknown."""
        keys = lineage_keys(rank_values(record))
        return [
            IGNORE if key is None else self._index[rank].get(key, IGNORE)
            for rank, key in zip(RANKS, keys, strict=True)
        ]

    def name(self, rank: str, index: int) -> str:
        """The taxon name (last lineage element) of a class."""
        return self.classes[rank][index].rsplit("|", 1)[-1]


@dataclass
class ShardScan:
    """What one pass over the shards found, per split: ``samples`` (every sample in the tars),
    ``used`` (those the model learns from or is scored on: an image and a ``.json`` naming a taxon at
    some rank, not set aside as a duplicate), ``excluded`` (set aside by the post-download dedup)
    and ``rejected`` (reason -> count; samples = used + excluded + rejected); the lineages of the
    used samples; a reject (reason, detail) per rejected sample key."""

    samples: dict[str, int]
    lineages: set[tuple[str | None, ...]]
    used: dict[str, int] = field(default_factory=dict)
    excluded: dict[str, int] = field(default_factory=dict)
    rejected: dict[str, collections.Counter] = field(default_factory=dict)
    rejects: dict[str, tuple[str, str]] = field(default_factory=dict)

    def counts(self, split: str) -> dict:
        """The accounting of one split, for the metrics: samples = used + excluded + rejected."""
        return {
            "samples": self.samples.get(split, 0),
            "used": self.used.get(split, 0),
            "excluded_duplicates": self.excluded.get(split, 0),
            "rejected": dict(sorted(self.rejected.get(split, {}).items())),
        }


def _sample_key(member_name: str) -> tuple[str, str]:
    # webdataset convention: the key ends at the first dot of the file name
    directory, _, base = member_name.rpartition("/")
    key, _, suffix = base.partition(".")
    return (f"{directory}/{key}" if directory else key), suffix.lower()


def damaged_shard(path: str | Path, what: str) -> ShardFormatError:
    """The error for a shard whose tar is cut short or damaged, saying how to get it again."""
    tar = Path(path)
    return ShardFormatError(
        f"shard {tar} is truncated or damaged: {what}. Download it again: move {tar.name} and its sidecar "
        f"{tar.with_suffix('.parquet').name} aside (or delete both) and run `biocorpus download` again with the "
        "same input (the same --urls for a URL list); only that shard is fetched again (--retry-failed does not "
        "do it: the sidecar lists its images as downloaded)"
    )


def shard_members(tar: tarfile.TarFile, path: str | Path) -> Iterator[tarfile.TarInfo]:
    """Every member of an open shard (tarfile's seekable mode), then a check that the archive ends
    with its end-of-archive block.

    tarfile's own iteration ends quietly at a header it cannot read (a file cut inside a header, a
    damaged block), so a truncated shard would pass for a shorter one: here that, and a member whose
    data is cut short, raises ShardFormatError.
    """
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:  # the previous member's data ends past the end of the file
            raise damaged_shard(
                path, f"{exc} (a member runs past the end of the file, at {os.path.getsize(path):,} bytes)"
            ) from exc
        if member is None:
            break
        tar.members.clear()  # a shard's members are read once, in order: do not hold them all
        yield member
    tar.fileobj.seek(tar.offset)
    if tar.fileobj.read(len(END_OF_ARCHIVE)) != END_OF_ARCHIVE:
        raise damaged_shard(
            path, f"no readable tar header or end-of-archive block at byte {tar.offset:,} of {os.path.getsize(path):,}"
        )


def read_member(tar: tarfile.TarFile, member: tarfile.TarInfo, path: str | Path) -> bytes:
    """A member's bytes; a short read (the data cut off) raises ShardFormatError."""
    try:
        return tar.extractfile(member).read()
    except tarfile.TarError as exc:
        raise damaged_shard(path, f"member {member.name}: {exc}") from exc


def _open_tar(path: str | Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path)
    except tarfile.TarError as exc:
        raise ShardFormatError(f"{path}: not a readable tar file ({exc})") from exc


def _sidecar_ok_keys(path: str | Path) -> set[str] | None:
    """The keys the shard's sidecar (``{shard}.parquet`` of the download stage) lists as downloaded,
    or None when there is no sidecar with ``key`` and ``status`` columns (shards made elsewhere)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    sidecar = Path(path).with_suffix(".parquet")
    if not sidecar.is_file():
        return None
    try:
        if not {"key", "status"} <= set(pq.read_schema(sidecar).names):
            return None
        table = pq.read_table(sidecar, columns=["key", "status"])
    except (OSError, ValueError) as exc:
        raise damaged_shard(path, f"its sidecar {sidecar.name} cannot be read ({exc})") from exc
    return set(table.filter(pc.equal(table.column("status"), status.OK)).column("key").to_pylist())


def _lineage_of(data: bytes) -> tuple[str | None, ...] | str:
    """The 7 rank values of a ``.json`` member, or what is wrong with it."""
    try:
        record = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        return f"bad .json member ({exc})"
    return tuple(rank_values(record)) if isinstance(record, dict) else "bad .json member (not a JSON object)"


def index_shard(path: str, read_records: bool = True) -> dict[str, list]:
    """key -> [has an image member, lineage | problem | None (no ``.json``)] for the samples of one
    shard (lineages only with ``read_records``), once the shard is known to be whole: its tar reads to
    the end-of-archive block and holds every image its sidecar lists as downloaded (a shard cut
    short, or damaged, raises ShardFormatError rather than reading as a smaller one)."""
    index: dict[str, list] = {}
    with _open_tar(path) as tar:
        for member in shard_members(tar, path):
            if not member.isfile() or META_MEMBER.match(member.name):
                continue
            key, suffix = _sample_key(member.name)
            entry = index.setdefault(key, [False, None])
            if suffix in IMAGE_MEMBERS:
                entry[0] = True
            elif suffix == "json" and read_records:
                entry[1] = _lineage_of(read_member(tar, member, path))
    listed = _sidecar_ok_keys(path)
    if listed:
        missing = sorted(k for k in listed if not index.get(k, (False,))[0])
        if missing:
            shown = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            raise damaged_shard(
                path,
                f"it holds {len(listed) - len(missing):,} of the {len(listed):,} images its sidecar lists as "
                f"downloaded (missing: {shown})",
            )
    return index


def check_shards(paths: Iterable[str]) -> None:
    """Raise ShardFormatError for the first shard of ``paths`` that is cut short or damaged
    (``index_shard`` without reading the ``.json`` members)."""
    for path in paths:
        index_shard(path, read_records=False)


def _problem(path: str, key: str, has_image: bool, lineage) -> tuple[str, str] | None:
    """(reason, detail) when a sample cannot be trained on; the details are the loader's own."""
    where = f"{path}:{key}"
    if not has_image:
        return Reason.NO_IMAGE, f"{where}: no image member ({'/'.join(IMAGE_MEMBERS)})"
    if lineage is None:
        return Reason.MALFORMED_ROW, f"{where}: no .json member with the taxon"
    if isinstance(lineage, str):
        return Reason.MALFORMED_ROW, f"{where}: {lineage}"
    if all(value is None for value in lineage):
        return Reason.LINEAGE_DEPTH, f"{where}: {UNLABELLED}"
    return None


def scan_shards(shards: Mapping[str, Sequence[str]], exclude: frozenset[str] = frozenset()) -> ShardScan:
    """Check every shard is whole (``index_shard``), count its samples and collect the lineages of
    the usable ones from the ``.json`` members (images are not read).

    Samples without an image, without a readable ``.json`` or whose ``.json`` names no taxon at any
    rank become rejects; ``exclude`` (the post-download duplicates) are counted apart.
    """
    scan = ShardScan({}, set())
    for split, paths in shards.items():
        samples = used = excluded = 0
        rejected: collections.Counter = collections.Counter()
        for path in paths:
            for key, (has_image, lineage) in index_shard(path).items():
                samples += 1
                if key in exclude:
                    excluded += 1
                    continue
                problem = _problem(path, key, has_image, lineage)
                if problem is not None:
                    rejected[str(problem[0])] += 1
                    scan.rejects.setdefault(key, (str(problem[0]), problem[1]))
                    continue
                used += 1
                scan.lineages.add(lineage)
        scan.samples[split], scan.used[split], scan.excluded[split] = samples, used, excluded
        scan.rejected[split] = rejected
    return scan


def class_maps_from_taxa(path: str | Path) -> ClassMaps:
    """Class maps from a taxa table (Parquet or CSV) with the 7 rank columns, e.g. the curated taxa."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    path = Path(path)
    table = pacsv.read_csv(path) if path.suffix.lower() in (".csv", ".tsv") else pq.read_table(path)
    if "class" not in table.column_names and "class_" in table.column_names:
        table = table.rename_columns(["class" if c == "class_" else c for c in table.column_names])
    missing = [rank for rank in RANKS if rank not in table.column_names]
    if missing:
        raise ShardFormatError(f"taxa table {path} lacks rank columns {missing}")
    rows = table.select(list(RANKS)).to_pylist()
    return ClassMaps.from_lineages(rank_values(row) for row in rows)


# ---------------------------------------------------------------------------------------------
# images and augmentations (Pillow + numpy: there is no CPU torchvision here)


def open_image(data: bytes, min_side: int) -> Image.Image:
    """Decode to RGB; JPEGs decode in draft mode at the smallest 1/2^k scale that keeps ``min_side``."""
    img = Image.open(io.BytesIO(data))
    if img.format == "JPEG":
        # draft keeps both sides >= the requested size, so a crop of the shorter side still has min_side pixels
        img.draft("RGB", (min_side, min_side))
    return img.convert("RGB")


def random_resized_crop_box(
    width: int,
    height: int,
    rng: np.random.Generator,
    scale: tuple[float, float] = (0.35, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[float, float, float, float]:
    """A crop box (x0, y0, x1, y1) inside the image covering ``scale`` of its area at an aspect in ``ratio``.

    Falls back to the largest centred box of the clamped aspect after 10 tries, like torchvision.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = math.sqrt(target * aspect)
        h = math.sqrt(target / aspect)
        if 0 < w <= width and 0 < h <= height:
            x0 = rng.uniform(0, width - w)
            y0 = rng.uniform(0, height - h)
            return (x0, y0, x0 + w, y0 + h)
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, width / aspect) if width / height < aspect else (height * aspect, height)
    w, h = min(w, width), min(h, height)
    x0, y0 = (width - w) / 2, (height - h) / 2
    return (x0, y0, x0 + w, y0 + h)


def center_square_box(width: int, height: int) -> tuple[float, float, float, float]:
    """The centred square of side min(width, height)."""
    side = min(width, height)
    x0, y0 = (width - side) / 2, (height - side) / 2
    return (x0, y0, x0 + side, y0 + side)


def colour_jitter(img: Image.Image, rng: np.random.Generator, strength: float = 0.2) -> Image.Image:
    """Light brightness, contrast and saturation jitter, each factor drawn in 1 ± ``strength``.

    Pillow's ImageEnhance blends in C on uint8, about 4x faster than the same arithmetic in numpy floats.
    """
    brightness, contrast, saturation = rng.uniform(1 - strength, 1 + strength, size=3)
    img = ImageEnhance.Brightness(img).enhance(brightness)
    img = ImageEnhance.Contrast(img).enhance(contrast)
    return ImageEnhance.Color(img).enhance(saturation)


def train_transform(img: Image.Image, size: int, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop, horizontal flip, light colour jitter -> HWC uint8 (normalised later on the device)."""
    box = random_resized_crop_box(img.width, img.height, rng)
    img = img.resize((size, size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return np.asarray(colour_jitter(img, rng))


def eval_transform(img: Image.Image, size: int) -> np.ndarray:
    """Centre square crop resized to ``size`` -> HWC uint8 (deterministic)."""
    box = center_square_box(img.width, img.height)
    return np.asarray(img.resize((size, size), Image.Resampling.BILINEAR, box=box))


def normalise_batch(images, device, channels_last: bool = False):
    """uint8 NHWC batch -> float32 NCHW on ``device``, standardised with the ImageNet mean and std.

    Batches travel as uint8 (4x less than float32 through worker queues and to the GPU) and are
    normalised on the device. NHWC permuted to NCHW is already channels-last in memory; on CPU it
    is made contiguous.
    """
    import torch

    # arithmetic on the contiguous NHWC layout (channel = last axis) is several times faster than
    # on the permuted view; the permute afterwards is free
    images = images.to(device, non_blocking=True).float()
    images.sub_(torch.as_tensor(MEAN * 255.0, device=images.device))
    images.mul_(torch.as_tensor(1.0 / (STD * 255.0), device=images.device))
    images = images.permute(0, 3, 1, 2)
    return images if channels_last else images.contiguous()


# ---------------------------------------------------------------------------------------------
# webdataset pipeline stages


def shard_samples(src: Iterator[dict]) -> Iterator[dict]:
    """The samples of each shard ``{"url": path}`` of ``src`` as webdataset's ``tarfile_to_samples``
    gives them (``__key__``, ``__url__``, member bytes by lowercased suffix), except that a shard cut
    short or damaged raises ShardFormatError (``shard_members``) instead of ending early."""
    from webdataset.tariterators import group_by_keys

    return group_by_keys(_shard_files(src))


def _shard_files(src: Iterator[dict]) -> Iterator[dict]:
    for item in src:
        url = item["url"]
        with _open_tar(url) as tar:
            for member in shard_members(tar, url):
                if member.isreg() and not META_MEMBER.match(member.name):
                    yield {"fname": member.name, "data": read_member(tar, member, url), "__url__": url}
        yield {}  # end of shard: group_by_keys never joins samples of two shards


@dataclass(frozen=True)
class Skipped:
    """A sample the loader could not use, carried to the training loop to become a reject row."""

    key: str
    reason: str
    detail: str


@dataclass(frozen=True)
class SampleDecoder:
    """Turn a raw webdataset sample (member bytes by suffix) into (key, HWC uint8 image, per-rank targets)."""

    class_maps: ClassMaps
    image_size: int
    augment: bool

    def __call__(self, sample: Mapping, rng: np.random.Generator):
        key = sample.get("__key__", "?")
        where = f"{sample.get('__url__', '?')}:{key}"
        data = next((sample[m] for m in IMAGE_MEMBERS if m in sample), None)
        if data is None:
            return Skipped(key, Reason.NO_IMAGE, f"{where}: no image member ({'/'.join(IMAGE_MEMBERS)})")
        if "json" not in sample:
            return Skipped(key, Reason.MALFORMED_ROW, f"{where}: no .json member with the taxon")
        try:
            record = json.loads(sample["json"])
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except (ValueError, UnicodeDecodeError) as exc:
            return Skipped(key, Reason.MALFORMED_ROW, f"{where}: bad .json member ({exc})")
        if all(value is None for value in rank_values(record)):
            # every head would ignore it: it would fill a batch and teach nothing
            return Skipped(key, Reason.LINEAGE_DEPTH, f"{where}: {UNLABELLED}")
        try:
            img = open_image(data, self.image_size * 2 if self.augment else self.image_size)
            pixels = (
                train_transform(img, self.image_size, rng)
                if self.augment
                else eval_transform(img, self.image_size)
            )
        except (OSError, ValueError, Image.DecompressionBombError) as exc:
            return Skipped(key, Reason.CORRUPT_IMAGE, f"{where}: {exc}")
        return key, pixels, np.asarray(self.class_maps.targets(record), dtype=np.int64)


def _worker_seed() -> int:
    import webdataset as wds

    return wds.utils.pytorch_worker_seed()


def _mix(*values: int) -> int:
    import webdataset as wds

    return wds.utils.make_seed(*values)


def buffer_shuffle(src: Iterator, bufsize: int, seed: int) -> Iterator:
    """Streaming shuffle through a buffer of ``bufsize`` samples, seeded per worker and epoch."""
    rng = random.Random(_mix(seed, _worker_seed()))
    buf: list = []
    for sample in src:
        if len(buf) < bufsize:
            buf.append(sample)
            continue
        i = rng.randrange(len(buf))
        buf[i], sample = sample, buf[i]
        yield sample
    rng.shuffle(buf)
    yield from buf


def decode_samples(src: Iterator, decoder: SampleDecoder, seed: int) -> Iterator:
    """Apply ``decoder`` with one augmentation generator per worker and epoch (deterministic order)."""
    rng = np.random.default_rng([seed & 0x7FFFFFFF, _worker_seed()])
    for sample in src:
        yield decoder(sample, rng)


def batch_samples(src: Iterator, batch_size: int) -> Iterator[dict]:
    """Group decoded samples into batches of ``batch_size`` images; skipped samples ride along in ``skipped``."""
    keys: list[str] = []
    images: list[np.ndarray] = []
    targets: list[np.ndarray] = []
    skipped: list[Skipped] = []
    for item in src:
        if isinstance(item, Skipped):
            skipped.append(item)
            continue
        keys.append(item[0])
        images.append(item[1])
        targets.append(item[2])
        if len(images) == batch_size:
            yield _collate(keys, images, targets, skipped)
            keys, images, targets, skipped = [], [], [], []
    if images or skipped:
        yield _collate(keys, images, targets, skipped)


def _collate(keys, images, targets, skipped) -> dict:
    import torch

    if images:
        image_tensor = torch.from_numpy(np.stack(images))
        target_tensor = torch.from_numpy(np.stack(targets))
    else:
        image_tensor = torch.empty((0, 0, 0, 3), dtype=torch.uint8)
        target_tensor = torch.empty((0, len(RANKS)), dtype=torch.int64)
    return {"keys": keys, "images": image_tensor, "targets": target_tensor, "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# loaders


@dataclass(frozen=True)
class LoaderSettings:
    """The loader-relevant subset of the stage options."""

    batch_size: int
    image_size: int
    shuffle_buffer: int = 1000
    workers: int = 2
    augment: bool = True
    seed: int = 0
    pin_memory: bool = False
    # keys the curate stage found to be duplicates after download (shards/_duplicates.json)
    exclude: frozenset[str] = frozenset()


@dataclass(frozen=True)
class _not_excluded:  # noqa: N801 - a picklable predicate for webdataset's select
    keys: frozenset[str]

    def __call__(self, sample: Mapping) -> bool:
        return sample.get("__key__") not in self.keys


def load_exclusions(shards_dir: str | Path) -> frozenset[str]:
    """Keys listed in ``<shards>/_duplicates.json`` by the post-download dedup (empty when absent)."""
    path = Path(shards_dir) / "_duplicates.json"
    if not path.is_file():
        return frozenset()
    return frozenset(json.loads(path.read_text()).get("keys", []))


def _web_loader(pipeline, workers: int, settings: LoaderSettings):
    import torch
    import webdataset as wds

    return wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        pin_memory=settings.pin_memory,
        generator=torch.Generator().manual_seed(settings.seed),
    )


def make_train_loader(
    urls: Sequence[str], class_maps: ClassMaps, settings: LoaderSettings, epoch: int, batches: int
):
    """An epoch of ``batches`` batches, resampling shards with replacement (seeded by seed and epoch).

    Each worker draws its own shard sequence, so an epoch sees about one train split's worth of
    samples; a new loader per epoch keeps every epoch's order reproducible.
    """
    import webdataset as wds

    seed = _mix(settings.seed, epoch)
    decoder = SampleDecoder(class_maps, settings.image_size, settings.augment)
    pipeline = wds.DataPipeline(
        wds.ResampledShards(list(urls), seed=seed, worker_seed=_worker_seed, deterministic=True),
        shard_samples,
        wds.select(_not_excluded(settings.exclude)),
        wds.pipelinefilter(buffer_shuffle)(settings.shuffle_buffer, seed),
        wds.pipelinefilter(decode_samples)(decoder, seed),
        wds.pipelinefilter(batch_samples)(settings.batch_size),
    )
    return _web_loader(pipeline, settings.workers, settings).with_epoch(batches)


def make_eval_loader(urls: Sequence[str], class_maps: ClassMaps, settings: LoaderSettings):
    """Every sample of ``urls`` exactly once, untransformed but for the centre crop (shards split by worker)."""
    import webdataset as wds

    decoder = SampleDecoder(class_maps, settings.image_size, augment=False)
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(list(urls)),
        wds.split_by_worker,
        shard_samples,
        wds.select(_not_excluded(settings.exclude)),
        wds.pipelinefilter(decode_samples)(decoder, settings.seed),
        wds.pipelinefilter(batch_samples)(settings.batch_size),
    )
    return _web_loader(pipeline, min(settings.workers, len(urls)), settings)
