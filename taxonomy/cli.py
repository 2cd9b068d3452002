"""Command line for curators: parse or resolve label lists (``biocorpus names ...``) and build backbones."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path

import polars as pl
import typer

from schemas import RANKS
from taxonomy.backbone import KINDS, build_backbone, find_backbone, load_backbone
from taxonomy.names import parse_names
from taxonomy.resolver import ResolveSettings, resolve_names

names_app = typer.Typer(help="Parse and resolve scientific names (one per line, from a file or stdin).",
                        no_args_is_help=True)


def _read_lines(source: Path | None) -> list[str]:
    """The non-blank lines of ``source`` (a file, or stdin for None / ``-``), read as UTF-8 the same
    way from either: undecodable bytes become U+FFFD, said once on stderr with the first such line."""
    stdin = source is None or str(source) == "-"
    if stdin:
        buffer = getattr(sys.stdin, "buffer", None)
        # a text-only stdin (embedding, tests) has already decoded: surrogates stand for bad bytes
        data = buffer.read() if buffer is not None else sys.stdin.read().encode("utf-8", "surrogateescape")
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            typer.echo(f"error: cannot read {source}: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from exc
    lines: list[str] = []
    bad: list[int] = []
    for number, raw in enumerate(data.split(b"\n"), 1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            line = raw.decode("utf-8", errors="replace")
            bad.append(number)
        if line.strip():
            lines.append(line.rstrip("\r"))
    if bad:
        where = "stdin" if stdin else str(source)
        typer.echo(f"warning: {where} is not valid UTF-8: undecodable bytes on {len(bad)} line"
                   f"{'' if len(bad) == 1 else 's'} (first: line {bad[0]}) were replaced with U+FFFD", err=True)
    return lines


def _tsv(value) -> str:
    if value is None:
        return ""
    return str(value).replace("\t", " ").replace("\n", " ")


def _write(df: pl.DataFrame) -> None:
    out = sys.stdout
    out.write("\t".join(df.columns) + "\n")
    for row in df.iter_rows():
        out.write("\t".join(_tsv(v) for v in row) + "\n")
    out.flush()


@names_app.command("parse")
def parse_cmd(source: Path | None = typer.Argument(None, help="file with one name per line; '-' or nothing: stdin")) -> None:
    """TSV: input, canonical, authorship, rank (plus kind and qualifier)."""
    lines = _read_lines(source)
    parsed = parse_names(lines)
    _write(parsed.select("input", "canonical", "authorship", "rank", "kind", "qualifier"))


@names_app.command("resolve")
def resolve_cmd(
    source: Path | None = typer.Argument(None, help="file with one name per line; '-' or nothing: stdin"),
    backbone: str = typer.Option(..., "--backbone", "-b", help="backbone folder or name under <data>/backbones/"),
    data_root: Path = typer.Option(Path("data"), "--data-root", help="where named backbones live"),
    fuzzy_threshold: float = typer.Option(0.85, help="minimum fuzzy similarity"),
    max_edit_distance: int = typer.Option(2, help="most edits in a fuzzy match"),
    no_fuzzy: bool = typer.Option(False, "--no-fuzzy", help="exact and higher-rank matches only"),
) -> None:
    """TSV: input, canonical, authorship, rank, the 7 ranks, taxon_id, match_type, score, note."""
    try:
        bb = load_backbone(find_backbone(backbone, data_root))
    except FileNotFoundError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from exc
    lines = _read_lines(source)
    settings = ResolveSettings(fuzzy=not no_fuzzy, fuzzy_threshold=fuzzy_threshold,
                               max_edit_distance=max_edit_distance)
    queries = pl.DataFrame({"verbatim_name": lines}, schema={"verbatim_name": pl.String})
    res = resolve_names(queries, bb, settings)
    table = pl.DataFrame({"input": lines}, schema={"input": pl.String}).join(
        res, left_on="input", right_on="verbatim_name", how="left", maintain_order="left")
    _write(table.select("input", "canonical", "authorship", "rank", *RANKS, "taxon_id", "match_type",
                        pl.col("match_score").alias("score"), pl.col("match_note").alias("note")))


def build_backbone_cli(kind: str, input: Path, data_root: Path = Path("data"), version: str | None = None,
                       name: str | None = None) -> Path:
    """What ``biocorpus backbone`` calls: build, store and print a one-line summary; returns the folder."""
    if kind not in KINDS:
        raise typer.BadParameter(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    version = version or dt.date.today().isoformat()
    existed = (Path(data_root) / "backbones" / (name or kind) / version / "backbone.parquet").is_file()
    folder = build_backbone(kind, Path(input), Path(data_root), version, name)
    bb = load_backbone(folder)
    replaced = " (replacing the earlier build of that version)" if existed else ""
    typer.echo(f"backbone {bb.name} {bb.version}: {bb.table.height} usages -> {folder}{replaced}")
    return folder
