r"""A real-anatomy case for volumes: nilearn's MNI152 T1 template deformed at random, with the
32 AFIDs landmarks (anatomical fiducials, Lau et al. 2019) mapped through each deformation
exactly. Nothing is downloaded: both come inside their packages.

pip install -e '.[mni]'        # nilearn and afids-utils (not core dependencies)
python data_prep/mni_afids.py --out=data/mni_afids --num=24
python -m piaug.main --config=configs/hn3d.py:cpu,mri --workdir=runs/mni \
    --config.data.dir=data/mni_afids

Writes the ``folder3d`` layout (docs/volumes.md): ``OUT/images/mni_NNNN.nii.gz`` (float32 T1
values on the template's grid and affine) and ``OUT/landmarks.csv`` (``image,1_x,1_y,1_z,...``
in voxel indices, a ``split`` column: the first three quarters ``train``, the rest ``test``).

Subject ``n`` of ``--seed`` is the template under the map of ``piaug.data.synthetic3d``
(``draw_params``: a rotation of up to 5 degrees about each axis, scaling 0.95-1.05, a shift of
up to 3 % of the field, a smooth sine displacement of up to 1.2 % per term), redrawn until every
landmark stays 5 % inside the field; then a smooth multiplicative bias field (up to +-10 %)
and Gaussian noise (2 % of the template's 99th percentile). The landmarks are the template's
AFIDs (``afids_utils`` ``template.fcsv``, world millimetres of MNI152NLin2009cAsym; nilearn's
template is the 2009 MNI152 too, the small difference between its variants is part of the
label noise) mapped to voxels, then forward through the subject's map by
``synthetic3d.forward`` (Newton, to 1e-9 of the field).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

from piaug.data import landmarks as landmark_files
from piaug.data import synthetic3d, volumes

MARGIN = 0.05  # every landmark this far inside the field (unit cube)


def template(resolution: int = 2):
    """nilearn's MNI152 T1 template (a NIfTI image) at ``resolution`` mm."""
    try:
        from nilearn import datasets
    except ImportError:
        raise SystemExit("error: needs nilearn: pip install -e '.[mni]'") from None
    return datasets.load_mni152_template(resolution=resolution)


def afids_world() -> tuple[np.ndarray, list[str]]:
    """The 32 AFIDs of the MNI template, ``(32, 3)`` world millimetres, and their names."""
    try:
        from importlib.resources import files

        text = (files("afids_utils") / "resources" / "template.fcsv").read_text()
    except ModuleNotFoundError:
        raise SystemExit("error: needs afids-utils: pip install -e '.[mni]'") from None
    rows = [line.split(",") for line in text.splitlines() if line and not line.startswith("#")]
    return np.array([[float(v) for v in r[1:4]] for r in rows]), [r[12] for r in rows]


def unit_points(img, world: np.ndarray) -> np.ndarray:
    """World points ``(L, 3)`` of ``img``'s space as unit coordinates of its field,
    ``(voxel + 0.5) / size`` (the coordinates ``synthetic3d``'s maps act on)."""
    voxels = volumes.to_voxels(world, np.asarray(img.affine, np.float64))
    return (voxels + 0.5) / np.asarray(img.shape[:3], np.float64)


def subject_params(seed: int, index: int, unit: np.ndarray) -> dict:
    """The map of subject ``index`` (``synthetic3d.draw_params``, redrawn until every point of
    ``unit`` stays ``MARGIN`` inside the field)."""
    for attempt in range(100):
        p = synthetic3d.draw_params(seed, index, attempt)
        moved = synthetic3d.forward(unit, p)
        if np.all((moved >= MARGIN) & (moved <= 1 - MARGIN)):
            return p
    raise RuntimeError(f"no draw of subject {index} keeps the landmarks inside")


def subject(values: np.ndarray, unit: np.ndarray, seed: int, index: int):
    """Subject ``index``: the template ``values`` ``(I, J, K)`` deformed, biased and noised,
    and its landmarks ``(L, 3)`` in voxels, from the template's ``unit`` landmark
    coordinates (``(v + 0.5) / size``)."""
    p = subject_params(seed, index, unit)
    size = np.asarray(values.shape, np.float64)
    axes = [(np.arange(n) + 0.5) / n for n in values.shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"), -1)  # (I, J, K, 3) unit (u, v, w)
    source = synthetic3d.backward(grid, p) * size - 0.5  # template voxels
    moved = ndimage.map_coordinates(values, np.moveaxis(source, -1, 0), order=1, cval=0.0)
    rng = np.random.default_rng([seed, index, 7])
    bias = 1.0
    for _ in range(3):
        k, phase = rng.integers(0, 2, 3), rng.uniform(0, 2 * np.pi)
        bias = bias + rng.uniform(-0.035, 0.035) * np.sin(2 * np.pi * (grid @ k) + phase)
    scale = float(np.percentile(values, 99))
    out = moved * bias + rng.normal(0.0, 0.02 * scale, moved.shape)
    points = synthetic3d.forward(unit, p) * size - 0.5
    return np.clip(out, 0, None).astype(np.float32), points


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num", type=int, default=24)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resolution", type=int, default=2, choices=(1, 2))
    args = parser.parse_args(argv)
    import nibabel as nib

    if (args.out / "landmarks.csv").exists():
        print(f"error: {args.out} already holds a dataset; give another --out", file=sys.stderr)
        return 2
    img = template(args.resolution)
    values = np.asarray(img.get_fdata(), np.float32)
    world, names = afids_world()
    affine = np.asarray(img.affine, np.float64)
    unit = unit_points(img, world)
    (args.out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for n in range(args.num):
        volume, points = subject(values, unit, args.seed, n)
        name = f"mni_{n:04d}.nii.gz"
        nib.save(nib.Nifti1Image(volume, affine), args.out / "images" / name)
        split = "train" if n < round(0.75 * args.num) else "test"
        rows.append((name, points, split))
        print(f"{name}: {split}", flush=True)
    with (args.out / "landmarks.csv").open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["image", *landmark_files.columns(len(names), 3), "split"])
        for name, points, split in rows:
            out.writerow([name, *(f"{v:.3f}" for v in points.ravel()), split])
    (args.out / "landmark_names.txt").write_text("\n".join(names) + "\n")
    print(f"{args.num} volumes of {values.shape} voxels, {len(names)} landmarks -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
