"""Dedup layers: same record, same photo across sources (richest kept, provenance merged), same or
near-same bytes, and decontamination against evaluation folders and shards."""

from __future__ import annotations

import io
import json
import random
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.curate.dedup import (
    brute_force_near_pairs,
    decide_photos,
    decide_records,
    find_near_pairs,
    hash_eval_sets,
    image_hashes,
    perceptual_hash,
    phash_values,
)
from pipeline.stage import StageContext
from pipeline.stages.curate import Options, dedup_downloaded
from schemas import Reason, make_record_id
from schemas.record import from_rows
from tests.curate.conftest import search_rows

CTX = StageContext("curate", Options())
IMAGES = Path(__file__).resolve().parents[1] / "data" / "images" / "camera_traps"


def shuffled(table: pa.Table, seed: int) -> pa.Table:
    idx = list(range(table.num_rows))
    random.Random(seed).shuffle(idx)
    return table.take(pa.array(idx, pa.int64()))


def test_layer1_same_record_once_richest_kept():
    base = search_rows()[0]
    rich = dict(base, event_date="2023-09-30", country_code="DK")
    rows = [base, rich, dict(base)]
    out = decide_records(from_rows(rows), CTX)
    assert out.out.num_rows == 1 and out.rejects.num_rows == 2
    assert out.out.column("country_code").to_pylist() == ["DK"]
    assert set(out.rejects.column("reason").to_pylist()) == {Reason.DUPLICATE_RECORD}
    assert set(out.rejects.column("detail").to_pylist()) == {f"kept {base['record_id']}"}


def test_layer1_real_rows_have_no_duplicates():
    table = from_rows(search_rows())
    out = decide_records(table, CTX)
    assert out.out.num_rows == table.num_rows and out.rejects.num_rows == 0


def _cross_source(base: dict) -> list[dict]:
    """The same photo reached through GBIF and through the iNaturalist connector (same photo key)."""
    gbif = dict(base, photo_key="inat-photo-12345")
    inat = dict(
        base, record_id=make_record_id("inaturalist", "12345"), source="inaturalist", media_id="12345",
        identifier="https://inaturalist-open-data.s3.amazonaws.com/photos/12345/original.jpg",
        photo_key="inat-photo-12345", quality_grade="research", width=2048, height=1536,
        extra=json.dumps({"observation_uuid": "abc"}))
    eol = dict(base, record_id=make_record_id("eol", "e-1"), source="eol", media_id="e-1",
               identifier="https://content.eol.org/1.jpg", photo_key="inat-photo-12345",
               decimal_latitude=None, decimal_longitude=None)
    return [gbif, inat, eol]


def test_layer2_keeps_richest_and_merges_provenance():
    base = search_rows()[0]
    rows = _cross_source(base) + [search_rows()[1]]  # plus an unrelated photo without a key
    out = decide_photos(from_rows(rows), CTX)
    assert out.out.num_rows == 2 and out.rejects.num_rows == 2
    kept = {r["record_id"]: r for r in out.out.to_pylist()}
    inat_id = rows[1]["record_id"]
    assert inat_id in kept and rows[3]["record_id"] in kept
    merged = json.loads(kept[inat_id]["extra"])
    assert merged["observation_uuid"] == "abc"
    assert [m["source"] for m in merged["merged_from"]] == sorted(
        ["gbif", "eol"], key=lambda s: {"gbif": rows[0]["record_id"], "eol": rows[2]["record_id"]}[s])
    assert {m["record_id"] for m in merged["merged_from"]} == {rows[0]["record_id"], rows[2]["record_id"]}
    assert set(out.rejects.column("reason").to_pylist()) == {Reason.DUPLICATE_PHOTO}
    assert set(out.rejects.column("detail").to_pylist()) == {f"kept {inat_id}"}


