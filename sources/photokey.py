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
    """Canonical form of a URL for hashing: http and https alike, lower-case host, no fragment."""
    parts = urlsplit(url.strip())
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
