"""Who may use a `camlens serve`: the Host allow-list (against DNS rebinding), the refusal of cross-site
state-changing requests (against any web page a user visits driving a local server), and CORS, closed unless one
origin is named.

A browser sends ``Origin`` on every cross-origin request and on same-origin POSTs, and ``Sec-Fetch-Site`` on
every request; scripts (curl, httpx) send neither.  So a state-changing request (POST...) is allowed when
``Sec-Fetch-Site`` is absent, ``same-origin`` or ``none`` (typed by the user) and ``Origin`` is absent or this
server's own origin or the ``--cors-origin``; anything else is refused.
"""

from __future__ import annotations

from typing import Iterable, Mapping

LOCAL_NAMES = ("localhost", "127.0.0.1", "[::1]")
SAFE_METHODS = ("GET", "HEAD", "OPTIONS")


def _split(host: str) -> tuple[str, str | None]:
    """``name[:port]`` as (lowercase name, port or None); IPv6 literals keep their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        name, _, rest = host.partition("]")
        return name + "]", rest[1:] if rest.startswith(":") else None
    name, sep, port = host.rpartition(":")
    return (name, port) if sep and port.isdigit() else (host, None)


def default_hosts(bound: str, port: int) -> list[str]:
    """The Host values a server bound to ``bound``:``port`` answers by default: that address and the loopback
    names, with the port (and without it on port 80, where browsers leave it out).

    Args:
        bound: the address listened on (``127.0.0.1``, ``::1``, ``0.0.0.0``...).
        port: the port listened on.

    Returns:
        The allowed ``name:port`` values.
    """
    name = f"[{bound}]" if ":" in bound and not bound.startswith("[") else bound
    names = [n for n in (name, *LOCAL_NAMES) if n not in ("0.0.0.0", "[::]")]
    hosts = [f"{n}:{port}" for n in dict.fromkeys(names)]
    return hosts + (list(dict.fromkeys(names)) if port == 80 else [])


def host_allowed(host: str | None, allowed: Iterable[str]) -> bool:
    """Whether a request's ``Host`` header names this server: an entry ``name:port`` allows exactly that, an entry
    ``name`` that name on any port, ``*`` any host.

    Args:
        host: the Host header (None: absent, refused).
        allowed: the allow-list.

    Returns:
        Whether to serve the request.
    """
    if not host:
        return False
    name, port = _split(host)
    for entry in allowed:
        if entry == "*":
            return True
        want_name, want_port = _split(entry)
        if want_name == name and (want_port is None or want_port == port):
            return True
    return False


def cross_site_reason(method: str, headers: Mapping[str, str], own_origin: str, cors_origin: str | None) -> str | None:
    """Why a request must be refused as cross-site, or None to serve it.  Only state-changing methods are checked.

    Args:
        method: the HTTP method.
        headers: the request's headers (lowercase names).
        own_origin: this server's origin as the request names it (``http://`` + its Host).
        cors_origin: the one other origin allowed (``--cors-origin``), or None.

    Returns:
        A one-line reason, or None.
    """
    if method.upper() in SAFE_METHODS:
        return None
    origin = headers.get("origin")
    allowed = {own_origin.lower(), *([cors_origin.lower()] if cors_origin else [])}
    if origin is not None and origin.lower() not in allowed:
        return f"cross-site request refused: Origin {origin!r} is not this server ({own_origin})"
    site = (headers.get("sec-fetch-site") or "same-origin").lower()
    if site not in ("same-origin", "none") and not (cors_origin and origin and origin.lower() == cors_origin.lower()):
        return f"cross-site request refused (Sec-Fetch-Site: {site}, Origin: {origin or 'none'})"
    return None
