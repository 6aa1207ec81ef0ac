"""Shared pieces of the dataset readers: the lazy dataset, image I/O, csv parsing and checks.

Every reader returns an ``ImageDataset``: a lazy ``collections.abc.Sequence`` whose ``ds[i]``
decodes image ``i`` only then.  Everything that does not need the pixels (annotation parsing,
landmark counts, NaN / inf, duplicate ids, images without annotations and the reverse, points
outside the image, whose size comes from the image header) is checked when the dataset is made;
a corrupt or truncated image fails at ``ds[i]``.  Every error is a ``UserError`` that names the
file (and the line of an annotation file) and says what to do.

Landmarks are inside the image when ``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` (x = column,
y = row, in pixels, the origin at the centre of the top-left pixel).

Images are read with Pillow and converted to 8-bit grayscale (Pillow's ``convert("L")``: colour
images become luma ``(299 R + 587 G + 114 B) / 1000``, which leaves gray stored as three equal
channels unchanged; an alpha channel is dropped; 1-bit images become 0 / 255).  Images with
more than 8 bits per pixel (16-bit PNG or TIFF, 32-bit integer or float TIFF) and DICOM files
(``.dcm``, read with pydicom: its rescale slope and intercept applied, MONOCHROME1 inverted)
are mapped to 8 bits by a gray-level window (``Window``): ``auto`` takes a DICOM file's own
window (WindowCenter / WindowWidth) and otherwise the ``percentiles`` of the image's values
(0.5 and 99.5 by default), ``percentile`` always the percentiles, ``range`` the image's minimum
and maximum; the window's ends become 0 and 255, values beyond them are clipped.  Multi-frame
files are refused with an error (save the frame you want on its own).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, MutableSequence, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging
from PIL import Image

from piaug.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm")
DICOM_EXTENSIONS = (".dcm",)
# Pillow modes with more than 8 bits per sample: mapped to 8 bits by a Window.
_DEEP_MODES = ("I", "F", "I;16", "I;16L", "I;16B", "I;16N", "I;16S", "I;32", "I;32S", "F;32")
_IMAGE_COLUMNS = ("image", "image_path")
WINDOWS = ("auto", "percentile", "range")
_REPORTED: set[tuple[str, str]] = set()  # the report lines logged so far


@dataclasses.dataclass(frozen=True)
class Window:
    """How an image of more than 8 bits per pixel becomes 8-bit (see the module docstring):
    ``mode`` auto | percentile | range, and the ``percentiles`` (low, high) of the first two."""

    mode: str = "auto"
    percentiles: tuple[float, float] = (0.5, 99.5)

    def __post_init__(self):
        if self.mode not in WINDOWS:
            raise UserError(f"window={self.mode!r}: use one of {', '.join(WINDOWS)}")
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
        return cls(
            str(options.get("window", "auto")),
            tuple(options.get("percentiles", (0.5, 99.5))),
        )

    def bounds(self, values: np.ndarray, dicom_window=None) -> tuple[float, float]:
        """The gray levels that become 0 and 255."""
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


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the rest of piaug knows of a dataset: each reader module declares its ``SPEC``,
    and ``piaug.data.DATASETS`` lists them (one line per dataset).

    Attributes:
      name: the dataset's name (``config.data.name``, ``piaug.data.load``'s first argument).
      load: ``load(root, split=None, **options)`` -> a lazy dataset.
      defaults: the reader's options and their defaults (``config.data.options``).
      option_types: the type of each option whose default is None (a config placeholder).
      train_split: the split that training reads by default (``config.data.split``).
      eval_split: the split that evaluation reads by default (``config.eval.split``).
      description: one line, the prepared (TFDS) dataset's description.
      instructions: how to get the data (the prepared dataset's manual download text).
      seeded: the reader takes the run's ``config.seed`` as its ``seed`` option.
    """

    name: str
    load: Callable[..., Any]
    defaults: dict[str, Any]
    train_split: str
    eval_split: str
    description: str
    option_types: dict[str, type] = dataclasses.field(default_factory=dict)
    instructions: str = ""
    seeded: bool = False


