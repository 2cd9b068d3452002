"""Polite, bounded fetching of image bytes over HTTP(S), and of local URIs through the same face.

Per host: a concurrency limit and a token-bucket rate, slowed down multiplicatively on 429/503
and sped up additively on success (AIMD), paused for ``Retry-After``. Per request: bounded
redirects, refusal of private/link-local/loopback addresses (unless allowed), ``X-Robots-Tag:
noai``/``noimageai`` and Content-Type checked on the headers before the body is read, a body size
cap, and a magic-byte check on the first bytes. Every outcome is a ``FetchResult`` whose failure
``reason`` comes from ``shards.status``; transient failures are retried here with jittered
exponential backoff.
"""

from __future__ import annotations

import asyncio
import functools
import importlib
import ipaddress
import random
import socket
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from yarl import URL

if TYPE_CHECKING:  # aiohttp loads when a Fetcher opens (~0.3 s): not for every CLI command
    import aiohttp

from shards import status
from shards.image import sniff_format

DEFAULT_USER_AGENT = (
    "biocorpus/0.1.0 (biodiversity image corpus downloader; honours X-Robots-Tag noai/noimageai; "
    "set download.user_agent to add your contact address)"
)
# Schemes read from disk or archives by sources.localuri instead of the network.
LOCAL_SCHEMES = ("file", "zip", "ifcb")
_REDIRECTS = {301, 302, 303, 307, 308}
# Content-Types that are certainly not an image; image/* and octet-stream go on to the magic check.
_NON_IMAGE_TYPES = ("text/", "application/json", "application/xml", "application/xhtml", "application/javascript")
_SNIFF_BYTES = 16
_UNLIMITED_START = 64.0  # req/s an unlimited host is throttled to after its first 429/503


@dataclass(frozen=True)
class HostLimit:
    """Politeness for one host: simultaneous requests, requests per second (0 = unlimited), burst."""

    concurrency: int = 8
    rate: float = 20.0
    burst: float | None = None


@dataclass(frozen=True)
class FetchOptions:
    user_agent: str = DEFAULT_USER_AGENT
    timeout: float = 30.0
    connect_timeout: float = 10.0
    retries: int = 3
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    retry_after_max: float = 120.0
    max_bytes: int = 50 * 1024 * 1024
    max_redirects: int = 5
    allow_private: bool = False
    allow_loopback: bool = False
    default_host: HostLimit = HostLimit()
    hosts: Mapping[str, HostLimit] = field(default_factory=dict)
    total_concurrency: int = 256
    min_rate: float = 0.5
    seed: int | None = None
    # a host name that did not resolve for this many URLs in a row is given up on for the run: its
    # other URLs fail at once (host_unresolved) instead of each being tried and retried
    unresolved_per_host: int = 3


@dataclass(frozen=True)
class FetchResult:
    """The bytes of one image, or why there are none (``reason`` from ``shards.status``)."""

    data: bytes | None
    reason: str | None = None
    http_status: int | None = None
    attempts: int = 0
    host: str | None = None
    content_type: str | None = None

    @property
    def ok(self) -> bool:
        return self.reason is None


class PrivateAddressError(OSError):
    """A host resolved only to addresses the options do not allow."""


