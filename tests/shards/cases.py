"""The download cases shared by the stage tests: one row per failure kind plus good images."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from schemas.record import from_rows, make_record_id
from shards import status


def download_cases(srv, token: str, local_image: Path) -> list[tuple[str, str | None]]:
    """(url, expected reason or None for ok). ``token`` keeps stateful routes apart per test."""
    u = srv.url
    return [
        (u("/img/ocelot.jpg"), None),
        (u("/img/american_black_bear.jpg"), None),
        (u("/img/domestic_cattle.jpg"), None),
        (u("/img/vehicle.jpg"), None),
        (u("/img/small.jpg"), None),
        (u("/img/small.png"), None),
        (u("/img/big8000.jpg"), None),
        (u("/redirect/2/small.jpg"), None),
        (u(f"/retry429/small.jpg?n=1&after=1&t={token}"), None),
        (local_image.resolve().as_uri(), None),
        (u("/img/missing.jpg"), status.HTTP_404),
        (u("/status/500"), status.HTTP_5XX),
        (u("/status/403"), status.HTTP_4XX),
        (u("/reset"), status.CONNECTION_ERROR),
        (u("/cut/ocelot.jpg"), status.BODY_TRUNCATED),
        (u("/html"), status.NOT_AN_IMAGE),
        (u("/html-as-jpeg"), status.NOT_AN_IMAGE),
        (u("/img/truncated.jpg"), status.TRUNCATED_IMAGE),
        (u("/slow/small.jpg"), status.TIMEOUT),
        (u("/always429"), status.HTTP_429_EXHAUSTED),
        (u("/img/bomb.jpg"), status.DECOMPRESSION_BOMB),
        (u("/noai/small.jpg"), status.ROBOTS_NOAI),
        (u("/redirect/9/small.jpg"), status.TOO_MANY_REDIRECTS),
        ("http://10.0.0.1/img.jpg", status.PRIVATE_ADDRESS),
        ("http://169.254.169.254/latest/meta-data", status.PRIVATE_ADDRESS),
        ((local_image.parent / "no_such_image.jpg").resolve().as_uri(), status.LOCAL_MISSING),
        ("not a url", status.INVALID_URL),
    ]


def write_records(path: Path, urls: list[str], splits=("train", "val")) -> pa.Table:
    """A curated-style records table (record columns + split, caption, cls) as Parquet."""
    rows = [
        {
            "record_id": make_record_id("test", url),
            "source": "test",
            "media_id": str(i),
            "identifier": url,
            "license": "cc-by-4.0",
            "rights_holder": f"Photographer {i}",
            "creator": f"Photographer {i}",
            "species": "Leopardus pardalis",
        }
        for i, url in enumerate(urls)
    ]
    table = from_rows(rows)
    table = table.append_column("split", pa.array([splits[i % len(splits)] for i in range(len(urls))]))
    table = table.append_column("caption", pa.array([f"a photo of Leopardus pardalis {i}" for i in range(len(urls))]))
    table = table.append_column("cls", pa.array([i % 3 for i in range(len(urls))], pa.int64()))
    path.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path / "part-0.parquet")
    return table
