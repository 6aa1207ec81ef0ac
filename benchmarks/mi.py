"""piaug.info.mutual_information (batched) against a loop over sklearn's mutual_info_score.

The workload of the augmentation estimation (DESIGN section 1): for 19 landmarks x 150 images,
the MI between the template's 64 x 64 patch at a landmark and the image's patch at the same
landmark. Images are synthetic 384 x 384 X-rays (``--ceph-dir`` reads the ISBI jpg layout
instead). Prints one JSON line with both times and the ratio sklearn / piaug. Run:

  python benchmarks/mi.py
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import numpy as np
from sklearn.metrics import mutual_info_score

from piaug import info
from piaug.data import synthetic


def synthetic_patches(num_images: int, num_points: int):
    examples = [synthetic.generate(i, num_landmarks=num_points) for i in range(num_images + 1)]
    return [(ex["image"], ex["landmarks"]) for ex in examples], "synthetic 384 x 384"


def ceph_patches(root: Path, num_images: int, num_points: int):
    import csv

    from skimage.io import imread
    from skimage.transform import resize

    with open(root / "senior.csv") as f:
        rows = list(csv.reader(f))[1:]
    out = []
    for row in rows[: num_images + 1]:
        image = imread(root / "images" / Path(row[0]).name)[..., 0]
        scale = np.array([384 / image.shape[1], 384 / image.shape[0]])
        small = (resize(image, (384, 384), preserve_range=True) + 0.5).astype(np.uint8)
        points = np.asarray(row[1:], float).reshape(-1, 2)[:num_points] * scale
        out.append((small, points))
    return out, f"ISBI ceph {root} resized to 384 x 384"


def crop(image: np.ndarray, point, size: int) -> np.ndarray:
    half = size // 2
    x, y = (int(round(v)) for v in point)
    y0 = int(np.clip(y - half, 0, image.shape[0] - size))
    x0 = int(np.clip(x - half, 0, image.shape[1] - size))
    return image[y0 : y0 + size, x0 : x0 + size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--points", type=int, default=19)
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ceph-dir", type=Path, default=None)
    args = parser.parse_args()

    if args.ceph_dir:
        subjects, source = ceph_patches(args.ceph_dir, args.images, args.points)
    else:
        subjects, source = synthetic_patches(args.images, args.points)
    template, template_points = subjects[0]
    a = np.stack([[crop(template, p, args.patch) for p in template_points] for _ in subjects[1:]])
    b = np.stack([[crop(im, p, args.patch) for p in pts] for im, pts in subjects[1:]])

    start = time.perf_counter()
    ref = np.array(
        [
            mutual_info_score(x.ravel(), y.ravel())
            for x, y in zip(
                a.reshape(-1, args.patch, args.patch),
                b.reshape(-1, args.patch, args.patch),
                strict=True,
            )
        ]
    ).reshape(a.shape[:2])
    t_ref = time.perf_counter() - start

    start = time.perf_counter()
    np.asarray(info.mutual_information(a, b))
    first = time.perf_counter() - start
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        ours = np.asarray(info.mutual_information(a, b))
        times.append(time.perf_counter() - start)
    t_ours = min(times)
    report = {
        "case": "mi",
        "source": source,
        "pairs": list(a.shape[:2]),
        "patch": [args.patch, args.patch],
        "device": jax.devices()[0].device_kind,
        "sklearn_loop_s": round(t_ref, 4),
        "piaug_s": round(t_ours, 5),
        "piaug_first_call_s": round(first, 3),
        "ratio_sklearn_over_piaug": round(t_ref / t_ours, 1),
        "max_abs_diff": float(np.abs(ours - ref).max()),
        "mean_mi_nats": float(ref.mean()),
    }
    print(json.dumps(report), flush=True)
    if report["max_abs_diff"] > 1e-5:
        raise SystemExit("values disagree with sklearn beyond 1e-5")


if __name__ == "__main__":
    main()
