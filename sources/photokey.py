"""Photo keys: one dot-free key per photo, equal for the same photo reached through any source.

An iNaturalist photo is served under many URLs (static.inaturalist.org, the open-data S3 bucket
under its virtual-host or path style, the photo page) and reappears in GBIF and EOL; all of them
carry the numeric photo id, so the key is ``inat-photo-<id>``. Any other URL gets
``url-<hash>`` of its normalised form (scheme and host case, default port, fragment ignored).
"""

from __future__ import annotations

import hashlib
import re
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

_INAT_HOSTS = (
    r"(?:static\.inaturalist\.org"
    r"|inaturalist-open-data\.s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com"
    r"|s3(?:[.-][a-z0-9-]+)?\.amazonaws\.com/(?:inaturalist-open-data|static\.inaturalist\.org)"
    r"|(?:www\.)?inaturalist\.org"
    r"|[a-z0-9-]+\.inaturalist\.org)"
)
_INAT_PHOTO = re.compile(
    r"^(?:https?:)?//" + _INAT_HOSTS + r"/photos/(\d+)(?:[/?#.]|$)", re.IGNORECASE
)
_DEFAULT_PORTS = {"http": "80", "https": "443"}


def inat_photo_id(url: str | None) -> int | None:
    """The iNaturalist photo id in ``url``, or ``None`` when it is not an iNaturalist photo URL."""
    if not url:
        return None
    m = _INAT_PHOTO.match(url.strip())
    return int(m.group(1)) if m else None


def normalise_url(url: str) -> str:
    """Canonical form of a URL for hashing: http and https alike, lower-case host, no fragment.

    Text that does not parse as a URL (an unclosed IPv6 bracket in the host, as messy sources
    have) is its own form, without a fragment: it still gets a key, and never stops an ingest.
    """
    text = url.strip()
    try:
        parts = urlsplit(text)
    except ValueError:
        return text.split("#", 1)[0]
    scheme = parts.scheme.lower()
    try:
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:  # an unparseable port: keep the network location as written
        host, port = parts.netloc.lower(), None
    if port is not None and _DEFAULT_PORTS.get(scheme) != str(port):
        host = f"{host}:{port}"
    if scheme in _DEFAULT_PORTS:
        scheme = "https"  # the same image is often listed under both schemes
    return urlunsplit((scheme, host, parts.path or "/", parts.query, ""))


def photo_key(url: str | None) -> str | None:
    """``inat-photo-<id>`` for iNaturalist photos, ``url-<16 hex>`` otherwise; ``None`` for no URL."""
    if url is None or not url.strip():
        return None
    photo_id = inat_photo_id(url)
    if photo_id is not None:
        return f"inat-photo-{photo_id}"
    digest = hashlib.blake2b(normalise_url(url).encode(), digest_size=8).hexdigest()
    return f"url-{digest}"


def photo_key_of(*urls: str | None) -> str | None:
    """The key of the first URL that names an iNaturalist photo, else the key of the first URL."""
    for url in urls:
        if inat_photo_id(url) is not None:
            return photo_key(url)
    for url in urls:
        if url and url.strip():
            return photo_key(url)
    return None


# ---------------------------------------------------------------- column-wise

# URLs whose photo key needs no Python: printable ASCII, http(s), a plain host (no port or user),
# no fragment, no empty query. Anything else goes through photo_key itself.
_SIMPLE_URL = r"^(?P<scheme>[hH][tT][tT][pP][sS]?)://(?P<host>[A-Za-z0-9.-]+)(?P<path>/[!-\"$-\x3e@-~]*)?" \
              r"(?P<query>\?[!-\"$-~]+)?$"
_INAT_PHOTO_RE2 = r"(?i)^(?:https?:)?//" + _INAT_HOSTS + r"/photos/(?P<id>\d+)(?:[/?#.]|$)"


