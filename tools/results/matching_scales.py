r"""Which scales find the landmarks: a run's matching (grid protocol, its template and images,
as ``evaluate``) with each scale's cosine map alone, with all five combined, and with the
coarsest ones left out (strides 16-2, 8-2, 4-2: ``eval.scales``), the rest of the run's
matching settings kept (the run's own scales checked against its ``results.json``).

python -m tools.results.matching_scales --out=NAME RUN[:ENCODER] ...

``ENCODER`` is ``baseline`` (default) or ``piaug``; each run needs its ``results.json`` and its
data where its ``config.json`` says.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import numpy as np

from piaug import configure, matching
from piaug.models import STRIDES
from tools.results.landmark_errors import check_mre, cli, setting


def row(offset: np.ndarray) -> dict:
    """MRE, SDR 2 and 4 mm and the per-landmark MRE of ``(N, L, 2)`` offsets in mm."""
    e = np.linalg.norm(offset, axis=-1)
    return {
        "mre_mm": float(e.mean()),
        "sdr_2mm_pct": float(100 * (e <= 2).mean()),
        "sdr_4mm_pct": float(100 * (e <= 4).mean()),
        "per_landmark_mre_mm": [float(v) for v in e.mean(0)],
    }


def scales(run: Path, encoder: str) -> dict[str, dict]:
    """``{"all": row, "stride_32": row, ..., "strides_8_4_2": row, ...}`` for ``encoder`` of
    ``run``."""
    s = setting(run, encoder)
    settings = configure.match_settings(s["config"])
    features = matching.encode(s["encoder"], s["images"], batch_size=settings.batch_size)
    template = [f[0] for f in matching.encode(s["encoder"], s["template_image"][None])]
    vectors = matching.template_vectors(
        template, s["template_rows_cols"], sampling=settings.sampling
    )
    subsets = {"all": STRIDES}
    subsets |= {f"stride_{st}": (st,) for st in STRIDES}
    subsets |= {"strides_" + "_".join(map(str, STRIDES[k:])): STRIDES[k:] for k in (1, 2, 3)}
    own = settings.scales or STRIDES
    out = {}
    for name, kept in subsets.items():
        found = matching.match_all(
            features,
            vectors,
            size=s["size"],
            settings=dataclasses.replace(settings, scales=tuple(kept)),
        )
        offset = (found[..., ::-1] - s["truth"]) * s["spacing"][:, None, :]
        if tuple(kept) == tuple(own):
            check_mre(run, offset, s["mre_mm"])
        out[name] = row(offset)
    return out


def main() -> int:
    return cli(__doc__, "tools.results.matching_scales", scales)


if __name__ == "__main__":
    sys.exit(main())
