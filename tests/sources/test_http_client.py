"""The shared HTTP client against loopback servers: rate, retries, Retry-After, timeouts, resume."""

import json
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sources.http import HttpClient, HttpError, TokenBucket, parse_retry_after
from tests.sources.conftest import FakeClock, Reply


def client(server, clock, **kw):
    kw.setdefault("backoff_s", 0.5)
    return HttpClient(server.url, rate=kw.pop("rate", 100.0), clock=clock, sleep=clock.sleep,
                      rng=random.Random(0), **kw)


def test_token_bucket_spaces_requests(clock):
    bucket = TokenBucket(rate=2.0, burst=1, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.acquire()
    assert clock.sleeps == [0.5, 0.5, 0.5, 0.5]


def test_retry_after_and_5xx_are_retried(loopback, clock):
    replies = iter([Reply(429, b"{}", {"Retry-After": "7"}), Reply(500, b"{}"), Reply(503, b"{}"),
                    Reply(200, b'{"ok": true}')])
    server = loopback(lambda req: next(replies))
    c = client(server, clock)
    assert c.get_json("thing") == {"ok": True}
    assert len(server.seen) == 4 and c.retries == 3
    assert 7.0 in clock.sleeps  # Retry-After honoured exactly
    assert "biocorpus" in server.seen[0].headers["User-Agent"]


def test_backoff_grows_and_gives_up(loopback, clock):
    server = loopback(lambda req: Reply(502, b"{}"))
    c = client(server, clock, max_retries=3, backoff_s=1.0)
    with pytest.raises(HttpError, match="gave up after 4 attempts"):
        c.get("x")
    assert len(server.seen) == 4
    caps = [1.0, 2.0, 4.0]
    assert all(0 <= s <= cap for s, cap in zip(clock.sleeps, caps, strict=False))


def test_client_errors_are_not_retried(loopback, clock):
    server = loopback(lambda req: Reply(404, b"{}"))
    with pytest.raises(HttpError) as err:
        client(server, clock).get("missing")
    assert err.value.status == 404 and len(server.seen) == 1


def test_timeouts_are_retried(loopback, clock):
    replies = iter([Reply(200, b"{}", delay_s=1.0), Reply(200, b'{"n": 2}')])
    server = loopback(lambda req: next(replies))
    c = client(server, clock, timeout_s=0.2)
    assert c.get_json("slow") == {"n": 2}
    assert c.retries == 1


def test_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412470.0) == pytest.approx(10.0)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_fetch_resumes_an_interrupted_body_with_range(loopback, clock, tmp_path):
    body = bytes(range(256)) * 2000
    calls = []

    def route(req):
        calls.append(req.headers.get("Range"))
        if len(calls) == 1:
            return Reply(200, body, {"Content-Type": "application/zip"}, cut_after=300_000)
        start = int(req.headers["Range"].split("=")[1].rstrip("-"))
        return Reply(206, body[start:], {"Content-Type": "application/zip",
                                         "Content-Range": f"bytes {start}-{len(body) - 1}/{len(body)}"})

    server = loopback(route)
    dest = client(server, clock).fetch("archive.zip", tmp_path / "a.zip")
    assert dest.read_bytes() == body
    assert calls[0] is None and calls[1].startswith("bytes=")
    assert not (tmp_path / "a.zip.part").exists()


def test_fetch_restarts_when_range_is_ignored(loopback, clock, tmp_path):
    body = b"x" * 5000
    server = loopback(lambda req: Reply(200, body, {"Content-Type": "application/zip"}))
    (tmp_path / "b.zip.part").write_bytes(b"garbage")
    assert client(server, clock).fetch("b.zip", tmp_path / "b.zip").read_bytes() == body


# ---- name resolution: not transient -------------------------------------------------------------

# RFC 6761: names under .invalid never resolve, so this fails at the resolver wherever it runs
UNRESOLVABLE = "http://biocorpus-test.invalid/"


def _closed_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(60)  # two lookups of a .invalid name; a resolver that never answers must not hang the suite
def test_a_host_that_does_not_resolve_is_retried_once_only(clock):
    """QA: an unreachable host took 11-22 s of retries (6 attempts) before the same final message."""
    c = HttpClient(UNRESOLVABLE, rate=100.0, clock=clock, sleep=clock.sleep, rng=random.Random(0))
    with pytest.raises(HttpError, match=r"GET http://biocorpus-test.invalid/x: gave up after 2 attempts "
                                        r"\(ConnectionError: the host name biocorpus-test.invalid does not resolve\)"):
        c.get("x")
    assert c.retries == 1 and len(clock.sleeps) == 1


def test_a_resolver_failure_is_told_apart_from_other_connection_errors(monkeypatch, clock):
    """The chain requests and urllib3 build around a failed lookup (socket.gaierror in urllib3's
    NameResolutionError in MaxRetryError in requests' ConnectionError), made without any resolver."""
    import socket

    import requests

    from sources.http import unresolved_host

    real = socket.getaddrinfo

    def getaddrinfo(host, *args, **kw):
        if host == "nowhere.example":
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kw)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    c = HttpClient("http://nowhere.example/", rate=100.0, max_retries=5, clock=clock, sleep=clock.sleep,
                   rng=random.Random(0))
    with pytest.raises(HttpError, match=r"gave up after 2 attempts .*nowhere.example does not resolve"):
        c.get_json("thing")
    assert c.retries == 1
    refused = HttpClient(f"http://127.0.0.1:{_closed_port()}/", rate=100.0, max_retries=3, clock=clock,
                         sleep=clock.sleep, rng=random.Random(0))
    with pytest.raises(HttpError, match=r"gave up after 4 attempts \(ConnectionError\)$"):
        refused.get("x")  # a refused connection is still retried with backoff
    assert refused.retries == 3
    with pytest.raises(requests.ConnectionError) as err:
        requests.get(refused.url("x"), timeout=5)
    assert unresolved_host(err.value) is None



