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

from piaug.data import ceph, folder, folder3d, hand, synthetic, synthetic3d
from piaug.data.common import DatasetSpec
from piaug.errors import UserError

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        ceph.SPEC,  # ISBI 2015 cephalometric radiographs
        hand.SPEC,  # Digital Hand Atlas
        folder.SPEC,  # your own images + landmarks.csv
        folder3d.SPEC,  # your own volumes (NIfTI, DICOM series) + landmarks.csv or masks
        synthetic.SPEC,  # the built-in synthetic X-rays
        synthetic3d.SPEC,  # the built-in synthetic head-and-neck CT-like volumes
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
    * ``folder3d`` (your own volumes: NIfTI or DICOM series + ``landmarks.csv`` in voxel
      indices or world mm, or label masks): examples with a uint8 ``(D, H, W)`` image,
      ``(L, 3)`` landmarks (x, y, z voxels) and a ``(3,)`` spacing. See ``piaug.data.folder3d``.
    * ``synthetic`` needs no ``root`` (it is ignored); its options are ``num_images``, ``seed``,
      ``size`` (height, width; default 768 x 768) and ``num_landmarks``.  Its ``split`` picks a
      disjoint stream of subjects: ``train`` (default) uses ``seed``, ``test`` ``seed + 1``.
    * ``synthetic3d``: CT-like head-and-neck volumes, as ``synthetic`` (options
      ``num_images``, ``seed``, ``size`` (D, H, W; default 64^3) and ``num_landmarks``).
      See ``piaug.data.synthetic3d``.
    """
    return spec(name).load(root, split=split, **options)
