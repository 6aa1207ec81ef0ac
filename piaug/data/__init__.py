"""Datasets: ``load(name, root, split=..., **options)`` returns a lazy sequence of examples.

Each example is a dict with ``image`` (uint8 ``(H, W)``, original resolution), ``landmarks``
(float32 ``(L, 2)``, x = column, y = row, original pixels), ``spacing`` (mm per pixel) and
``id``.  Every dataset also has ``name``, ``ids`` (in order), ``num_landmarks``, ``source_files``
(the files it reads), ``options`` (the resolved options, including ``split``), ``report`` (lines
about documented skips) and ``image_path(i)``.  Bad input raises ``piaug.errors.UserError``.
"""

from __future__ import annotations

from typing import Any

from piaug.data import ceph, folder, hand, synthetic
from piaug.errors import UserError

NAMES = ("ceph", "hand", "folder", "synthetic")
_READERS = {"ceph": ceph.load, "hand": hand.load, "folder": folder.load}


def load(name: str, root: Any = None, split: str | None = None, **options: Any):
    """Opens dataset ``name`` (one of ``NAMES``) at ``root`` for ``split``.

    * ``ceph`` (ISBI 2015): ``split`` ``train`` (default), ``test1``, ``test2``, ``test`` or
      ``all``; option ``annotation`` (``mean``, ``senior``, ``junior``).  See ``piaug.data.ceph``.
    * ``hand`` (Digital Hand Atlas, 37 landmarks): ``split`` ``all`` (default), ``train``,
      ``val``, ``test``; options ``protocol`` (``cc2d``, ``igu``), ``wrist``, ``annotations``.
      See ``piaug.data.hand``.
    * ``folder`` (your own images + ``landmarks.csv``): ``split`` ``all`` (default) or a value
      of the csv's split column; option ``spacing``.  See ``piaug.data.folder``.
    * ``synthetic`` needs no ``root`` (it is ignored); its options are ``num_images``, ``seed``,
      ``size`` (height, width) and ``num_landmarks``.  Its ``split`` picks a disjoint stream of
      subjects: ``train`` (default) uses ``seed``, ``test`` uses ``seed + 1``.
    """
    if name == "synthetic":
        return _synthetic("train" if split is None else split, options)
    if name not in _READERS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
    return _READERS[name](root, split=split, **options)


def _synthetic(split: str, options: dict[str, Any]) -> synthetic.SyntheticDataset:
    if split not in ("train", "test"):
        raise UserError(f"synthetic split must be 'train' or 'test', got {split!r}")
    seed = options.pop("seed", 0)
    num_images = options.pop("num_images", 32)
    size = options.pop("size", (384, 384))
    num_landmarks = options.pop("num_landmarks", 19)
    if options:
        raise UserError(
            f"unknown options for the synthetic dataset: {sorted(options)}; its options are "
            "split, num_images, seed, size, num_landmarks"
        )
    try:
        seed = int(seed)
        ds = synthetic.SyntheticDataset(
            num_images, seed=seed + (split == "test"), size=tuple(size), num_landmarks=num_landmarks
        )
    except (TypeError, ValueError) as e:
        raise UserError(f"synthetic dataset: {e}") from None
    ds.options = {
        "split": split,
        "num_images": ds.num_images,
        "seed": seed,
        "size": list(ds.size),
        "num_landmarks": ds.num_landmarks,
    }
    return ds
