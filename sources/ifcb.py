"""IFCB raw bins (``.hdr`` / ``.adc`` / ``.roi``, both ADC layouts) read into one record per region of interest.

A bin is three files sharing a name (its *lid*): ``.hdr`` (instrument settings, ``key: value``
lines), ``.adc`` (one CSV row per trigger) and ``.roi`` (the images, 8-bit grayscale,
``width*height`` bytes each, row-major, at the ADC row's start byte). Two generations exist:

- **v1**, ``IFCB5_2012_028_081515`` names, 15-column ADC: ROI x, y, width, height, start byte in
  0-based columns 9..13;
- **v2**, ``D20130526T095207_IFCB013`` names, 24-column ADC: the same five in columns 13..17.

A ROI's number is its 1-based ADC row (pyifcb's and the dashboard's convention: ``_00002`` is
row 2). Rows with width or height 0 are triggers without an image and are counted, not recorded.
The ROI pixels are not read here: each record's ``identifier`` is an ``ifcb://`` URI
(``sources.localuri``) that the download stage cuts and encodes like any other image.
"""

from __future__ import annotations

import csv
import functools
import io
import json
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pyarrow as pa
from pydantic import Field, field_validator

from schemas import Reason, empty_rejects, make_record_id, make_rejects
from schemas.record import extra_json, make_record_ids
from sources.base import IngestBatch, SourceOptions, text_codec
from sources.localuri import gray_png, ifcb_uri

SOURCE = "ifcb"
STAGE = "ingest"
BIN_EXTENSIONS: tuple[str, ...] = (".adc", ".roi", ".hdr")

_BIN_V2 = re.compile(r"^D(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})_IFCB(\d+)$")
_BIN_V1 = re.compile(r"^IFCB(\d+)_(\d{4})_(\d{3})_(\d{2})(\d{2})(\d{2})$")

# Class labels that mean "nobody named this ROI" in ClassiPyR / ifcb-analysis CSVs.
MISSING_LABELS = frozenset({"", "unclassified", "nan", "na", "none", "null"})


@dataclass(frozen=True)
class AdcLayout:
    """0-based ADC column positions of the ROI geometry for one instrument generation."""

    name: str
    min_columns: int
    trigger: int
    roi_x: int
    roi_y: int
    width: int
    height: int
    start_byte: int


# Column positions as in pyifcb (ifcb/data/adc.py SCHEMA_VERSION_1/2), checked on the real bins:
# for each layout, start_byte[i+1] == start_byte[i] + width[i]*height[i].
ADC_V1 = AdcLayout("v1", 14, trigger=0, roi_x=9, roi_y=10, width=11, height=12, start_byte=13)
ADC_V2 = AdcLayout("v2", 18, trigger=0, roi_x=13, roi_y=14, width=15, height=16, start_byte=17)


@dataclass(frozen=True)
class BinName:
    """What a bin's lid says: layout, instrument and sample time (UTC, ISO 8601)."""

    lid: str
    layout: AdcLayout
    instrument: str
    sample_time: str


