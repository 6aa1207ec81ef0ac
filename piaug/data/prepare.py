"""Prepared datasets: TFDS array_record files holding what training reads (docs/design.md 1, 2).

Each example holds the image resized to the training size (uint8), its IIE map computed at the
original resolution and then resized (float32, bits), the landmarks in resized and in original
pixels, the spacing and the id. No TensorFlow is needed: the features are plain tensors and text.

A prepared dataset lives in ``cache_dir/<dataset>/<fingerprint>/`` (``piaug.data.cache``: a
change to what it was built from builds a new copy, and nothing else does). Builds are atomic
(TFDS writes into a temporary folder and renames it), so an interrupted build is simply redone.

Resizing: images with Pillow's bilinear filter (antialiased, as torchvision's ``Resize`` that
the authors used); IIE maps with plain bilinear interpolation at half-pixel centres (OpenCV's
``INTER_LINEAR``, as the authors' ``cv2.resize``); landmarks as ``(x + 0.5) * s - 0.5``, the same
pixel-centre convention. Evaluation protocols that truncate coordinates (the paper's 384 grid)
start from ``landmarks_original``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import io
import json
import logging as std_logging
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from PIL import Image
from tqdm import tqdm

from piaug import data, info, layout
from piaug.data.cache import (  # noqa: F401  (the cache's names, importable from here too)
    DIGESTS_FILE,
    FINGERPRINT_FILE,
    FORMAT_VERSION,
    FULL_IIE_DIR,
    build_lock,
    default_cache_dir,
    fingerprint,
    fingerprint_payload,
    full_iie_folder,
    full_iie_key,
    hash_payload,
    remove_empty,
    why_new,
)
from piaug.data.common import check_inside
from piaug.errors import UserError

# The one TFDS split of a prepared copy ("all" is reserved by TFDS); the reader's split is in the
# fingerprint and in ``Prepared.split``.
TFDS_SPLIT = "examples"
_BATCH = 4  # images of one shape whose IIE maps are computed together


def resize_bilinear(x: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Bilinear resize of ``(H, W)`` to ``size`` at half-pixel centres, no antialiasing
    (trilinear for ``(D, H, W)``, one axis at a time).

    Source coordinates ``(i + 0.5) * H / h - 0.5`` are clamped to the image, as OpenCV's
    ``INTER_LINEAR``.
    """
    out = np.asarray(x, np.float64)
    for axis, n in enumerate(size):
        m = out.shape[axis]
        src = np.clip((np.arange(n) + 0.5) * m / n - 0.5, 0, m - 1)
        i0 = np.floor(src).astype(np.int64)
        i1 = np.minimum(i0 + 1, m - 1)
        shape = [1] * out.ndim
        shape[axis] = -1
        w = (src - i0).reshape(shape)
        out = np.take(out, i0, axis=axis) * (1 - w) + np.take(out, i1, axis=axis) * w
    return out.astype(np.float32)


def resize_image(image: np.ndarray, size: tuple[int, ...]) -> np.ndarray:
    """Pillow's bilinear (antialiased) resize of a uint8 ``(H, W)`` image to ``size``; a
    ``(D, H, W)`` volume: trilinear (``resize_bilinear``, no antialiasing), rounded."""
    if tuple(image.shape) == tuple(size):
        return np.asarray(image, np.uint8)
    if image.ndim == 3:
        return np.rint(np.clip(resize_bilinear(image, size), 0, 255)).astype(np.uint8)
    resized = Image.fromarray(image).resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(resized, np.uint8)


def resize_points(points: np.ndarray, from_shape, to_shape) -> np.ndarray:
    """(x, y) pixel coordinates from an ``(H, W)`` grid to another, pixel centres aligned
    ((x, y, z) voxels between ``(D, H, W)`` grids)."""
    scale = np.asarray(to_shape[::-1], np.float64) / np.asarray(from_shape[::-1], np.float64)
    return ((np.asarray(points, np.float64) + 0.5) * scale - 0.5).astype(np.float32)


