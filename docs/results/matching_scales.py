r"""Which scales find the landmarks: a run's matching (grid protocol, its template and images,
as ``evaluate``) with each scale's cosine map alone, and with all five combined as the run
combines them (the run's MRE, checked against its ``results.json``).

python docs/results/matching_scales.py --out=NAME RUN[:ENCODER] ...

``ENCODER`` is ``baseline`` (default) or ``piaug``; each run needs its ``results.json`` and its
data where its ``config.json`` says.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from landmark_errors import check_mre, cli, setting  # noqa: E402

from piaug import matching  # noqa: E402
from piaug.models import STRIDES  # noqa: E402


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
    """``{"all": row, "stride_32": row, ...}`` for ``encoder`` of ``run``."""
    s = setting(run, encoder)
    config = s["config"]
    features = matching.encode(s["encoder"], s["images"], batch_size=config.eval.batch_size)
    template = [f[0] for f in matching.encode(s["encoder"], s["template_image"][None])]
    vectors = matching.template_vectors(
        template, s["template_rows_cols"], sampling=config.eval.template_sampling
    )
    kw = {"size": s["size"], "batch_size": config.eval.batch_size, "upsample": config.eval.upsample}
    kw |= {"subpixel": config.eval.subpixel}
    subsets = {"all": list(range(len(STRIDES)))}
    subsets |= {f"stride_{st}": [i] for i, st in enumerate(STRIDES)}
    out = {}
    for name, idx in subsets.items():
        found = matching.match_all(
            [features[i] for i in idx],
            [vectors[i] for i in idx],
            strides=[STRIDES[i] for i in idx],
            combine=config.eval.combine,
            **kw,
        )
        offset = (found[..., ::-1] - s["truth"]) * s["spacing"][:, None, :]
        if name == "all":
            check_mre(run, offset, s["mre_mm"])
        out[name] = row(offset)
    return out


def main() -> int:
    return cli(__doc__, "matching_scales.py", scales)


if __name__ == "__main__":
    sys.exit(main())
