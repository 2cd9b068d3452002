"""The fetcher against the loopback server: every failure kind, politeness, address refusal."""

from __future__ import annotations

import asyncio
from email.utils import formatdate

import pytest
from hypothesis import given
from hypothesis import strategies as st

from shards import status
from shards.fetch import (
    Fetcher,
    FetchOptions,
    HostLimit,
    is_refused_address,
    parse_retry_after,
    robots_forbid_ai,
)
from tests.shards.loopback import LoopbackServer

FAST = FetchOptions(allow_loopback=True, timeout=1.0, retries=1, backoff_base=0.01, backoff_max=0.05)


def fetch(url: str, opts: FetchOptions = FAST):
    async def go():
        async with Fetcher(opts) as f:
            return await f.fetch(url)

    return asyncio.run(go())


@pytest.mark.parametrize(
    "path, reason, attempts",
    [
        ("/img/ocelot.jpg", None, 1),
        ("/img/missing.jpg", status.HTTP_404, 1),
        ("/status/500", status.HTTP_5XX, 2),
        ("/status/503", status.HTTP_5XX, 2),
        ("/status/401", status.HTTP_4XX, 1),
        ("/reset", status.CONNECTION_ERROR, 2),
        ("/cut/ocelot.jpg", status.BODY_TRUNCATED, 2),
        ("/html", status.NOT_AN_IMAGE, 1),
        ("/html-as-jpeg", status.NOT_AN_IMAGE, 1),
        ("/slow/small.jpg", status.TIMEOUT, 2),
        ("/always429", status.HTTP_429_EXHAUSTED, 2),
        ("/noai/small.jpg", status.ROBOTS_NOAI, 1),
        ("/redirect/5/small.jpg", None, 1),
        ("/redirect/6/small.jpg", status.TOO_MANY_REDIRECTS, 1),
    ],
    ids=lambda v: str(v),
)
def test_outcome_per_route(server, path, reason, attempts):
    result = fetch(server.url(path))
    assert result.reason == reason
    assert result.attempts == attempts
    assert (result.data is not None) == (reason is None)


def test_body_size_cap(server):
    opts = FetchOptions(allow_loopback=True, max_bytes=100_000, retries=0)
    assert fetch(server.url("/img/ocelot.jpg"), opts).reason == status.TOO_LARGE  # Content-Length
    assert fetch(server.url("/chunked-huge"), opts).reason == status.TOO_LARGE  # no length given


@pytest.mark.parametrize("url", ["http://10.1.2.3/a.jpg", "http://192.168.0.1/", "http://169.254.169.254/latest",
                                 "http://[fe80::1]/x", "http://[::ffff:10.0.0.1]/x"])
def test_private_addresses_refused_without_connecting(url):
    assert fetch(url).reason == status.PRIVATE_ADDRESS


def test_loopback_refused_unless_allowed(server):
    opts = FetchOptions(retries=0)
    assert fetch(server.url("/img/small.jpg"), opts).reason == status.PRIVATE_ADDRESS
    # a name that resolves to loopback is caught by the resolver, not only IP literals
    assert fetch(f"http://localhost:{server.port}/img/small.jpg", opts).reason == status.PRIVATE_ADDRESS
    assert fetch(f"http://localhost:{server.port}/img/small.jpg").ok


def test_retry_after_pauses_the_host_and_slows_it_down(server):
    async def go():
        async with Fetcher(FAST) as f:
            result = await f.fetch(server.url("/retry429/small.jpg?n=1&after=1&t=fetch"))
            return result, f.host_state("127.0.0.1").rate

    result, rate = asyncio.run(go())
    assert result.ok and result.attempts == 2
    times = server.hit_times["/retry429/small.jpg?n=1&after=1&t=fetch"]
    assert times[1] - times[0] >= 0.9
    assert rate < FAST.default_host.rate  # halved on 429, one success added back a twentieth


def test_token_bucket_spaces_requests(server):
    opts = FetchOptions(allow_loopback=True, default_host=HostLimit(concurrency=8, rate=10, burst=1))

    async def go():
        async with Fetcher(opts) as f:
            return await asyncio.gather(*(f.fetch(server.url(f"/img/small.jpg?bucket={i}")) for i in range(6)))

    assert all(r.ok for r in asyncio.run(go()))
    starts = sorted(server.hit_times[f"/img/small.jpg?bucket={i}"][0] for i in range(6))
    assert starts[-1] - starts[0] >= 0.4  # 5 gaps of 0.1 s at 10 req/s, burst 1