class ImageDataset(Sequence):
    """A lazy sequence of examples read from image files; ``ds[i]`` decodes image ``i``.

    ``ds[i]`` is a dict with ``image`` (uint8 ``(H, W)``), ``landmarks`` (float32 ``(L, 2)``,
    x = column, y = row, original pixels), ``spacing`` (mm per pixel) and ``id``.

    Attributes: ``name``, ``ids`` (in order), ``num_landmarks``, ``source_files`` (every file
    read: images and annotation files), ``options`` (the resolved options, including
    ``split``), ``report`` (lines about documented skips), ``window`` (how images of more than
    8 bits become 8-bit), ``image_path(i)`` and ``annotation(i)`` (``ds[i]`` without the image,
    without decoding).
    """

    def __init__(
        self,
        name: str,
        ids: Sequence[str],
        paths: Sequence[Path],
        landmarks: Any,
        spacings: Sequence[float],
        *,
        num_landmarks: int,
        options: dict[str, Any],
        source_files: Iterable[Path],
        report: Iterable[str] = (),
        window: Window | None = None,
    ) -> None:
        self.name = name
        self.window = Window() if window is None else window
        self.ids = list(ids)
        self._paths = [Path(p) for p in paths]
        self._landmarks = np.asarray(landmarks, dtype=np.float32).reshape(-1, num_landmarks, 2)
        self._spacings = [float(s) for s in spacings]
        n = len(self.ids)
        if not (len(self._paths) == len(self._landmarks) == len(self._spacings) == n):
            raise AssertionError("ids, paths, landmarks and spacings differ in length")
        self.num_landmarks = int(num_landmarks)
        self.options = dict(options)
        self.source_files = [Path(p) for p in source_files]
        self.report = list(report)
        for line in self.report:  # once a process: the stages open a dataset more than once
            if (name, line) not in _REPORTED:
                _REPORTED.add((name, line))
                logging.warning("%s dataset: %s", name, line)

    def __len__(self) -> int:
        return len(self.ids)

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"index must be an integer, got {i!r}")
        n, j = len(self), int(i)
        if not -n <= j < n:
            raise IndexError(f"index {j} out of range for the {self.name} dataset of {n} images")
        return j % n

    def __getitem__(self, i: Any) -> dict[str, Any]:
        j = self._index(i)
        return {"image": read_image(self._paths[j], self.window), **self.annotation(j)}

    def annotation(self, i: int) -> dict[str, Any]:
        """``ds[i]`` without ``image``: nothing is decoded."""
        j = self._index(i)
        return {
            "landmarks": self._landmarks[j].copy(),
            "spacing": self._spacings[j],
            "id": self.ids[j],
        }

    def image_path(self, i: int) -> Path:
        """The image file of example ``i``."""
        return self._paths[self._index(i)]

    def __repr__(self) -> str:
        return (
            f"ImageDataset(name={self.name!r}, {len(self)} images, "
            f"{self.num_landmarks} landmarks, options={self.options})"
        )


def natural_key(text: str) -> tuple:
    """Sort key that orders digit runs numerically: '2' < '10', 'case9' < 'case10'."""
    parts = re.split(r"(\d+)", text)
    return (tuple(int(p) if k % 2 else p for k, p in enumerate(parts)), text)


def sort_ids(ids: Iterable[str]) -> list[str]:
    return sorted(ids, key=natural_key)


