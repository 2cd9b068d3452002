"""Class maps, augmentations and the webdataset loaders over shards of real images."""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

torch = pytest.importorskip("torch")

from pipeline.train.loader import (  # noqa: E402
    MEAN,
    STD,
    ClassMaps,
    LoaderSettings,
    ShardFormatError,
    class_maps_from_taxa,
    colour_jitter,
    discover_shards,
    eval_transform,
    lineage_keys,
    make_eval_loader,
    make_train_loader,
    normalise_batch,
    random_resized_crop_box,
    rank_values,
    scan_shards,
    train_transform,
)
from schemas import RANKS  # noqa: E402
from tests.train.conftest import write_sidecar  # noqa: E402

pytestmark = pytest.mark.train


@pytest.fixture(scope="module")
def class_maps(shards_dir):
    return ClassMaps.from_lineages(scan_shards(discover_shards(shards_dir)).lineages)


def test_discover_shards_groups_by_split(shards_dir, samples):
    shards = discover_shards(shards_dir)
    assert set(shards) == {"train", "val"}
    assert [p.rsplit("/", 1)[-1] for p in shards["val"]] == ["val-000000.tar"]
    scan = scan_shards(shards)
    assert scan.samples["val"] == len(samples) == scan.samples["train"]


def test_missing_shard_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ShardFormatError, match="does not exist"):
        discover_shards(tmp_path / "nope")


def test_class_maps_from_real_lineages(class_maps, samples):
    assert {class_maps.name("kingdom", i) for i in range(len(class_maps.classes["kingdom"]))} >= {"Animalia"}
    by_key = {s["key"]: s["record"] for s in samples}
    # the non-organism negative knows no rank: every head ignores it
    assert class_maps.targets(by_key["cameratrap_vehicle"]) == [-1] * 7
    ocelot = class_maps.targets(by_key["cameratrap_ocelot"])
    assert all(i >= 0 for i in ocelot)
    assert class_maps.name("species", ocelot[-1]) == "Leopardus pardalis"
    bear = class_maps.targets(by_key["cameratrap_american_black_bear"])
    assert bear[:4] == ocelot[:4] and bear[4] != ocelot[4]  # same order Carnivora, other family
    species = {class_maps.name("species", i) for i in range(len(class_maps.classes["species"]))}
    assert "Bos taurus" in species and None not in species


def test_partial_lineages_ignore_the_unknown_ranks(class_maps, samples):
    by_key = {s["record"].get("genus"): s["record"] for s in samples}
    if "Strombidium" not in by_key:
        pytest.skip("IFCB sample not available")
    strombidium = class_maps.targets(by_key["Strombidium"])
    assert all(i >= 0 for i in strombidium[:6]) and strombidium[6] == -1
    ciliophora = next(
        s["record"] for s in samples if s["record"]["phylum"] == "Ciliophora" and s["record"]["class"] is None
    )
    assert [i >= 0 for i in class_maps.targets(ciliophora)] == [True, True] + [False] * 5


def test_homonyms_in_two_kingdoms_are_two_classes():
    # "Morus" is a plant genus (mulberry) and a bird genus (gannets)
    plant = ("Plantae", "Tracheophyta", "Magnoliopsida", "Rosales", "Moraceae", "Morus", "Morus alba")
    bird = ("Animalia", "Chordata", "Aves", "Suliformes", "Sulidae", "Morus", "Morus bassanus")
    maps = ClassMaps.from_lineages([plant, bird])
    assert len(maps.classes["genus"]) == 2
    assert (
        maps.targets(dict(zip(RANKS, plant, strict=True)))[5]
        != maps.targets(dict(zip(RANKS, bird, strict=True)))[5]
    )


@pytest.mark.parametrize(
    "record, expected",
    [
        ({"kingdom": "Animalia", "class": "Aves"}, ["Animalia", None, "Aves", None, None, None, None]),
        (
            {"kingdom": " Animalia ", "class_": "Aves", "order": ""},
            ["Animalia", None, "Aves", None, None, None, None],
        ),
        ({"kingdom": float("nan")}, [None] * 7),
    ],
    ids=["class-column", "class_-alias-and-blanks", "nan"],
)
def test_rank_values(record, expected):
    assert rank_values(record) == expected


def test_lineage_keys_keep_the_path():
    assert lineage_keys(["A", None, "C", None, None, None, None])[:3] == ["A", None, "A||C"]


