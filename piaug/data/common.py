"""Shared pieces of the dataset readers: the lazy dataset, image I/O, csv parsing and checks.

Every reader returns an ``ImageDataset``: a lazy ``collections.abc.Sequence`` whose ``ds[i]``
decodes image ``i`` only then.  Everything that does not need the pixels (annotation parsing,
landmark counts, NaN / inf, duplicate ids, images without annotations and the reverse, points
outside the image, whose size comes from the image header) is checked when the dataset is made;
a corrupt or truncated image fails at ``ds[i]``.  Every error is a ``UserError`` that names the
file (and the line of an annotation file) and says what to do.

Landmarks are inside the image when ``0 <= x <= W - 1`` and ``0 <= y <= H - 1`` (x = column,
y = row, in pixels, the origin at the centre of the top-left pixel).

Images are read by ``piaug.data.images`` (8-bit grayscale; deeper images and DICOM files
through a gray-level ``Window``); its names are importable from here too.
"""

from __future__ import annotations

import csv
import dataclasses
import math
import re
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from absl import logging

from piaug.data.images import (  # noqa: F401  (image reading, importable from here too)
    DICOM_EXTENSIONS,
    IMAGE_EXTENSIONS,
    WINDOWS,
    Window,
    dicom_spacing,
    image_size,
    is_dicom,
    list_images,
    read_image,
    to_uint8,
)
from piaug.errors import UserError

_IMAGE_COLUMNS = ("image", "image_path")
_REPORTED: set[tuple[str, str]] = set()  # the report lines logged so far


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
      dims: 2 for images, 3 for volumes (the config defaults of ``piaug.defaults`` follow it).
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
    dims: int = 2


class ImageDataset(Sequence):
    """A lazy sequence of examples read from image files; ``ds[i]`` decodes image ``i``.

    ``ds[i]`` is a dict with ``image`` (uint8 ``(H, W)``), ``landmarks`` (float32 ``(L, 2)``,
    x = column, y = row, original pixels), ``spacing`` (mm per pixel) and ``id``. With
    ``dims=3`` (``piaug.data.volumes``): ``image`` uint8 ``(D, H, W)``, ``landmarks``
    ``(L, 3)`` (x, y, z in voxels, the array's axes reversed), ``spacing`` float64 ``(3,)``
    (mm per voxel along x, y, z); ``read(path, window)`` decodes one file.

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
        dims: int = 2,
        read: Callable[[Path, Window], np.ndarray] = read_image,
    ) -> None:
        self.name = name
        self.window = Window() if window is None else window
        self.dims = int(dims)
        self._read = read
        self.ids = list(ids)
        self._paths = [Path(p) for p in paths]
        self._landmarks = np.asarray(landmarks, np.float32).reshape(-1, num_landmarks, dims)
        if dims == 2:
            self._spacings = [float(s) for s in spacings]
        else:
            self._spacings = [np.asarray(s, np.float64).reshape(dims) for s in spacings]
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
        return {"image": self._read(self._paths[j], self.window), **self.annotation(j)}

    def annotation(self, i: int) -> dict[str, Any]:
        """``ds[i]`` without ``image``: nothing is decoded."""
        j = self._index(i)
        return {
            "landmarks": self._landmarks[j].copy(),
            "spacing": self._spacings[j] if self.dims == 2 else self._spacings[j].copy(),
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
    """A parsed landmark csv with header ``image,1_x,1_y,...,K_x,K_y`` (plus ``extra`` columns;
    with ``axes="xyz"``, volumes: ``image,1_x,1_y,1_z,...``).

    ``rows`` holds ``(line, image value, points (K, len(axes)) float64, {extra column: value})``.
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
        axes: str = "xy",
    ) -> None:
        self.path = path
        self.axes = axes
        rows = read_csv(path) if rows is None else rows
        if not rows:
            raise UserError(f"{path} is empty; expected a header image,1_x,1_y,... and rows")
        line, header = rows[0]
        self.num_landmarks, image_col, cols, extra_cols = _parse_header(
            f"{path}, line {line} (header)", header, extra, axes
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
                points = np.full((len(cols), len(axes)), np.nan)
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
                        parse_number(fields[c], where, f"landmark {k + 1} {a}")
                        for a, c in zip(axes, cs, strict=True)
                    ]
                    for k, cs in enumerate(cols)
                ],
                dtype=np.float64,
            )
            self.rows.append((line, image, points, {n: fields[c] for n, c in extra_cols.items()}))


def _parse_header(where: str, header: list[str], extra: Sequence[str], axes: str = "xy"):
    image_col, marks, extra_cols = None, {}, {}
    for c, raw in enumerate(header):
        name = raw.lower()
        m = re.fullmatch(r"(\d+)_([xyz])", name)
        if m and m.group(2) not in axes:
            raise UserError(
                f"{where}: column {raw!r}: a 3-D landmark file (x, y, z) where 2-D images take "
                "x, y only; volumes are read by the folder3d dataset"
            )
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
    missing = [f"{i}_{a}" for i in range(1, k + 1) for a in axes if (i, a) not in marks]
    if k == 0 or missing:
        first, last = ", ".join(f"1_{a}" for a in axes), ", ".join(f"K_{a}" for a in axes)
        raise UserError(
            f"{where}: landmark columns must be {first}, ..., {last}; "
            f"{'missing ' + ', '.join(missing[:6]) if missing else 'none found'}"
        )
    cols = [tuple(marks[(i, a)] for a in axes) for i in range(1, k + 1)]
    return k, image_col, cols, extra_cols


def select_split(ids: list[str], rows: dict, source: Path, split: str) -> list[str]:
    """The ``ids`` of ``split`` (``all``: every one) by the ``split`` column of ``rows``
    (``{id: (line, (path, points, {column: value}))}``); UserError, naming ``source``, when no
    row has a split value, or none has ``split``."""
    if split == "all":
        return ids
    values = sorted({rows[i][1][2].get("split", "") for i in ids} - {""})
    if not values:
        raise UserError(
            f"split={split!r} needs a 'split' column in {source}; add one or use split='all'"
        )
    ids = [i for i in ids if rows[i][1][2].get("split", "") == split]
    if not ids:
        raise UserError(
            f"no rows of {source} have split {split!r}; its split column holds "
            f"{', '.join(repr(v) for v in values)} (or use split='all')"
        )
    return ids


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
