"""Datasets: ``load(name, root, split=..., **options)`` returns a lazy sequence of examples.

Each example is a dict with ``image`` (uint8, original resolution), ``landmarks`` (float32
``(L, 2)``, x = column, y = row, original pixels), ``spacing`` (mm per pixel) and ``id``.
"""

from __future__ import annotations

from piaug.data import synthetic

NAMES = ("synthetic",)


def load(name: str, root: str | None = None, split: str = "train", **options):
    """Opens dataset ``name`` (one of ``NAMES``) at ``root`` for ``split``.

    ``synthetic`` needs no ``root``; its options are ``num_images``, ``seed``, ``size`` (height,
    width) and ``num_landmarks``. Its ``split`` picks a disjoint stream of subjects: ``train``
    uses ``seed``, ``test`` uses ``seed + 1``.
    """
    if name == "synthetic":
        if split not in ("train", "test"):
            raise ValueError(f"synthetic split must be 'train' or 'test', got {split!r}")
        seed = int(options.pop("seed", 0)) + (split == "test")
        num_images = options.pop("num_images", 32)
        size = tuple(options.pop("size", (384, 384)))
        num_landmarks = options.pop("num_landmarks", 19)
        if options:
            raise ValueError(f"unknown options for the synthetic dataset: {sorted(options)}")
        return synthetic.SyntheticDataset(
            num_images, seed=seed, size=size, num_landmarks=num_landmarks
        )
    raise ValueError(f"unknown dataset {name!r}: choose one of {', '.join(NAMES)}")
