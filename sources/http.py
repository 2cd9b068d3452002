"""A small polite HTTP client shared by the API connectors: rate limit, retries, resumable fetch.

Transient failures (HTTP 429 and 5xx, timeouts, dropped connections, a JSON answer cut short or
replaced by an HTML page) are retried here with exponential backoff and full jitter, never sooner
than a ``Retry-After`` allows (one longer than the client will wait stops at once, saying when to
come back); a host name that does not resolve is retried once only (a resolver's hiccup passes in
a second; a name that does not exist, or no network at all, does not pass in a minute of backoff);
anything else is raised at once.
The clock, the sleep and the random source are injectable so tests run without waiting.
"""

from __future__ import annotations

import email.utils
import logging
import random
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import requests
from pydantic import Field

try:
    from urllib3.exceptions import NameResolutionError
except ImportError:  # pragma: no cover - urllib3 < 2 has none: the socket.gaierror in the chain tells it
    NameResolutionError = socket.gaierror

from sources.base import SourceOptions

log = logging.getLogger(__name__)

USER_AGENT = "biocorpus/0.1 (biodiversity image corpus builder; +https://github.com/biocorpus/biocorpus)"
RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
NAME_RESOLUTION_RETRIES = 1  # retries of a host name that does not resolve (see the module's docstring)
# retries of an answer that is not JSON: a body cut short or a proxy's page passes in a minute; an
# api_base_url that is no JSON API does not, so a few tries only
NOT_JSON_RETRIES = 2
T = TypeVar("T")


class ApiOptions(SourceOptions):
    """The options every source that calls an HTTP API shares (its own Options extend these)."""

    api_base_url: str = Field(description="API root (each source sets its own; tests point it at loopback)")
    rate: float = Field(1.0, gt=0, description="API requests per second")
    max_retries: int = Field(5, ge=0, description="retries of a transient HTTP failure")
    timeout_s: float = Field(60.0, gt=0, description="HTTP timeout per request")
    user_agent: str = Field(USER_AGENT, description="User-Agent sent with every request")
    retry_after_max_s: float = Field(300.0, ge=0, description="longest Retry-After waited for; a server asking "
                                     "for a longer pause stops the ingest at once, saying when to rerun")


class ApiConnector:
    """Base of the connectors that call an API; sleep and clock are injectable so tests need no waiting."""

    def __init__(self, sleep: Callable[[float], None] = time.sleep, clock: Callable[[], float] = time.monotonic):
        self.sleep, self.clock = sleep, clock

    def client(self, options: ApiOptions) -> HttpClient:
        """The polite client of the source's API (``options.api_base_url``), with this connector's clock."""
        return HttpClient(options.api_base_url, rate=options.rate, max_retries=options.max_retries,
                          timeout_s=options.timeout_s, user_agent=options.user_agent,
                          retry_after_max_s=options.retry_after_max_s, sleep=self.sleep, clock=self.clock)


class HttpError(RuntimeError):
    """A request that failed for good (a non-retryable status, or retries exhausted).

    ``status`` is the HTTP status of the last answer (None when there was none: a timeout, a
    dropped connection, an answer of the wrong shape), so that the caller can word its advice by
    it (401/403: credentials, 404: no such resource); ``advice``, when not None, replaces that
    usual advice (a GBIF download that ended FAILED: a rerun requests a new one; ``""``: the
    message says it all). Both survive pickling, so an error raised in a worker process reaches
    the CLI whole.
    """

    def __init__(self, message: str, status: int | None = None, advice: str | None = None):
        super().__init__(message)
        self.status = status
        self.advice = advice

    def __reduce__(self):
        return type(self), (str(self), self.status, self.advice)


def page_results(page: Any, what: str) -> list:
    """The ``results`` list of a JSON page (none: ``[]``, the end); a page that is no object or
    whose results are no list means the base URL is not the API it should be: an error saying so."""
    results = (page.get("results") or []) if isinstance(page, dict) else None
    if not isinstance(results, list):
        got = type(page).__name__ if not isinstance(page, dict) else f"results of type {type(results).__name__}"
        raise HttpError(f"{what} answered {got}, not a list of results; is api_base_url that API?")
    return results


class TokenBucket:
    """Token bucket: ``rate`` tokens per second, at most ``burst`` saved up."""

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):
        if rate <= 0:
            raise ValueError("rate must be > 0 requests per second")
        self.rate, self.burst = float(rate), max(1.0, float(burst))
        self.clock, self.sleep = clock, sleep
        self.tokens = self.burst
        self.stamp = clock()

    def acquire(self) -> float:
        """Take one token, sleeping until one is available; returns the seconds slept."""
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return 0.0
        wait = (1.0 - self.tokens) / self.rate
        self.sleep(wait)
        self.stamp = self.clock()
        self.tokens = 0.0
        return wait