def test_class_maps_round_trip_and_taxa_table(tmp_path, class_maps):
    import pyarrow as pa
    import pyarrow.parquet as pq

    assert ClassMaps.from_dict(class_maps.to_dict()) == class_maps
    rows = [
        dict(
            zip(
                RANKS,
                (
                    "Animalia",
                    "Chordata",
                    "Mammalia",
                    "Carnivora",
                    "Felidae",
                    "Leopardus",
                    "Leopardus pardalis",
                ),
                strict=True,
            )
        )
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "taxa.parquet")
    maps = class_maps_from_taxa(tmp_path / "taxa.parquet")
    assert maps.num_classes() == dict.fromkeys(RANKS, 1)
    pq.write_table(pa.table({"kingdom": ["Animalia"]}), tmp_path / "bad.parquet")
    with pytest.raises(ShardFormatError, match="lacks rank columns"):
        class_maps_from_taxa(tmp_path / "bad.parquet")


@given(
    width=st.integers(1, 4000),
    height=st.integers(1, 4000),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_resized_crop_box_stays_inside(width, height, seed):
    x0, y0, x1, y1 = random_resized_crop_box(width, height, np.random.default_rng(seed))
    assert 0 <= x0 < x1 <= width + 1e-6
    assert 0 <= y0 < y1 <= height + 1e-6
    area = (x1 - x0) * (y1 - y0)
    assert area <= width * height + 1e-6


def test_transforms_on_a_real_image(samples):
    img = Image.open(io.BytesIO(samples[0]["jpg"])).convert("RGB")
    a = train_transform(img, 40, np.random.default_rng(7))
    b = train_transform(img, 40, np.random.default_rng(7))
    c = train_transform(img, 40, np.random.default_rng(8))
    assert a.shape == (40, 40, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    e = eval_transform(img, 40)
    assert e.shape == (40, 40, 3) and np.array_equal(e, eval_transform(img, 40))
    flipped = eval_transform(img.transpose(Image.Transpose.FLIP_LEFT_RIGHT), 40)
    assert np.abs(flipped.astype(int) - e[:, ::-1].astype(int)).mean() < 2


def test_colour_jitter_is_light():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, size=(16, 16, 3), dtype=np.uint8))
    assert np.array_equal(
        np.asarray(colour_jitter(img, np.random.default_rng(0), strength=0.0)), np.asarray(img)
    )
    jittered = np.asarray(colour_jitter(img, np.random.default_rng(0))).astype(int)
    diff = np.abs(jittered - np.asarray(img).astype(int))
    assert diff.max() > 0 and diff.mean() < 0.25 * 255


def test_normalise_batch_standardises_on_the_device():
    grey = torch.from_numpy(np.broadcast_to(np.round(MEAN * 255).astype(np.uint8), (2, 4, 5, 3)).copy())
    out = normalise_batch(grey, torch.device("cpu"))
    assert out.shape == (2, 3, 4, 5) and out.dtype == torch.float32 and out.is_contiguous()
    assert out.abs().max() < 0.01
    last = normalise_batch(grey, torch.device("cpu"), channels_last=True)
    assert last.is_contiguous(memory_format=torch.channels_last) and torch.equal(last, out)
    white = normalise_batch(torch.full((1, 1, 1, 3), 255, dtype=torch.uint8), torch.device("cpu"))
    assert torch.allclose(white.flatten(), torch.from_numpy((1 - MEAN) / STD))


def _keys(loader) -> list[str]:
    return [k for batch in loader for k in batch["keys"]]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
def test_eval_loader_yields_every_sample_once(shards_dir, class_maps, workers):
    shards = discover_shards(shards_dir)
    settings = LoaderSettings(batch_size=4, image_size=32, workers=workers)
    batches = list(make_eval_loader(shards["train"], class_maps, settings))
    keys = [k for b in batches for k in b["keys"]]
    # the vehicle knows no rank: it would teach nothing, so it is skipped with a reason
    assert sorted(keys) == sorted(k for k in _all_keys(shards_dir) if k != "cameratrap_vehicle")
    assert [(s.key, s.reason) for b in batches for s in b["skipped"]] == [("cameratrap_vehicle", "lineage_depth")]
    first = batches[0]
    assert first["images"].shape[1:] == (32, 32, 3) and first["images"].dtype == torch.uint8
    assert first["targets"].shape == (len(first["keys"]), 7) and first["targets"].dtype == torch.int64


def _all_keys(shards_dir):
    import tarfile

    with tarfile.open(shards_dir / "val-000000.tar") as tar:
        return sorted({m.name.split(".", 1)[0] for m in tar})