def check_example(example, index: int) -> None:
    """Raises UserError, naming the image, for a malformed example from a reader (a volume:
    uint8 ``(D, H, W)``, ``(L, 3)`` landmarks, a positive spacing per axis)."""
    where = f"image {example.get('id', index)!r}"
    image, landmarks = np.asarray(example["image"]), np.asarray(example["landmarks"])
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise UserError(
            f"{where} is {image.dtype} {image.shape}; the reader must give uint8 2-D or 3-D"
        )
    d = image.ndim
    if landmarks.ndim != 2 or landmarks.shape[1] != d:
        raise UserError(f"{where}: landmarks must be (L, {d}), got {landmarks.shape}")
    nan = ~np.isfinite(landmarks).all(axis=1)
    if nan.all() and len(nan):
        return  # an unlabelled image (NaN landmarks; its spacing is not needed)
    if nan.any():
        i = int(np.flatnonzero(nan)[0])
        raise UserError(
            f"{where}: landmark {i + 1} at (x, y) = {tuple(landmarks[i])} is not finite"
        )
    if d == 2:
        check_inside(landmarks, image.shape[::-1], where, example.get("id", index))
    elif ((landmarks < 0) | (landmarks > np.asarray(image.shape[::-1]) - 1)).any():
        raise UserError(f"{where}: a landmark lies outside its {image.shape} (D, H, W) volume")
    spacing = np.asarray(example["spacing"], np.float64)
    if (
        spacing.shape != (() if d == 2 else (d,))
        or not (np.isfinite(spacing) & (spacing > 0)).all()
    ):
        what = "a positive number" if d == 2 else f"{d} positive numbers (x, y, z)"
        raise UserError(f"{where}: spacing {example['spacing']!r} mm must be {what}")


def _load_map(path: Path, shape) -> np.ndarray | None:
    """The stored map at ``path`` if it is there, readable and of ``shape``; else None."""
    try:
        iie = np.load(path)
    except (OSError, ValueError):
        return None
    return iie if iie.shape == tuple(shape) and iie.dtype == np.float32 else None


def iie_examples(
    dataset, footprint: np.ndarray, *, progress: str | None = None, store: Path | None = None
):
    """Yields ``(index, example, iie)`` with the IIE map at original resolution, in order.

    ``store``: a folder of maps computed before (``INDEX.npy``): those found are read, the
    others computed and written there (so an interrupted build keeps what it computed)."""
    bar = tqdm(total=len(dataset), desc=progress, unit="img", disable=progress is None)
    batch, read = [], 0
    if store is not None:
        store.mkdir(parents=True, exist_ok=True)

    def flush():
        iie = np.asarray(info.entropy_map(np.stack([ex["image"] for _, ex in batch]), footprint))
        for (i, ex), m in zip(batch, iie, strict=True):
            if store is not None:
                tmp = store / f"{i:06d}.{os.getpid()}.tmp.npy"
                np.save(tmp, m)
                tmp.replace(store / f"{i:06d}.npy")
            yield i, ex, m
        bar.update(len(batch))
        batch.clear()

    for i in range(len(dataset)):
        example = dataset[i]
        check_example(example, i)
        shape = example["image"].shape
        stored = None if store is None else _load_map(store / f"{i:06d}.npy", shape)
        if batch and (
            stored is not None or len(batch) == _BATCH or batch[0][1]["image"].shape != shape
        ):
            yield from flush()
        if stored is not None:
            bar.update(1)
            read += 1
            yield i, example, stored
        else:
            batch.append((i, example))
    if batch:
        yield from flush()
    bar.close()
    if store is not None:
        logging.info(
            "IIE maps at the original resolution: %d of %d read from %s, the others computed "
            "and kept there",
            read,
            len(dataset),
            store,
        )