def test_layer2_tie_breaks_by_record_id_whatever_the_order():
    base = search_rows()[0]
    a = dict(base, photo_key="inat-photo-7")
    b = dict(base, record_id=make_record_id("eol", "x"), source="eol", photo_key="inat-photo-7")
    want = min(a["record_id"], b["record_id"])
    for seed in range(5):
        out = decide_photos(shuffled(from_rows([a, b]), seed), CTX)
        assert out.out.column("record_id").to_pylist() == [want]


def test_layer2_order_independent_on_real_rows():
    rows = search_rows()
    # every photo of an occurrence shares one key here, so dedup keeps one image per occurrence
    keyed = [dict(r, photo_key=r["occurrence_id"]) for r in rows]
    table = from_rows(keyed)
    first = decide_photos(table, CTX)
    assert first.out.num_rows == len({r["occurrence_id"] for r in rows})
    for seed in (1, 2):
        again = decide_photos(shuffled(table, seed), CTX)
        assert again.out.sort_by("record_id").equals(first.out.sort_by("record_id"))
        assert again.rejects.sort_by("record_id").equals(first.rejects.sort_by("record_id"))


# --- layer 3 ----------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(1, 120), st.integers(0, 8), st.integers(0, 6))
def test_near_pairs_equal_brute_force(seed, n, threshold, flips):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 2**63, size=max(1, n // 3), dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, size=max(1, n // 3), dtype=np.uint64)
    # clusters of near copies (a few bit flips) plus repeats, so every distance class occurs
    picks = base[rng.integers(0, len(base), size=n)]
    for k in range(n):
        for _ in range(rng.integers(0, flips + 1)):
            picks[k] ^= np.uint64(1) << np.uint64(int(rng.integers(0, 64)))
    i, j, d = find_near_pairs(picks, threshold)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) == brute_force_near_pairs(picks, threshold)
    assert (d <= threshold).all()


def test_near_pairs_against_other_set():
    rng = np.random.default_rng(3)
    a = rng.integers(0, 2**63, size=300, dtype=np.uint64)
    b = a[:50] ^ np.uint64(0b1011)  # three flipped bits
    i, j, d = find_near_pairs(a, 3, others=b)
    assert set(zip(i.tolist(), j.tolist(), strict=True)) >= {(k, k) for k in range(50)}
    assert (d <= 3).all()


def test_phash_values_accepts_hex_and_ints():
    values = [0xFFFFFFFFFFFFFFFF, 1, None]
    hexed = pa.array([None if v is None else f"{v:016x}" for v in values])
    signed = pa.array([-1, 1, None], pa.int64())
    for col in (hexed, signed, pa.array(values, pa.uint64())):
        got, valid = phash_values(col)
        assert valid.tolist() == [True, True, False]
        assert got[:2].tolist() == [0xFFFFFFFFFFFFFFFF, 1]


def _sidecar(rows):
    return pa.table({"record_id": [r[0] for r in rows], "sha256": [r[1] for r in rows],
                     "phash": pa.array([r[2] for r in rows], pa.uint64())})


def test_layer3_bytes_then_near_then_pass_through():
    far = 0x0F0F0F0F0F0F0F0F
    table = _sidecar([
        ("r3", "aa", 0x1234), ("r1", "aa", 0x1234),  # same bytes: r1 (smaller id) kept
        ("r2", "bb", 0x1234 ^ 0b111),                # near r1 (3 bits)
        ("r4", "cc", far), ("r5", "dd", None), ("r6", None, None),
    ])
    out = dedup_downloaded(table, Options(hamming_threshold=4))
    assert sorted(out.out.column("record_id").to_pylist()) == ["r1", "r4", "r5", "r6"]
    got = {r["record_id"]: (r["reason"], r["detail"]) for r in out.rejects.to_pylist()}
    assert got == {"r3": (Reason.DUPLICATE_BYTES, "kept r1"), "r2": (Reason.NEAR_DUPLICATE, "kept r1")}
    strict = dedup_downloaded(table, Options(hamming_threshold=2))
    assert "r2" in strict.out.column("record_id").to_pylist()


