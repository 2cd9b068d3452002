"""Loopback HTTP servers and sample paths for the source connector tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest

DATA = Path(__file__).resolve().parents[1] / "data"


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # sleep before answering (to provoke client timeouts)
    cut_after: int | None = None  # send only this many body bytes, then drop the connection


@dataclass
class Seen:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: bytes


class Loopback:
    """A 127.0.0.1 server whose ``route(request) -> Reply`` decides every answer; requests are kept."""

    def __init__(self, route: Callable[[Seen], Reply]):
        self.route = route
        self.seen: list[Seen] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def _serve(self):
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                parts = urlsplit(self.path)
                req = Seen(self.command, parts.path, parse_qs(parts.query), dict(self.headers), body)
                outer.seen.append(req)
                reply = outer.route(req)
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                headers = {"Content-Type": "application/json", **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                if reply.cut_after is not None:
                    self.send_header("Connection", "close")
                self.end_headers()
                try:
                    self.wfile.write(reply.body if reply.cut_after is None else reply.body[: reply.cut_after])
                    self.wfile.flush()
                except (BrokenPipeError, ConnectionResetError):
                    pass
                if reply.cut_after is not None:
                    self.close_connection = True

            do_GET = do_POST = _serve

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/"

    def start(self) -> Loopback:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def loopback():
    """Factory: ``loopback(route)`` starts a server; every server is stopped when the test ends."""
    servers: list[Loopback] = []

    def make(route: Callable[[Seen], Reply]) -> Loopback:
        s = Loopback(route).start()
        servers.append(s)
        return s

    yield make
    for s in servers:
        s.stop()


class FakeClock:
    """A clock that only moves when something sleeps on it."""

    def __init__(self):
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
