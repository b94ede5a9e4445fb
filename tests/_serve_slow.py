"""A `camlens serve` whose model sleeps DELAY seconds in every forward pass, so that an SS-CAM request (70
passes) takes many seconds however fast the machine, while a CAM request (one pass) stays short.  The forward's
Python branch keeps torch.fx from tracing it, so Score-CAM's passes run the model itself, sleeping too.

    python tests/_serve_slow.py DELAY [keyword=value ...]   # prints the URL, serves on 127.0.0.1

Keywords are create_app's, or ConnectionLimits' fields (max_connections, header_timeout...).
"""

from __future__ import annotations

import ast
import sys
import time

import torch
from torch import Tensor

from camlens.models import GapNet, LoadedModel, Preprocess
from camlens.web import create_app, serve


class SlowNet(GapNet):
    def __init__(self, delay: float) -> None:
        super().__init__(4, width=4)
        self.delay = delay

    def forward(self, x: Tensor) -> Tensor:
        if x.shape[0] > 0:  # a branch on the input: torch.fx cannot trace it
            time.sleep(self.delay)
        return super().forward(x)


def main() -> None:
    torch.manual_seed(0)
    delay = float(sys.argv[1])
    options = {k: ast.literal_eval(v) for k, v in (arg.split("=", 1) for arg in sys.argv[2:])}
    limits = {k: options.pop(k) for k in list(options) if k in serve.ConnectionLimits.__dataclass_fields__}
    loaded = LoadedModel(SlowNet(delay).eval(), ["ant", "bee", "cow", "dog"], Preprocess((32, 32)), "slownet")
    app = create_app(loaded, **options)
    sock = serve.listen("127.0.0.1", 0)
    print(serve.url(sock), flush=True)
    serve.run(app, sock, "warning", serve.ConnectionLimits(**limits))


if __name__ == "__main__":
    main()