class _Builder(tfds.core.GeneratorBasedBuilder):
    """One prepared split of a piaug dataset; subclasses name the dataset."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Image, IIE map, landmarks, spacing and id per example."}

    def __init__(self, *, dataset, image_size, footprint: str, full_iie=None, **kwargs):
        self._dataset, self._full_iie = dataset, full_iie
        self._image_size, self._footprint = tuple(int(s) for s in image_size), footprint
        self._iie_max: list[float] = []
        self._ids: list[str] = []
        super().__init__(**kwargs)

    def _info(self):
        size, d = self._image_size, len(self._image_size)
        num_landmarks = int(self._dataset.num_landmarks)
        # an image's spacing is one number, a volume's one per axis
        spacing = tfds.features.Scalar(dtype=np.float32)
        if d == 3:
            spacing = tfds.features.Tensor(shape=(3,), dtype=np.float32)
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"piaug prepared dataset: {self._dataset!r}",
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Tensor(shape=size, dtype=np.uint8),
                    "iie": tfds.features.Tensor(shape=size, dtype=np.float32),
                    "landmarks": tfds.features.Tensor(shape=(num_landmarks, d), dtype=np.float32),
                    "landmarks_original": tfds.features.Tensor(
                        shape=(num_landmarks, d), dtype=np.float32
                    ),
                    "spacing": spacing,
                    "original_size": tfds.features.Tensor(shape=(d,), dtype=np.int32),
                    "id": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,  # examples keep the reader's order
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # the reader was opened (and checked) before the build started
        return {TFDS_SPLIT: self._generate_examples()}

    def _generate_examples(self):
        footprint = footprint_of(self._footprint)
        name = self._dataset.name
        for i, ex, iie in iie_examples(
            self._dataset,
            footprint,
            progress=f"prepare {name}: IIE {self._footprint}",
            store=self._full_iie,
        ):
            shape = ex["image"].shape
            self._iie_max.append(float(iie.max()))
            self._ids.append(str(ex["id"]))
            yield (
                i,
                {
                    "image": resize_image(ex["image"], self._image_size),
                    "iie": resize_bilinear(iie, self._image_size),
                    "landmarks": resize_points(ex["landmarks"], shape, self._image_size),
                    "landmarks_original": np.asarray(ex["landmarks"], np.float32),
                    "spacing": np.asarray(ex["spacing"], np.float32),
                    "original_size": np.asarray(shape, np.int32),
                    "id": str(ex["id"]),
                },
            )
        self.info.metadata.update(
            {
                "ids": self._ids,
                "iie_max": self._iie_max,
                "footprint": self._footprint,
                "image_size": list(self._image_size),
                "report": list(self._dataset.report),
                "source": repr(self._dataset),
            }
        )


@functools.cache
def builder_class(name: str) -> type[_Builder]:
    """The TFDS builder of dataset ``name`` (``PiaugCeph`` for ``ceph``, ...), made once from
    its registry entry (``piaug.data.DATASETS``): its description and download instructions."""
    spec = data.spec(name)
    return type(
        "Piaug" + "".join(part.title() for part in name.split("_")),
        (_Builder,),
        {
            "__doc__": spec.description,
            "__module__": __name__,
            "MANUAL_DOWNLOAD_INSTRUCTIONS": spec.instructions or None,
        },
    )


def check_image_size(image_size) -> tuple[int, ...]:
    """``config.data.image_size`` as ``(height, width)`` (volumes: ``(depth, height,
    width)``); UserError unless each is >= 8."""
    try:
        size = tuple(int(s) for s in image_size)
    except (TypeError, ValueError):
        size = ()
    if len(size) not in (2, 3) or min(size) < 8:
        raise UserError(
            f"config.data.image_size={tuple(image_size)}: need (height, width), or (depth, "
            "height, width) for volumes, each >= 8"
        )
    return size


def footprint_of(spec: str, field: str = "config.info.footprint") -> np.ndarray:
    """A footprint spec (``'disk(10)'``) as a boolean array; UserError naming ``field``."""
    try:
        return info.parse_footprint(spec)
    except ValueError as e:
        raise UserError(f"{field}={spec!r}: {e}") from None


@dataclasses.dataclass(frozen=True)
class Prepared:
    """A prepared split: its folder, its random-access source and its metadata."""

    path: Path
    split: str
    source: object  # a tfds ArrayRecordDataSource: len() and [i] -> dict of NumPy arrays
    metadata: dict

    def __len__(self) -> int:
        return len(self.source)

    @property
    def ids(self) -> list[str]:
        return self.metadata["ids"]


def _build(builder, dataset, payload: dict, cache_dir: Path, key: str) -> None:
    """Writes the prepared copy (TFDS builds it in a temporary folder, then renames it into
    place) and its ``fingerprint.json``."""
    reason = why_new(payload, cache_dir / dataset.name)
    logging.info(
        "preparing %s into %s%s", dataset, builder.data_dir, f" ({reason})" if reason else ""
    )
    tfds.display_progress_bar(False)  # our own bar counts images, with rate and ETA
    with _quiet_tfds():
        builder.download_and_prepare(
            download_config=tfds.download.DownloadConfig(try_download_gcs=False)
        )
    plain = json.loads(json.dumps(payload, default=str))
    layout.write_json(cache_dir / dataset.name / key / FINGERPRINT_FILE, plain)


class _NotForUsers(std_logging.Filter):
    """TFDS's notes about a dataset that does not exist yet (every first preparation)."""

    def filter(self, record):
        return not str(record.msg).startswith("Variant folder")


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS's words that are not the user's business here: its "Variant folder ... has no
    dataset_info.json" warning before a first preparation and its printed "Downloading and
    preparing dataset Unknown size ..." lines (nothing is downloaded; piaug logs what it
    prepares, with its own progress bar). Its errors still raise."""
    quiet = _NotForUsers()
    logger = std_logging.getLogger("absl")
    logger.addFilter(quiet)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        logger.removeFilter(quiet)


def prepare(
    dataset,
    *,
    image_size,
    footprint: str = "disk(10)",
    cache_dir: str | os.PathLike | None = None,
    split: str = "train",
    full_resolution_cache: bool = False,
) -> Prepared:
    """Builds (once) and opens the prepared copy of ``dataset`` at ``image_size`` (H, W).

    Args:
      dataset: a reader from ``piaug.data.load``.
      image_size: the training size (height, width).
      footprint: the IIE footprint spec, e.g. ``'disk(10)'``.
      cache_dir: where prepared datasets live; ``default_cache_dir()`` when None.
      split: the name of the stored split (the reader's split).
      full_resolution_cache: also keep the IIE maps at the original resolution
        (``full_iie_folder``; float32, 18.6 MB for a 2400 x 1935 radiograph), so that a build
        at another size reads them instead of computing them again. The prepared copy is the
        same either way.
    """
    image_size = check_image_size(image_size)
    footprint_of(footprint)  # a bad spec fails before anything is written
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    settings = {"image_size": list(image_size), "footprint": footprint, "split": split}
    payload = fingerprint_payload(dataset, settings, cache_dir)
    key = hash_payload(payload)
    with _quiet_tfds():
        builder = builder_class(dataset.name)(
            dataset=dataset,
            image_size=image_size,
            footprint=footprint,
            data_dir=cache_dir / dataset.name / key,
            file_format="array_record",
            full_iie=(
                cache_dir / dataset.name / FULL_IIE_DIR / full_iie_key(payload)
                if full_resolution_cache
                else None
            ),
        )
    with _quiet_tfds():
        prepared = builder.is_prepared()
    if prepared:
        logging.info("prepared dataset found at %s", builder.data_dir)
    else:
        lock = cache_dir / dataset.name / f"{key}.lock"
        try:
            with build_lock(lock, builder.data_dir):
                with _quiet_tfds():
                    prepared = builder.is_prepared()  # another process may have built it
                if prepared:
                    logging.info("prepared dataset found at %s (built meanwhile)", builder.data_dir)
                else:
                    _build(builder, dataset, payload, cache_dir, key)
        except BaseException:
            remove_empty(cache_dir / dataset.name / key, cache_dir)  # no empty folders left
            raise
    built = tfds.builder_from_directory(builder.data_dir)
    if TFDS_SPLIT not in built.info.splits:
        raise UserError(
            f"the prepared copy at {builder.data_dir} has splits {list(built.info.splits)}, not "
            f"{TFDS_SPLIT!r}: an older piaug wrote it. Delete that folder and run again."
        )
    return Prepared(
        path=Path(builder.data_dir),
        split=split,
        source=built.as_data_source(split=TFDS_SPLIT),
        metadata=dict(built.info.metadata or {}),
    )