def preview(items: Iterable[Any], n: int = 5) -> str:
    """'a, b, c' or 'a, b, c, d, e and 7 more' for messages."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:n])
    return f"{shown} and {len(items) - n} more" if len(items) > n else shown


def resolve_root(root: Any, dataset: str, instructions: str) -> Path:
    """``root`` as an existing folder, else a UserError with the download instructions."""
    if root is None or str(root) == "":
        raise UserError(f"the {dataset} dataset needs a root folder.\n{instructions}")
    path = Path(root).expanduser()
    if not path.is_dir():
        what = "is not a folder" if path.exists() else "does not exist"
        raise UserError(f"{dataset} dataset root {path} {what}.\n{instructions}")
    return path


def check_options(dataset: str, options: dict[str, Any], defaults: dict[str, Any]) -> dict:
    """``defaults`` updated with ``options``; a UserError names unknown options."""
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        known = ", ".join(["split", *defaults]) if defaults else "split"
        raise UserError(
            f"unknown options for the {dataset} dataset: {unknown}; its options are {known}"
        )
    return {**defaults, **options}


def check_split(dataset: str, split: Any, valid: Sequence[str], note: str = "") -> str:
    if split not in valid:
        raise UserError(
            f"unknown {dataset} split {split!r}{note}: choose one of {', '.join(valid)}"
        )
    return split


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


def _dicom(path: Path, *, pixels: bool):
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
    header = _dicom(path, pixels=False)
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


def _dicom_window(header) -> tuple[float, float] | None:
    center, width = header.get("WindowCenter"), header.get("WindowWidth")
    if center is None or width is None:
        return None
    c, w = _first(center), _first(width)
    return (c - w / 2.0, c + w / 2.0) if w > 0 else None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only (no pixel decoding); checks the frames."""
    if is_dicom(path):
        header = _dicom(path, pixels=False)
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
    ds = _dicom(path, pixels=True)
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
    image = to_uint8(values, *window.bounds(values, _dicom_window(ds)))
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


def check_inside(points: np.ndarray, size: tuple[int, int], where: str, image: Path) -> None:
    """UserError unless every (x, y) lies in ``[0, W - 1] x [0, H - 1]``."""
    w, h = size
    bad = (points[:, 0] < 0) | (points[:, 0] > w - 1) | (points[:, 1] < 0)
    bad |= points[:, 1] > h - 1
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        x, y = (float(v) for v in points[k])
        raise UserError(
            f"{where}: landmark {k + 1} at (x, y) = ({x:g}, {y:g}) is outside the {w} x {h} "
            f"image {image} ({int(bad.sum())} such points); fix the annotation (x = column, "
            "y = row, in pixels from the top-left pixel centre)"
        )


