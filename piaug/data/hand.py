"""Digital Hand Atlas X-rays with Payer et al.'s 37 landmarks: ``load('hand', root, ...)``.

``load('hand', root, split='all', protocol='cc2d', wrist=(0, 4), annotations=None)``.

* Images: ``ID.jpg`` or ``ID.png`` in ``root/``, ``root/images/`` or ``root/jpg/`` (the first of
  these that holds images).
* Annotations: ``annotations=`` a csv path (absolute or relative to ``root``), else the first
  existing of ``root/all.csv``, ``root/payer_all.csv``, ``root/landmarks.csv``.  Either Payer's
  headerless ``id,x1,y1,...,x37,y37`` (pixels, one row per image; 910 rows for 909 images) or a
  file with header ``image,1_x,1_y,...,37_x,37_y`` whose image column holds an id or a file
  name.  A header is recognised by a non-numeric second field.
* Annotation rows without an image, and images without a row, are skipped: ``ds.report`` (and
  the log) says how many and which.
* Splits, over the sorted ids of the annotated images that exist (the published splits when all
  909 images are present): protocol ``cc2d`` (CC2D, YOLO): the first 550 ``train``, the next 59
  ``val`` (all but the last 300), the last 300 ``test``; it needs at least 850 images.  Protocol
  ``igu`` (the IGU authors' code): the first 300 ``test``, the rest ``train``, no ``val``; it
  needs more than 300.  ``all``: every annotated image.
* Spacing per image: 50 mm (the wrist width) divided by the pixel distance between landmarks
  ``wrist[0]`` and ``wrist[1]`` (0-based).  The default (0, 4) is the CC2D / IGU convention;
  (1, 5) is Payer et al.'s; the two differ by about 14 % on some images, so state the choice.
"""

from __future__ import annotations

from collections.abc import Sequence
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
    index_unique,
    list_images,
    parse_number,
    preview,
    read_csv,
    resolve_root,
    sort_ids,
)
from piaug.errors import UserError

DOWNLOAD_INSTRUCTIONS = """\
The hand X-ray dataset is not part of piaug.  It needs
  - the images of the Digital Hand Atlas (Image Processing and Informatics Lab, USC):
    https://ipilab.usc.edu/research/baaweb/ (a script that fetches all of them:
    https://github.com/razorx89/digital-hand-atlas-downloader), saved as ROOT/jpg/ID.jpg, and
  - Payer et al.'s 37-landmark annotations, all.csv, from
    https://github.com/christianpayer/MedicalDataAugmentationTool-HeatmapRegression
    (hand_xray/hand_xray_dataset/setup/all.csv), saved as ROOT/all.csv.
Layout accepted under ROOT: images ID.jpg or ID.png in ROOT/, ROOT/images/ or ROOT/jpg/; the
annotations in ROOT/all.csv, ROOT/payer_all.csv or ROOT/landmarks.csv (or annotations=PATH),
either headerless id,x1,y1,...,x37,y37 or with a header image,1_x,1_y,...,37_x,37_y."""

NAME = "hand"
NUM_LANDMARKS = 37
WRIST_WIDTH_MM = 50.0
IMAGE_DIRS = (".", "images", "jpg")
ANNOTATION_FILES = ("all.csv", "payer_all.csv", "landmarks.csv")
PROTOCOLS = {"cc2d": ("train", "val", "test", "all"), "igu": ("train", "test", "all")}
DEFAULTS: dict[str, Any] = {
    "protocol": "cc2d",  # cc2d: first 550 train, last 300 test | igu: first 300 test
    "wrist": (0, 4),  # landmarks spanning 50 mm (0-based); Payer et al. use (1, 5)
    "annotations": None,  # default: all.csv in the folder
}
_TEST_SIZE, _CC2D_TRAIN, _CC2D_MIN = 300, 550, 850


