"""Taxonomic backbones (GBIF DwC-A, Catalogue of Life ColDP, iNaturalist) loaded into one versioned Parquet table.

Every loader turns its source into the same *usage* rows (id, parent, accepted id, name, rank,
status) and :func:`build_table` does the rest once, vectorised with Polars joins: canonical names
with the same parser the resolver uses, synonym chains followed to their accepted taxon, the seven
ranks materialised for every accepted taxon by walking parents level by level (one join per level
for all taxa at once, never a per-row recursion), synonyms given their accepted taxon's lineage,
and the English vernacular name of the most specific rank that has one.

On disk: ``<data>/backbones/<name>/<version>/backbone.parquet`` + ``manifest.json``. A source
that is not of the kind asked for (its required columns missing), a damaged zip, or one that
gives no usable name is an error, and nothing is written: a good backbone of the same version
is never replaced by an empty one.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import polars as pl

from schemas import RANKS
from taxonomy.names import parse_names

BACKBONE_FORMAT = "1"
KINDS = ("gbif", "coldp", "inat", "inat-dwca")
DEFAULT_GBIF_URL = "https://hosted-datasets.gbif.org/datasets/backbone/current/backbone.zip"

USAGE_SCHEMA: dict[str, pl.DataType] = {
    "taxon_id": pl.String,
    "parent_id": pl.String,
    "accepted_id": pl.String,
    "scientific_name": pl.String,
    "canonical": pl.String,
    "authorship": pl.String,
    "rank": pl.String,
    "status": pl.String,
}
VERNACULAR_SCHEMA: dict[str, pl.DataType] = {"taxon_id": pl.String, "vernacular_name": pl.String,
                                              "language": pl.String}
BACKBONE_COLUMNS: tuple[str, ...] = (
    "taxon_id", "scientific_name", "canonical", "key", "authorship", "rank", "status",
    "accepted_id", "parent_id", "accepted_name", "accepted_rank", *RANKS,
    *(f"{r}_id" for r in RANKS), "vernacular_name", "vernacular_rank",
)
# source status -> accepted / synonym / doubtful / misapplied / excluded
_STATUS = {
    "accepted": "accepted", "provisionally accepted": "accepted", "valid": "accepted",
    "true": "accepted", "active": "accepted",
    "doubtful": "doubtful", "false": "doubtful", "inactive": "doubtful",
    "synonym": "synonym", "ambiguous synonym": "synonym", "homotypic_synonym": "synonym",
    "heterotypic_synonym": "synonym", "proparte_synonym": "synonym", "homotypic synonym": "synonym",
    "heterotypic synonym": "synonym", "pro parte synonym": "synonym", "objective synonym": "synonym",
    "subjective synonym": "synonym",
    "misapplied": "misapplied",
    "bare name": "excluded",
}
_ENGLISH = ["en", "eng", "english"]
_PLAIN_NAME = r"^[A-Z][a-z]+(?:-[a-z]+)?(?: [a-z]+(?:-[a-z]+)*){0,2}$"
# "Not assigned" / "incertae sedis" containers are not ranks of their children
_NOT_A_TAXON = r"(?i)^(?:not assigned|incertae sedis|unassigned|unknown)$"


# ----------------------------------------------------------------------------------------------
# reading sources


class BackboneSourceError(ValueError):
    """A backbone source that cannot be built from: wrong kind, damaged archive, no usable names."""


# the columns each kind's main file needs (matched case-insensitively, prefixes such as ``dwc:``
# dropped; each inner tuple is "one of these"), and the separator the file uses
_REQUIRED: dict[str, tuple[tuple[tuple[str, ...], ...], str]] = {
    "gbif": ((("taxonID",), ("scientificName", "canonicalName"), ("taxonRank",)), "\t"),
    "coldp": ((("ID",), ("parentID",), ("scientificName",), ("rank",)), "\t"),
    "inat": ((("taxon_id", "id"), ("ancestry", "parent_id"), ("name",), ("rank",)), "auto"),
    "inat-dwca": ((("taxonID",), ("parentNameUsageID",), ("scientificName",), ("taxonRank",)), ","),
}
_DESCRIBED = {
    "gbif": "a GBIF Backbone DwC-A Taxon file (tab-separated)",
    "coldp": "a Catalogue of Life ColDP NameUsage file",
    "inat": "an iNaturalist taxa table (open-data taxa or id,parent_id,name,rank)",
    "inat-dwca": "an iNaturalist taxonomy DwC-A taxa.csv (comma-separated)",
}


def _header(path: Path, separator: str) -> list[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        line = f.readline(1 << 20).lstrip("\ufeff").rstrip("\r\n")
    if separator == "auto":
        separator = "\t" if "\t" in line else ","
    return [c.strip().strip('"').lower().split(":")[-1] for c in line.split(separator)] if line else []


def _missing(path: Path, kind: str, separator: str | None = None) -> list[str]:
    """The required columns of ``kind`` that ``path``'s header lacks (each as its first spelling)."""
    groups, default = _REQUIRED[kind]
    have = set(_header(path, separator or default))
    return [g[0] for g in groups if not have.intersection(c.lower() for c in g)]