# ---- Retry-After, answers that are not JSON, what an HttpError keeps ----------------------------


def test_a_retry_after_longer_than_the_backoff_cap_is_waited_for_whole(loopback, clock):
    """QA: Retry-After: 120 was cut to 60 s, so the client asked again before the server allowed."""
    replies = iter([Reply(429, b"{}", {"Retry-After": "120"}), Reply(200, b'{"ok": true}')])
    server = loopback(lambda req: next(replies))
    c = client(server, clock, backoff_max_s=60.0)
    assert c.get_json("thing") == {"ok": True}
    assert clock.sleeps.count(120.0) == 1 and max(clock.sleeps) == 120.0


def test_a_retry_after_longer_than_the_client_waits_stops_at_once(loopback, clock):
    """QA: Retry-After: 3600 got six requests in five minutes, then 'check the network'."""
    server = loopback(lambda req: Reply(429, b"{}", {"Retry-After": "3600"}))
    c = client(server, clock, retry_after_max_s=300)
    with pytest.raises(HttpError, match=r"GET http://127\.0\.0\.1:\d+/thing: HTTP 429: the server asked to wait "
                                        r"3600 s .*longer than retry_after_max_s = 300 s; run the same command "
                                        r"again in 60 min or later") as err:
        c.get_json("thing")
    assert len(server.seen) == 1 and sum(clock.sleeps) < 1  # no retry sooner than the server allows
    assert err.value.status == 429 and err.value.advice == ""


@pytest.mark.parametrize("body, ctype", [
    (b'{"results": [{"id": 1,', "application/json"),                      # cut short
    (b"<html><body>maintenance</body></html>", "text/html"),              # a maintenance page
    (b"", "application/json"),                                            # empty
], ids=["cut", "html", "empty"])
def test_an_answer_that_is_not_json_is_retried_then_a_clear_error(loopback, clock, body, ctype):
    """QA: a bare 'Expecting value: line 1 column 1 (char 0)', not retried, naming neither URL nor source."""
    replies = iter([Reply(200, body, {"Content-Type": ctype}), Reply(200, b'{"ok": 1}')])
    server = loopback(lambda req: next(replies))
    c = client(server, clock)
    assert c.get_json("once") == {"ok": 1} and c.retries == 1
    server = loopback(lambda req: Reply(200, body, {"Content-Type": ctype}))
    c = client(server, clock)
    with pytest.raises(HttpError, match=rf"GET {server.url}always: the answer is not JSON \({ctype}, "
                                        rf"{len(body)} bytes: .*3 attempts\); if it persists, check that "
                                        "api_base_url is the API's root") as err:
        c.get_json("always")
    assert len(server.seen) == 3 and err.value.status == 200


def test_an_http_error_keeps_its_status_and_advice_across_processes(loopback, clock):
    """An error raised in a worker of the process pool reaches the CLI pickled: its status (the
    CLI's advice by status: credentials, not found) used to be lost there."""
    import pickle

    err = pickle.loads(pickle.dumps(HttpError("GET x: HTTP 401", 401, advice="check GBIF_USER")))
    assert (str(err), err.status, err.advice) == ("GET x: HTTP 401", 401, "check GBIF_USER")
    server = loopback(lambda req: Reply(503, b"{}"))
    with pytest.raises(HttpError, match="gave up after 2 attempts") as gave_up:
        client(server, clock, max_retries=1).get("x")
    assert gave_up.value.status == 503  # the status of the last answer


class _Canned:
    """A ``requests.Session`` stand-in answering every request with one body (no socket)."""

    def __init__(self, body: bytes, ctype: str):
        self.body, self.ctype, self.headers = body, ctype, {}

    def request(self, method, url, **kw):
        import requests

        resp = requests.Response()
        resp.status_code, resp._content, resp.url = 200, self.body, url
        resp.headers["Content-Type"] = self.ctype
        return resp


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.text(),
                     lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
                     max_leaves=8)


@given(body=st.one_of(_JSON.map(lambda v: json.dumps(v).encode()),
                      _JSON.flatmap(lambda v: st.integers(0, len(json.dumps(v))).map(
                          lambda n, v=v: json.dumps(v).encode()[:n])),
                      st.binary(max_size=40)),
       ctype=st.sampled_from(["application/json", "text/html; charset=utf-8", "application/json; charset=utf-8"]))
def test_get_json_gives_the_json_or_an_http_error_never_a_parser_error(body, ctype):
    """Whatever the body (JSON, JSON cut anywhere, bytes), ``get_json`` returns what it holds or
    raises an ``HttpError`` saying the answer is not JSON."""
    clock = FakeClock()
    c = HttpClient("http://api.test/", rate=100.0, clock=clock, sleep=clock.sleep, rng=random.Random(0),
                   session=_Canned(body, ctype))
    try:
        want = json.loads(body)
    except ValueError:
        with pytest.raises(HttpError, match="the answer is not JSON"):
            c.get_json("x")
    else:
        assert json.dumps(c.get_json("x"), sort_keys=True) == json.dumps(want, sort_keys=True)
