"""Reading one image file as 8-bit grayscale, for the dataset readers (``piaug.data.common``).

Images are read with Pillow and converted to 8-bit grayscale (Pillow's ``convert("L")``: colour
images become luma ``(299 R + 587 G + 114 B) / 1000``, which leaves gray stored as three equal
channels unchanged; an alpha channel is dropped; 1-bit images become 0 / 255).  Images with
more than 8 bits per pixel (16-bit PNG or TIFF, 32-bit integer or float TIFF) and DICOM files
(``.dcm``, read with pydicom: its rescale slope and intercept applied, MONOCHROME1 inverted)
are mapped to 8 bits by a gray-level window (``Window``): ``auto`` takes a DICOM file's own
window (WindowCenter / WindowWidth) and otherwise the ``percentiles`` of the image's values
(0.5 and 99.5 by default), ``percentile`` always the percentiles, ``range`` the image's minimum
and maximum, ``fixed`` the ``limits`` given in the image's own values (CT: Hounsfield units,
as the paper's [-200, 400]); the window's ends become 0 and 255, values beyond them are
clipped.  Multi-frame files are refused with an error (save the frame you want on its own).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import MutableSequence, Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from piaug.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
DICOM_EXTENSIONS = (".dcm",)
# Pillow modes with more than 8 bits per sample: mapped to 8 bits by a Window.
_DEEP_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "I;32S", "F;32")
WINDOWS = ("auto", "percentile", "range", "fixed")


@dataclasses.dataclass(frozen=True)
class Window:
    """How an image of more than 8 bits per pixel becomes 8-bit (see the module docstring):
    ``mode`` auto | percentile | range | fixed, the ``percentiles`` (low, high) of the first
    two, and the ``limits`` (low, high) in the image's own values (CT: Hounsfield units) that
    ``fixed`` maps to 0 and 255."""

    mode: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)
    limits: tuple[float, float] | None = None

    def __post_init__(self):
        if self.mode not in WINDOWS:
            raise UserError(f"window={self.mode!r}: use one of {', '.join(WINDOWS)}")
        if self.mode == "fixed" or self.limits is not None:
            try:
                low, high = (float(v) for v in self.limits)
            except (TypeError, ValueError):
                low, high = math.nan, math.nan
            if not low < high:  # also false for NaN
                raise UserError(
                    f"limits={self.limits!r}: window=fixed needs limits=(low, high) with "
                    "low < high, in the image's own values (CT: Hounsfield units)"
                )
            object.__setattr__(self, "limits", (low, high))
        try:
            lo, hi = (float(p) for p in self.percentiles)
        except (TypeError, ValueError):
            lo, hi = math.nan, math.nan
        if not 0 <= lo < hi <= 100:
            raise UserError(
                f"percentiles={self.percentiles!r}: give (low, high) with 0 <= low < high <= 100"
            )
        object.__setattr__(self, "percentiles", (lo, hi))

    @classmethod
    def of(cls, options: dict) -> Window:
        """The window of a reader's options (``window``, ``percentiles``; defaults if absent)."""
        limits = options.get("limits")
        return cls(
            str(options.get("window", "auto")),
            tuple(options.get("percentiles", (0.5, 99.5))),
            None if limits is None else tuple(limits),
        )

    def bounds(self, values: np.ndarray, dicom_window=None) -> tuple[float, float]:
        """The gray levels that become 0 and 255 (``dicom_window``: the file's own window,
        which ``auto`` takes)."""
        if self.mode == "fixed":
            return self.limits
        if self.mode == "auto" and dicom_window is not None:
            return dicom_window
        finite = values[np.isfinite(values)]
        if finite.size == 0:
            return 0.0, 1.0
        if self.mode == "range":
            return float(finite.min()), float(finite.max())
        lo, hi = np.percentile(finite, self.percentiles)
        return float(lo), float(hi)


