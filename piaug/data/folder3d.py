"""Your own volumes with landmarks: ``load('folder3d', root, split='all', ...)``.

Layout (the 2-D folder's, for volumes)::

    ROOT/
      images/          one volume per example: NIfTI (.nii, .nii.gz) or a subfolder holding
                       one DICOM series (its files .dcm or without an extension)
      landmarks.csv    one row per volume (not needed with landmarks_from=mask)
      masks/           with landmarks_from=mask: one label volume per example, same id

``landmarks.csv`` has the header ``image,1_x,1_y,1_z,...,K_x,K_y,K_z``, optionally with a
``split`` column, then one row per volume::

    image,1_x,1_y,1_z,2_x,2_y,2_z,split
    case001.nii.gz,120.5,88.0,40.0,101.2,97.5,52.0,train

* ``image``: a volume of ``images/`` by file name (``case001.nii.gz``), by id (the name without
  ``.nii``/``.nii.gz``, or the series' folder name) or by folder name.
* ``i_x``, ``i_y``, ``i_z``: landmark ``i`` in voxel indices ``(i, j, k)`` of the array as
  nibabel returns it (for a DICOM series: column, row, slice in position order), voxel centres
  at integers: inside means ``0 <= x <= size_x - 1`` and so on. With the option
  ``coordinates=world`` they are world millimetres instead (the NIfTI file's RAS+ affine, a
  DICOM series' patient LPS+), mapped to voxels through the file's affine.
* The voxel size comes from each file's header (anisotropic allowed); errors are measured in
  millimetres along each axis.

Gray values become 8 bits by the options ``window`` (``auto``: the file's own window, else the
``percentiles``; ``percentile``; ``range``; ``fixed``: the ``limits`` in the file's own values,
CT Hounsfield units) and ``percentiles``: see ``piaug.data.volumes``. The paper's H&N CT setting
is ``window=fixed, limits=(-200, 400)``.

**Landmarks from label masks** (``landmarks_from=mask``; datasets that ship organ masks, such
as StructSeg 2019's head-and-neck CT, whose landmarks Lei et al. made from the masks):
``masks/ID.nii.gz`` (or a DICOM series folder) on the grid of volume ``ID``, 0 for the
background; the option ``labels`` picks the labels (default: those of the first mask), and
``mask_points`` gives per label its ``centroid`` (one landmark) or its six ``extremes`` (the
least and greatest x, y and z, in that order). A volume without a mask is unlabelled.

**Unlabelled volumes** pretrain: a volume without a row (or whose landmark fields are all
empty) has NaN landmarks. Bad input (a volume that is not 3-D, a row naming no volume, a
landmark outside its volume, 2-D images among the volumes, a 2-D landmark file) stops ``load``
with an error that names the file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from piaug.data import volumes
from piaug.data.common import (
    DatasetSpec,
    ImageDataset,
    LandmarkTable,
    check_options,
    index_unique,
    preview,
    resolve_root,
    select_split,
    sort_ids,
)
from piaug.data.images import Window
from piaug.errors import UserError

NAME = "folder3d"
COORDINATES = ("voxel", "world")
SOURCES = ("csv", "mask")
DEFAULTS: dict[str, Any] = {
    "coordinates": "voxel",  # landmarks.csv in voxel indices, or world mm through the affine
    "window": Window().mode,  # auto | percentile | range | fixed
    "percentiles": Window().percentiles,
    "limits": None,  # window=fixed: (low, high) in the volumes' own values (CT: HU)
    "landmarks_from": "csv",  # csv | mask
    "mask_points": "centroid",  # landmarks_from=mask: centroid | extremes
    "labels": None,  # landmarks_from=mask: the labels, in order (default: the first mask's)
}
FORMAT = """\
A folder3d dataset is ROOT/images/ (NIfTI .nii/.nii.gz files, or one subfolder per DICOM series)
plus ROOT/landmarks.csv with the header image,1_x,1_y,1_z,...,K_x,K_y,K_z (voxel indices; an
optional split column), or ROOT/masks/ with landmarks_from=mask; see piaug/data/folder3d.py."""


def load(root: Any, split: str | None = None, **options: Any) -> ImageDataset:
    """The volumes of ``split`` of the folder3d dataset at ``root`` (the module docstring)."""
    root = resolve_root(root, NAME, FORMAT)
    opts = check_options(NAME, options, DEFAULTS)
    split = "all" if split is None else split
    for key, valid in (
        ("coordinates", COORDINATES),
        ("landmarks_from", SOURCES),
        ("mask_points", volumes.MASK_POINTS),
    ):
        if opts[key] not in valid:
            raise UserError(f"folder3d option {key}={opts[key]!r}: use one of {', '.join(valid)}")
    window = Window.of(opts)
    folder = root / "images"
    if not folder.is_dir():
        raise UserError(f"the folder {folder} is missing.\n{FORMAT}")
    found = volumes.list_volumes(folder)
    if not found:
        raise UserError(f"{folder} holds no volumes.\n{FORMAT}")
    headers = {key: volumes.read_header(path) for key, path in found.items()}
    if opts["landmarks_from"] == "mask":
        rows, report, num = _from_masks(root, found, headers, opts)
    else:
        rows, report, num = _from_csv(root / "landmarks.csv", found, headers, opts)
    ids = select_split(sort_ids(rows), rows, root / "landmarks.csv", split)
    options = {"split": split, **opts, "percentiles": window.percentiles}
    options["limits"] = window.limits
    return ImageDataset(
        NAME,
        ids,
        [found[i] for i in ids],
        np.array([rows[i][1][1] for i in ids], np.float32).reshape(len(ids), num, 3),
        [headers[i].spacing for i in ids],
        num_landmarks=num,
        options=options,
        source_files=[*(found[i] for i in ids), *_annotation_files(root, opts)],
        report=report,
        window=window,
        dims=3,
        read=volumes.read_volume,
    )


def _annotation_files(root: Path, opts: dict) -> list[Path]:
    if opts["landmarks_from"] == "mask":
        return sorted((root / "masks").iterdir())
    return [root / "landmarks.csv"]


def check_inside(points: np.ndarray, header: volumes.VolumeHeader, where: str, path: Path):
    """UserError unless every (x, y, z) lies inside the volume's voxel centres (to 1e-3
    voxels: world coordinates come back through a float32 affine)."""
    size = np.asarray(header.size)
    bad = ((points < -1e-3) | (points > size - 1 + 1e-3)).any(axis=1)
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        x, y, z = (float(v) for v in points[k])
        raise UserError(
            f"{where}: landmark {k + 1} at (x, y, z) = ({x:g}, {y:g}, {z:g}) voxels is outside "
            f"the {' x '.join(str(n) for n in header.size)} volume {path} ({int(bad.sum())} "
            "such points); fix the annotation (voxel indices i, j, k of the array as nibabel "
            "reads it, or coordinates=world for millimetres)"
        )


def _from_csv(csv_path: Path, found: dict, headers: dict, opts: dict):
    if not csv_path.is_file():
        raise UserError(
            f"the file {csv_path} is missing (or use landmarks_from=mask with ROOT/masks/).\n"
            f"{FORMAT}"
        )
    table = LandmarkTable(csv_path, extra=("split",), allow_blank=True, axes="xyz")
    by_name = {p.name: key for key, p in found.items()}
    items, no_volume = [], []
    for line, value, points, extra in table.rows:
        key = value if value in found else by_name.get(value)
        if key is None:
            no_volume.append(f"line {line} {value!r}")
            continue
        where = f"{csv_path}, line {line}"
        if np.isfinite(points).all():
            if opts["coordinates"] == "world":
                points = volumes.to_voxels(points, headers[key].affine)
            check_inside(points, headers[key], where, found[key])
            points = np.clip(points, 0, np.asarray(headers[key].size) - 1)
        items.append((key, line, (found[key], points, extra)))
    rows = index_unique(items, csv_path)
    if no_volume:
        raise UserError(
            f"{csv_path}: {len(no_volume)} rows name volumes that are not in "
            f"{csv_path.parent / 'images'} ({preview(no_volume)}); add the volumes or remove "
            "the rows"
        )
    report = _unlabelled(rows, found, table.num_landmarks, {"split": ""}, csv_path)
    return rows, report, table.num_landmarks


def _from_masks(root: Path, found: dict, headers: dict, opts: dict):
    masks_dir = root / "masks"
    if not masks_dir.is_dir():
        raise UserError(f"landmarks_from=mask needs the folder {masks_dir}.\n{FORMAT}")
    masks = volumes.list_volumes(masks_dir)
    strays = sorted(set(masks) - set(found))
    if strays:
        raise UserError(
            f"{masks_dir} holds masks of no volume of {root / 'images'} ({preview(strays)}); "
            "remove them or add the volumes"
        )
    if not masks:
        raise UserError(f"{masks_dir} holds no masks (NIfTI files or DICOM series folders)")
    labels = opts["labels"]
    rows = {}
    for key in sort_ids(masks):
        mask = volumes.read_mask(masks[key], headers[key], found[key])
        if labels is None:
            labels = sorted(int(v) for v in np.unique(mask) if v > 0)
            if not labels:
                raise UserError(f"mask {masks[key]} has no label (only 0, the background)")
        points = volumes.landmarks_from_mask(
            mask, [int(v) for v in labels], opts["mask_points"], f"mask {masks[key]}"
        )
        rows[key] = (0, (found[key], points, {"split": ""}))
    num = len(next(iter(rows.values()))[1][1])
    report = _unlabelled(rows, found, num, {"split": ""}, masks_dir)
    return rows, report, num


def _unlabelled(rows: dict, found: dict, num: int, blank: dict, source: Path) -> list[str]:
    """Adds the volumes without a row (NaN landmarks) to ``rows``; the report lines."""
    missing = [key for key in sort_ids(found) if key not in rows]
    for key in missing:
        rows[key] = (0, (found[key], np.full((num, 3), np.nan), blank))
    report = []
    if missing:
        report.append(
            f"{len(missing)} volumes have no landmarks in {source} ({preview(missing)}): "
            "unlabelled (they serve pretraining and prediction, not evaluation)"
        )
    if all(not np.isfinite(r[1][1]).all() for r in rows.values()):
        report.append(f"{source}: no volume has landmarks; stages that evaluate need some")
    return report


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults=DEFAULTS,
    option_types={"limits": tuple, "labels": tuple},
    train_split="all",
    eval_split="all",
    description="A user's folder of volumes (NIfTI or DICOM series) with landmarks.csv.",
    dims=3,
)
