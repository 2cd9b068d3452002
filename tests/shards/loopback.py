"""A loopback image server for the downloader's tests and benchmark: real images and each failure kind.

Routes (``name`` is a key of the served image dict):
  /img/{name}             the image (``?ctype=`` overrides its Content-Type)
  /status/{code}          that HTTP status
  /reset                  connection reset (RST) before any response
  /cut/{name}             full Content-Length, half the body, then the connection closes
  /html                   an HTML page (text/html)
  /html-as-jpeg           an HTML page sent as image/jpeg
  /slow/{name}            the image after ``slow_seconds``
  /retry429/{name}        429 with ``Retry-After: after`` for the first ``n`` hits, then the image
  /always429              429 with ``Retry-After: 0`` every time
  /noai/{name}            the image with ``X-Robots-Tag: noai`` (the body must not be read)
  /redirect/{n}/{name}    a chain of ``n`` redirects ending at the image
  /chunked-huge           a chunked body without Content-Length that never ends before max_bytes
Every response waits a random latency in ``latency_ms`` first.
"""

from __future__ import annotations

import asyncio
import collections
import random
import socket
import struct
import threading
import time

from aiohttp import web

HTML = b"<!doctype html><html><head><title>Not found</title></head><body>gone</body></html>"


class LoopbackServer:
    """``with LoopbackServer(images) as srv: srv.url("/img/x")``; runs in its own thread."""

    def __init__(self, images: dict[str, bytes], latency_ms: tuple[float, float] = (0, 0),
                 slow_seconds: float = 3.0, host: str = "127.0.0.1", port: int = 0):
        self.images = images
        self.latency_ms = latency_ms
        self.slow_seconds = slow_seconds
        self.host, self.port = host, port
        self.hits: collections.Counter[str] = collections.Counter()
        self.hit_times: dict[str, list[float]] = collections.defaultdict(list)
        self.user_agents: set[str] = set()
        self.body_bytes_sent: collections.Counter[str] = collections.Counter()
        self._rng = random.Random(0)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()

    # ---- lifecycle
    def __enter__(self) -> LoopbackServer:
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        if not self._started.wait(10):
            raise RuntimeError("loopback server did not start")
        return self

    def __exit__(self, *exc) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def url(self, path: str) -> str:
        return f"http://{self.host}:{self.port}{path}"

    def _serve(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._main())
        self._loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        app = web.Application()
        r = app.router
        r.add_get("/img/{name}", self.img)
        r.add_get("/status/{code}", self.status)
        r.add_get("/reset", self.reset)
        r.add_get("/cut/{name}", self.cut)
        r.add_get("/html", self.html)
        r.add_get("/html-as-jpeg", self.html_as_jpeg)
        r.add_get("/slow/{name}", self.slow)
        r.add_get("/retry429/{name}", self.retry429)
        r.add_get("/always429", self.always429)
        r.add_get("/noai/{name}", self.noai)
        r.add_get("/redirect/{n}/{name}", self.redirect)
        r.add_get("/chunked-huge", self.chunked_huge)
        runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, backlog=1024)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]
        self._started.set()
        await self._stop.wait()
        await runner.cleanup()

    # ---- helpers
    async def _enter(self, request: web.Request) -> None:
        key = request.path_qs
        self.hits[key] += 1
        self.hit_times[key].append(time.monotonic())
        self.user_agents.add(request.headers.get("User-Agent", ""))
        lo, hi = self.latency_ms
        if hi > 0:
            await asyncio.sleep(self._rng.uniform(lo, hi) / 1000)

    def _image(self, request: web.Request) -> bytes:
        name = request.match_info["name"]
        if name not in self.images:
            raise web.HTTPNotFound()
        return self.images[name]

    @staticmethod
    def _ctype(data: bytes) -> str:
        return "image/png" if data.startswith(b"\x89PNG") else "image/jpeg"

    # ---- routes
    async def img(self, request: web.Request) -> web.Response:
        await self._enter(request)
        data = self._image(request)
        self.body_bytes_sent[request.path] += len(data)
        return web.Response(body=data, content_type=request.query.get("ctype", self._ctype(data)))

    async def status(self, request: web.Request) -> web.Response:
        await self._enter(request)
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def reset(self, request: web.Request) -> web.Response:
        await self._enter(request)
        sock = request.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        request.transport.abort()
        raise asyncio.CancelledError()

    async def cut(self, request: web.Request) -> web.StreamResponse:
        await self._enter(request)
        data = self._image(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data))})
        await resp.prepare(request)
        await resp.write(data[: len(data) // 2])
        await resp.drain()
        request.transport.close()
        raise asyncio.CancelledError()

    async def html(self, request: web.Request) -> web.Response:
        await self._enter(request)
        return web.Response(body=HTML, content_type="text/html")

    async def html_as_jpeg(self, request: web.Request) -> web.Response:
        await self._enter(request)
        return web.Response(body=HTML, content_type="image/jpeg")

    async def slow(self, request: web.Request) -> web.Response:
        await self._enter(request)
        await asyncio.sleep(self.slow_seconds)
        return web.Response(body=self._image(request), content_type="image/jpeg")

    async def retry429(self, request: web.Request) -> web.Response:
        await self._enter(request)
        n = int(request.query.get("n", "1"))
        if self.hits[request.path_qs] <= n:
            return web.Response(status=429, headers={"Retry-After": request.query.get("after", "1")})
        data = self._image(request)
        return web.Response(body=data, content_type=self._ctype(data))

    async def always429(self, request: web.Request) -> web.Response:
        await self._enter(request)
        return web.Response(status=429, headers={"Retry-After": "0"})

    async def noai(self, request: web.Request) -> web.StreamResponse:
        await self._enter(request)
        data = self._image(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg", "Content-Length": str(len(data)),
                                           "X-Robots-Tag": "noindex, noai"})
        await resp.prepare(request)
        # Headers first, body later: a client that honours noai hangs up before this is sent.
        await asyncio.sleep(0.5)
        try:
            await resp.write(data)
            self.body_bytes_sent[request.path] += len(data)
        except (ConnectionError, RuntimeError):
            pass
        return resp

    async def redirect(self, request: web.Request) -> web.Response:
        await self._enter(request)
        n = int(request.match_info["n"])
        name = request.match_info["name"]
        if n <= 0:
            return web.Response(body=self._image(request), content_type="image/jpeg")
        raise web.HTTPFound(f"/redirect/{n - 1}/{name}")

    async def chunked_huge(self, request: web.Request) -> web.StreamResponse:
        await self._enter(request)
        resp = web.StreamResponse(headers={"Content-Type": "image/jpeg"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        block = b"\xff\xd8\xff\xe0" + b"\x00" * (1 << 16)
        try:
            for _ in range(2000):
                await resp.write(block)
        except (ConnectionError, RuntimeError):
            pass
        return resp
