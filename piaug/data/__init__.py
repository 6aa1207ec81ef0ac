"""Datasets: ``load(name, root, split=..., **options)`` returns a lazy sequence of examples.

Each example is a dict with ``image`` (uint8 ``(H, W)``, original resolution), ``landmarks``
(float32 ``(L, 2)``, x = column, y = row, original pixels), ``spacing`` (mm per pixel) and
``id``.  Every dataset also has ``name``, ``ids`` (in order), ``num_landmarks``, ``source_files``
(the files it reads), ``options`` (the resolved options, including ``split``), ``report`` (lines
about documented skips) and ``image_path(i)``.  Bad input raises ``piaug.errors.UserError``.

``DATASETS`` is the registry: each reader module declares its ``SPEC`` (name, loader, options
and their defaults, default splits, download instructions; ``piaug.data.common.DatasetSpec``),
and a new dataset is its own module plus one line here. The config fields
(``piaug.defaults``) and the prepared datasets (``piaug.data.prepare``) are made from the spec.
"""

from __future__ import annotations

from typing import Any

from piaug.data import ceph, folder, hand, synthetic
from piaug.data.common import DatasetSpec
from piaug.errors import UserError

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        ceph.SPEC,  # ISBI 2015 cephalometric radiographs
        hand.SPEC,  # Digital Hand Atlas
        folder.SPEC,  # your own images + landmarks.csv
        synthetic.SPEC,  # the built-in synthetic X-rays
    )
}
NAMES = tuple(DATASETS)


def spec(name: str) -> DatasetSpec:
    """The registry entry of dataset ``name``; UserError naming the known ones."""
    if name not in DATASETS:
        raise UserError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
    return DATASETS[name]


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
      ``size`` (height, width; default 768 x 768) and ``num_landmarks``.  Its ``split`` picks a
      disjoint stream of subjects: ``train`` (default) uses ``seed``, ``test`` ``seed + 1``.
    """
    return spec(name).load(root, split=split, **options)
