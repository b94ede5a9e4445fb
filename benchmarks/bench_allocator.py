"""Forward passes of EfficientNet-Lite0 (batch 64, 224 px) with glibc's default allocator settings or after
:func:`camlens.hardware.retain_freed_memory`: wall time, CPU time in user and kernel mode, and page faults.

    python benchmarks/bench_allocator.py            # defaults
    python benchmarks/bench_allocator.py --retain   # freed memory kept for the next pass, as the CLI does
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from camlens.capture import CamlensError
from camlens.hardware import retain_freed_memory
from camlens.models import build_model
from common import header


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--retain", action="store_true")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    retained = retain_freed_memory() if args.retain else False
    header(
        f"allocator: {args.passes} forward passes, efficientnet_lite0, batch {args.batch}, 224 px; "
        f"freed memory retained: {retained}"
    )
    try:
        model = build_model("efficientnet_lite0", None, "imagenet").eval()
    except CamlensError:  # without camlens[real]: the same compute with random weights
        model = build_model("efficientnet_lite0", None, None).eval()
    x = torch.rand(args.batch, 3, 224, 224)
    with torch.no_grad():
        model(x)
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(args.passes):
            model(x)
        after, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter() - start
    print(
        f"wall {wall:.2f} s  user {after.ru_utime - before.ru_utime:.2f} s  kernel {after.ru_stime - before.ru_stime:.2f} s  "
        f"page faults {after.ru_minflt - before.ru_minflt}"
    )


if __name__ == "__main__":
    main()