def _check_kind(path: Path, kind: str, source: Path, separator: str | None = None) -> None:
    """Fail, naming the kind ``path`` looks like, when it lacks the columns of ``kind``."""
    missing = _missing(path, kind, separator)
    if not missing:
        return
    alike = [k for k in KINDS if k != kind and not _missing(path, k, "auto" if k == "coldp" else None)]
    where = str(source) if Path(source) == Path(path) else f"{source} ({Path(path).name})"
    if not _header(path, "auto"):
        raise BackboneSourceError(f"{where}: empty file, not {_DESCRIBED[kind]}")
    hint = (f"it looks like {_DESCRIBED[alike[0]]}: `biocorpus backbone {alike[0]} --input {source}`"
            if alike else f"its header starts {', '.join(_header(path, 'auto')[:6])!r}")
    raise BackboneSourceError(f"{where} is not {_DESCRIBED[kind]}: it has no {', '.join(missing)} column"
                              f"{'' if len(missing) == 1 else 's'}; {hint}")


def _damaged_zip(source: Path) -> BackboneSourceError:
    return BackboneSourceError(f"{source} is not a complete zip archive (truncated or damaged download?); "
                               "fetch it again")


def _zip_magic(path: Path) -> bool:
    """A zip whatever its name (a download saved without ``.zip``), damaged or not."""
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


@contextmanager
def _member(source: Path, names: tuple[str, ...], main: bool = True) -> Iterator[Path | None]:
    """A path to the first of ``names`` in a folder or a zip (streamed to a temp file, never unpacked
    whole). A single file is the source's ``main`` file whatever its name, and no other member."""
    source = Path(source)
    if source.is_dir():
        for n in names:
            for cand in (source / n, *source.glob(f"*/{n}")):
                if cand.exists():
                    yield cand
                    return
        yield None
        return
    if source.suffix.lower() == ".zip" or _zip_magic(source):
        with tempfile.TemporaryDirectory(prefix="biocorpus-backbone-") as tmp:
            out = None
            try:
                with zipfile.ZipFile(source) as zf:
                    members = {Path(m).name: m for m in zf.namelist() if not m.startswith("__MACOSX")}
                    hit = next((members[n] for n in names if n in members), None)
                    if hit is not None:
                        out = Path(tmp) / Path(hit).name
                        with zf.open(hit) as src, open(out, "wb") as dst:
                            shutil.copyfileobj(src, dst, 1 << 20)
            except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
                raise _damaged_zip(source) from exc
            yield out
        return
    yield source if main else None


