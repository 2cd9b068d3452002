"""Class-per-folder image datasets (UVP, ZooScan, WHOI-Plankton layouts) read into one record per image.

The label of an image is the name of the folder that holds it; folders above it (a year, a
``train``/``test`` split, ``imgs``) are grouping and go to ``extra``. Layouts this covers:

- UVP / EcoTaxa exports (uvpec): ``root/Copepoda__6666/10280918.png``: ``Name__id`` folder names
  give ``verbatim_name`` ``Copepoda`` and ``source_taxon_id`` ``6666``;
- ZooScan sets: ``root/imgs/Calanoida/12345.jpg``;
- WHOI-Plankton: ``root/2014/Asterionellopsis/IFCB1_2014_001_000000_00012.png``: IFCB image pids,
  whose names also give the instrument and sample time.

Names are kept verbatim (``detritus``, ``badfocus<artefact``, ``mix_elongated``); the taxonomy
stage maps them. Each image is opened to check it decodes (corrupt ones are rejected
``corrupt_image``) and to learn its size and format.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
from pydantic import Field

from schemas import Reason, make_record_id, make_rejects
from schemas.record import extra_json
from sources.base import IngestBatch, SourceOptions
from sources.ifcb import parse_bin_name
from sources.localuri import FolderFiles

SOURCE = "folders"
STAGE = "ingest"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".gif", ".webp", ".pgm", ".ppm"})
# Files that sit in image folders but are not images and not worth a count per file type.
_JUNK = frozenset({".DS_Store", "Thumbs.db", "desktop.ini"})
_NAME_ID = re.compile(r"^(?P<name>.+?)__(?P<id>[A-Za-z0-9.:-]+)$")
_IFCB_IMAGE = re.compile(r"^(?P<bin>.+)_(?P<roi>\d{5})$")
_MIME = {"PNG": "image/png", "JPEG": "image/jpeg", "TIFF": "image/tiff", "BMP": "image/bmp", "GIF": "image/gif",
         "WEBP": "image/webp", "PPM": "image/x-portable-anymap"}


_INSTRUMENTS = {"uvp": "UVP", "zooscan": "ZooScan", "flowcam": "FlowCam", "ifcb": "IFCB", "isiis": "ISIIS",
                "loki": "LOKI", "planktoscope": "PlanktoScope", "cpics": "CPICS"}
_INSTRUMENT_IN_NAME = re.compile(r"(uvp|zooscan|flowcam|ifcb|isiis|loki|planktoscope|cpics)(\d*)", re.IGNORECASE)


def instrument_from_name(name: str) -> str | None:
    """Instrument named in a dataset folder name (``uvp6_labeled`` → ``UVP6``), else None."""
    m = _INSTRUMENT_IN_NAME.search(name)
    return _INSTRUMENTS[m.group(1).lower()] + m.group(2) if m else None


def split_class_folder(folder: str) -> tuple[str, str | None]:
    """``"Copepoda__6666"`` → ``("Copepoda", "6666")``; a name without ``__id`` → ``(name, None)``."""
    m = _NAME_ID.match(folder)
    if m and m.group("name").strip():
        return m.group("name").strip(), m.group("id")
    return folder.strip(), None


class FoldersOptions(SourceOptions):
    """``[sources.folders]``: reading class-per-folder image datasets."""

    license: str = Field("unknown", description="licence code for every record")
    dataset: str | None = Field(None, description="source_dataset of every record; default: the input folder's name")
    instrument: str | None = Field(None, description="instrument of every record (UVP6, ZooScan...); default: named in "
                                   "the root folder's name; IFCB pids give their own")
    annotation_status: str = Field("validated", description="annotation_status of every record (class folders are curated labels)")
    verify_images: bool = Field(True, description="open each image to check it decodes and read its size")
    batch_size: int = Field(50_000, gt=0, description="records per yielded batch")


def _image_info(path: Path) -> tuple[int, int, str | None]:
    """``(width, height, mime)`` of a decodable image; raises on a corrupt one."""
    from PIL import Image

    with Image.open(path) as im:
        im.load()
        return im.width, im.height, _MIME.get(im.format or "")


class FoldersConnector:
    """Connector for class-per-folder datasets: one task per folder that directly holds files."""

    name = SOURCE
    Options = FoldersOptions

    def tasks(self, input: str | None, options: FoldersOptions) -> list[str]:
        """Folders under ``input`` (itself included) that directly hold files, as ``root::relative`` strings."""
        if not input:
            raise ValueError("the folders source needs INPUT: the dataset's root folder")
        root = Path(input).resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"class-folder dataset root {input!r} is not a folder")
        folders = {p.parent for p in root.rglob("*") if p.is_file()}
        return sorted(f"{root}::{f.relative_to(root).as_posix() if f != root else '.'}" for f in folders)

    def read(self, task: str, options: FoldersOptions) -> Iterator[IngestBatch]:
        """Records for the images of one folder; corrupt images and unlabelled ones become rejects."""
        root_text, _, rel = task.partition("::")
        root = Path(root_text)
        folder = root if rel == "." else root / rel
        dataset = options.dataset or root.name
        groups = [] if rel == "." else rel.split("/")[:-1]
        label, taxon_id = split_class_folder(folder.name) if rel != "." else ("", None)

        rows: list[dict] = []
        rej_ids: list[str] = []
        rej_reasons: list[str] = []
        rej_details: list[str] = []
        skipped: Counter[str] = Counter()
        files = FolderFiles(folder)  # listed once: no stat and no resolve per image
        for name in files.names():
            path = folder / name
            relpath = name if rel == "." else f"{rel}/{name}"
            if path.name in _JUNK or path.name.startswith("._"):
                skipped["system_file"] += 1
                continue
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped[f"non_image_file{path.suffix.lower() or '_noext'}"] += 1
                continue
            media_id = f"{dataset}/{relpath}"
            if _not_utf8(media_id):
                # a name from a latin-1 (or other) file system: Python holds its bytes as lone
                # surrogates, which no record can carry; the bytes are shown escaped
                shown = _escaped(media_id)
                rej_ids.append(make_record_id(SOURCE, shown))
                rej_reasons.append(str(Reason.UNDECODABLE_TEXT))
                rej_details.append(f"{_escaped(relpath)}: the file or folder name is not UTF-8; rename it "
                                   "(e.g. convmv -f latin1 -t utf8 -r --notest <root>) and ingest again")
                continue
            rid = make_record_id(SOURCE, media_id)
            if not label:
                # an image without a label, as an IFCB ROI without one is: not_validated, not malformed
                rej_ids.append(rid)
                rej_reasons.append(str(Reason.NOT_VALIDATED))
                rej_details.append(f"{relpath}: image is not inside a class folder (no label); "
                                   "move it into the folder of its class")
                continue
            width = height = None
            mime = _MIME.get("JPEG" if path.suffix.lower() in (".jpg", ".jpeg") else path.suffix.lstrip(".").upper())
            if options.verify_images:
                try:
                    width, height, mime = _image_info(path)
                except Exception as e:  # PIL raises many types for damaged files; all mean "cannot decode"
                    rej_ids.append(rid)
                    rej_reasons.append(str(Reason.CORRUPT_IMAGE))
                    rej_details.append(f"{relpath}: {type(e).__name__}: {e}")
                    continue
            instrument, event_date = options.instrument or instrument_from_name(root.name), None
            m = _IFCB_IMAGE.match(path.stem)
            pid = parse_bin_name(m.group("bin")) if m else None
            if pid is not None:
                instrument, event_date = pid.instrument, pid.sample_time
            rows.append({
                "record_id": rid,
                "source": SOURCE,
                "source_dataset": dataset,
                "occurrence_id": media_id,
                "media_id": media_id,
                "identifier": files.uri(name),
                "format": mime,
                "license": options.license,
                "verbatim_name": label,
                "source_taxon_id": taxon_id,
                "annotation_status": options.annotation_status,
                "instrument": instrument,
                "event_date": event_date,
                "width": width,
                "height": height,
                "extra": extra_json({"class_folder": folder.name, "groups": groups or None, "file_name": path.name}),
            })
            if len(rows) >= options.batch_size:
                yield _batch(rows, rej_ids, rej_reasons, rej_details, skipped)
                rows, rej_ids, rej_reasons, rej_details, skipped = [], [], [], [], Counter()
        yield _batch(rows, rej_ids, rej_reasons, rej_details, skipped)


def _not_utf8(name: str) -> bool:
    """Whether ``name`` (from the file system) holds bytes that were not UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _escaped(name: str) -> str:
    """``name`` with its undecodable bytes written as ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


_STRING_COLUMNS = ("record_id", "source", "source_dataset", "occurrence_id", "media_id", "identifier", "format",
                   "license", "verbatim_name", "source_taxon_id", "annotation_status", "instrument", "event_date",
                   "extra")


def _batch(rows, rej_ids, rej_reasons, rej_details, skipped) -> IngestBatch:
    cols = {c: pa.array([r[c] for r in rows], pa.string()) for c in _STRING_COLUMNS}
    cols.update({c: pa.array([r[c] for r in rows], pa.int64()) for c in ("width", "height")})
    return IngestBatch(records=pa.table(cols), rejects=make_rejects(rej_ids, STAGE, rej_reasons, rej_details),
                       skipped={k: v for k, v in skipped.items() if v})


CONNECTOR = FoldersConnector()
