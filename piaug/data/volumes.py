"""Reading volumes: NIfTI files and DICOM series as 8-bit ``(D, H, W)`` arrays, their voxel
sizes and affines, landmarks from label masks, and the resampling to a training grid.

Axes and coordinates (the 2-D conventions with one more axis):

* A volume's voxel indices are ``(i, j, k)`` as nibabel returns a NIfTI file's array; for a
  DICOM series ``i`` runs along a row (the column index), ``j`` down the columns (the row index)
  and ``k`` over the slices, in the order of their position along the slices' normal.
* The array piaug works on is ``(D, H, W) = (k, j, i)``: the axes reversed, so that a point
  ``(x, y, z) = (i, j, k)`` lists the array's axes from the last, as a 2-D point ``(x, y)`` =
  (column, row) does. Voxel centres are at integer coordinates.
* ``spacing``: mm per voxel along ``(x, y, z)``, from the header (anisotropic allowed).
* ``affine``: 4 x 4, ``(i, j, k, 1)`` -> world millimetres: NIfTI's (RAS+, nibabel's
  ``img.affine``), a DICOM series' patient coordinates (LPS+, from ImagePositionPatient,
  ImageOrientationPatient and PixelSpacing).

Gray values become 8-bit through a ``Window`` (``piaug.data.images``): ``fixed`` with
``limits`` for CT (the paper's H&N setting: ``(-200, 400)`` HU), the ``percentiles`` for MR;
``auto`` takes the file's own window (DICOM WindowCenter / WindowWidth, NIfTI cal_min /
cal_max) and otherwise the percentiles. DICOM values get their RescaleSlope / Intercept (CT:
Hounsfield units), NIfTI values their scl_slope / scl_inter.

Every problem with a file (unreadable, not 3-D, a series with gaps or mixed orientations) is a
``UserError`` that names the file or folder and says what to do.
"""

from __future__ import annotations

import dataclasses
import gzip
import zlib
from pathlib import Path

import numpy as np

from piaug.data.images import (
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    Window,
    dicom_window,
    read_dicom,
    to_uint8,
)
from piaug.errors import UserError

NIFTI_SUFFIXES = (".nii.gz", ".nii")
MASK_POINTS = ("centroid", "extremes")
# the order of the six extreme points of a label (landmarks_from_mask(..., "extremes"))
EXTREMES = ("-x", "+x", "-y", "+y", "-z", "+z")


@dataclasses.dataclass(frozen=True)
class VolumeHeader:
    """What a volume's header says: ``size`` (voxels along x, y, z = i, j, k), ``spacing``
    (mm per voxel along x, y, z) and ``affine`` ((i, j, k, 1) -> world mm)."""

    size: tuple[int, int, int]
    spacing: np.ndarray
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, int, int]:
        """The ``(D, H, W)`` array shape: ``size`` reversed."""
        return tuple(reversed(self.size))


def is_nifti(path: Path) -> bool:
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def volume_id(path: Path) -> str:
    """A volume's id: a NIfTI file's name without ``.nii(.gz)``, a DICOM series' folder name."""
    name = Path(path).name
    for suffix in NIFTI_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def dicom_files(folder: Path) -> list[Path]:
    """The files of a DICOM series folder: ``.dcm`` files, or files without an extension."""
    return [
        p
        for p in sorted(folder.iterdir())
        if p.is_file()
        and not p.name.startswith(".")
        and (p.suffix.lower() in DICOM_EXTENSIONS or p.suffix == "")
        and p.name.upper() != "DICOMDIR"
    ]


def list_volumes(folder: Path) -> dict[str, Path]:
    """The volumes directly in ``folder`` by id: NIfTI files and subfolders holding a DICOM
    series. UserError for 2-D image files among them (2-D and 3-D do not mix in one dataset) and
    for two volumes with one id."""
    found: dict[str, Path] = {}
    flat = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith("."):
            continue
        if path.is_dir():
            if not dicom_files(path):
                continue
        elif not is_nifti(path):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                flat.append(path.name)
            continue
        key = volume_id(path)
        if key in found:
            raise UserError(
                f"two volumes for one id {key!r}: {found[key]} and {path}; remove one of them"
            )
        found[key] = path
    if flat:
        raise UserError(
            f"{folder} holds 2-D image files ({', '.join(flat[:5])}"
            f"{' ...' if len(flat) > 5 else ''}) where volumes are read (NIfTI files, or one "
            "subfolder of DICOM files per volume; a .dcm file on its own is a 2-D image): 2-D "
            "and 3-D do not mix in one dataset; move them, or read the 2-D images with the "
            "folder dataset"
        )
    return found


def _nifti(path: Path):
    import nibabel

    try:
        return nibabel.load(str(path))
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(
            f"cannot read NIfTI file {path}: {e}. The file is corrupt, truncated or not NIfTI; "
            "re-export it"
        ) from None
    except Exception as e:  # nibabel's ImageFileError and its relatives
        raise UserError(f"cannot read NIfTI file {path}: {e}; re-export it") from None


