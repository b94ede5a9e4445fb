"""Running the app: a listening socket on the chosen address, and uvicorn on it, with bounded connections.

Connections are bounded before any request is read (:class:`ConnectionLimits`): at most ``max_connections`` open
and ``max_per_client`` per client address (more are answered 503 and closed at once), and a connection that has
not sent a whole request head within ``header_timeout`` seconds (a new one, or a kept-alive one that started
another request) is closed, as is an idle kept-alive one after ``keep_alive`` seconds.  The body's own
timeouts are the app's (:func:`camlens.web.app.timed_body`), so a request takes a slot only once it is whole.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
from collections import Counter
from dataclasses import dataclass
from types import FrameType
from typing import Any

from fastapi import FastAPI

from ..errors import CamlensError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def listen(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port) and listening, so that connections made as soon as this returns wait
    in the backlog until the server runs; port 0 picks a free port (``sock.getsockname()[1]``)."""
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on such sockets, and without it every keep-alive
    # response waits about 40 ms for the client's delayed ACK
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as err:
        sock.close()
        raise CamlensError(f"cannot listen on {host}:{port} ({err.strerror}); pick another --port") from err
    return sock


def url(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


SHUTDOWN_GRACE_S = 5  # at most this long for requests in flight to be answered after SIGTERM


@dataclass(frozen=True)
class ConnectionLimits:
    """What one server accepts at the connection level.

    Behind a reverse proxy every request comes from the proxy's address, so ``max_per_client`` then bounds the
    proxy's connections: set it to ``max_connections`` there and bound clients in the proxy.

    Args:
        max_connections: connections open at once, in total.
        max_per_client: connections open at once from one client address.
        header_timeout: seconds a connection has to send a whole request head (request line and headers).
        keep_alive: seconds an idle kept-alive connection stays open after a response.
    """

    max_connections: int = 256
    max_per_client: int = 32
    header_timeout: float = 10.0
    keep_alive: float = 5.0


def _refusal(message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
        f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n"
    )
    return head.encode("ascii") + body


def guarded_protocol(limits: ConnectionLimits) -> type:
    """uvicorn's h11 protocol with :class:`ConnectionLimits` enforced; one class per server (it counts the
    server's connections)."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    per_client: Counter[str] = Counter()
    open_total = 0

    class Guarded(H11Protocol):
        _address = ""
        _counted = False
        _header_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: Any) -> None:
            nonlocal open_total
            super().connection_made(transport)
            self._address = self.client[0] if self.client else ""
            if open_total >= limits.max_connections:
                return self._refuse(f"busy: {open_total} connections open; retry shortly")
            if per_client[self._address] >= limits.max_per_client:
                return self._refuse(f"too many connections from {self._address} (at most {limits.max_per_client})")
            self._counted = True
            per_client[self._address] += 1
            open_total += 1
            self._arm()

        def _refuse(self, message: str) -> None:
            self.transport.write(_refusal(message))
            self.transport.close()

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(limits.header_timeout, self._header_timeout)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _idle(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _header_timeout(self) -> None:
            self._header_timer = None
            if self._idle() and not self.transport.is_closing():
                self.transport.close()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if not self._idle():
                self._disarm()  # a whole request head arrived: the app's body timeouts take over
            elif self._header_timer is None and not self.transport.is_closing():
                self._arm()  # the start of another request on a kept-alive connection

        def connection_lost(self, exc: Exception | None) -> None:
            nonlocal open_total
            self._disarm()
            if self._counted:
                self._counted = False
                open_total -= 1
                per_client[self._address] -= 1
                if not per_client[self._address]:
                    del per_client[self._address]
            super().connection_lost(exc)

    return Guarded


def run(
    app: FastAPI, sock: socket.socket, log_level: str = "info", limits: ConnectionLimits = ConnectionLimits()
) -> None:
    """Serve ``app`` on ``sock`` with uvicorn until Ctrl+C or SIGTERM, under the connection ``limits``.

    The stop is quick and orderly: the app's ``state.stop`` is called at once (queued model work is refused and
    expensive methods stop at their next pass, each answered with a 503), one-pass requests in flight finish,
    and after :data:`SHUTDOWN_GRACE_S` seconds whatever is left is cancelled."""
    import uvicorn

    stop = getattr(app.state, "stop", None)

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: FrameType | None) -> None:
            super().handle_exit(sig, frame)
            if stop is not None:  # not in the signal handler itself: it may have interrupted a holder of a lock
                threading.Thread(target=stop, name="camlens-stop", daemon=True).start()

    config = uvicorn.Config(
        app,
        log_level=log_level,
        timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
        ws="none",
        http=guarded_protocol(limits),
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
    )
    Server(config).run(sockets=[sock])