def to_uint8(values: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``values`` mapped linearly from ``[lo, hi]`` to ``[0, 255]``, clipped and rounded."""
    scale = 255.0 / (hi - lo) if hi > lo else 0.0
    out = (np.asarray(values, np.float64) - lo) * scale
    return np.rint(np.clip(np.nan_to_num(out, nan=0.0), 0, 255)).astype(np.uint8)


def list_images(folder: Path) -> dict[str, Path]:
    """Image files directly in ``folder`` by stem; two files with one stem are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not path.is_file():
            continue
        if path.stem in found:
            raise UserError(
                f"two images for one id {path.stem!r}: {found[path.stem]} and {path}; "
                "remove one of them"
            )
        found[path.stem] = path
    return found


def _open_error(path: Path, e: BaseException) -> UserError:
    return UserError(
        f"cannot read image {path}: {e}. The file is corrupt, truncated or not an image; "
        "re-download or re-export it"
    )


def _check_frames(path: Path, frames: int) -> None:
    if frames > 1:
        raise UserError(
            f"image {path} has {frames} frames; piaug reads one 2-D image per file: save the "
            "frame you want on its own"
        )


def is_dicom(path: Path) -> bool:
    return Path(path).suffix.lower() in DICOM_EXTENSIONS


def read_dicom(path: Path, *, pixels: bool):
    """The pydicom dataset of ``path`` (its header alone unless ``pixels``)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        return pydicom.dcmread(path, stop_before_pixels=not pixels)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as e:
        raise UserError(
            f"cannot read DICOM file {path}: {e}. The file is corrupt, truncated or not DICOM; "
            "re-export it"
        ) from None


def dicom_spacing(path: Path) -> float | None:
    """The pixel size (mm) in a DICOM file's header (PixelSpacing, else ImagerPixelSpacing),
    None when it has none; UserError for pixels that are not square."""
    header = read_dicom(path, pixels=False)
    for key in ("PixelSpacing", "ImagerPixelSpacing"):
        value = header.get(key)
        if value:
            row, col = (float(v) for v in value)
            if not math.isclose(row, col, rel_tol=1e-3):
                raise UserError(
                    f"DICOM file {path}: {key} {row:g} x {col:g} mm is not square; piaug "
                    "takes one spacing per image: resample the image or give spacing_mm"
                )
            return row
    return None


def _first(value) -> float:
    """A DICOM value's first number (WindowCenter may hold several windows)."""
    if isinstance(value, Sequence | MutableSequence) and not isinstance(value, str):
        return float(value[0])
    return float(value)


def dicom_window(header) -> tuple[float, float] | None:
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is None or width is None:
        return None
    c, w = _first(center), _first(width)
    return (c - w / 2.0, c + w / 2.0) if w > 0 else None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only (no pixel decoding); checks the frames."""
    if is_dicom(path):
        header = read_dicom(path, pixels=False)
        _check_frames(path, int(header.get("NumberOfFrames", 1) or 1))
        if "Rows" not in header or "Columns" not in header:
            raise UserError(f"DICOM file {path} has no Rows / Columns: it holds no image")
        return int(header.Columns), int(header.Rows)
    try:
        with Image.open(path) as im:
            size, frames = im.size, getattr(im, "n_frames", 1)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _open_error(path, e) from None
    _check_frames(path, frames)
    return size


def _read_dicom(path: Path, window: Window) -> np.ndarray:
    ds = read_dicom(path, pixels=True)
    _check_frames(path, int(ds.get("NumberOfFrames", 1) or 1))
    try:
        values = np.asarray(ds.pixel_array, np.float64)
    except Exception as e:  # pydicom raises many kinds for missing codecs or bad pixel data
        raise UserError(
            f"cannot decode the pixels of DICOM file {path}: {e}. If it is compressed, install "
            "pydicom's codecs (pip install pylibjpeg pylibjpeg-libjpeg) or re-export it "
            "uncompressed"
        ) from None
    if values.ndim == 3:  # colour samples: their luma, as for other images
        values = values[..., :3] @ np.array([0.299, 0.587, 0.114])
    values = values * float(ds.get("RescaleSlope", 1) or 1) + float(
        ds.get("RescaleIntercept", 0) or 0
    )
    image = to_uint8(values, *window.bounds(values, dicom_window(ds)))
    if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
        image = 255 - image  # MONOCHROME1: bright means low values
    return image


def read_image(path: Path, window: Window | None = None) -> np.ndarray:
    """Decodes ``path`` fully to a uint8 ``(H, W)`` array (see the module docstring); images of
    more than 8 bits and DICOM files through ``window`` (default ``Window()``)."""
    window = Window() if window is None else window
    if is_dicom(path):
        return _read_dicom(Path(path), window)
    try:
        with Image.open(path) as im:
            _check_frames(path, getattr(im, "n_frames", 1))
            im.load()  # forces a full decode: truncated files raise here
            if im.mode in _DEEP_MODES:
                values = np.asarray(im, np.float64)
                image = to_uint8(values, *window.bounds(values))
            else:
                gray = im if im.mode == "L" else im.convert("L")
                image = np.array(gray, dtype=np.uint8)
    except UserError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise UserError(
            f"cannot decode image {path}: {e}. The file is corrupt or truncated; re-download "
            "or re-export it"
        ) from None
    return image
