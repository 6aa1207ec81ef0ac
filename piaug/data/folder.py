"""Your own 2-D landmark data: ``load('folder', root, split='all', spacing=None)``.

Layout::

    ROOT/
      images/          one image per example: .png .jpg .jpeg .bmp .tif .tiff .dcm
      landmarks.csv    one row per image

``landmarks.csv`` has the header ``image,1_x,1_y,2_x,2_y,...,K_x,K_y``, optionally with a
``spacing_mm`` and / or a ``split`` column (columns in any order), then one row per image::

    image,1_x,1_y,2_x,2_y,spacing_mm,split
    case001.png,120.5,88.0,301.25,97.5,0.1,train
    case002.png,118.0,90.5,299.0,101.0,0.1,test

* ``image``: a file in ``images/`` with its extension (``case001.png``), or its id, the file name
  without the extension (``case001``).  The id names the example; examples are ordered by id
  (digit runs compare as numbers: ``case2`` before ``case10``).
* ``i_x``, ``i_y``: landmark ``i`` (1 to K) in pixels of the image as stored, x = column,
  y = row, measured from the centre of the top-left pixel, so inside means ``0 <= x <= W - 1``
  and ``0 <= y <= H - 1``.  Decimals are fine; every image has all K landmarks.
* ``spacing_mm``: the pixel size in millimetres (square pixels).  Without this column pass
  ``spacing=`` (one value for all images); giving both is an error.  A DICOM image whose row
  gives no spacing takes its header's (PixelSpacing, else ImagerPixelSpacing); any other
  labelled image without one is an error.
* ``K_conf`` columns (a confidence per landmark, as ``piaug.predict`` writes them) are
  ignored, so its ``landmarks.csv`` reads back as labels once checked.
* ``split``: a free label such as ``train`` / ``test``.  ``split='train'`` then loads the rows
  labelled ``train``; ``split='all'`` (the default) loads every row, with or without the column.

Images are read as 8-bit grayscale: colour is converted to its luma, gray stored as three equal
channels stays as is.  16-bit, 32-bit and float images and DICOM files are mapped to 8 bits by
the options ``window`` (``auto``: a DICOM file's own window, else the ``percentiles`` of the
image's values; ``percentile``; ``range``: its minimum to maximum) and ``percentiles``
(``(0.5, 99.5)``), or ``window=fixed`` with ``limits=(low, high)`` in the images' own values:
see ``piaug.data.images.Window``.

**Unlabelled images** are welcome for pretraining and prediction: an image of ``images/``
without a row, or a row whose landmark fields are all empty, has NaN landmarks (its spacing is
not needed), and ``load`` reports how many there are; the stages that measure errors (the
probe, ``evaluate``, supervised detectors) use only the labelled images, and the one-shot
template is chosen among them.  Every row needs an image; ``load`` stops with a list of any
row without one, as it does for a point outside its image, a non-numeric value, NaN, a row with
some landmark fields empty and others not, and a duplicate row.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from piaug.data.common import (
    DatasetSpec,
    ImageDataset,
    LandmarkTable,
    check_inside,
    check_options,
    index_unique,
    parse_number,
    preview,
    resolve_root,
    select_split,
    sort_ids,
)
from piaug.data.images import (
    IMAGE_EXTENSIONS,
    Window,
    dicom_spacing,
    image_size,
    is_dicom,
    list_images,
)
from piaug.errors import UserError

NAME = "folder"
DEFAULTS: dict[str, Any] = {
    "spacing": None,  # mm/pixel unless a spacing_mm column (or a DICOM header)
    "window": Window().mode,  # images of more than 8 bits: auto | percentile | range | fixed
    "percentiles": Window().percentiles,
    "limits": None,  # window=fixed: (low, high) in the images' own values
}
FORMAT = """\
A folder dataset is ROOT/images/ (.png .jpg .jpeg .bmp .tif .tiff .dcm) plus ROOT/landmarks.csv with
the header image,1_x,1_y,...,K_x,K_y and optional spacing_mm and split columns, one row per
image (x = column, y = row, pixels); see piaug/data/folder.py."""


def load(root: Any, split: str | None = None, **options: Any) -> ImageDataset:
    """The rows of ``split`` of the folder dataset at ``root`` (see the module docstring)."""
    root = resolve_root(root, NAME, FORMAT)
    opts = check_options(NAME, options, DEFAULTS)
    split = "all" if split is None else split
    if not isinstance(split, str) or not split:
        raise UserError(f"folder split must be 'all' or a value of the split column, got {split!r}")
    spacing = _check_spacing(opts["spacing"])
    window = Window.of(opts)
    folder, csv_path = root / "images", root / "landmarks.csv"
    for path, what in ((folder, "folder"), (csv_path, "file")):
        if not (path.is_dir() if what == "folder" else path.is_file()):
            raise UserError(f"the {what} {path} is missing.\n{FORMAT}")

    images = list_images(folder)
    table = LandmarkTable(csv_path, extra=("spacing_mm", "split"), allow_blank=True)
    has_spacing = "spacing_mm" in table.extra_columns
    if has_spacing and spacing is not None:
        raise UserError(
            f"both a spacing_mm column in {csv_path} and the option spacing={spacing} were "
            "given; keep one of them"
        )
    rows, report = _match_rows(table, images, folder)
    ids = select_split(sort_ids(rows), rows, csv_path, split)

    paths, landmarks, spacings = [], [], []
    for i in ids:
        line, (path, points, extra) = rows[i]
        where = f"{csv_path}, line {line}"
        unlabelled = not np.isfinite(points).all()
        if not unlabelled:
            check_inside(points, image_size(path), where, path)
        paths.append(path)
        landmarks.append(points)
        spacings.append(_spacing_of(path, extra, where, spacing, table, unlabelled=unlabelled))
    return ImageDataset(
        NAME,
        ids,
        paths,
        np.array(landmarks, dtype=np.float32),
        spacings,
        num_landmarks=table.num_landmarks,
        options={
            "split": split,
            "spacing": spacing,
            "window": window.mode,
            "percentiles": window.percentiles,
            "limits": window.limits,
        },
        source_files=[*paths, csv_path],
        report=report,
        window=window,
    )


def _match_rows(
    table: LandmarkTable, images: dict[str, Path], folder: Path
) -> tuple[dict[str, tuple[int, tuple]], list[str]]:
    """``{id: (line, (image path, points, extra columns))}`` of every image: its row of
    ``table``, or no row (line 0, NaN points: unlabelled); and the report lines (unlabelled
    images, no labelled one). UserError for a row naming no image of ``folder``, and for two
    rows of one image."""
    csv_path = table.path
    by_name = {p.name: p for p in images.values()}
    items, no_image = [], []
    for line, value, points, extra in table.rows:
        named = Path(value).suffix.lower() in IMAGE_EXTENSIONS
        path = by_name.get(value) if named else images.get(value)
        if path is None:
            no_image.append(f"line {line} {value!r}")
        else:
            items.append((path.stem, line, (path, points, extra)))
    rows = index_unique(items, csv_path)
    if no_image:
        raise UserError(
            f"{csv_path}: {len(no_image)} rows name images that are not in {folder} "
            f"({preview(no_image)}); "
            "add the images or remove the rows"
        )
    no_row = [i for i in sort_ids(images) if i not in rows]
    report = []
    if no_row:  # unlabelled: for pretraining and prediction
        blank = {"spacing_mm": "", "split": ""}
        for i in no_row:
            rows[i] = (0, (images[i], np.full((table.num_landmarks, 2), np.nan), blank))
        report.append(
            f"{len(no_row)} images of {folder} have no row in {csv_path} "
            f"({preview([images[i].name for i in no_row])}): unlabelled (they serve pretraining "
            "and prediction, not evaluation)"
        )
    labelled = sum(np.isfinite(r[1][1]).all() for r in rows.values())
    if not labelled:
        report.append(f"{csv_path}: no image has landmarks; stages that evaluate need some")
    return rows, report


def _spacing_of(
    path: Path,
    extra: dict[str, str],
    where: str,
    spacing: float | None,
    table: LandmarkTable,
    *,
    unlabelled: bool,
) -> float:
    """The pixel size of one image: its row's ``spacing_mm``, else the ``spacing`` option, else
    its DICOM header's; NaN for an unlabelled image without one (no error is measured on it).
    UserError for a labelled image without any."""
    has_spacing = "spacing_mm" in table.extra_columns
    if has_spacing and extra["spacing_mm"]:
        value = parse_number(extra["spacing_mm"], where, "spacing_mm")
        if value <= 0:
            raise UserError(f"{where}: spacing_mm = {value:g} must be > 0; fix the file")
        return value
    if spacing is not None:
        return spacing
    if is_dicom(path) and (found := dicom_spacing(path)) is not None:
        return found
    if unlabelled:
        return float("nan")  # unused: no error is measured on it
    if has_spacing:
        raise UserError(f"{where}: spacing_mm is empty; give the pixel size in mm")
    raise UserError(
        f"{table.path} has no spacing_mm column and {path.name} no spacing of its own "
        "(only DICOM headers carry one); add the column (mm per pixel for each image) "
        "or pass the option spacing=MM_PER_PIXEL for all images"
    )


def _check_spacing(spacing: Any) -> float | None:
    if spacing is None:
        return None
    ok = isinstance(spacing, int | float | np.integer | np.floating)
    if not ok or isinstance(spacing, bool) or not (math.isfinite(spacing) and spacing > 0):
        raise UserError(f"folder option spacing={spacing!r}: expected mm per pixel, a number > 0")
    return float(spacing)


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults=DEFAULTS,
    option_types={"spacing": float, "limits": tuple},  # mm/pixel unless a spacing_mm column
    train_split="all",
    eval_split="all",
    description="A user's folder of images with landmarks.csv.",
)