def test_layer3_greedy_does_not_chain():
    # r1 ~ r2 ~ r3 but r1 and r3 are 6 apart: r2 goes (near r1), r3 stays
    table = _sidecar([("r1", "a", 0), ("r2", "b", 0b111), ("r3", "c", 0b111111)])
    out = dedup_downloaded(table, Options(hamming_threshold=3))
    assert sorted(out.out.column("record_id").to_pylist()) == ["r1", "r3"]


def test_layer3_independent_of_row_order():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, size=40, dtype=np.uint64)
    hashes = np.concatenate([base, base ^ np.uint64(0b11), base[:10]])
    rows = [(f"r{k:03d}", f"s{k % 70}", int(h)) for k, h in enumerate(hashes)]
    table = _sidecar(rows)
    first = dedup_downloaded(table, Options())
    for seed in (1, 2, 3):
        again = dedup_downloaded(shuffled(table, seed), Options())
        assert sorted(again.out.column("record_id").to_pylist()) == sorted(first.out.column("record_id").to_pylist())
        assert again.rejects.sort_by("record_id").equals(first.rejects.sort_by("record_id"))
    assert first.out.num_rows + first.rejects.num_rows == table.num_rows


@pytest.fixture(scope="module")
def camera_images() -> dict[str, bytes]:
    files = sorted(IMAGES.glob("*.jpg"))
    if not files:
        pytest.skip("tests/data/images/camera_traps missing")
    return {f.stem: f.read_bytes() for f in files}


def _reencoded(data: bytes, size=(320, 240)) -> bytes:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        buf = io.BytesIO()
        im.convert("RGB").resize(size).save(buf, "JPEG", quality=70)
    return buf.getvalue()


def test_phash_survives_reencoding_and_separates_images(camera_images):
    hashes = {k: perceptual_hash(v) for k, v in camera_images.items()}
    small = perceptual_hash(_reencoded(camera_images["ocelot"]))
    assert bin(small ^ hashes["ocelot"]).count("1") <= 6
    values = list(hashes.values())
    assert min(bin(a ^ b).count("1") for k, a in enumerate(values) for b in values[k + 1:]) > 10


def test_phash_matches_downloader(camera_images):
    image = pytest.importorskip("shards.image")
    from PIL import Image

    for data in camera_images.values():
        with Image.open(io.BytesIO(data)) as im:
            assert int(image.phash(im), 16) == perceptual_hash(data)
        assert image_hashes(data)[1] == perceptual_hash(data)


def test_decontamination_from_folder_and_shard(tmp_path, camera_images):
    folder = tmp_path / "eval_folder"
    folder.mkdir()
    (folder / "ocelot.jpg").write_bytes(camera_images["ocelot"])
    shard = tmp_path / "eval-000000.tar"
    with tarfile.open(shard, "w") as tar:
        data = camera_images["domestic_cattle"]
        info = tarfile.TarInfo("sample0001.jpg")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        note = b"a photo of cattle."
        info = tarfile.TarInfo("sample0001.txt")
        info.size = len(note)
        tar.addfile(info, io.BytesIO(note))
    evals = hash_eval_sets([folder, shard])
    assert evals.num_rows == 2
    rows = []
    for name, data in camera_images.items():
        sha, ph = image_hashes(data)
        rows.append((f"same-{name}", sha, ph))
        sha2, ph2 = image_hashes(_reencoded(data))
        rows.append((f"small-{name}", sha2, ph2))
    out = dedup_downloaded(_sidecar(rows), Options(eval_sets=(str(folder), str(shard)), near_duplicates=False))
    contaminated = {r["record_id"]: r["detail"] for r in out.rejects.to_pylist()
                    if r["reason"] == Reason.EVAL_CONTAMINATION}
    assert set(contaminated) == {"same-ocelot", "small-ocelot", "same-domestic_cattle", "small-domestic_cattle"}
    assert contaminated["same-ocelot"].startswith("same bytes as")
    assert contaminated["small-domestic_cattle"].startswith(f"near {shard}:sample0001.jpg")
    assert "same-american_black_bear" in out.out.column("record_id").to_pylist()


def test_eval_set_missing_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        hash_eval_sets([tmp_path / "nope"])