def parse_bin_name(lid: str) -> BinName | None:
    """Parse ``D20130526T095207_IFCB013`` (v2) or ``IFCB5_2012_028_081515`` (v1); None otherwise."""
    m = _BIN_V2.match(lid)
    if m:
        y, mo, d, hh, mm, ss, inst = m.groups()
        try:
            t = datetime(int(y), int(mo), int(d), int(hh), int(mm), int(ss), tzinfo=UTC)
        except ValueError:
            return None
        return BinName(lid, ADC_V2, f"IFCB{inst}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    m = _BIN_V1.match(lid)
    if m:
        inst, y, doy, hh, mm, ss = m.groups()
        if not 1 <= int(doy) <= 366 or int(hh) > 23 or int(mm) > 59 or int(ss) > 59:
            return None
        t = datetime(int(y), 1, 1, tzinfo=UTC) + timedelta(
            days=int(doy) - 1, hours=int(hh), minutes=int(mm), seconds=int(ss))
        if t.year != int(y):
            return None
        return BinName(lid, ADC_V1, f"IFCB{inst}", t.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return None


def parse_hdr(text: str) -> dict[str, object]:
    """Header metadata as a dict; never raises.

    v2 headers are ``key: value`` lines. v1 headers are quoted lines: ``"key = value"`` pairs and a
    line of space-separated names followed by a line of as many comma-separated quoted values.
    Lines that are neither are kept, in order, under ``"_lines"``.
    """
    out: dict[str, object] = {}
    loose: list[str] = []
    pending_names: list[str] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith('"'):
            fields = [f.strip().strip('"').strip() for f in next(csv.reader([line]), [])]
            if pending_names is not None and len(fields) == len(pending_names) and len(fields) > 1:
                out.update(zip(pending_names, fields, strict=True))
                loose.pop()
                pending_names = None
                continue
            line = ",".join(fields) if len(fields) > 1 else (fields[0] if fields else "")
            if "=" in line:
                key, _, value = line.partition("=")
                if key.strip():
                    out[key.strip()] = value.strip()
                    pending_names = None
                    continue
            pending_names = line.split() if len(line.split()) > 1 else None
            loose.append(line)
            continue
        pending_names = None
        key, sep, value = line.partition(":")
        if sep and key.strip() and " " not in key.strip():
            out[key.strip()] = value.strip()
        else:
            loose.append(line)
    if loose:
        out["_lines"] = loose
    return out


@dataclass
class AdcRows:
    """Parsed ADC geometry, one entry per well-formed row; ``malformed`` lists the others."""

    layout: AdcLayout
    roi_number: np.ndarray
    trigger: np.ndarray
    roi_x: np.ndarray
    roi_y: np.ndarray
    width: np.ndarray
    height: np.ndarray
    start_byte: np.ndarray
    malformed: list[tuple[int, str]] = field(default_factory=list)

    @property
    def n_rows(self) -> int:
        """Every ADC row seen, well-formed or not."""
        return len(self.roi_number) + len(self.malformed)


def _int_field(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        f = float(value)
        if not f.is_integer():
            raise ValueError(f"{value!r} is not an integer") from None
        return int(f)


def detect_layout(first_row: list[str]) -> AdcLayout:
    """The layout whose column count fits a row (trailing empty fields ignored)."""
    return ADC_V2 if len(first_row) >= ADC_V2.min_columns else ADC_V1


def _fields(line: str) -> list[str]:
    fields = [f.strip() for f in line.split(",")]
    while fields and fields[-1] == "":
        fields.pop()
    return fields


# ADC files up to this size are parsed row by row (measured: a 19 KB file 0.38 ms, Arrow 1.0 ms)
_ARROW_ADC_BYTES = 64 << 10
# ADC and header files are CR/LF text; str.splitlines would also break at \x1c, \x85, \u2028...
_LINES = re.compile(r"\r\n|\n|\r")


def parse_adc(text: str | bytes, layout: AdcLayout | None = None) -> AdcRows:
    """Parse ADC text; ``layout`` None picks one from the first row's column count.

    Blank lines are not rows. A row that is too short or has a non-integer geometry field is
    listed in ``malformed`` with its ROI number, never raised. Well-formed files past
    ``_ARROW_ADC_BYTES`` go through Arrow's CSV reader in one call; smaller ones (Arrow's ~0.8 ms
    of set-up per call is more than their whole row-by-row parse) and anything irregular are
    parsed row by row.
    """
    data = text.encode("latin-1", errors="replace") if isinstance(text, str) else text
    if layout is None:
        first = next((line for line in data.splitlines() if line.strip()), b"")
        layout = detect_layout(_fields(first.decode("latin-1"))) if first else ADC_V2
    fast = _parse_adc_arrow(data, layout) if len(data) > _ARROW_ADC_BYTES else None
    return fast if fast is not None else _parse_adc_rows(data.decode("latin-1"), layout)


def _geometry_columns(layout: AdcLayout) -> tuple[int, ...]:
    return (layout.trigger, layout.roi_x, layout.roi_y, layout.width, layout.height, layout.start_byte)


def _parse_adc_arrow(data: bytes, layout: AdcLayout) -> AdcRows | None:
    import pyarrow.csv as pacsv

    if not data.strip():
        return None
    cols = _geometry_columns(layout)
    try:
        table = pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(autogenerate_column_names=True))
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None  # ragged rows, bad quoting: the row-by-row parse says which rows
    width = table.num_columns
    while width and table.column(width - 1).null_count == table.num_rows:
        width -= 1  # the trailing comma of v1 files makes an all-empty last column
    if width < layout.min_columns:
        return None
    arrays = []
    for c in cols:
        col = table.column(c)
        if col.null_count or not (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)):
            return None
        values = col.to_numpy()
        if values.dtype.kind == "f":
            if not np.all(np.isfinite(values)) or not np.all(values == np.round(values)):
                return None
        arrays.append(values.astype(np.int64))
    return AdcRows(layout, np.arange(1, table.num_rows + 1, dtype=np.int64), *arrays)


def _parse_adc_rows(text: str, layout: AdcLayout) -> AdcRows:
    rows = [_fields(line) for line in _LINES.split(text) if line.strip()]
    cols = _geometry_columns(layout)
    good: list[tuple[int, ...]] = []
    malformed: list[tuple[int, str]] = []
    for number, fields in enumerate(rows, start=1):
        if len(fields) < layout.min_columns:
            malformed.append((number, f"{len(fields)} columns; ADC layout {layout.name} needs >= {layout.min_columns}"))
            continue
        try:
            good.append((number, *(_int_field(fields[c]) for c in cols)))
        except ValueError as e:
            malformed.append((number, f"non-integer ROI geometry: {e}"))
    arr = np.array(good, dtype=np.int64).reshape(-1, 7)
    return AdcRows(layout, *(arr[:, i] for i in range(7)), malformed=malformed)


def bin_files(bin_path: str | Path) -> dict[str, Path]:
    """The ``.adc``/``.roi``/``.hdr`` files that exist for a bin path given without extension."""
    base = Path(bin_path)
    return {ext: base.with_name(base.name + ext) for ext in BIN_EXTENSIONS
            if base.with_name(base.name + ext).is_file()}


def find_bins(root: str | Path) -> list[str]:
    """Every bin under ``root`` (nested day folders included) as an extensionless path, sorted.

    A bin with any of its three files is listed, so a lone ``.roi`` or ``.hdr`` is still counted.
    """
    root = Path(root)
    if root.is_file() or (not root.exists() and root.suffix in BIN_EXTENSIONS):
        return [str((root.parent / root.stem).resolve())]
    if not root.exists():
        if bin_files(root):
            return [str(root.resolve())]
        raise FileNotFoundError(f"no IFCB bins: {str(root)!r} does not exist")
    stems = {str((p.parent / p.stem).resolve()) for ext in BIN_EXTENSIONS for p in root.rglob(f"*{ext}")}
    return sorted(stems)


def roi_geometry_ok(rows: AdcRows, roi_size: int) -> np.ndarray:
    """Mask of non-empty rows whose bytes lie inside a ``.roi`` of ``roi_size`` bytes."""
    end = rows.start_byte + rows.width * rows.height
    return (rows.width > 0) & (rows.height > 0) & (rows.start_byte >= 0) & (end <= roi_size)


def iter_roi_arrays(bin_path: str | Path) -> Iterator[tuple[int, np.ndarray]]:
    """``(roi number, height x width uint8 array)`` for every ROI that lies inside the ``.roi``.

    The ``.roi`` is read once and each array is a zero-copy view of that buffer (a plain
    ndarray: views of an ``np.memmap`` cost several times more to make).
    """
    files = bin_files(bin_path)
    if ".adc" not in files or ".roi" not in files:
        return
    name = parse_bin_name(Path(bin_path).name)
    rows = parse_adc(files[".adc"].read_bytes(), name.layout if name else None)
    size = files[".roi"].stat().st_size
    if size == 0:
        return
    ok = roi_geometry_ok(rows, size)
    buf = np.frombuffer(files[".roi"].read_bytes(), dtype=np.uint8)
    for n, s, w, h in zip(rows.roi_number[ok].tolist(), rows.start_byte[ok].tolist(),
                          rows.width[ok].tolist(), rows.height[ok].tolist(), strict=True):
        yield n, buf[s:s + w * h].reshape(h, w)


def encode_png(pixels: np.ndarray, compress_level: int = 1) -> bytes:
    """PNG bytes of an 8-bit grayscale array (:func:`~sources.localuri.gray_png`)."""
    height, width = pixels.shape
    return gray_png(np.ascontiguousarray(pixels, np.uint8), width, height, compress_level)


@dataclass(frozen=True)
class Label:
    """One ROI's label as a class CSV gives it."""

    name: str | None
    status: str | None
    auto_name: str | None = None
    score: float | None = None


_FILE_COLUMNS = ("file_name", "filename", "file", "image", "image_name", "pid", "roi")
_CLASS_COLUMNS = ("class_name", "class", "label", "manual_class")
_AUTO_COLUMNS = ("class_name_auto", "auto_class", "predicted_class")


def _pick(columns: list[str], choices: tuple[str, ...]) -> str | None:
    lower = {c.strip().lower(): c for c in columns}
    return next((lower[c] for c in choices if c in lower), None)


def _label_value(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value.lower() in MISSING_LABELS else value


def parse_class_csv(text: str) -> dict[str, Label]:
    """Labels keyed by ROI pid (``D..._IFCB134_00002``), from a ``file_name, class_name[, class_name_auto, score]`` CSV.

    ``class_name`` is a person's label (``validated``); a row with only ``class_name_auto`` is a
    classifier's (``predicted``); ``unclassified`` or empty means no label.
    """
    reader = csv.DictReader(io.StringIO(text))
    columns = reader.fieldnames or []
    file_col, class_col = _pick(columns, _FILE_COLUMNS), _pick(columns, _CLASS_COLUMNS)
    auto_col, score_col = _pick(columns, _AUTO_COLUMNS), _pick(columns, ("score", "class_score"))
    if file_col is None or (class_col is None and auto_col is None):
        raise ValueError(f"class CSV needs a file_name and a class_name column; it has {columns}")
    labels: dict[str, Label] = {}
    for row in reader:
        key = Path((row.get(file_col) or "").strip()).name
        key = key.rsplit(".", 1)[0] if "." in key else key
        if not key:
            continue
        name = _label_value(row.get(class_col)) if class_col else None
        auto = _label_value(row.get(auto_col)) if auto_col else None
        try:
            score = float(row[score_col]) if score_col and row.get(score_col) not in (None, "") else None
        except ValueError:
            score = None
        if name is not None:
            labels[key] = Label(name, "validated", auto, score)
        elif auto is not None:
            labels[key] = Label(auto, "predicted", auto, score)
        else:
            labels[key] = Label(None, None, None, score)
    return labels


@functools.lru_cache(maxsize=64)
def _load_class_csv(path: str, mtime_ns: int, encoding: str = "utf-8") -> dict[str, Label]:
    """The labels of one class CSV. A file that does not decode stops the bin with an error
    naming it: the labels are names, and a guessed encoding would change them silently."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8-sig" if encoding == "utf-8" else encoding)
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        name = Path(path).name
        raise ValueError(
            f"ifcb: labels file {path} is not {'UTF-8' if encoding == 'utf-8' else encoding} text (line {line}: "
            f"{data[max(0, exc.start - 20):exc.end + 20]!r}); re-encode it as UTF-8 (iconv -f latin1 -t utf-8 "
            f"{name} > {name}.utf8, then move that over it), or set [sources.ifcb] labels_encoding to its "
            'encoding (e.g. labels_encoding = "latin-1")') from None
    try:
        return parse_class_csv(text)
    except ValueError as exc:
        raise ValueError(f"ifcb: labels file {path}: {exc}") from None


@functools.lru_cache(maxsize=16)
def _csv_index(folder: str, mtime_ns: int) -> dict[str, list[str]]:
    index: dict[str, list[str]] = {}
    for p in sorted(Path(folder).rglob("*.csv")):
        index.setdefault(p.stem, []).append(str(p))
    return index


def labels_for_bin(lid: str, bin_dir: Path, labels: str | None, encoding: str = "utf-8") -> dict[str, Label]:
    """Labels of one bin: ``<lid>_classes.csv`` beside it, or from the configured file or folder
    (CSVs in ``encoding``)."""
    candidates: list[Path] = []
    if labels:
        p = Path(labels)
        if p.is_file():
            candidates = [p]
        elif p.is_dir():
            index = _csv_index(str(p.resolve()), p.stat().st_mtime_ns)
            candidates = [Path(c) for key in (f"{lid}_classes", lid) for c in index.get(key, [])]
        else:
            raise FileNotFoundError(f"IFCB labels path {labels!r} does not exist")
    else:
        beside = bin_dir / f"{lid}_classes.csv"
        candidates = [beside] if beside.is_file() else []
    out: dict[str, Label] = {}
    for c in candidates:
        loaded = _load_class_csv(str(c.resolve()), c.stat().st_mtime_ns, encoding)
        out.update({k: v for k, v in loaded.items() if k.startswith(lid + "_")})
    return out


class IfcbOptions(SourceOptions):
    """``[sources.ifcb]``: reading IFCB raw bins."""

    license: str = Field("unknown", description="licence code for every record (e.g. the one in PROVENANCE)")
    dataset: str | None = Field(None, description="source_dataset of every record (e.g. the dashboard dataset name)")
    labels: str | None = Field(None, description="class CSV file or folder of them; default: <bin>_classes.csv beside each bin")
    labels_encoding: str = Field("utf-8", description="text encoding of the class CSVs (a Python codec name: utf-8, "
                                 "latin-1, cp1252...)")
    accept_statuses: tuple[str, ...] = Field(("validated",), description="label statuses kept; others are rejected not_validated")
    keep_unlabelled: bool = Field(True, description="keep ROIs without any label (verbatim_name null)")
    latitude: float | None = Field(None, description="latitude for every record (fixed station); raw bins carry none")
    longitude: float | None = Field(None, description="longitude for every record")
    depth_m: float | None = Field(None, description="sampling depth in metres for every record")
    hdr_keys: tuple[str, ...] | None = Field(None, description="header keys kept in extra.hdr; None keeps them all")
    batch_size: int = Field(50_000, gt=0, description="records per yielded batch")

    @field_validator("labels_encoding")
    @classmethod
    def _known_codec(cls, value: str) -> str:
        return text_codec(value)


def _empty_batch(skipped: dict[str, int]) -> IngestBatch:
    return IngestBatch(records=pa.table({"record_id": pa.array([], pa.string())}), skipped=skipped)


class IfcbConnector:
    """Connector for folders of IFCB raw bins (any nesting; one task per bin)."""

    name = SOURCE
    Options = IfcbOptions

    def tasks(self, input: str | None, options: IfcbOptions) -> list[str]:
        """Every bin under ``input`` as an extensionless absolute path, sorted."""
        if not input:
            raise ValueError("the ifcb source needs INPUT: a folder of bins or one bin path")
        return find_bins(input)

    def read(self, task: str, options: IfcbOptions) -> Iterator[IngestBatch]:
        """Records for one bin; empty triggers counted, bad rows rejected, all ADC rows accounted for."""
        yield from read_bin(task, options)


def read_bin(task: str, options: IfcbOptions) -> Iterator[IngestBatch]:
    """Read one bin (extensionless path) into batches; see ``IfcbConnector.read``."""
    bin_path = Path(task)
    lid = bin_path.name
    files = bin_files(bin_path)
    if ".adc" not in files:
        # Without the ADC nothing says where the ROIs are; the bin is counted, not guessed at.
        yield _empty_batch({"ifcb_bin_without_adc": 1})
        return
    name = parse_bin_name(lid)
    hdr = parse_hdr(files[".hdr"].read_text(encoding="latin-1")) if ".hdr" in files else {}
    rows = parse_adc(files[".adc"].read_bytes(), name.layout if name else None)
    roi_path = files.get(".roi")
    roi_size = roi_path.stat().st_size if roi_path else 0
    labels = labels_for_bin(lid, bin_path.parent, options.labels, options.labels_encoding)

    skipped: Counter[str] = Counter()
    reject_ids: list[str] = []
    reject_reasons: list[str] = []
    reject_details: list[str] = []

    def reject(numbers, reason: Reason, details) -> None:
        for n, d in zip(numbers, details, strict=True):
            reject_ids.append(make_record_id(SOURCE, f"{lid}_{int(n):05d}"))
            reject_reasons.append(str(reason))
            reject_details.append(d)

    reject([n for n, _ in rows.malformed], Reason.MALFORMED_ROW, [f"{lid} ADC row {n}: {d}" for n, d in rows.malformed])

    w, h, s = rows.width, rows.height, rows.start_byte
    negative = (w < 0) | (h < 0) | (s < 0)
    empty = ~negative & ((w == 0) | (h == 0))
    skipped["ifcb_empty_trigger"] += int(empty.sum())
    reject(rows.roi_number[negative], Reason.MALFORMED_ROW,
           [f"{lid} ADC row {n}: negative geometry width={a} height={b} start_byte={c}"
            for n, a, b, c in zip(rows.roi_number[negative], w[negative], h[negative], s[negative], strict=True)])
    candidate = ~negative & ~empty
    if roi_path is None:
        reject(rows.roi_number[candidate], Reason.NO_IMAGE,
               [f"{lid}: bin has an .adc but no .roi file"] * int(candidate.sum()))
        candidate &= False
    else:
        end = s + w * h
        past = candidate & (end > roi_size)
        reject(rows.roi_number[past], Reason.TRUNCATED_ROI,
               [f"{lid} ROI {n}: bytes {a}..{b} past the end of the .roi ({roi_size} bytes)"
                for n, a, b in zip(rows.roi_number[past], s[past], end[past], strict=True)])
        candidate &= ~past

    roi_ids = [f"{lid}_{n:05d}" for n in rows.roi_number.tolist()]
    known = {roi_ids[i] for i in np.flatnonzero(candidate).tolist()}
    skipped["ifcb_label_without_roi"] += sum(1 for k in labels if k not in known)

    keep = candidate.copy()
    label_of: list[Label | None] = [None] * len(roi_ids)
    accept = set(options.accept_statuses)
    for i in np.flatnonzero(candidate).tolist():
        label = labels.get(roi_ids[i])
        label_of[i] = label
        status = label.status if label else None
        if status is None:
            if not options.keep_unlabelled:
                keep[i] = False
                reject([rows.roi_number[i]], Reason.NOT_VALIDATED, [f"{roi_ids[i]}: no class label"])
        elif status not in accept:
            keep[i] = False
            reject([rows.roi_number[i]], Reason.NOT_VALIDATED,
                   [f"{roi_ids[i]}: annotation_status={status} ({label.name})"])

    rejects = make_rejects(reject_ids, STAGE, reject_reasons, reject_details)
    idx = np.flatnonzero(keep)
    skipped_out = {k: v for k, v in skipped.items() if v}
    if len(idx) == 0:
        yield IngestBatch(records=_empty_batch({}).records, rejects=rejects, skipped=skipped_out)
        return

    kept_hdr = hdr if options.hdr_keys is None else {k: v for k, v in hdr.items() if k in set(options.hdr_keys)}
    hdr_json = extra_json(kept_hdr) or "{}"
    lid_json = json.dumps(lid, ensure_ascii=False)
    instrument = name.instrument if name else (f"IFCB{hdr['imagerID']}" if str(hdr.get("imagerID", "")).strip().isdigit() else None)
    event_date = name.sample_time if name else (str(hdr["sampleTime"]) if hdr.get("sampleTime") else None)
    roi_file = str(roi_path)

    for b0 in range(0, len(idx), options.batch_size):
        part = idx[b0:b0 + options.batch_size]
        n = len(part)
        ids = [roi_ids[i] for i in part.tolist()]
        labs = [label_of[i] for i in part.tolist()]
        # extra is templated rather than json.dumps'd per ROI: the header part (often ~100 keys)
        # is serialised once per bin; keys stay in sorted order as extra_json writes them.
        extras = []
        for i, lab in zip(part.tolist(), labs, strict=True):
            auto = f'"class_name_auto": {json.dumps(lab.auto_name, ensure_ascii=False)}, ' \
                if lab is not None and lab.auto_name is not None else ""
            score = f', "score": {json.dumps(lab.score)}' if lab is not None and lab.score is not None else ""
            extras.append(
                f'{{"adc_layout": "{rows.layout.name}", "adc_trigger": {int(rows.trigger[i])}, "bin": {lid_json}, '
                f'{auto}"hdr": {hdr_json}, "roi_x": {int(rows.roi_x[i])}, "roi_y": {int(rows.roi_y[i])}{score}}}')
        records = pa.table({
            "record_id": make_record_ids(SOURCE, ids),
            "source": [SOURCE] * n,
            "source_dataset": pa.array([options.dataset] * n, pa.string()),
            "occurrence_id": ids,
            "media_id": ids,
            "identifier": [ifcb_uri(roi_file, s[i], w[i], h[i]) for i in part.tolist()],
            "format": ["image/png"] * n,
            "license": [options.license] * n,
            "verbatim_name": pa.array([lab.name if lab else None for lab in labs], pa.string()),
            "annotation_status": pa.array([lab.status if lab else None for lab in labs], pa.string()),
            "instrument": pa.array([instrument] * n, pa.string()),
            "event_date": pa.array([event_date] * n, pa.string()),
            "decimal_latitude": pa.array([options.latitude] * n, pa.float64()),
            "decimal_longitude": pa.array([options.longitude] * n, pa.float64()),
            "depth_min_m": pa.array([options.depth_m] * n, pa.float64()),
            "depth_max_m": pa.array([options.depth_m] * n, pa.float64()),
            "width": pa.array(w[part], pa.int64()),
            "height": pa.array(h[part], pa.int64()),
            "extra": extras,
        })
        first = b0 == 0
        yield IngestBatch(records=records, rejects=rejects if first else empty_rejects(),
                          skipped=skipped_out if first else {})


CONNECTOR = IfcbConnector()
