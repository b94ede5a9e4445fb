"""`camlens serve`'s resident memory under a public demo's hostile traffic: the soak test's request mix (valid
uploads over every method and several layers, corrupt bodies, bad form values) from concurrent clients against
the real server on loopback, its RSS read from /proc after every window.

    python benchmarks/bench_serve_memory.py [--requests 1200] [--every 200] [--clients 4] [-- extra serve flags]

The traffic is tests/_serve_traffic.py's, the module tests/test_serve_soak.py asserts the bound with.  Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

from common import header, write_result

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _serve_traffic import Server, drive, request_mix, rss_bytes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=1200)
    parser.add_argument("--every", type=int, default=200, help="read the server's RSS every N requests")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("serve_args", nargs="*", default=[])
    args = parser.parse_args()
    header(f"camlens serve memory: {args.requests} requests from {args.clients} clients")
    served = ["--arch", "resnet18", "--weights", "none", "--size", "32", *args.serve_args]
    server = Server(served)
    rows: list[list[Any]] = []
    try:
        rows.append([0, round(rss_bytes(server.proc.pid) / 2**20), None, None])
        mix = request_mix(args.requests)
        start = time.perf_counter()
        for i in range(0, len(mix), args.every):
            statuses = asyncio.run(drive(server.url, mix[i : i + args.every], args.clients))
            rss = rss_bytes(server.proc.pid) / 2**20
            counts = ", ".join(f"{code}: {n}" for code, n in sorted(statuses.items()))
            rows.append([i + args.every, round(rss), round(time.perf_counter() - start, 1), counts])
            print(rows[-1], flush=True)
    finally:
        server.stop()

    notes = (
        f"camlens serve {' '.join(served)} (resnet18 with random weights at 32 px, default limits), "
        f"{args.clients} concurrent clients; a third of the requests valid (every method the server offers, "
        "cycling over 9 layers: valid, unknown or unusable by the method), a third corrupt image bodies, a third "
        "bad form values. The responses: 200 for the valid requests the server took, 400, 415 and 422 for the corrupt "
        "and bad ones, 503 (with Retry-After) for expensive requests beyond --max-expensive. Row 0 is the server idle "
        "after start-up. The caches fill during the first windows; "
        "after them RSS moves by allocator slack only. Before the caches were bounded (issue 16) the same kind of "
        "traffic took RSS from 912 to 2609 MiB and rising. tests/test_serve_soak.py asserts the bound on 1600 "
        "requests. Made by python benchmarks/bench_serve_memory.py."
    )
    columns = ["requests", "server RSS MiB", "elapsed s", "responses by status"]
    write_result("serve_memory", "camlens serve: resident memory under hostile traffic", columns, rows, notes)


if __name__ == "__main__":
    main()