def test_train_loader_resamples_reproducibly(shards_dir, class_maps):
    urls = discover_shards(shards_dir)["train"]
    settings = LoaderSettings(batch_size=3, image_size=32, workers=2, shuffle_buffer=8, seed=5)
    epoch0 = _keys(make_train_loader(urls, class_maps, settings, epoch=0, batches=6))
    again = _keys(make_train_loader(urls, class_maps, settings, epoch=0, batches=6))
    epoch1 = _keys(make_train_loader(urls, class_maps, settings, epoch=1, batches=6))
    assert len(epoch0) == 18
    assert epoch0 == again
    assert epoch0 != epoch1
    # resampling draws shards with replacement: over a few epochs every training sample turns up
    seen = collections.Counter(epoch0 + epoch1 + _keys(make_train_loader(urls, class_maps, settings, 2, 6)))
    assert set(seen) <= set(_all_keys(shards_dir))
    assert len(seen) >= len(set(_all_keys(shards_dir))) - 2


def test_scan_accounts_for_every_sample(shards_dir, samples):
    """samples = used + excluded + rejected, per split; unlabelled samples are rejects, not samples to train on."""
    shards = discover_shards(shards_dir)
    scan = scan_shards(shards, exclude=frozenset({"cameratrap_ocelot"}))
    for split in shards:
        counts = scan.counts(split)
        assert counts["samples"] == len(samples)
        assert counts["used"] + counts["excluded_duplicates"] + sum(counts["rejected"].values()) == counts["samples"]
        assert counts == {"samples": len(samples), "used": len(samples) - 2, "excluded_duplicates": 1,
                          "rejected": {"lineage_depth": 1}}
    assert scan.rejects["cameratrap_vehicle"][0] == "lineage_depth"
    assert "Leopardus pardalis" not in {lineage[-1] for lineage in scan.lineages}  # only the excluded ocelot has it


def _member_offsets(path) -> list[tuple[int, int, int]]:
    import tarfile

    with tarfile.open(path) as tar:
        return [(m.offset, m.offset_data, m.size) for m in tar.getmembers()]


def _cut(shards_dir, tmp_path, where: str):
    """A copy of the camera-trap shard cut short: inside a header, inside a member's data, or
    exactly between two members (no end-of-archive block)."""
    import shutil

    shard = tmp_path / "train-000000.tar"
    shutil.copy(shards_dir / "train-000000.tar", shard)
    offsets = _member_offsets(shard)
    header, data, size = offsets[len(offsets) // 2]
    size_at = {"in-a-header": header + 100, "in-member-data": data + size // 2, "between-members": header}[where]
    with open(shard, "r+b") as fh:
        fh.truncate(size_at)
    return shard


@pytest.mark.parametrize("where", ["in-a-header", "in-member-data", "between-members"])
def test_a_truncated_shard_is_an_error_not_a_shorter_shard(shards_dir, tmp_path, class_maps, where):
    """tarfile, and webdataset's reader over it, end quietly at a header they cannot read: a shard
    cut short read as half a shard, and training went on with the other half missing."""
    shard = _cut(shards_dir, tmp_path, where)
    with pytest.raises(ShardFormatError, match=r"train-000000\.tar is truncated or damaged.*biocorpus download"):
        scan_shards({"train": [str(shard)]})
    settings = LoaderSettings(batch_size=2, image_size=32, workers=0)
    with pytest.raises(ShardFormatError, match="truncated or damaged"):
        list(make_eval_loader([str(shard)], class_maps, settings))
    with pytest.raises(ShardFormatError, match="truncated or damaged"):
        _keys(make_train_loader([str(shard)], class_maps, settings, epoch=0, batches=50))


def test_a_shard_missing_images_its_sidecar_lists_is_an_error(tmp_path, samples, shard_writer):
    cameras = [s for s in samples if s["key"].startswith("cameratrap_")]
    shard = tmp_path / "train-000000.tar"
    shard_writer(shard, cameras[:-1])  # a whole tar, one sample short of what the download wrote
    write_sidecar(shard, [s["key"] for s in cameras], failed_keys=("cameratrap_failed",))
    with pytest.raises(ShardFormatError, match=rf"holds {len(cameras) - 1} of the {len(cameras)} images its sidecar"):
        scan_shards({"train": [str(shard)]})
    write_sidecar(shard, [s["key"] for s in cameras[:-1]], failed_keys=(cameras[-1]["key"],))
    assert scan_shards({"train": [str(shard)]}).samples["train"] == len(cameras) - 1
