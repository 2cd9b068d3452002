"""Class-per-folder datasets: UVP / ZooScan / WHOI-Plankton layouts, Name__id folders, corrupt images."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from schemas import Reason, conform
from sources.folders import CONNECTOR, FoldersOptions, instrument_from_name, split_class_folder
from sources.localuri import read_local

TESTS = Path(__file__).resolve().parents[1]
PNGS = sorted((TESTS / "data" / "plankton" / "ifcb_labeled" / "png").glob("*.png"))
# GPL-3.0 sample: read from ../shared, never copied into the project
UVP6 = TESTS.parent / ".." / "shared" / "data" / "plankton" / "uvp6_labeled"


def read_dataset(root: Path, **opts) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    options = FoldersOptions(**opts)
    batches = [b for t in CONNECTOR.tasks(str(root), options) for b in CONNECTOR.read(t, options)]
    skipped: dict[str, int] = {}
    for b in batches:
        for k, v in b.skipped.items():
            skipped[k] = skipped.get(k, 0) + v
    return (pa.concat_tables([b.records for b in batches]), pa.concat_tables([b.rejects for b in batches]),
            skipped)


@pytest.fixture
def tree(tmp_path) -> Path:
    """A class-folder dataset in the three layouts, built from the real IFCB-labelled PNGs."""
    root = tmp_path / "mixed_set"
    layout = {
        "Mesodinium_rubrum__1234": PNGS[:2],              # UVP / EcoTaxa export: Name__id
        "tail<Appendicularia__45": PNGS[2:3],             # EcoTaxa name<parent label, kept verbatim
        "2022/Strombidium-like": PNGS[3:5],               # WHOI-Plankton: year/class, IFCB pid file names
        "imgs/badfocus<artefact": PNGS[5:6],              # ZooScan set: imgs/class
    }
    for folder, files in layout.items():
        (root / folder).mkdir(parents=True)
        for f in files:
            shutil.copy(f, root / folder / f.name)
    (root / "imgs" / "badfocus<artefact" / "as_jpeg.jpg").write_bytes(b"")
    Image.open(PNGS[6]).save(root / "imgs" / "badfocus<artefact" / "as_jpeg.jpg", format="JPEG")
    (root / "2022" / "Strombidium-like" / "broken.png").write_bytes(PNGS[0].read_bytes()[:200])
    (root / "2022" / "Strombidium-like" / "notes.txt").write_text("not an image")
    (root / "2022" / "Strombidium-like" / ".DS_Store").write_bytes(b"\0")
    shutil.copy(PNGS[0], root / "loose.png")
    return root


def test_three_layouts_read_with_verbatim_names_and_ids(tree):
    records, rejects, skipped = read_dataset(tree, license="mit")
    by_file = {json.loads(e)["file_name"]: r for e, r in zip(records.column("extra").to_pylist(), records.to_pylist(),
                                                                strict=True)}
    assert records.num_rows == 7
    first = by_file[PNGS[0].name]
    assert (first["verbatim_name"], first["source_taxon_id"]) == ("Mesodinium_rubrum", "1234")
    assert (by_file[PNGS[2].name]["verbatim_name"], by_file[PNGS[2].name]["source_taxon_id"]) == (
        "tail<Appendicularia", "45")
    whoi = by_file[PNGS[3].name]
    assert whoi["verbatim_name"] == "Strombidium-like" and whoi["source_taxon_id"] is None
    assert json.loads(whoi["extra"])["groups"] == ["2022"]
    # IFCB image pids name their instrument and sample time
    assert whoi["instrument"] == "IFCB134" and whoi["event_date"] == "2022-05-22T00:04:39Z"
    jpeg = by_file["as_jpeg.jpg"]
    assert jpeg["verbatim_name"] == "badfocus<artefact" and jpeg["format"] == "image/jpeg"
    with Image.open(PNGS[0]) as im:
        assert (first["width"], first["height"], first["format"]) == (im.width, im.height, "image/png")
    assert read_local(first["identifier"]) == PNGS[0].read_bytes()
    assert {r["source_dataset"] for r in by_file.values()} == {"mixed_set"}
    assert {r["license"] for r in by_file.values()} == {"mit"}

    reasons = dict(zip(rejects.column("detail").to_pylist(), rejects.column("reason").to_pylist(), strict=True))
    assert sorted(reasons.values()) == sorted([Reason.CORRUPT_IMAGE, Reason.NOT_VALIDATED])
    assert any(d.startswith("2022/Strombidium-like/broken.png") for d in reasons)
    assert any(d.startswith("loose.png") for d in reasons)
    assert skipped == {"non_image_file.txt": 1, "system_file": 1}
    good, bad = conform(records, "ingest")
    assert good.num_rows == 7 and bad.num_rows == 0


@pytest.mark.parametrize("png", PNGS, ids=[p.stem for p in PNGS])
def test_an_image_directly_under_the_root_is_unlabelled_not_malformed(tmp_path, png):
    """QA: such an image was rejected malformed_row; it is a good image without a label, as an
    IFCB ROI without a class is (not_validated)."""
    (tmp_path / "set" / "Ciliophora").mkdir(parents=True)
    shutil.copy(png, tmp_path / "set" / png.name)
    shutil.copy(png, tmp_path / "set" / "Ciliophora" / png.name)
    records, rejects, _ = read_dataset(tmp_path / "set")
    assert records.column("verbatim_name").to_pylist() == ["Ciliophora"]
    assert rejects.column("reason").to_pylist() == [Reason.NOT_VALIDATED]
    assert rejects.column("detail").to_pylist() == [
        f"{png.name}: image is not inside a class folder (no label); move it into the folder of its class"]


def test_every_file_is_accounted_for(tree):
    records, rejects, skipped = read_dataset(tree)
    files = [p for p in tree.rglob("*") if p.is_file()]
    assert records.num_rows + rejects.num_rows + sum(skipped.values()) == len(files)


def test_record_ids_are_stable_and_unique(tree):
    a, _, _ = read_dataset(tree)
    b, _, _ = read_dataset(tree)
    assert a.column("record_id").to_pylist() == b.column("record_id").to_pylist()
    assert len(set(a.column("record_id").to_pylist())) == a.num_rows


def test_without_verification_corrupt_images_pass_through(tree):
    records, rejects, _ = read_dataset(tree, verify_images=False, instrument="FlowCam")
    assert records.num_rows == 8 and rejects.num_rows == 1  # only the unlabelled loose image
    assert records.column("width").null_count == 8
    assert "FlowCam" in records.column("instrument").to_pylist()


def test_missing_root_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        CONNECTOR.tasks(str(tmp_path / "nope"), FoldersOptions())


def test_names_that_are_not_utf8_are_rejected_and_the_run_record_stays_valid_json(tmp_path):
    """A latin-1 file system's names (old ZooScan archives): the ingest stopped with
    "'utf-8' codec can't encode character '\\udce9'"; now each such image is a reject."""
    import os

    from pipeline.cli import app
    from tests.pipeline.test_cli import cli

    root = tmp_path / "zooscan"
    for folder, name in ((b"Copepoda", b"ok.png"), (b"Copepoda", b"caf\xe9.png"), (b"Cop\xe9poda", b"b.png")):
        os.makedirs(os.path.join(os.fsencode(root), folder), exist_ok=True)
        shutil.copy(PNGS[0], os.path.join(os.fsencode(root), folder, name))
    records, rejects, _ = read_dataset(root)
    assert records.column("verbatim_name").to_pylist() == ["Copepoda"]
    assert sorted(rejects.column("detail").to_pylist()) == [
        "Cop\\xe9poda/b.png: the file or folder name is not UTF-8; rename it "
        "(e.g. convmv -f latin1 -t utf8 -r --notest <root>) and ingest again",
        "Copepoda/caf\\xe9.png: the file or folder name is not UTF-8; rename it "
        "(e.g. convmv -f latin1 -t utf8 -r --notest <root>) and ingest again"]
    assert set(rejects.column("reason").to_pylist()) == {str(Reason.UNDECODABLE_TEXT)}
    data = tmp_path / "data"
    res = cli.invoke(app, ["ingest", "folders", "--input", str(root), "--data", str(data)])
    assert res.exit_code == 0, res.output
    runs = list((data / "runs").glob("*/run.json"))
    text = runs[0].read_text()
    assert "Cop\\\\xe9poda" in text and "\\udc" not in text
    res = cli.invoke(app, ["query", "SELECT count(*) AS n FROM runs", "--data", str(data), "--format", "csv"])
    assert res.exit_code == 0 and "warning" not in res.output and res.output.splitlines()[1:] == ["1"]


@pytest.mark.skipif(not UVP6.is_dir(), reason="../shared/data/plankton/uvp6_labeled not present")
def test_real_uvp6_class_folders():
    records, rejects, skipped = read_dataset(UVP6)
    assert records.num_rows == 80 and rejects.num_rows == 0 and not skipped
    names = dict(zip(records.column("verbatim_name").to_pylist(), records.column("source_taxon_id").to_pylist(),
                     strict=True))
    assert names["Copepoda"] == "6666" and names["detritus"] == "8888" and names["badfocus"] == "4444"
    assert len(names) == 10
    assert set(records.column("instrument").to_pylist()) == {"UVP6"}


@pytest.mark.parametrize("name, want", [("uvp6_labeled", "UVP6"), ("ZooScanSet", "ZooScan"),
                                        ("whoi_ifcb_2014", "IFCB"), ("my_set", None)])
def test_instrument_from_dataset_name(name, want):
    assert instrument_from_name(name) == want


@settings(max_examples=100, deadline=None)
@given(name=st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="/"), min_size=1,
                    max_size=30).filter(lambda s: s.strip() == s and s and not s.endswith("_")),
       taxon_id=st.text("0123456789abcdefXYZ", min_size=1, max_size=10))
def test_name_id_folders_split_on_the_last_double_underscore(name, taxon_id):
    assert split_class_folder(f"{name}__{taxon_id}") == (name, taxon_id)
    if "__" not in name:
        assert split_class_folder(name) == (name, None)