def parse_number(text: str, where: str, what: str) -> float:
    """A finite float, else a UserError naming ``where`` (file and line) and ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise UserError(f"{where}: {what} = {text!r} is not a number; fix the file") from None
    if not math.isfinite(value):
        raise UserError(f"{where}: {what} = {text!r} is not a finite number; fix the file")
    return value


def read_csv(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, stripped fields) of every non-empty row of a csv file."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            rows = []
            start = 1
            for fields in reader:
                fields = [v.strip() for v in fields]
                if any(fields):
                    rows.append((start, fields))
                start = reader.line_num + 1
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"cannot read csv file {path}: {e}; fix or replace the file") from None
    return rows


class LandmarkTable:
    """A parsed landmark csv with header ``image,1_x,1_y,...,K_x,K_y`` (plus ``extra`` columns).

    ``rows`` holds ``(line, image value, points (K, 2) float64, {extra column: value})``.
    Columns may come in any order; ``image_path`` is accepted for ``image``. With
    ``allow_blank``, a row whose landmark fields are all empty is an unlabelled image (points
    NaN); some empty and some not is an error either way.
    """

    def __init__(
        self,
        path: Path,
        rows: list[tuple[int, list[str]]] | None = None,
        extra: Sequence[str] = (),
        *,
        allow_blank: bool = False,
    ) -> None:
        self.path = path
        rows = read_csv(path) if rows is None else rows
        if not rows:
            raise UserError(f"{path} is empty; expected a header image,1_x,1_y,... and rows")
        line, header = rows[0]
        self.num_landmarks, image_col, cols, extra_cols = _parse_header(
            f"{path}, line {line} (header)", header, extra
        )
        self.extra_columns = sorted(extra_cols)
        self.rows: list[tuple[int, str, np.ndarray, dict[str, str]]] = []
        for line, fields in rows[1:]:
            where = f"{path}, line {line}"
            if len(fields) != len(header):
                raise UserError(
                    f"{where}: {len(fields)} fields, but the header has {len(header)}; fix the row"
                )
            image = fields[image_col]
            if not image:
                raise UserError(f"{where}: the image field is empty; fix the row")
            marks = [fields[c] for pair in cols for c in pair]
            if allow_blank and not any(marks):  # an unlabelled image
                points = np.full((len(cols), 2), np.nan)
                self.rows.append(
                    (line, image, points, {n: fields[c] for n, c in extra_cols.items()})
                )
                continue
            if allow_blank and not all(marks):
                raise UserError(
                    f"{where}: {marks.count('')} of the {len(marks)} landmark fields are empty; "
                    "give all of them, or leave all empty for an unlabelled image"
                )
            points = np.array(
                [
                    [
                        parse_number(fields[cx], where, f"landmark {k + 1} x"),
                        parse_number(fields[cy], where, f"landmark {k + 1} y"),
                    ]
                    for k, (cx, cy) in enumerate(cols)
                ],
                dtype=np.float64,
            )
            self.rows.append((line, image, points, {n: fields[c] for n, c in extra_cols.items()}))


def _parse_header(where: str, header: list[str], extra: Sequence[str]):
    image_col, marks, extra_cols = None, {}, {}
    for c, raw in enumerate(header):
        name = raw.lower()
        m = re.fullmatch(r"(\d+)_([xy])", name)
        if name in _IMAGE_COLUMNS:
            if image_col is not None:
                raise UserError(f"{where}: two image columns; keep one")
            image_col = c
        elif m:
            key = (int(m.group(1)), m.group(2))
            if key in marks:
                raise UserError(f"{where}: column {raw!r} appears twice; fix the header")
            marks[key] = c
        elif re.fullmatch(r"\d+_conf", name):  # a prediction's confidence (piaug.predict)
            continue
        elif name in extra:
            if name in extra_cols:
                raise UserError(f"{where}: column {raw!r} appears twice; fix the header")
            extra_cols[name] = c
        else:
            allowed = ", ".join(["image", "1_x", "1_y", "...", *extra])
            raise UserError(f"{where}: unknown column {raw!r}; the columns are {allowed}")
    if image_col is None:
        raise UserError(f"{where}: no 'image' column; the header is image,1_x,1_y,...,K_x,K_y")
    k = max((key[0] for key in marks), default=0)
    missing = [f"{i}_{a}" for i in range(1, k + 1) for a in "xy" if (i, a) not in marks]
    if k == 0 or missing:
        raise UserError(
            f"{where}: landmark columns must be 1_x, 1_y, ..., K_x, K_y; "
            f"{'missing ' + ', '.join(missing[:6]) if missing else 'none found'}"
        )
    cols = [(marks[(i, "x")], marks[(i, "y")]) for i in range(1, k + 1)]
    return k, image_col, cols, extra_cols


def check_count(path: Path, found: int, expected: int, dataset: str) -> None:
    if found != expected:
        raise UserError(
            f"{path}: has {found} landmarks per image, the {dataset} dataset has {expected}; "
            "check that this is the right annotation file"
        )


def index_unique(items: Iterable[tuple[str, int, Any]], path: Path) -> dict[str, tuple[int, Any]]:
    """{id: (line, value)} from (id, line, value); an id on two lines is an error."""
    out: dict[str, tuple[int, Any]] = {}
    for key, line, value in items:
        if key in out:
            raise UserError(
                f"{path}: image {key!r} has two rows, on lines {out[key][0]} and {line}; "
                "keep one of them"
            )
        out[key] = (line, value)
    return out
