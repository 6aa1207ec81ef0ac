"""ISBI 2015 cephalometric X-rays: ``load('ceph', root, split='train', annotation='mean')``.

400 lateral cephalograms (1935 x 2400 pixels, 0.1 mm per pixel), 19 landmarks each, annotated
by two doctors (Wang et al., "A benchmark for comparison of dental radiography analysis
algorithms", Medical Image Analysis 31, 2016).  The layout under ``root`` is detected:

1. the challenge release: ``RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp`` with
   ``AnnotationsByMD/{400_senior,400_junior}/NNN.txt`` or ``{400_senior,400_junior}/NNN.txt``
   (each txt: 19 lines ``x,y`` in pixels, then other lines, which are ignored).  Any id may sit
   in any of the three image folders (repacks put all test images in ``Test1Data``); one id in
   two folders is an error unless the files are byte-identical.
2. jpg + csv: ``images/NNN.jpg`` with ``senior.csv`` and / or ``junior.csv`` (header
   ``image_path,1_x,1_y,...,19_x,19_y``, one row per image in any order, ``image_path`` like
   ``017.jpg``).
3. the Kaggle mirror: ``cepha400/NNN.jpg`` (or ``cepha400/cepha400/NNN.jpg``) with
   ``{train,test1,test2}_senior.csv`` and optionally ``{train,test1,test2}_junior.csv`` (the
   same csv header).

Splits (official): ``train`` = 001-150, ``test1`` = 151-300, ``test2`` = 301-400, ``test`` =
151-400 (Test1 + Test2, where papers report one-shot results), ``all`` = every image present.
A split needs all of its images.  ``annotation``: ``mean`` (default; the per-coordinate mean, as
float, of the doctors whose annotations are present; if only one doctor's are, they are used
and ``report`` says so), ``senior`` or ``junior``.  Images are matched to annotations by the
number in the file name.
"""

from __future__ import annotations

import filecmp
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from piaug.data.common import (
    IMAGE_EXTENSIONS,
    DatasetSpec,
    ImageDataset,
    LandmarkTable,
    check_count,
    check_inside,
    check_options,
    check_split,
    image_size,
    list_images,
    parse_number,
    preview,
    resolve_root,
    sort_ids,
)
from piaug.errors import UserError

DOWNLOAD_INSTRUCTIONS = """\
The ISBI 2015 cephalometric dataset (Wang et al., Medical Image Analysis 31, 2016; research use,
cite the challenge) is not part of piaug.  Get it from
  - the challenge release on figshare: https://figshare.com/s/37ec464af8e81ae6ebbf
    (RawImage.rar and AnnotationsByMD.rar: unpack both into ROOT), or
  - the Kaggle mirror: https://www.kaggle.com/datasets/jiahongqian/cephalometric-landmarks
    (unzip into ROOT).
Layouts accepted under ROOT:
  1. RawImage/{TrainingData,Test1Data,Test2Data}/NNN.bmp with
     AnnotationsByMD/{400_senior,400_junior}/NNN.txt (or {400_senior,400_junior}/NNN.txt);
  2. images/NNN.jpg with senior.csv and/or junior.csv
     (header image_path,1_x,1_y,...,19_x,19_y);
  3. cepha400/NNN.jpg (or cepha400/cepha400/NNN.jpg) with {train,test1,test2}_senior.csv and
     optionally {train,test1,test2}_junior.csv (the same header)."""

NAME = "ceph"
NUM_LANDMARKS = 19
SPACING_MM = 0.1
SPLITS: dict[str, tuple[int, int] | None] = {
    "train": (1, 150),
    "test1": (151, 300),
    "test2": (301, 400),
    "test": (151, 400),
    "all": None,
}
DOCTORS = ("senior", "junior")
ANNOTATIONS = ("mean", *DOCTORS)
DEFAULTS: dict[str, Any] = {"annotation": "mean"}  # mean (of the doctors present) | senior | junior


@dataclass
class _Doctor:
    """One doctor's annotations: id -> (file, line or None, points or None = txt, read later)."""

    places: list[Path]  # the files / folders that hold (or would hold) them
    entries: dict[str, tuple[Path, int | None, np.ndarray | None]] | None = None


@dataclass
class _Layout:
    name: str
    image_places: list[Path]
    images: dict[str, Path] = field(default_factory=dict)
    doctors: dict[str, _Doctor] = field(default_factory=dict)
    report: list[str] = field(default_factory=list)


