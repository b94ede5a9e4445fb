"""Running the app: a listening socket on the chosen address, and uvicorn on it."""

from __future__ import annotations

import socket
import threading
from types import FrameType

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


def run(app: FastAPI, sock: socket.socket, log_level: str = "info") -> None:
    """Serve ``app`` on ``sock`` with uvicorn until Ctrl+C or SIGTERM.

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

    Server(uvicorn.Config(app, log_level=log_level, timeout_graceful_shutdown=SHUTDOWN_GRACE_S)).run(sockets=[sock])