def protocol_split(ids: Sequence[str], protocol: str, split: str) -> list[str]:
    """The ids of ``split`` under ``protocol``, over ``ids`` in sorted order (see the module)."""
    _check_protocol(protocol, split)
    ids = sort_ids(ids)
    if split == "all":
        return ids
    n = len(ids)
    if protocol == "cc2d":
        if n < _CC2D_MIN:
            raise UserError(
                f"hand protocol 'cc2d' needs at least {_CC2D_MIN} annotated images for disjoint "
                f"train (first {_CC2D_TRAIN}) / val / test (last {_TEST_SIZE}) splits, but "
                f"{n} were found; use split='all', or add the missing images"
            )
        parts = {
            "train": ids[:_CC2D_TRAIN],
            "val": ids[_CC2D_TRAIN : n - _TEST_SIZE],
            "test": ids[n - _TEST_SIZE :],
        }
    else:
        if n <= _TEST_SIZE:
            raise UserError(
                f"hand protocol 'igu' needs more than {_TEST_SIZE} annotated images (test = the "
                f"first {_TEST_SIZE}, train = the rest), but {n} were found; use split='all', "
                "or add the missing images"
            )
        parts = {"test": ids[:_TEST_SIZE], "train": ids[_TEST_SIZE:]}
    if not parts[split]:
        raise UserError(
            f"hand split {split!r} of protocol {protocol!r} is empty with {n} images; use "
            "another split"
        )
    return parts[split]


def load(root: Any, split: str | None = None, **options: Any) -> ImageDataset:
    """The ``split`` of the hand X-ray dataset at ``root`` (see the module docstring)."""
    root = resolve_root(root, NAME, DOWNLOAD_INSTRUCTIONS)
    opts = check_options(NAME, options, DEFAULTS)
    split = "all" if split is None else split
    protocol = opts["protocol"]
    _check_protocol(protocol, split)
    wrist = _check_wrist(opts["wrist"])

    folder, images = _find_images(root)
    csv_path = _find_annotations(root, opts["annotations"])
    table = _read_annotations(csv_path)

    report = []
    no_image = sort_ids(set(table) - set(images))
    if no_image:
        report.append(
            f"{len(no_image)} annotation rows in {csv_path} have no image in {folder} "
            f"(ids {preview(no_image)}); skipped"
        )
    no_row = sort_ids(set(images) - set(table))
    if no_row:
        report.append(
            f"{len(no_row)} images in {folder} have no row in {csv_path} "
            f"({preview(images[i].name for i in no_row)}); skipped"
        )
    annotated = [i for i in images if i in table]
    if not annotated:
        raise UserError(
            f"none of the {len(images)} images in {folder} has a row in {csv_path}; check that "
            f"the ids (file names) match the annotation ids.\n{DOWNLOAD_INSTRUCTIONS}"
        )
    ids = protocol_split(annotated, protocol, split)

    paths, landmarks, spacings = [], [], []
    for i in ids:
        line, points = table[i]
        path, where = images[i], f"{csv_path}, line {line}"
        check_inside(points, image_size(path), where, path)
        width = float(np.linalg.norm(points[wrist[0]] - points[wrist[1]]))
        if width == 0:
            raise UserError(
                f"{where}: image {i!r} has landmarks {wrist[0]} and {wrist[1]} (0-based, the "
                "wrist width) at the same point, so its spacing is undefined; fix the annotation "
                "or choose other wrist= landmarks"
            )
        paths.append(path)
        landmarks.append(points)
        spacings.append(WRIST_WIDTH_MM / width)
    try:
        shown = csv_path.relative_to(root)
    except ValueError:
        shown = csv_path
    options = {"split": split, "protocol": protocol, "wrist": list(wrist)}
    options["annotations"] = str(shown)
    return ImageDataset(
        NAME,
        ids,
        paths,
        np.array(landmarks, dtype=np.float32),
        spacings,
        num_landmarks=NUM_LANDMARKS,
        options=options,
        source_files=[*paths, csv_path],
        report=report,  # also logged (absl logging.warning)
    )


