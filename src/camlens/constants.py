"""Numbers fixed by the papers camlens implements, named once (a light module: the CLI reads them for its help)."""

from __future__ import annotations

# Zhou et al. (CVPR 2016), Sec. 3: "we segment the regions of which the value is above 20% of the max value of the
# CAM"; fixed by the paper, not tuned.  The default of the paper protocol's boxes everywhere.
PAPER_THRESHOLD = 0.2