class NotJson(ValueError):
    """An answer that should be JSON and is not (what it is instead, and its HTTP status)."""

    def __init__(self, problem: str, status: int | None = None):
        super().__init__(problem)
        self.status = status


def not_json(resp: requests.Response, exc: BaseException) -> str:
    """What an answer that should be JSON was instead: its type, size and start, and the parser's error."""
    kind = resp.headers.get("Content-Type") or "no Content-Type"
    head = resp.content[:60].decode("utf-8", "replace")
    more = "..." if len(resp.content) > 60 else ""
    # where the parser stopped says something of a body that claims to be JSON (cut short), not of a page
    why = f": {exc}" if "json" in kind.lower() or not resp.content else ""
    return f"{kind}, {len(resp.content)} bytes: {head!r}{more}{why}"


def _duration(seconds: float) -> str:
    """``seconds`` as a person says it: 45 s, 12 min, 2.5 h."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def unresolved_host(exc: BaseException) -> str | None:
    """When ``exc`` (a ``requests.ConnectionError``) is a name-resolution failure (urllib3's
    ``NameResolutionError`` or a ``socket.gaierror`` anywhere in its chain of causes and wrapped
    reasons), the host that did not resolve (``""`` when the error does not say); else ``None``."""
    seen: set[int] = set()
    todo: list[object] = [exc]
    while todo:
        e = todo.pop()
        if not isinstance(e, BaseException) or id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, NameResolutionError):
            return str(getattr(getattr(e, "conn", None), "host", None) or "")
        if isinstance(e, socket.gaierror):
            return ""
        # requests wraps urllib3's MaxRetryError (in args), which holds the error as its reason
        todo.extend([*e.args, getattr(e, "reason", None), e.__cause__, e.__context__])
    return None


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delta-seconds or HTTP date), if any."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    wall = time.time() if now is None else now
    return max(0.0, when.timestamp() - wall)


class HttpClient:
    """requests.Session with a base URL, a token-bucket rate, retries with backoff and jitter."""

    def __init__(
        self,
        base_url: str = "",
        rate: float = 1.0,
        burst: float = 1.0,
        max_retries: int = 5,
        backoff_s: float = 1.0,
        backoff_max_s: float = 60.0,
        timeout_s: float = 30.0,
        user_agent: str = USER_AGENT,
        retry_after_max_s: float = 300.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        session: requests.Session | None = None,
    ):
        self.base_url = base_url.rstrip("/") + "/" if base_url else ""
        self.bucket = TokenBucket(rate, burst, clock=clock, sleep=sleep)
        self.max_retries, self.backoff_s, self.backoff_max_s = max_retries, backoff_s, backoff_max_s
        self.timeout_s = timeout_s
        self.retry_after_max_s = retry_after_max_s
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.session = session or requests.Session()
        self.session.headers["User-Agent"] = user_agent
        self.retries = 0  # total retries made, for stats

    def url(self, path_or_url: str) -> str:
        if "://" in path_or_url or not self.base_url:
            return path_or_url
        return self.base_url + path_or_url.lstrip("/")

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        """Delay before retry ``attempt`` (0-based): Retry-After if given (whole: a retry sooner
        than the server allows is refused again), else full jitter."""
        if retry_after is not None:
            return retry_after
        cap = min(self.backoff_max_s, self.backoff_s * (2 ** attempt))
        return self.rng.uniform(0, cap)

    def call(self, fn: Callable[[], T], what: str = "request") -> T:
        """Run ``fn`` (which does one HTTP exchange) under the rate limit, retrying transient errors.

        ``fn`` may return a ``requests.Response`` (a retryable status is retried, another error
        status raises :class:`HttpError`) or raise ``requests`` exceptions (``raise_for_status``).
        """
        attempt = 0
        while True:
            self.bucket.acquire()
            retry_after: float | None = None
            status: int | None = None
            retries = self.max_retries
            try:
                result = fn()
            except (requests.Timeout, requests.ConnectionError) as exc:
                reason = f"{type(exc).__name__}"
                host = unresolved_host(exc) if isinstance(exc, requests.ConnectionError) else None
                if host is not None:
                    retries = min(retries, NAME_RESOLUTION_RETRIES)
                    reason += f": the host name {host or '(unnamed)'} does not resolve"
            except requests.HTTPError as exc:
                resp = exc.response
                status = resp.status_code if resp is not None else None
                if status not in RETRY_STATUS:
                    raise HttpError(f"{what}: HTTP {status}", status) from exc
                reason = f"HTTP {status}"
                retry_after = parse_retry_after(resp.headers.get("Retry-After")) if resp is not None else None
            else:
                if not isinstance(result, requests.Response):
                    return result
                if result.status_code < 400:
                    return result  # type: ignore[return-value]
                if result.status_code not in RETRY_STATUS:
                    raise HttpError(f"{what}: HTTP {result.status_code}", result.status_code)
                status = result.status_code
                reason = f"HTTP {status}"
                retry_after = parse_retry_after(result.headers.get("Retry-After"))
                result.close()
            if retry_after is not None and retry_after > self.retry_after_max_s:
                # retrying sooner only earns another refusal; waiting that long here holds the run
                raise HttpError(f"{what}: {reason}: the server asked to wait {retry_after:.0f} s before the next "
                                f"request (Retry-After), longer than retry_after_max_s = {self.retry_after_max_s:.0f} "
                                f"s; run the same command again in {_duration(retry_after)} or later", status,
                                advice="")
            if attempt >= retries:
                raise HttpError(f"{what}: gave up after {attempt + 1} attempts ({reason})", status)
            delay = self.backoff(attempt, retry_after)
            log.info("%s: %s, retry %d in %.1fs", what, reason, attempt + 1, delay)
            self.retries += 1
            self.sleep(delay)
            attempt += 1

    def request(self, method: str, path_or_url: str, **kw: Any) -> requests.Response:
        url = self.url(path_or_url)
        kw.setdefault("timeout", self.timeout_s)
        return self.call(lambda: self.session.request(method, url, **kw), what=f"{method} {url.split('?')[0]}")

    def get(self, path_or_url: str, **kw: Any) -> requests.Response:
        return self.request("GET", path_or_url, **kw)

    def post(self, path_or_url: str, **kw: Any) -> requests.Response:
        return self.request("POST", path_or_url, **kw)

    def get_json(self, path_or_url: str, **kw: Any) -> Any:
        """The JSON of a GET, through :meth:`json_call`."""
        def once() -> Any:
            resp = self.get(path_or_url, **kw)
            try:
                return resp.json()
            except ValueError as exc:  # requests' JSONDecodeError (a ValueError), or a body not UTF-8
                raise NotJson(not_json(resp, exc), resp.status_code) from exc

        return self.json_call(once, f"GET {self.url(path_or_url).split('?')[0]}")

    def json_call(self, fn: Callable[[], T], what: str) -> T:
        """``fn()``, a request (through :meth:`call`) that returns its answer's JSON. An answer that
        is not JSON (``fn`` raises :class:`NotJson`: a body cut short, an HTML maintenance or proxy
        page) is retried as transient a few times, then raised as an :class:`HttpError` naming the
        URL and what came instead."""
        attempt = 0
        while True:
            try:
                return fn()
            except NotJson as exc:
                problem, status = str(exc), exc.status
            if attempt >= min(self.max_retries, NOT_JSON_RETRIES):
                raise HttpError(f"{what}: the answer is not JSON ({problem}; {attempt + 1} attempts); if it "
                                "persists, check that api_base_url is the API's root", status)
            delay = self.backoff(attempt, None)
            log.info("%s: the answer is not JSON (%s), retry %d in %.1fs", what, problem, attempt + 1, delay)
            self.retries += 1
            self.sleep(delay)
            attempt += 1

    def fetch(self, path_or_url: str, dest: Path, chunk_bytes: int = 1 << 16, **kw: Any) -> Path:
        """Download to ``dest``, resuming a partial ``dest.part`` with an HTTP Range request.

        The file appears at ``dest`` only when complete (rename from ``.part``); a server that
        ignores Range (status 200) restarts the download from zero.
        """
        dest = Path(dest)
        if dest.exists():
            return dest
        part = dest.with_name(dest.name + ".part")
        part.parent.mkdir(parents=True, exist_ok=True)
        url = self.url(path_or_url)
        attempt = 0
        while True:
            have = part.stat().st_size if part.exists() else 0
            headers = dict(kw.pop("headers", {}) or {})
            if have:
                headers["Range"] = f"bytes={have}-"
            resp = self.call(
                lambda headers=headers: self.session.get(url, headers=headers, stream=True, timeout=self.timeout_s, **kw),
                what=f"GET {url.split('?')[0]}",
            )
            if resp.status_code == 416 and have:
                resp.close()
                break  # the part already holds the whole body
            mode = "ab" if have and resp.status_code == 206 else "wb"
            expected = resp.headers.get("Content-Length")
            try:
                with open(part, mode) as fh:
                    for chunk in resp.iter_content(chunk_bytes):
                        fh.write(chunk)
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
                # an interrupted body: keep what arrived and resume from there
                if attempt >= self.max_retries:
                    raise HttpError(f"GET {url}: body interrupted {attempt + 1} times ({exc})") from exc
                self.sleep(self.backoff(attempt, None))
                attempt += 1
                continue
            finally:
                resp.close()
            written = part.stat().st_size - (have if mode == "ab" else 0)
            if expected is not None and written < int(expected):
                if attempt >= self.max_retries:
                    raise HttpError(f"GET {url}: body short by {int(expected) - written} bytes")
                self.sleep(self.backoff(attempt, None))
                attempt += 1
                continue
            break
        part.replace(dest)
        return dest