def test_host_concurrency_limit(served_images):
    opts = FetchOptions(allow_loopback=True, default_host=HostLimit(concurrency=1, rate=0))
    with LoopbackServer(served_images, latency_ms=(150, 150)) as srv:

        async def go():
            async with Fetcher(opts) as f:
                return await asyncio.gather(*(f.fetch(srv.url(f"/img/small.jpg?c={i}")) for i in range(3)))

        assert all(r.ok for r in asyncio.run(go()))
        starts = sorted(srv.hit_times[f"/img/small.jpg?c={i}"][0] for i in range(3))
    assert starts[2] - starts[0] >= 0.28  # one at a time: each waits for the previous 150 ms response


def test_local_file_uri(real_images, tmp_path):
    path = tmp_path / "x.jpg"
    path.write_bytes(real_images["ocelot.jpg"])
    ok = fetch(path.as_uri())
    assert ok.ok and ok.data == real_images["ocelot.jpg"] and ok.host == "local"
    assert fetch((tmp_path / "nope.jpg").as_uri()).reason == status.LOCAL_MISSING


@given(st.integers(0, 10**6))
def test_retry_after_seconds(n):
    assert parse_retry_after(str(n)) == n


def test_retry_after_http_date_and_garbage():
    soon = parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000)
    assert soon == pytest.approx(30, abs=1)
    assert parse_retry_after(formatdate(1_000_000 - 50, usegmt=True), now=1_000_000) == 0
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


@pytest.mark.parametrize("values, forbidden", [
    (["noai"], True), (["noindex, NoImageAI"], True), (["otherbot: noai"], True), (["noindex", "nofollow"], False),
    (["unavailable_after: 25 Jun 2010 15:00:00 PST"], False), ([], False),
])
def test_robots_tag(values, forbidden):
    assert robots_forbid_ai(values) is forbidden


@given(st.text(max_size=40))
def test_robots_tag_never_raises(value):
    assert robots_forbid_ai([value]) in (True, False)


@pytest.mark.parametrize("ip, refused", [("8.8.8.8", False), ("127.0.0.1", True), ("0.0.0.0", True),
                                         ("10.0.0.1", True), ("172.16.5.4", True), ("169.254.1.1", True),
                                         ("::1", True), ("2001:4860:4860::8888", False), ("garbage", True)])
def test_address_policy(ip, refused):
    assert is_refused_address(ip) is refused


def test_a_host_that_does_not_resolve_is_retried_once_then_given_up_on():
    """``.invalid`` never resolves (RFC 6761): each of the first URLs of such a host is tried twice
    (a name that does not resolve is not transient), then the host's other URLs fail at once."""
    opts = FetchOptions(retries=3, backoff_base=0.01, backoff_max=0.02, unresolved_per_host=3)

    async def go():
        async with Fetcher(opts) as f:
            first = [await f.fetch(f"http://nowhere.invalid/{i}.jpg") for i in range(3)]
            rest = await asyncio.gather(*(f.fetch(f"http://nowhere.invalid/more/{i}.jpg") for i in range(20)))
            other = await f.fetch("http://elsewhere.invalid/a.jpg")
            return first, rest, other

    first, rest, other = asyncio.run(go())
    assert [(r.reason, r.attempts) for r in first] == [(status.HOST_UNRESOLVED, 2)] * 3
    assert {(r.reason, r.attempts) for r in rest} == {(status.HOST_UNRESOLVED, 0)}
    assert (other.reason, other.attempts) == (status.HOST_UNRESOLVED, 2)  # another host is tried on its own


def test_a_resolving_host_keeps_its_retries(server):
    """Connection failures of a host that resolves are retried as configured, never given up on."""
    opts = FetchOptions(allow_loopback=True, timeout=1.0, retries=2, backoff_base=0.01, backoff_max=0.02,
                        unresolved_per_host=1)
    results = [fetch(server.url("/reset"), opts) for _ in range(3)]
    assert [(r.reason, r.attempts) for r in results] == [(status.CONNECTION_ERROR, 3)] * 3