def load(root: Any, split: str | None = None, **options: Any) -> ImageDataset:
    """The ``split`` of the ISBI 2015 dataset at ``root`` (see the module docstring)."""
    root = resolve_root(root, NAME, DOWNLOAD_INSTRUCTIONS)
    opts = check_options(NAME, options, DEFAULTS)
    split = check_split(NAME, "train" if split is None else split, tuple(SPLITS))
    annotation = opts["annotation"]
    if annotation not in ANNOTATIONS:
        raise UserError(
            f"unknown ceph annotation {annotation!r}: choose one of {', '.join(ANNOTATIONS)}"
        )
    layout = _detect(root)
    ids = _split_ids(layout, split)
    use = _doctors(layout, annotation, split, ids)
    report = list(layout.report)

    if split == "all":
        annotated = {i for d in use for i in layout.doctors[d].entries}
        extra = sort_ids(annotated - set(layout.images))
        if extra:
            report.append(
                f"{len(extra)} annotated ids have no image ({preview(extra)}); split 'all' holds "
                f"the {len(ids)} images found in {_places(layout.image_places)}"
            )

    paths = [layout.images[i] for i in ids]
    landmarks, annotation_files = [], set()
    for i, path in zip(ids, paths, strict=True):
        size = image_size(path)
        points = []
        for d in use:
            file, line, pts = layout.doctors[d].entries[i]
            if pts is None:
                pts = _read_txt(file)
            check_inside(pts, size, str(file) if line is None else f"{file}, line {line}", path)
            points.append(pts)
            annotation_files.add(file)
        landmarks.append(np.mean(points, axis=0))
    return ImageDataset(
        NAME,
        ids,
        paths,
        np.array(landmarks, dtype=np.float32).reshape(-1, NUM_LANDMARKS, 2),
        [SPACING_MM] * len(ids),
        num_landmarks=NUM_LANDMARKS,
        options={"split": split, "annotation": annotation},
        source_files=[*paths, *sorted(annotation_files)],
        report=report,
    )


def _places(paths: list[Path]) -> str:
    return ", ".join(str(p) for p in paths)


def _ceph_id(name: str, where: str) -> str:
    """'017' from '017', '17' or '017.jpg'; anything else is an error."""
    stem = Path(name).stem if Path(name).suffix.lower() in IMAGE_EXTENSIONS else name
    if not (stem.isascii() and stem.isdigit()):
        raise UserError(
            f"{where}: unexpected name {name!r}; ISBI 2015 files are numbered 001 to 400 "
            "(NNN.bmp / NNN.jpg / NNN.txt): rename or move it"
        )
    return f"{int(stem):03d}"


def _detect(root: Path) -> _Layout:
    if (root / "RawImage").is_dir():
        return _challenge(root)
    if (root / "cepha400").is_dir():
        return _kaggle(root)
    if (root / "images").is_dir():
        folder = root / "images"
        layout = _Layout("jpg + csv", [folder], _collect_images([folder]))
        for d in DOCTORS:
            layout.doctors[d] = _csv_doctor([root / f"{d}.csv"])
        return layout
    raise UserError(
        f"{root} holds none of the ISBI 2015 layouts (no RawImage/, cepha400/ or images/ "
        f"folder).\n{DOWNLOAD_INSTRUCTIONS}"
    )


def _challenge(root: Path) -> _Layout:
    raw = root / "RawImage"
    places = [raw, *(raw / f for f in ("TrainingData", "Test1Data", "Test2Data"))]
    layout = _Layout("challenge release", places, _collect_images(places))
    for d in DOCTORS:
        candidates = [root / "AnnotationsByMD" / f"400_{d}", root / f"400_{d}"]
        found = [c for c in candidates if c.is_dir()]
        if not found:
            layout.doctors[d] = _Doctor(candidates)
            continue
        if len(found) > 1:
            layout.report.append(f"{d} annotations: using {found[0]}; {found[1]} is not read")
        entries: dict[str, tuple[Path, int | None, np.ndarray | None]] = {}
        for path in sorted(found[0].iterdir()):
            if path.suffix.lower() != ".txt" or not path.is_file():
                continue
            key = _ceph_id(path.stem, str(path))
            if key in entries:
                raise UserError(
                    f"two annotation files for image {key}: {entries[key][0]} and {path}; "
                    "remove one"
                )
            entries[key] = (path, None, None)
        layout.doctors[d] = _Doctor([found[0]], entries)
    return layout


def _kaggle(root: Path) -> _Layout:
    base = root / "cepha400"
    folder = next((f for f in (base / "cepha400", base) if f.is_dir() and list_images(f)), base)
    layout = _Layout("Kaggle mirror", [folder], _collect_images([folder]))
    for d in DOCTORS:
        layout.doctors[d] = _csv_doctor(
            [root / f"{s}_{d}.csv" for s in ("train", "test1", "test2")]
        )
    return layout


def _collect_images(folders: list[Path]) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in list_images(folder).values():
            key = _ceph_id(path.name, str(path))
            if key in images:
                if filecmp.cmp(images[key], path, shallow=False):
                    continue  # the same image copied into two folders
                raise UserError(
                    f"two different images for id {key}: {images[key]} and {path}; remove the "
                    "wrong one"
                )
            images[key] = path
    return images