def _nifti_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, int, int]:
    """The 3-D shape of a NIfTI array; trailing axes of length 1 are dropped."""
    shape = tuple(int(n) for n in shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    if len(shape) != 3:
        what = "2-D: an image, not a volume" if len(shape) < 3 else "a series of volumes"
        raise UserError(
            f"NIfTI file {path} has shape {shape} ({len(shape)} axes, {what}); piaug reads one "
            "3-D volume per file: save each volume on its own (2-D images go in the folder "
            "dataset)"
        )
    return shape


def _series(folder: Path, *, pixels: bool):
    """The slices of the DICOM series in ``folder`` sorted along their normal, with the
    series' affine and spacing. UserError for a folder that is not one regular series."""
    files = dicom_files(folder)
    if not files:
        raise UserError(f"{folder} holds no DICOM files (.dcm, or files without an extension)")
    slices = [(read_dicom(p, pixels=pixels), p) for p in files]
    series = {str(ds.get("SeriesInstanceUID", "")) for ds, _ in slices}
    if len(series) > 1:
        raise UserError(
            f"{folder} holds {len(series)} DICOM series; piaug reads one series per folder: "
            "move each series to a folder of its own"
        )
    first, first_path = slices[0]
    for ds, p in slices:
        for key in ("Rows", "Columns", "PixelSpacing"):
            if key not in ds:
                raise UserError(f"DICOM file {p} has no {key}; it is not a slice of a volume")
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise UserError(
                f"DICOM file {p} has {int(ds.NumberOfFrames)} frames: a multi-frame volume, "
                "which piaug does not read; convert the series to NIfTI (e.g. dcm2niix)"
            )
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns):
            raise UserError(
                f"DICOM slices of {folder} differ in size: {first_path.name} is "
                f"{first.Rows} x {first.Columns}, {p.name} {ds.Rows} x {ds.Columns}; keep one "
                "series per folder"
            )
    rows_mm, cols_mm = (float(v) for v in first.PixelSpacing)
    if len(slices) == 1:
        raise UserError(
            f"{folder} holds one DICOM slice; a volume needs several (a single .dcm file is "
            "a 2-D image: the folder dataset reads it)"
        )
    missing = [p.name for ds, p in slices if "ImagePositionPatient" not in ds]
    if missing or "ImageOrientationPatient" not in first:
        raise UserError(
            f"DICOM slices of {folder} lack ImagePositionPatient / ImageOrientationPatient "
            f"({', '.join(missing[:3]) or first_path.name}); piaug orders the slices and "
            "measures their spacing with them: convert the series to NIfTI (e.g. dcm2niix)"
        )
    orientation = np.asarray([float(v) for v in first.ImageOrientationPatient])
    along_row, along_col = orientation[:3], orientation[3:]
    normal = np.cross(along_row, along_col)
    for ds, p in slices:
        other = np.asarray([float(v) for v in ds.get("ImageOrientationPatient", orientation)])
        if not np.allclose(other, orientation, atol=1e-3):
            raise UserError(
                f"DICOM file {p} is oriented differently from {first_path.name}; keep one "
                "series per folder"
            )
    positions = np.asarray([[float(v) for v in ds.ImagePositionPatient] for ds, _ in slices])
    order = np.argsort(positions @ normal, kind="stable")
    slices = [slices[i] for i in order]
    positions = positions[order]
    gaps = np.diff(positions @ normal)
    if np.any(gaps < 1e-3):
        k = int(np.argmin(gaps))
        raise UserError(
            f"DICOM files {slices[k][1].name} and {slices[k + 1][1].name} of {folder} lie at "
            "the same position: two series or a duplicate slice; keep one series per folder"
        )
    step = float(np.median(gaps))
    if np.max(np.abs(gaps - step)) > 0.01 * step + 1e-3:
        raise UserError(
            f"the slices of {folder} are unevenly spaced ({gaps.min():g} to {gaps.max():g} "
            "mm): missing slices or a variable-spacing series; resample it to even spacing "
            "(e.g. convert to NIfTI and resample)"
        )
    affine = np.eye(4)
    affine[:3, 0] = along_row * cols_mm
    affine[:3, 1] = along_col * rows_mm
    affine[:3, 2] = (positions[-1] - positions[0]) / (len(slices) - 1)
    affine[:3, 3] = positions[0]
    spacing = np.array([cols_mm, rows_mm, step])
    return slices, affine, spacing


def read_header(path: Path) -> VolumeHeader:
    """A volume's size, spacing and affine, without decoding its voxels."""
    path = Path(path)
    if path.is_dir():
        slices, affine, spacing = _series(path, pixels=False)
        first = slices[0][0]
        return VolumeHeader((int(first.Columns), int(first.Rows), len(slices)), spacing, affine)
    img = _nifti(path)
    size = _nifti_shape(path, img.shape)
    spacing = np.asarray(img.header.get_zooms()[:3], np.float64)
    if not np.all(np.isfinite(spacing) & (spacing > 0)):
        raise UserError(
            f"NIfTI file {path} gives voxel sizes {tuple(spacing)} mm; they must be > 0: fix "
            "its header (pixdim)"
        )
    return VolumeHeader(size, spacing, np.asarray(img.affine, np.float64))


