r"""The MRE of ``piaug.predict``'s landmarks against a folder's ``landmarks.csv``, and of the
template's landmarks copied, over the images other than the template, at each image's own
voxels (pixels) and spacing (volumes: the NIfTI header's zooms).

python -m tools.results.predict_mre --out=NAME --pred=PRED/landmarks.csv \
    --truth=DIR/landmarks.csv --images=DIR/images --template=ID
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from piaug.data import common, volumes
from tools.results import RESULTS, command


def _points(path: Path, axes: str) -> dict[str, np.ndarray]:
    table = common.LandmarkTable(path, extra=("spacing_mm", "split"), axes=axes)
    return {
        Path(name).name.removesuffix(".gz").removesuffix(".nii"): p for _, name, p, _ in table.rows
    }


def mre(pred: dict, truth: dict, images: Path, template: str) -> dict:
    errors, copied = [], []
    for name, p in pred.items():
        if name == template:
            continue
        zooms = np.asarray(volumes.read_header(images / f"{name}.nii.gz").spacing, np.float64)
        t = truth[name][: len(p)]
        errors.append(np.linalg.norm((p - t) * zooms, axis=1).mean())
        copied.append(np.linalg.norm((truth[template][: len(p)] - t) * zooms, axis=1).mean())
    return {
        "images": len(errors),
        "predict_mre_mm": float(np.mean(errors)),
        "template_copy_mre_mm": float(np.mean(copied)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in ("out", "pred", "truth", "images", "template"):
        parser.add_argument(f"--{name}", required=True)
    args = parser.parse_args()
    pred, truth = _points(Path(args.pred), "xyz"), _points(Path(args.truth), "xyz")
    payload = {"command": command("tools.results.predict_mre", sys.argv[1:])}
    payload |= mre(pred, truth, Path(args.images), args.template)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(json.dumps(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