def photo_keys(urls: pa.Array | pa.ChunkedArray) -> pa.Array:
    """:func:`photo_key` of every URL of a string array, the same strings, column-wise.

    iNaturalist photo URLs and simple http(s) URLs are keyed by arrow compute (the latter hashed
    from the arrow buffer, one blake2b per URL); the rest, once per distinct value, by
    :func:`photo_key`.
    """
    urls = urls.combine_chunks() if isinstance(urls, pa.ChunkedArray) else urls
    urls = urls.cast(pa.string())
    n = len(urls)
    if n == 0:
        return pa.array([], pa.string())
    sample = urls.slice(0, 4096)
    if pc.count_distinct(sample, mode="all").as_py() <= len(sample) // 2:  # URLs repeat: key each once
        uniques = pc.unique(urls)
        return pc.take(_photo_keys(uniques), pc.index_in(urls, value_set=uniques))
    return _photo_keys(urls)


def _photo_keys(urls: pa.Array) -> pa.Array:
    n = len(urls)
    simple = pc.fill_null(pc.match_substring_regex(urls, _SIMPLE_URL), False)
    inat_hit = pc.and_(simple, pc.fill_null(pc.match_substring_regex(urls, _INAT_PHOTO_RE2), False))
    digits = pc.struct_field(pc.extract_regex(pc.if_else(inat_hit, urls, ""), _INAT_PHOTO_RE2), [0])
    trimmed = pc.utf8_ltrim(digits, "0")
    inat_key = pc.binary_join_element_wise(
        "inat-photo-", pc.if_else(pc.equal(trimmed, ""), "0", trimmed), "")
    hashed = pc.and_(simple, pc.invert(inat_hit))
    out = pc.if_else(inat_hit, inat_key, pa.nulls(n, pa.string()))
    rows = np.flatnonzero(hashed.to_numpy(zero_copy_only=False))
    if len(rows):  # normalise_url of a simple URL: https, lower-case host, "/" for no path
        parts = pc.extract_regex(pc.take(urls, pa.array(rows)), _SIMPLE_URL)
        path = pc.struct_field(parts, [2])
        normal = pc.binary_join_element_wise("https://", pc.utf8_lower(pc.struct_field(parts, [1])),
                                             pc.if_else(pc.equal(path, ""), "/", path),
                                             pc.struct_field(parts, [3]), "")
        keys = hex_digests(normal, b"", "url-")
        where = np.full(n, -1, np.int64)
        where[rows] = np.arange(len(rows))
        out = pc.if_else(hashed, pc.take(keys, pa.array(where, mask=where < 0)), out)
    rest = pc.invert(simple)
    if pc.any(rest).as_py():
        others = pc.if_else(rest, urls, pa.nulls(n, pa.string()))
        uniques = pc.unique(others)
        mapped = pa.array([photo_key(v) for v in uniques.to_pylist()], pa.string())
        out = pc.if_else(rest, pc.take(mapped, pc.index_in(others, value_set=uniques)), out)
    return out


def hex_digests(keys: pa.Array | pa.ChunkedArray, salt: bytes, prefix: str) -> pa.Array:
    """``prefix`` + the 16 hex digits of blake2b-8 of ``salt`` + each key's UTF-8 bytes.

    The bytes are hashed straight from the arrow buffer by copies of a hash already fed the salt,
    and the digests turned to text by numpy: only the hash itself runs per row in Python.
    No nulls.
    """
    keys = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys
    keys = keys.cast(pa.string())
    n = len(keys)
    if n == 0:
        return pa.array([], pa.string())
    if keys.null_count:
        raise ValueError("hex_digests: null keys")
    _, offsets, data = keys.buffers()
    ends = np.frombuffer(offsets, np.int32)[keys.offset: keys.offset + n + 1].tolist()
    view = memoryview(data) if data is not None else memoryview(b"")
    copy = hashlib.blake2b(salt, digest_size=8).copy
    out: list[bytes] = []
    append = out.append
    for start, end in zip(ends[:-1], ends[1:], strict=True):  # no Python call per row besides the hash
        h = copy()
        h.update(view[start:end])
        append(h.digest())
    digests = np.frombuffer(b"".join(out), np.uint8).reshape(n, 8)
    head = np.frombuffer(prefix.encode(), np.uint8)
    width = len(head) + 16
    text = np.empty((n, width), np.uint8)
    text[:, :len(head)] = head
    hexd = np.frombuffer(b"0123456789abcdef", np.uint8)
    text[:, len(head)::2] = hexd[digests >> 4]
    text[:, len(head) + 1::2] = hexd[digests & 15]
    starts = np.arange(0, width * (n + 1), width, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(starts), pa.py_buffer(text))