def read_values(path: Path) -> tuple[np.ndarray, VolumeHeader, tuple[float, float] | None]:
    """A volume's values as float64 ``(D, H, W)`` (HU for CT), its header, and its own
    window (None when it has none)."""
    path = Path(path)
    if path.is_dir():
        slices, affine, spacing = _series(path, pixels=True)
        planes = []
        for ds, p in slices:
            try:
                plane = np.asarray(ds.pixel_array, np.float64)
            except Exception as e:  # pydicom raises many kinds for codecs and bad data
                raise UserError(
                    f"cannot decode the pixels of DICOM file {p}: {e}. If it is compressed, "
                    "install pydicom's codecs (pip install pylibjpeg pylibjpeg-libjpeg) or "
                    "re-export it uncompressed"
                ) from None
            slope = float(ds.get("RescaleSlope", 1) or 1)
            planes.append(plane * slope + float(ds.get("RescaleIntercept", 0) or 0))
        first = slices[0][0]
        header = VolumeHeader((int(first.Columns), int(first.Rows), len(slices)), spacing, affine)
        return np.stack(planes), header, dicom_window(first)
    header = read_header(path)
    img = _nifti(path)
    try:
        values = np.asarray(img.dataobj, np.float64).reshape(header.size)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as e:
        raise UserError(
            f"cannot decode the voxels of NIfTI file {path}: {e}. The file is corrupt or "
            "truncated; re-export it"
        ) from None
    low, high = (float(img.header.get(k, 0) or 0) for k in ("cal_min", "cal_max"))
    own = (low, high) if high > low else None
    return values.transpose(2, 1, 0), header, own


def read_volume(path: Path, window: Window | None = None) -> np.ndarray:
    """A volume as uint8 ``(D, H, W)`` through ``window`` (default ``Window()``)."""
    window = Window() if window is None else window
    values, _, own = read_values(path)
    return to_uint8(values, *window.bounds(values, own))


def to_world(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(..., 3)`` voxel coordinates (x, y, z) = (i, j, k) -> world millimetres."""
    points = np.asarray(points, np.float64)
    return points @ affine[:3, :3].T + affine[:3, 3]


def to_voxels(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """``(..., 3)`` world millimetres -> voxel coordinates (x, y, z) = (i, j, k)."""
    points = np.asarray(points, np.float64)
    return (points - affine[:3, 3]) @ np.linalg.inv(affine[:3, :3]).T


def read_mask(path: Path, header: VolumeHeader, volume: Path) -> np.ndarray:
    """A label mask as int64 ``(D, H, W)``; UserError unless it lies on ``volume``'s grid."""
    values, mask_header, _ = read_values(path)
    if mask_header.size != header.size or not np.allclose(
        mask_header.affine, header.affine, atol=1e-3 * float(np.max(header.spacing))
    ):
        raise UserError(
            f"mask {path} ({mask_header.size} voxels) is not on the grid of its volume "
            f"{volume} ({header.size} voxels, or another affine); resample the mask to the volume"
        )
    labels = np.rint(values)
    if not np.allclose(values, labels) or labels.min() < 0:
        raise UserError(
            f"mask {path} holds values that are not labels (non-negative integers); give the "
            "label volume, 0 for the background"
        )
    return labels.astype(np.int64)


def landmarks_from_mask(
    mask: np.ndarray, labels: list[int], how: str, where: str = "mask"
) -> np.ndarray:
    """Landmarks ``(L, 3)`` (x, y, z voxels) of a label mask ``(D, H, W)``: per label of
    ``labels``, in order, its centroid (``how="centroid"``, one point) or its six extreme
    points (``"extremes"``, in the order ``EXTREMES``: the least and the greatest x, then y,
    then z; each the centroid of the label's voxels on that extreme plane). UserError, naming
    ``where``, for a label the mask lacks."""
    if how not in MASK_POINTS:
        raise UserError(f"mask_points={how!r}: use one of {', '.join(MASK_POINTS)}")
    points = []
    for label in labels:
        zyx = np.argwhere(mask == label)
        if not len(zyx):
            raise UserError(
                f"{where} has no voxel of label {label}; every mask needs each of the labels "
                f"{labels} (or choose the labels with the option labels=...)"
            )
        xyz = zyx[:, ::-1].astype(np.float64)
        if how == "centroid":
            points.append(xyz.mean(axis=0))
            continue
        for axis in range(3):
            for extreme in (xyz[:, axis].min(), xyz[:, axis].max()):
                points.append(xyz[xyz[:, axis] == extreme].mean(axis=0))
    return np.asarray(points, np.float64)
