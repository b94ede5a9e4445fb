"""`camlens serve`: the web page and HTTP API around one model (:mod:`camlens.web`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CamlensError
from .common import add_model_args, fail, load_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The ``serve`` command and its flags."""
    p = sub.add_parser("serve", help="a web page and HTTP API that explain uploaded images")
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000, help="port (default: 8000; 0 picks a free one)")
    p.add_argument(
        "--workers", type=int, default=2, help="model threads, and as many decode/render threads (default: 2)"
    )
    p.add_argument(
        "--max-batch",
        type=int,
        default=1,
        help="batch up to N requests that arrive together (default: 1, results bit-identical to one by one)",
    )
    p.add_argument("--max-upload-mb", type=float, default=20, help="refuse larger uploads (default: 20)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="refuse larger images (default: 40000000)")
    p.add_argument(
        "--decode-budget",
        type=int,
        metavar="PIXELS",
        help="image pixels decoded at once by all requests; more wait 1 s, then get a 503 (default: the "
        "larger of --max-pixels and workers x max-batch x 64 x the model's input)",
    )
    p.add_argument(
        "--allowed-hosts",
        nargs="+",
        metavar="HOST",
        help="also answer these Host names (name or name:port; * for any), beyond the bound address and "
        "localhost, 127.0.0.1, [::1] at the port",
    )
    p.add_argument(
        "--cors-origin",
        metavar="ORIGIN",
        help="let pages of this one origin (e.g. https://app.example.org) call the API; default: none",
    )
    p.add_argument("--max-connections", type=int, default=256, help="connections open at once (default: 256)")
    p.add_argument(
        "--max-connections-per-client",
        type=int,
        default=32,
        help="connections open at once from one address (default: 32; behind a proxy, all clients share its address)",
    )
    p.add_argument(
        "--header-timeout",
        type=float,
        default=10,
        metavar="SECONDS",
        help="close a connection that has not sent a whole request head in this long (default: 10)",
    )
    p.add_argument(
        "--body-timeout",
        type=float,
        default=10,
        metavar="SECONDS",
        help="refuse an upload that pauses this long, or is slower than --min-body-rate after this long "
        "(408; default: 10)",
    )
    p.add_argument(
        "--min-body-rate",
        type=float,
        default=8192,
        metavar="BYTES_PER_S",
        help="the slowest average upload rate accepted after --body-timeout (default: 8192)",
    )
    p.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5,
        metavar="SECONDS",
        help="close an idle kept-alive connection after this long (default: 5)",
    )
    p.add_argument("--max-side", type=int, default=1024, help="render overlays at most this many pixels wide or high")
    p.add_argument(
        "--max-explainers",
        type=int,
        default=4,
        help="explainers kept between requests; each one-pass one holds a copy of the model (default: 4)",
    )
    p.add_argument(
        "--compute-budget",
        type=float,
        default=30,
        metavar="SECONDS",
        help="stop a Score-CAM/SS-CAM/IS-CAM/Ablation-CAM request after this long, with a 504 (default: 30; "
        "0: no limit)",
    )
    p.add_argument(
        "--max-expensive",
        type=int,
        default=2,
        help="requests of those methods queued or running at once; more get a 503 (default: 2)",
    )
    p.add_argument("--methods", nargs="+", help="offer only these methods (default: all), e.g. --methods cam gradcam")
    p.add_argument(
        "--box-threshold",
        type=float,
        help="detection models: keep predicted boxes scoring at least this, "
        "so the page's box targets can match them (default: the model's)",
    )
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    try:
        import uvicorn  # noqa: F401

        from ..web import create_app, guard, serve
    except ImportError as err:
        raise CamlensError(
            f"`camlens serve` needs the web extra ({err.name} is missing): pip install 'camlens[web]'"
        ) from err
    loaded = load_from_args(args)
    if args.box_threshold is not None:
        from ..targets import set_box_threshold

        set_box_threshold(loaded.model, args.box_threshold)
    name = Path(args.checkpoint).name if args.checkpoint else args.arch
    sock = serve.listen(args.host, args.port)
    hosts = guard.default_hosts(args.host, sock.getsockname()[1]) + list(args.allowed_hosts or [])
    app = create_app(
        loaded,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels,
        workers=args.workers,
        max_batch=args.max_batch,
        max_side=args.max_side,
        model_name=name,
        max_explainers=args.max_explainers,
        compute_budget=args.compute_budget or None,
        max_expensive=args.max_expensive,
        methods=args.methods,
        allowed_hosts=hosts,
        cors_origin=args.cors_origin,
        decode_budget=args.decode_budget,
        body_timeout=args.body_timeout,
        min_body_rate=args.min_body_rate,
    )
    limits = serve.ConnectionLimits(
        args.max_connections, args.max_connections_per_client, args.header_timeout, args.keep_alive_timeout
    )
    if args.host not in serve.LOOPBACK:
        fail(f"warning: listening on {args.host}: anyone who can reach it can upload images to this model")
    print(f"camlens: serving {name} at {serve.url(sock)} (Ctrl+C to stop)", flush=True)
    serve.run(app, sock, args.log_level, limits)
    return 0
