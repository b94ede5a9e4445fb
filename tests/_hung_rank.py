"""`camlens` under torchrun with rank 1 hung: it stops responding before its first collective (test_distributed)."""

import sys
import time

import camlens.pipeline
from camlens.cli import main
from camlens.distributed import Context


def hang(*args, ctx: Context, **kwargs):
    if ctx.rank == 1:
        time.sleep(3600)
    return real(*args, ctx=ctx, **kwargs)


real = camlens.pipeline.explain_files
camlens.pipeline.explain_files = hang
sys.exit(main(sys.argv[1:]))