def _csv_doctor(candidates: list[Path]) -> _Doctor:
    files = [p for p in candidates if p.is_file()]
    if not files:
        return _Doctor(candidates)
    entries: dict[str, tuple[Path, int | None, np.ndarray | None]] = {}
    for path in files:
        table = LandmarkTable(path)
        check_count(path, table.num_landmarks, NUM_LANDMARKS, NAME)
        for line, image, points, _ in table.rows:
            key = _ceph_id(image, f"{path}, line {line}")
            if key in entries:
                first, first_line, _ = entries[key]
                raise UserError(
                    f"image {key} has two rows: {first}, line {first_line} and {path}, line "
                    f"{line}; keep one of them"
                )
            entries[key] = (path, line, points)
    return _Doctor(files, entries)


def _split_ids(layout: _Layout, split: str) -> list[str]:
    found = sort_ids(layout.images)
    places = _places(layout.image_places)
    if split == "all":
        if not found:
            raise UserError(f"no images found in {places}.\n{DOWNLOAD_INSTRUCTIONS}")
        return found
    lo, hi = SPLITS[split]
    wanted = [f"{k:03d}" for k in range(lo, hi + 1)]
    missing = [i for i in wanted if i not in layout.images]
    if missing:
        have = f"{len(found)} images ({found[0]}-{found[-1]})" if found else "no images"
        raise UserError(
            f"ceph split {split!r} needs the {len(wanted)} images {lo:03d}-{hi:03d}, but "
            f"{len(missing)} are missing ({preview(missing)}); looked in {places} "
            f"({layout.name} layout), which holds {have}.  Use a split whose images are "
            "present (split='all' takes what exists), or add the missing images: the full "
            "dataset is at https://figshare.com/s/37ec464af8e81ae6ebbf"
        )
    return wanted


def _doctors(layout: _Layout, annotation: str, split: str, ids: list[str]) -> list[str]:
    present = [d for d in DOCTORS if layout.doctors[d].entries is not None]
    if annotation == "mean":
        if not present:
            looked = _places([p for d in DOCTORS for p in layout.doctors[d].places])
            raise UserError(
                f"no ISBI 2015 annotations found; looked for {looked}.\n{DOWNLOAD_INSTRUCTIONS}"
            )
        if len(present) == 1:
            other = next(d for d in DOCTORS if d not in present)
            layout.report.append(
                f"annotation='mean': only the {present[0]} doctor's annotations were found "
                f"(no {_places(layout.doctors[other].places)}); using them alone"
            )
        use = present
    else:
        if annotation not in present:
            raise UserError(
                f"annotation={annotation!r}, but there are no {annotation} doctor's annotations: "
                f"looked for {_places(layout.doctors[annotation].places)}; add them or choose "
                f"another annotation ({', '.join(ANNOTATIONS)})"
            )
        use = [annotation]
    for d in use:
        lacking = [i for i in ids if i not in layout.doctors[d].entries]
        if lacking:
            hint = ""
            if annotation == "mean" and len(use) > 1:
                hint = f", or use annotation='{next(o for o in use if o != d)}'"
            raise UserError(
                f"{len(lacking)} images of ceph split {split!r} have no {d} doctor's annotation "
                f"({preview(lacking)}); looked in {_places(layout.doctors[d].places)}.  Add the "
                f"annotations{hint}"
            )
    return use


def _read_txt(path: Path) -> np.ndarray:
    """The 19 ``x,y`` lines at the top of a challenge annotation file."""
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read annotation file {path}: {e}; fix or replace it") from None
    points = []
    for n in range(NUM_LANDMARKS):
        if n >= len(lines):
            raise UserError(
                f"{path}, line {n + 1}: the file ends after {len(lines)} lines; it needs "
                f"{NUM_LANDMARKS} lines 'x,y' (one per landmark) before any other lines"
            )
        where = f"{path}, line {n + 1}"
        parts = re.split(r"\s*,\s*|\s+", lines[n].strip())
        if len(parts) != 2:
            raise UserError(
                f"{where}: expected 'x,y' (landmark {n + 1} of {NUM_LANDMARKS}), got "
                f"{lines[n]!r}; the first {NUM_LANDMARKS} lines must be landmarks"
            )
        x = parse_number(parts[0], where, f"landmark {n + 1} x")
        points.append([x, parse_number(parts[1], where, f"landmark {n + 1} y")])
    return np.array(points, dtype=np.float64)


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults=DEFAULTS,
    train_split="train",
    eval_split="test",
    description="ISBI 2015 cephalometric radiographs (19 landmarks, 0.1 mm per pixel).",
    instructions=DOWNLOAD_INSTRUCTIONS,
)