def _read_tsv(path: Path, separator: str = "\t") -> pl.DataFrame:
    # quote_char=None: GBIF and CoL TSVs are unquoted and names contain '"'
    return pl.read_csv(path, separator=separator, quote_char=None if separator == "\t" else '"',
                       infer_schema=False, truncate_ragged_lines=True, encoding="utf8-lossy")


def _col(df: pl.DataFrame, *names: str) -> pl.Expr:
    """First of ``names`` present (DwC files differ in prefixes: ``dwc:taxonID``, ``col:ID``)."""
    lowered = {c.lower().split(":")[-1]: c for c in df.columns}
    for n in names:
        if n.lower() in lowered:
            return pl.col(lowered[n.lower()]).cast(pl.String)
    return pl.lit(None, dtype=pl.String)


def _empty_to_null(df: pl.DataFrame) -> pl.DataFrame:
    return df.with_columns(
        [pl.when(pl.col(c).str.strip_chars() == "").then(None).otherwise(pl.col(c).str.strip_chars()).alias(c)
         for c, t in df.schema.items() if t == pl.String]
    )


def read_gbif(source: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """GBIF Backbone DwC-A (``Taxon.tsv`` + ``VernacularName.tsv``), folder or zip."""
    with _member(source, ("Taxon.tsv", "taxon.txt", "Taxon.txt")) as taxon:
        if taxon is None:
            raise FileNotFoundError(f"{source}: no Taxon.tsv (GBIF backbone DwC-A expected)")
        _check_kind(taxon, "gbif", source)
        df = _read_tsv(taxon)
    usages = df.select(
        _col(df, "taxonID").alias("taxon_id"),
        _col(df, "parentNameUsageID").alias("parent_id"),
        _col(df, "acceptedNameUsageID").alias("accepted_id"),
        _col(df, "scientificName").alias("scientific_name"),
        _col(df, "canonicalName").alias("canonical"),
        _col(df, "scientificNameAuthorship").alias("authorship"),
        _col(df, "taxonRank").alias("rank"),
        _col(df, "taxonomicStatus").alias("status"),
    )
    with _member(source, ("VernacularName.tsv", "vernacularname.txt", "VernacularName.txt"), main=False) as vern:
        vdf = _read_tsv(vern) if vern is not None else None
    return _empty_to_null(usages), _vernaculars(vdf, "taxonID", "vernacularName", "language")


def read_coldp(source: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Catalogue of Life ColDP (``NameUsage.tsv`` + ``VernacularName.tsv``); a synonym's parentID is its accepted taxon."""
    with _member(source, ("NameUsage.tsv", "NameUsage.txt", "NameUsage.csv")) as nu:
        if nu is None:
            raise FileNotFoundError(f"{source}: no NameUsage.tsv (ColDP expected)")
        separator = "," if nu.suffix == ".csv" else "\t"
        _check_kind(nu, "coldp", source, separator)
        df = _read_tsv(nu, separator)
    status = _col(df, "status").str.to_lowercase()
    is_syn = status.str.contains("synonym") | (status == "misapplied")
    parent = _col(df, "parentID")
    usages = df.select(
        _col(df, "ID").alias("taxon_id"),
        pl.when(is_syn).then(None).otherwise(parent).alias("parent_id"),
        pl.when(is_syn).then(parent).otherwise(None).alias("accepted_id"),
        _col(df, "scientificName").alias("scientific_name"),
        pl.lit(None, dtype=pl.String).alias("canonical"),
        _col(df, "authorship").alias("authorship"),
        _col(df, "rank").alias("rank"),
        status.alias("status"),
    )
    with _member(source, ("VernacularName.tsv", "VernacularName.txt"), main=False) as vern:
        vdf = _read_tsv(vern) if vern is not None else None
    return _empty_to_null(usages), _vernaculars(vdf, "taxonID", "name", "language")


def read_inat(source: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """iNaturalist taxa: the open-data ``taxa`` table (tab-separated, ``ancestry`` = slash-separated
    ids, root first), or an adjacency list ``id,parent_id,name,rank``."""
    with _member(source, ("taxa.csv", "taxa.tsv", "taxa.txt", "taxonomy.csv")) as path:
        if path is None:
            raise FileNotFoundError(f"{source}: no iNaturalist taxa file")
        _check_kind(path, "inat", source)
        with path.open(encoding="utf-8", errors="replace") as f:
            head = f.readline()
        df = _read_tsv(path, "\t" if "\t" in head else ",")
    if "ancestry" in df.columns:
        parent = _col(df, "ancestry").str.split("/").list.last()
        active = _col(df, "active").str.to_lowercase()
        usages = df.select(
            _col(df, "taxon_id", "id").alias("taxon_id"),
            parent.alias("parent_id"),
            pl.lit(None, dtype=pl.String).alias("accepted_id"),
            _col(df, "name").alias("scientific_name"),
            pl.lit(None, dtype=pl.String).alias("canonical"),
            pl.lit(None, dtype=pl.String).alias("authorship"),
            _col(df, "rank").alias("rank"),
            pl.when(active == "false").then(pl.lit("inactive")).otherwise(pl.lit("accepted")).alias("status"),
        )
    else:
        usages = df.select(
            _col(df, "id", "taxon_id").alias("taxon_id"),
            _col(df, "parent_id").alias("parent_id"),
            pl.lit(None, dtype=pl.String).alias("accepted_id"),
            _col(df, "name").alias("scientific_name"),
            pl.lit(None, dtype=pl.String).alias("canonical"),
            pl.lit(None, dtype=pl.String).alias("authorship"),
            _col(df, "rank").alias("rank"),
            pl.lit("accepted").alias("status"),
        )
    return _empty_to_null(usages), _vernaculars(None, "", "", "")


def read_inat_dwca(source: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """iNaturalist taxonomy DwC-A (``taxa.csv`` with taxonID/parentNameUsageID URLs, ``VernacularNames-english.csv``)."""
    with _member(source, ("taxa.csv",)) as path:
        if path is None:
            raise FileNotFoundError(f"{source}: no taxa.csv (iNaturalist taxonomy DwC-A expected)")
        _check_kind(path, "inat-dwca", source)
        df = _read_tsv(path, ",")
    last = r"([^/]+)$"
    usages = df.select(
        _col(df, "taxonID", "id").str.extract(last).alias("taxon_id"),
        _col(df, "parentNameUsageID").str.extract(last).alias("parent_id"),
        pl.lit(None, dtype=pl.String).alias("accepted_id"),
        _col(df, "scientificName").alias("scientific_name"),
        pl.lit(None, dtype=pl.String).alias("canonical"),
        pl.lit(None, dtype=pl.String).alias("authorship"),
        _col(df, "taxonRank").alias("rank"),
        pl.lit("accepted").alias("status"),
    )
    with _member(source, ("VernacularNames-english.csv", "VernacularNames.csv"), main=False) as vern:
        vdf = _read_tsv(vern, ",") if vern is not None else None
    if vdf is not None:
        vdf = vdf.with_columns(_col(vdf, "id", "taxonID").str.extract(last).alias("id"))
        if "language" not in [c.lower() for c in vdf.columns]:
            vdf = vdf.with_columns(pl.lit("en").alias("language"))
    return _empty_to_null(usages), _vernaculars(vdf, "id", "vernacularName", "language")


def _vernaculars(vdf: pl.DataFrame | None, id_col: str, name_col: str, lang_col: str) -> pl.DataFrame:
    if vdf is None or vdf.height == 0:
        return pl.DataFrame(schema=VERNACULAR_SCHEMA)
    return _empty_to_null(vdf.select(
        _col(vdf, id_col, "taxonID").alias("taxon_id"),
        _col(vdf, name_col, "vernacularName", "name").alias("vernacular_name"),
        _col(vdf, lang_col, "language").alias("language"),
    ))


READERS = {"gbif": read_gbif, "coldp": read_coldp, "inat": read_inat, "inat-dwca": read_inat_dwca}


# ----------------------------------------------------------------------------------------------
# building the table


def canonicalise(names: pl.Series) -> pl.Series:
    """Canonical forms for backbone names: plain ones (``Genus epithet``) as they are, the rest
    through the resolver's own parser so both sides of the join agree."""
    names = names.cast(pl.String)
    plain = names.str.contains(_PLAIN_NAME).fill_null(False)
    odd = names.filter(~plain & names.is_not_null())
    if odd.len() == 0:
        return names
    parsed = parse_names(odd.unique())
    lookup = dict(zip(parsed["input"].to_list(), parsed["canonical"].to_list(), strict=True))
    fixed = names.to_frame("n").with_columns(
        pl.when(plain).then(pl.col("n"))
        .otherwise(pl.col("n").replace_strict(lookup, default=None, return_dtype=pl.String))
        .alias("n")
    )
    return fixed["n"]


def build_table(usages: pl.DataFrame, vernaculars: pl.DataFrame | None = None, max_depth: int = 64) -> pl.DataFrame:
    """The backbone table from usage rows: one row per usage with :data:`BACKBONE_COLUMNS`."""
    u = usages.select(list(USAGE_SCHEMA)).cast(USAGE_SCHEMA)
    u = u.filter(pl.col("taxon_id").is_not_null()).unique("taxon_id", keep="first", maintain_order=True)
    status = pl.col("status").str.to_lowercase().str.strip_chars()
    u = u.with_columns(
        status.replace_strict(_STATUS, default=status).alias("status"),
        pl.col("rank").str.to_lowercase().str.replace_all("_", " ").str.strip_chars().alias("rank"),
    )
    # names to match on: the source's canonical if given, else parsed from the scientific name
    base = pl.when(pl.col("canonical").is_not_null()).then(pl.col("canonical")).otherwise(pl.col("scientific_name"))
    u = u.with_columns(base.alias("_base"))
    u = u.with_columns(canonicalise(u["_base"]).alias("canonical")).drop("_base")
    u = u.with_columns(
        pl.when(pl.col("canonical").str.contains(_NOT_A_TAXON)).then(None).otherwise(pl.col("canonical"))
        .alias("canonical"),
        pl.when(pl.col("status") == "synonym").then(pl.col("accepted_id")).otherwise(None).alias("accepted_id"),
    )
    u = u.filter(pl.col("status") != "excluded")

    # accepted target of every usage, following synonym-of-synonym chains a few hops
    target = u.select("taxon_id", pl.coalesce("accepted_id", "taxon_id").alias("target"))
    nonsyn = u.filter(pl.col("status") != "synonym").select(pl.col("taxon_id").alias("target"))
    for _ in range(8):
        hop = u.filter(pl.col("status") == "synonym").select(
            pl.col("taxon_id").alias("target"), pl.col("accepted_id").alias("next"))
        moved = target.join(hop, on="target", how="left").with_columns(
            pl.coalesce("next", "target").alias("target")).drop("next")
        if moved["target"].equals(target["target"]):
            break
        target = moved
    target = target.join(nonsyn.with_columns(pl.lit(True).alias("_ok")), on="target", how="left")
    target = target.with_columns(pl.when(pl.col("_ok")).then(pl.col("target")).otherwise(None).alias("target"))
    u = u.join(target.select("taxon_id", "target"), on="taxon_id", how="left", maintain_order="left")

    lineage = _walk_lineage(u.filter(pl.col("status") != "synonym"), max_depth)
    lineage = lineage.join(_vernacular_per_taxon(lineage, vernaculars), on="taxon_id", how="left")
    acc = u.filter(pl.col("status") != "synonym").select(
        pl.col("taxon_id").alias("target"),
        pl.col("canonical").alias("_acc_canonical"),
        pl.col("scientific_name").alias("_acc_sci"),
        pl.col("rank").alias("accepted_rank"),
    ).join(lineage.rename({"taxon_id": "target"}), on="target", how="left")
    out = u.join(acc, on="target", how="left", maintain_order="left")
    out = out.with_columns(
        pl.col("target").alias("accepted_id"),
        pl.coalesce("_acc_sci", "_acc_canonical").alias("accepted_name"),
        pl.col("canonical").str.to_lowercase().alias("key"),
        pl.when(pl.col("vernacular_rank") == "self").then(pl.col("accepted_rank"))
        .otherwise(pl.col("vernacular_rank")).alias("vernacular_rank"),
    )
    return out.select(list(BACKBONE_COLUMNS))


def _walk_lineage(nodes: pl.DataFrame, max_depth: int) -> pl.DataFrame:
    """Seven ranks (names and ids) for every node: all nodes climb one level per join."""
    info = nodes.select(
        pl.col("taxon_id").alias("anc"), pl.col("parent_id").alias("_parent"),
        pl.col("rank").alias("_rank"), pl.col("canonical").alias("_name"),
    )
    frontier = nodes.select("taxon_id", pl.col("taxon_id").alias("anc"))
    found: list[pl.DataFrame] = []
    for _ in range(max_depth):
        if frontier.height == 0:
            break
        step = frontier.join(info, on="anc", how="inner")
        found.append(step.filter(pl.col("_rank").is_in(RANKS) & pl.col("_name").is_not_null())
                     .select("taxon_id", "_rank", "_name", "anc"))
        frontier = step.filter(pl.col("_parent").is_not_null() & (pl.col("_parent") != pl.col("anc"))) \
            .select("taxon_id", pl.col("_parent").alias("anc"))
    long = pl.concat(found) if found else pl.DataFrame(
        schema={"taxon_id": pl.String, "_rank": pl.String, "_name": pl.String, "anc": pl.String})
    # the nearest ancestor of a rank wins (a genus inside a genus-named subgenus chain)
    long = long.unique(["taxon_id", "_rank"], keep="first", maintain_order=True)
    names = long.pivot(on="_rank", index="taxon_id", values="_name")
    ids = long.pivot(on="_rank", index="taxon_id", values="anc")
    ids = ids.rename({c: f"{c}_id" for c in ids.columns if c != "taxon_id"})
    for r in RANKS:
        if r not in names.columns:
            names = names.with_columns(pl.lit(None, dtype=pl.String).alias(r))
        if f"{r}_id" not in ids.columns:
            ids = ids.with_columns(pl.lit(None, dtype=pl.String).alias(f"{r}_id"))
    out = nodes.select("taxon_id").join(names, on="taxon_id", how="left").join(ids, on="taxon_id", how="left")
    return out.select("taxon_id", *RANKS, *[f"{r}_id" for r in RANKS])


def _vernacular_per_taxon(lineage: pl.DataFrame, vernaculars: pl.DataFrame | None) -> pl.DataFrame:
    """English vernacular from the most specific rank that has one (the taxon itself first)."""
    empty = lineage.select("taxon_id", pl.lit(None, dtype=pl.String).alias("vernacular_name"),
                           pl.lit(None, dtype=pl.String).alias("vernacular_rank"))
    if vernaculars is None or vernaculars.height == 0:
        return empty
    en = vernaculars.filter(
        pl.col("language").is_null() | pl.col("language").str.to_lowercase().is_in(_ENGLISH)
    ).filter(pl.col("vernacular_name").is_not_null())
    en = en.unique("taxon_id", keep="first", maintain_order=True).select("taxon_id", "vernacular_name")
    vmap = en.rename({"taxon_id": "_vid", "vernacular_name": "_v"})
    cols = [("self", "taxon_id")] + [(r, f"{r}_id") for r in reversed(RANKS)]
    frame = lineage.select("taxon_id", *[c for _, c in cols[1:]])
    names, ranks = [], []
    for label, c in cols:
        alias = f"_v_{label}"
        frame = frame.join(vmap.rename({"_v": alias}), left_on=c, right_on="_vid", how="left",
                           maintain_order="left")
        names.append(pl.col(alias))
        ranks.append(pl.when(pl.col(alias).is_not_null()).then(pl.lit(label)))
    frame = frame.with_columns(
        pl.coalesce(names).alias("vernacular_name"),
        pl.coalesce(ranks).alias("_vr"),
    )
    # "self" (the taxon's own name) becomes the taxon's rank in build_table
    return frame.select("taxon_id", "vernacular_name", pl.col("_vr").alias("vernacular_rank"))


# ----------------------------------------------------------------------------------------------
# storing and loading


@dataclass
class Backbone:
    """A loaded backbone: the table plus its identity (name, version) for provenance."""

    name: str
    version: str
    table: pl.DataFrame
    path: Path | None = None
    manifest: dict = field(default_factory=dict)


def _sha256(path: Path) -> str | None:
    if not path.is_file():
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_backbone(table: pl.DataFrame, data_root: Path, name: str, version: str, kind: str,
                   source: str | None = None, extra: dict | None = None) -> Path:
    """Write ``table`` atomically under ``<data_root>/backbones/<name>/<version>/``; returns the folder.
    A table without a single usable name is refused (:class:`BackboneSourceError`), so that it
    never replaces a stored version."""
    if table.height == 0 or table["key"].null_count() == table.height:
        raise BackboneSourceError(f"backbone {name} {version}: no usable names in {source or 'the table'} "
                                  f"({table.height} usages); nothing written")
    dest = Path(data_root) / "backbones" / name / version
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=dest.parent))
    table.write_parquet(tmp / "backbone.parquet", compression="zstd", statistics=True)
    counts = table.group_by("status").len().sort("status")
    manifest = {
        "name": name,
        "version": version,
        "kind": kind,
        "format": BACKBONE_FORMAT,
        "source": source,
        "source_sha256": _sha256(Path(source)) if source else None,
        "rows": table.height,
        "by_status": dict(zip(counts["status"].to_list(), counts["len"].to_list(), strict=True)),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
        **(extra or {}),
    }
    (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(tmp, dest)
    return dest


def build_backbone(kind: str, source: Path, data_root: Path, version: str | None = None,
                   name: str | None = None) -> Path:
    """Read a source of ``kind`` (gbif / coldp / inat / inat-dwca), build and store it; returns the folder."""
    if kind not in READERS:
        raise ValueError(f"unknown backbone kind {kind!r}; expected one of {', '.join(KINDS)}")
    source = Path(source)
    if not source.exists():
        raise FileNotFoundError(f"backbone source not found: {source}")
    t0 = time.perf_counter()
    usages, vern = READERS[kind](source)
    table = build_table(usages, vern)
    named = table.height - table["key"].null_count()
    if named == 0:
        raise BackboneSourceError(
            f"{source}: no usable names for a {kind} backbone ({table.height} usages, none with a name); "
            f"is it {_DESCRIBED[kind]}? nothing written")
    version = version or dt.date.today().isoformat()
    return write_backbone(table, data_root, name or kind, version, kind, str(source),
                          {"build_seconds": round(time.perf_counter() - t0, 3)})


def _built_at(folder: Path) -> tuple[bool, dt.datetime | None, str]:
    """Sort key of a version folder: its manifest's build time (``created``), then its name;
    versions whose manifest has no readable time (older builds) come first, by name."""
    created = None
    try:
        stamp = backbone_manifest(folder).get("created")
        created = dt.datetime.fromisoformat(stamp) if isinstance(stamp, str) else None
        if created is not None and created.tzinfo is None:
            created = created.replace(tzinfo=dt.UTC)
    except (ValueError, OSError):
        created = None
    return (created is not None, created, folder.name)


def newest_version(root: Path) -> tuple[Path, str | None]:
    """The newest version folder under ``root`` (``<data>/backbones/<name>``) by build time, and a
    line saying which was picked when there are several (None for one)."""
    versions = sorted((d for d in root.glob("*") if (d / "backbone.parquet").is_file()), key=_built_at)
    if not versions:
        raise FileNotFoundError(root)
    pick = versions[-1]
    if len(versions) == 1:
        return pick, None
    created = _built_at(pick)[1]
    when = f"built {created.isoformat(timespec='seconds')}" if created else "no build time recorded: by name"
    others = ", ".join(d.name for d in reversed(versions[:-1]))
    return pick, (f"backbone {root.name}: {len(versions)} versions, using the newest, {pick.name} ({when}; "
                  f"also: {others}); name a version folder to choose another")


def find_backbone(path_or_name: str | Path, data_root: Path | None = None, announce: bool = True) -> Path:
    """The version folder of a stored backbone: a folder, a ``backbone.parquet`` file, or a name
    under ``<data_root>/backbones/`` (its newest version by the build time in its manifest; with
    ``announce``, which one is said on stderr when there are several)."""
    p = Path(path_or_name)
    if p.is_file() and p.suffix == ".parquet":
        return p.parent
    if (p / "backbone.parquet").is_file():
        return p
    root = Path(data_root or "data") / "backbones" / str(path_or_name)
    try:
        folder, note = newest_version(root)
    except FileNotFoundError:
        raise FileNotFoundError(
            f"no backbone {path_or_name!r}: not a backbone folder and nothing under {root}; "
            "build one with `biocorpus backbone KIND --input PATH` (KIND: gbif, coldp, inat, inat-dwca)") from None
    if note and announce:
        print(note, file=sys.stderr)
    return folder


def backbone_manifest(folder: Path) -> dict:
    """The stored backbone's ``manifest.json`` (name, version, source, counts), or {} if absent."""
    path = Path(folder) / "manifest.json"
    return json.loads(path.read_text()) if path.is_file() else {}


def load_backbone(path_or_name: str | Path, data_root: Path | None = None, announce: bool = False) -> Backbone:
    """Load a stored backbone: a version folder, a ``backbone.parquet`` file, or a name under
    ``<data_root>/backbones/`` (its newest version, as :func:`find_backbone`; quiet by default,
    as workers load it once each)."""
    folder = find_backbone(path_or_name, data_root, announce)
    manifest = backbone_manifest(folder)
    table = pl.read_parquet(folder / "backbone.parquet")
    return Backbone(manifest.get("name", folder.parent.name), manifest.get("version", folder.name),
                    table, folder, manifest)


def fetch_backbone(url: str = DEFAULT_GBIF_URL, dest: Path | str = "backbone.zip", chunk: int = 1 << 20,
                   timeout: float = 60.0, retries: int = 5) -> Path:
    """Stream ``url`` to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

    The file is renamed into place only when complete (Content-Length checked when the server
    sends one), so an interrupted ``make backbone`` continues where it stopped.
    """
    import requests

    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    for attempt in range(retries):
        have = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={have}-"} if have else {}
        headers["User-Agent"] = "biocorpus-backbone-fetch"
        try:
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as r:
                if r.status_code == 416:  # already complete
                    break
                r.raise_for_status()
                if have and r.status_code != 206:
                    have = 0  # server ignored the range: start over
                total = r.headers.get("Content-Length")
                expected = have + int(total) if total is not None else None
                with open(part, "ab" if have else "wb") as f:
                    for block in r.iter_content(chunk):
                        f.write(block)
            if expected is None or part.stat().st_size >= expected:
                break
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError):
            if attempt == retries - 1:
                raise
            time.sleep(min(2 ** attempt, 30))
    else:
        raise OSError(f"download of {url} incomplete after {retries} attempts")
    os.replace(part, dest)
    return dest