def _check_protocol(protocol: Any, split: Any) -> None:
    if protocol not in tuple(PROTOCOLS):
        raise UserError(f"unknown hand protocol {protocol!r}: choose one of {', '.join(PROTOCOLS)}")
    check_split(NAME, split, PROTOCOLS[protocol], f" for protocol {protocol!r}")


def _check_wrist(wrist: Any) -> tuple[int, int]:
    ok = isinstance(wrist, Sequence) and not isinstance(wrist, str) and len(wrist) == 2
    ok = ok and all(isinstance(w, int | np.integer) and not isinstance(w, bool) for w in wrist)
    ok = ok and all(0 <= w < NUM_LANDMARKS for w in wrist) and wrist[0] != wrist[1]
    if not ok:
        raise UserError(
            f"hand option wrist={wrist!r}: expected two different 0-based landmark indices in "
            f"[0, {NUM_LANDMARKS - 1}], e.g. (0, 4) (CC2D) or (1, 5) (Payer et al.)"
        )
    return int(wrist[0]), int(wrist[1])


def _find_images(root: Path) -> tuple[Path, dict[str, Path]]:
    for name in IMAGE_DIRS:
        folder = root / name if name != "." else root
        if folder.is_dir():
            images = list_images(folder)
            if images:
                return folder, images
    raise UserError(
        f"no images (ID.jpg / ID.png) found in {root}, {root / 'images'} or {root / 'jpg'}."
        f"\n{DOWNLOAD_INSTRUCTIONS}"
    )


def _find_annotations(root: Path, annotations: Any) -> Path:
    if annotations is not None:
        path = Path(annotations).expanduser()
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            raise UserError(f"hand option annotations={annotations!r}: {path} is not a file")
        return path
    for name in ANNOTATION_FILES:
        if (root / name).is_file():
            return root / name
    looked = ", ".join(str(root / n) for n in ANNOTATION_FILES)
    raise UserError(
        f"no hand annotations found: looked for {looked}; or pass annotations=PATH."
        f"\n{DOWNLOAD_INSTRUCTIONS}"
    )


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _row_id(value: str) -> str:
    path = Path(value)
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else value


def _read_annotations(path: Path) -> dict[str, tuple[int, np.ndarray]]:
    """{id: (line, points (37, 2))} from either csv form (see the module docstring)."""
    rows = read_csv(path)
    if not rows:
        raise UserError(f"{path} is empty; expected one row id,x1,y1,...,x37,y37 per image")
    first = rows[0][1]
    if len(first) > 1 and not _is_number(first[1]):  # a header line
        table = LandmarkTable(path, rows)
        check_count(path, table.num_landmarks, NUM_LANDMARKS, NAME)
        items = ((_row_id(image), line, pts) for line, image, pts, _ in table.rows)
        return index_unique(items, path)
    width = 1 + 2 * NUM_LANDMARKS
    items = []
    for line, fields in rows:
        where = f"{path}, line {line}"
        if len(fields) != width:
            raise UserError(
                f"{where}: {len(fields)} fields; Payer's format has {width} "
                f"(id,x1,y1,...,x{NUM_LANDMARKS},y{NUM_LANDMARKS}); fix the row"
            )
        if not fields[0]:
            raise UserError(f"{where}: the id field is empty; fix the row")
        values = [
            parse_number(v, where, f"landmark {k // 2 + 1} {'xy'[k % 2]}")
            for k, v in enumerate(fields[1:])
        ]
        items.append((_row_id(fields[0]), line, np.array(values).reshape(NUM_LANDMARKS, 2)))
    return index_unique(items, path)


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults=DEFAULTS,
    option_types={"annotations": str},  # default: all.csv in the folder
    train_split="all",
    eval_split="test",
    description="Digital Hand Atlas radiographs with Payer et al.'s 37 landmarks.",
    instructions=DOWNLOAD_INSTRUCTIONS,
)