class _Retry(Exception):
    def __init__(self, reason: str, http_status: int | None = None, retry_after: float | None = None):
        super().__init__(reason)
        self.reason, self.http_status, self.retry_after = reason, http_status, retry_after


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or HTTP-date); ``None`` if absent
    or unparseable."""
    if value is None:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when is None or when.tzinfo is None:
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    if seconds != seconds:  # NaN
        return None
    return max(0.0, seconds)


def robots_forbid_ai(values: list[str]) -> bool:
    """True when any ``X-Robots-Tag`` value carries ``noai`` or ``noimageai``, with or without a
    ``botname:`` prefix (we honour directives addressed to any bot: we cannot know every alias)."""
    for value in values:
        for token in value.split(","):
            directive = token.rsplit(":", 1)[-1].strip().lower()
            if directive in ("noai", "noimageai"):
                return True
    return False


def is_refused_address(ip: str, allow_private: bool = False, allow_loopback: bool = False) -> bool:
    """Whether connecting to ``ip`` is refused: loopback (and 0.0.0.0, which reaches it) unless
    ``allow_loopback``; private, link-local (cloud metadata), reserved, multicast unless
    ``allow_private``."""
    try:
        addr = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return True
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback or addr.is_unspecified:
        return not allow_loopback
    if addr.is_private or addr.is_link_local or addr.is_reserved or addr.is_multicast:
        return not allow_private
    return False


@functools.cache
def _guarded_resolver_class() -> type:
    """The class of a resolver that resolves names, then drops refused addresses, so a public name
    pointing inside is caught at connect time (checking before the request would leave a
    DNS-rebinding window). Made at the first use, when aiohttp loads."""
    import aiohttp
    from aiohttp.abc import AbstractResolver

    class _GuardedResolver(AbstractResolver):
        def __init__(self, allow_private: bool, allow_loopback: bool):
            self._inner = aiohttp.DefaultResolver()
            self._allow = (allow_private, allow_loopback)

        async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET):
            infos = await self._inner.resolve(host, port, family)
            kept = [i for i in infos if not is_refused_address(i["host"], *self._allow)]
            if not kept:
                raise PrivateAddressError(f"{host} resolves only to refused addresses")
            return kept

        async def close(self) -> None:
            await self._inner.close()

    return _GuardedResolver


class _HostState:
    """Concurrency slots, token bucket and Retry-After pause of one host."""

    def __init__(self, limit: HostLimit, min_rate: float):
        self.slots = asyncio.Semaphore(limit.concurrency)
        self.max_rate = limit.rate
        self.rate = limit.rate
        self.min_rate = min(min_rate, limit.rate) if limit.rate > 0 else min_rate
        self.capacity = limit.burst or max(1.0, limit.rate)
        self.tokens = self.capacity
        self.stamp = time.monotonic()
        self.blocked_until = 0.0
        self.lock = asyncio.Lock()
        self.unresolved = 0  # URLs in a row whose host name did not resolve

    async def take_token(self) -> None:
        # The lock makes waiters queue in order instead of all waking on the same refill.
        async with self.lock:
            while True:
                now = time.monotonic()
                if now < self.blocked_until:
                    await asyncio.sleep(self.blocked_until - now)
                    continue
                if self.rate <= 0:
                    return
                self.tokens = min(self.capacity, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return
                await asyncio.sleep((1 - self.tokens) / self.rate)

    def slow_down(self, retry_after: float | None) -> None:
        # An unlimited host that pushes back starts from a finite rate.
        base = self.rate if self.rate > 0 else _UNLIMITED_START
        self.rate = max(self.min_rate, base / 2)
        self.tokens = min(self.tokens, 0.0)
        if retry_after:
            self.blocked_until = max(self.blocked_until, time.monotonic() + retry_after)

    def speed_up(self) -> None:
        if self.max_rate <= 0:
            if self.rate > 0:
                self.rate += 1.0
                if self.rate >= _UNLIMITED_START:
                    self.rate = 0.0
            return
        if self.rate < self.max_rate:
            self.rate = min(self.max_rate, self.rate + self.max_rate / 20)


def _localuri():
    try:
        return importlib.import_module("sources.localuri")
    except ImportError as exc:
        raise RuntimeError(
            "a local image URI (file://, zip://, ifcb://) needs sources.localuri (read_local/is_local), "
            f"which could not be imported: {exc}"
        ) from exc


def is_local(url: str) -> bool:
    """Whether ``url`` names a local image (read from disk or an archive, not the network)."""
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme not in LOCAL_SCHEMES:
        return False
    try:
        return bool(importlib.import_module("sources.localuri").is_local(url))
    except ImportError:
        return True


def host_of(url: str) -> str:
    """The host the politeness limits apply to (``local`` for local URIs, ``""`` if none)."""
    if is_local(url):
        return "local"
    try:
        return (urlsplit(url).hostname or "").lower()
    except ValueError:
        return ""


class Fetcher:
    """``async with Fetcher(opts) as f: result = await f.fetch(url)``; safe to share across tasks."""

    def __init__(self, opts: FetchOptions = FetchOptions()):
        self.opts = opts
        self._hosts: dict[str, _HostState] = {}
        self._rng = random.Random(opts.seed)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Fetcher:
        import aiohttp

        connector = aiohttp.TCPConnector(
            limit=self.opts.total_concurrency,
            limit_per_host=0,
            resolver=_guarded_resolver_class()(self.opts.allow_private, self.opts.allow_loopback),
            ttl_dns_cache=300,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            headers={"User-Agent": self.opts.user_agent, "Accept": "image/*,*/*;q=0.5"},
            timeout=aiohttp.ClientTimeout(total=self.opts.timeout, sock_connect=self.opts.connect_timeout),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def host_state(self, host: str) -> _HostState:
        state = self._hosts.get(host)
        if state is None:
            limit = self.opts.hosts.get(host, self.opts.default_host)
            state = self._hosts[host] = _HostState(limit, self.opts.min_rate)
        return state

    async def fetch(self, url: str) -> FetchResult:
        """Fetch one image's bytes; never raises for a bad URL or a failing server."""
        if is_local(url):
            return await self._fetch_local(url)
        try:
            parts = urlsplit(url)
            host = (parts.hostname or "").lower()
        except ValueError:
            return FetchResult(None, status.INVALID_URL, attempts=0)
        if parts.scheme.lower() not in ("http", "https") or not host:
            return FetchResult(None, status.INVALID_URL, attempts=0, host=host or None)
        state = self.host_state(host)
        if self.opts.unresolved_per_host and state.unresolved >= self.opts.unresolved_per_host:
            return FetchResult(None, status.HOST_UNRESOLVED, attempts=0, host=host)
        reason, http_status = status.CONNECTION_ERROR, None
        attempts = self.opts.retries + 1
        for attempt in range(1, attempts + 1):
            try:
                result = await self._attempt(url, host)
            except _Retry as retry:
                reason, http_status = retry.reason, retry.http_status
                if reason == status.HOST_UNRESOLVED and attempt >= 2:  # not transient: one retry, no more
                    attempts = attempt
                    break
                if attempt <= self.opts.retries:
                    await asyncio.sleep(self._backoff(attempt, retry.retry_after))
                continue
            state.unresolved = 0
            if result.ok:
                state.speed_up()
            return replace(result, attempts=attempt, host=host)
        state.unresolved = state.unresolved + 1 if reason == status.HOST_UNRESOLVED else 0
        return FetchResult(None, reason, http_status, attempts=attempts, host=host)

    def _backoff(self, attempt: int, retry_after: float | None) -> float:
        delay = min(self.opts.backoff_max, self.opts.backoff_base * 2 ** (attempt - 1))
        delay *= self._rng.uniform(0.5, 1.5)  # jitter: clients that failed together retry apart
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.opts.retry_after_max))
        return delay

    async def _fetch_local(self, url: str) -> FetchResult:
        module = _localuri()
        try:
            data = await asyncio.to_thread(module.read_local, url)
        except (OSError, LookupError, ValueError):
            return FetchResult(None, status.LOCAL_MISSING, attempts=1, host="local")
        if len(data) > self.opts.max_bytes:
            return FetchResult(None, status.TOO_LARGE, attempts=1, host="local")
        return FetchResult(bytes(data), attempts=1, host="local")

    def _refused_literal(self, url: URL) -> bool:
        host = url.host or ""
        try:
            ipaddress.ip_address(host.split("%", 1)[0])
        except ValueError:
            return False  # a name: the guarded resolver checks what it resolves to
        return is_refused_address(host, self.opts.allow_private, self.opts.allow_loopback)

    async def _attempt(self, url: str, host: str) -> FetchResult:
        import aiohttp  # loaded by __aenter__ already: a lookup

        assert self._session is not None, "use Fetcher as an async context manager"
        state = self.host_state(host)
        async with state.slots:
            await state.take_token()
            current = URL(url, encoded=True)
            for _ in range(self.opts.max_redirects + 1):
                if current.scheme not in ("http", "https"):
                    return FetchResult(None, status.INVALID_URL)
                if self._refused_literal(current):
                    return FetchResult(None, status.PRIVATE_ADDRESS)
                try:
                    async with self._session.get(current, allow_redirects=False) as resp:
                        if resp.status in _REDIRECTS:
                            location = resp.headers.get("Location")
                            if not location:
                                return FetchResult(None, status.HTTP_4XX, resp.status)
                            current = resp.url.join(URL(location))
                            continue
                        return await self._handle(resp, state)
                except aiohttp.ClientConnectorDNSError as exc:
                    if isinstance(exc.os_error, PrivateAddressError):
                        return FetchResult(None, status.PRIVATE_ADDRESS)
                    raise _Retry(status.HOST_UNRESOLVED) from exc
                except TimeoutError as exc:
                    raise _Retry(status.TIMEOUT) from exc
                except aiohttp.ClientPayloadError as exc:
                    raise _Retry(status.BODY_TRUNCATED) from exc
                except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError) as exc:
                    raise _Retry(status.CONNECTION_ERROR) from exc
            return FetchResult(None, status.TOO_MANY_REDIRECTS)

    async def _handle(self, resp: aiohttp.ClientResponse, state: _HostState) -> FetchResult:
        code = resp.status
        ctype = resp.headers.get("Content-Type")
        if 200 <= code < 300:
            if robots_forbid_ai(resp.headers.getall("X-Robots-Tag", [])):
                return FetchResult(None, status.ROBOTS_NOAI, code, content_type=ctype)
            if ctype and ctype.lower().lstrip().startswith(_NON_IMAGE_TYPES):
                return FetchResult(None, status.NOT_AN_IMAGE, code, content_type=ctype)
            length = resp.content_length
            if length is not None and length > self.opts.max_bytes:
                return FetchResult(None, status.TOO_LARGE, code, content_type=ctype)
            return await self._read_body(resp, code, ctype)
        if code in (429, 503):
            retry_after = parse_retry_after(resp.headers.get("Retry-After"))
            state.slow_down(retry_after)
            reason = status.HTTP_429_EXHAUSTED if code == 429 else status.HTTP_5XX
            raise _Retry(reason, code, retry_after)
        if code in (404, 410):
            return FetchResult(None, status.HTTP_404, code, content_type=ctype)
        if code >= 500 or code == 408:
            raise _Retry(status.HTTP_5XX if code >= 500 else status.TIMEOUT, code)
        return FetchResult(None, status.HTTP_4XX, code, content_type=ctype)

    async def _read_body(self, resp: aiohttp.ClientResponse, code: int, ctype: str | None) -> FetchResult:
        chunks: list[bytes] = []
        size = 0
        sniffed = False
        async for chunk in resp.content.iter_chunked(1 << 16):
            chunks.append(chunk)
            size += len(chunk)
            if size > self.opts.max_bytes:
                return FetchResult(None, status.TOO_LARGE, code, content_type=ctype)
            if not sniffed and size >= _SNIFF_BYTES:
                sniffed = True
                if sniff_format(b"".join(chunks)[:_SNIFF_BYTES]) is None:
                    return FetchResult(None, status.NOT_AN_IMAGE, code, content_type=ctype)
        data = b"".join(chunks)
        if resp.content_length is not None and len(data) < resp.content_length:
            raise _Retry(status.BODY_TRUNCATED, code)
        if not sniffed and sniff_format(data) is None:
            return FetchResult(None, status.NOT_AN_IMAGE, code, content_type=ctype)
        return FetchResult(data, None, code, content_type=ctype)
