"""Seeded synthetic head-and-neck CT-like volumes with landmarks: the 3-D counterpart of the
synthetic X-rays (``piaug.data.synthetic``), the default of ``configs/demo3d.py``.

Each subject is a CT-like volume in Hounsfield units, assembled from analytic shapes in a
template frame (the unit cube, ``(u, v, w)`` = left-right, front-back, foot-head):

* air around the head (-1000 HU) and a tubular airway (-900 HU) down the neck;
* soft tissue (40 HU) of a head ellipsoid and a neck cylinder, with brain (30 HU) inside a skull
  shell (cortical bone, 900 HU, with trabecular texture), a brainstem (25 HU);
* two eyes (vitreous 10 HU, a lens of 80 HU), two parotid glands (-40 HU, fatty), a mandible
  (a U-shaped bone arc, 800 HU) and five cervical vertebral bodies (600 HU, cortical rim
  1000 HU) stacked with discs (80 HU) between them;
* smooth soft-tissue texture (+-8 HU) and band-limited trabecular texture in bone (+-120 HU),
  both fixed to the anatomy, and independent voxel noise (15 HU).

Per-subject shape variation is a small random affine map (rotation <= 5 deg about each axis,
scale +-5 %, translation <= 3 % of the field) composed with a smooth displacement (four random
sinusoids, <= 1.2 % of the field each). The volume is rendered by backward mapping (every voxel
centre to template coordinates, the template evaluated there), and the landmarks
(``LANDMARK_NAMES``, fixed template points on the anatomy) are mapped forward by solving the
map for them to 1e-9 of the field, so a landmark lands on the same anatomical point in every
subject.

Geometry: the field of view is ``FOV_MM`` (240 mm) along every axis, so the voxel size is
``240 / n`` mm along an axis of ``n`` voxels (anisotropic for unequal sizes). Gray values
become 8 bits by the paper's H&N window, ``WINDOW_HU`` = [-200, 400] HU.

Arrays are ``(D, H, W)`` = (w, v, u) axes, landmarks ``(x, y, z)`` = (u, v, w) voxels, as for
every volume in piaug (``piaug.data.volumes``). Subject ``index`` of ``seed`` draws from
``PCG64(SeedSequence((seed, index, 3)))`` only (drawn again, ``(seed, index, 3, k)``, in the
rare case that a landmark would fall within ``MARGIN`` of the field's edge); anatomy is drawn
before the size-dependent noise, so a subject has the same anatomy at every size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import ndimage

from piaug.data.common import DatasetSpec, check_options, check_split
from piaug.data.images import to_uint8
from piaug.errors import UserError

FOV_MM = 240.0
WINDOW_HU = (-200.0, 400.0)
MIN_SIZE = 16
# Template points (u, v, w): left-right, front (0) to back, foot (0) to head.
LANDMARKS = {
    "right eye": (0.38, 0.22, 0.64),
    "left eye": (0.62, 0.22, 0.64),
    "menton (chin)": (0.50, 0.19, 0.40),
    "right mandible angle": (0.33, 0.45, 0.42),
    "left mandible angle": (0.67, 0.45, 0.42),
    "C2 body, top": (0.50, 0.62, 0.42),
    "C4 body, centre": (0.50, 0.62, 0.25),
    "airway at the chin": (0.50, 0.42, 0.40),
    "right parotid": (0.29, 0.52, 0.50),
    "left parotid": (0.71, 0.52, 0.50),
    "vertex (inner skull)": (0.50, 0.52, 0.945),
    "brainstem": (0.50, 0.58, 0.58),
}
LANDMARK_NAMES = tuple(LANDMARKS)
TEMPLATE_LANDMARKS = np.array(list(LANDMARKS.values()), np.float64)
MAX_LANDMARKS = len(LANDMARK_NAMES)


MARGIN = 0.02  # every landmark of a subject lies this far inside the field (unit cube)


def draw_params(seed: int, index: int, attempt: int = 0) -> dict[str, Any]:
    """A subject's random parameters: its affine map, displacement and texture lattices."""
    key = (seed, index, 3) if attempt == 0 else (seed, index, 3, attempt)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(key)))
    angles = np.deg2rad(rng.uniform(-5, 5, 3))
    rotation = np.eye(3)
    for axis, a in enumerate(angles):
        c, s = np.cos(a), np.sin(a)
        r = np.eye(3)
        i, j = [k for k in range(3) if k != axis]
        r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
        rotation = r @ rotation
    matrix = rotation * rng.uniform(0.95, 1.05, 3)
    shift = rng.uniform(-0.03, 0.03, 3)
    return {
        "matrix": matrix,
        "shift": shift,
        "freqs": rng.integers(0, 3, (4, 3)),
        "phases": rng.uniform(0, 2 * np.pi, (4, 3)),
        "amps": rng.uniform(-0.012, 0.012, (4, 3)),
        "soft": rng.uniform(-1, 1, (9, 9, 9)),
        "bone": rng.uniform(-1, 1, (25, 25, 25)),
    }


def backward(points: np.ndarray, p: dict) -> np.ndarray:
    """Volume coordinates (unit cube, ``(..., 3)``) -> template coordinates."""
    c = 0.5
    q = (points - c - p["shift"]) @ p["matrix"].T + c
    for f, ph, a in zip(p["freqs"], p["phases"], p["amps"], strict=True):
        q = q + a * np.sin(2 * np.pi * (q @ f)[..., None] + ph)
    return q


def forward(template: np.ndarray, p: dict, iterations: int = 200) -> np.ndarray:
    """Template points -> volume coordinates: ``backward(x) = template`` solved by Newton's
    method with a numerical Jacobian (the map is a small perturbation of the identity)."""
    x = np.array(template, np.float64)
    eps = 1e-6
    for _ in range(iterations):
        r = backward(x, p) - template
        if np.abs(r).max() < 1e-12:
            break
        jac = np.stack(
            [(backward(x + eps * np.eye(3)[k], p) - backward(x, p)) / eps for k in range(3)],
            axis=-1,
        )
        x = x - np.linalg.solve(jac, r[..., None])[..., 0]
    return x


def _ellipsoid(q, centre, radii) -> np.ndarray:
    return (((q - np.asarray(centre)) / np.asarray(radii)) ** 2).sum(-1)


def _lattice(values: np.ndarray, q: np.ndarray) -> np.ndarray:
    """A random lattice over the unit cube, trilinear at template points ``q``."""
    n = values.shape[0] - 1
    coords = np.clip(q, 0, 1).reshape(-1, 3).T * n
    return ndimage.map_coordinates(values, coords, order=1).reshape(q.shape[:-1])


def template_hu(q: np.ndarray, p: dict) -> np.ndarray:
    """The template's Hounsfield units at template points ``q`` ``(..., 3)``."""
    u, v, w = q[..., 0], q[..., 1], q[..., 2]
    soft = 8 * _lattice(p["soft"], q)
    trabecular = 120 * _lattice(p["bone"], q)
    hu = np.full(q.shape[:-1], -1000.0)
    head = _ellipsoid(q, (0.5, 0.5, 0.66), (0.36, 0.40, 0.31)) <= 1
    neck = ((u - 0.5) ** 2 + ((v - 0.55) / 1.1) ** 2 <= 0.2**2) & (w <= 0.5)
    hu = np.where(head | neck, 40 + soft, hu)
    skull_out = _ellipsoid(q, (0.5, 0.52, 0.66), (0.33, 0.37, 0.30)) <= 1
    skull_in = _ellipsoid(q, (0.5, 0.52, 0.66), (0.30, 0.34, 0.285)) <= 1
    upper = w >= 0.55
    hu = np.where(skull_out & upper, 900 + trabecular, hu)
    hu = np.where(skull_in & upper, 30 + soft, hu)
    hu = np.where(_ellipsoid(q, (0.5, 0.58, 0.58), (0.045, 0.045, 0.09)) <= 1, 25 + soft, hu)
    for side in (0.38, 0.62):
        hu = np.where(_ellipsoid(q, (side, 0.22, 0.64), (0.045,) * 3) <= 1, 10 + soft, hu)
        lens = _ellipsoid(q, (side, 0.18, 0.64), (0.02, 0.008, 0.02)) <= 1
        hu = np.where(lens, 80.0, hu)
    for side in (0.29, 0.71):
        gland = _ellipsoid(q, (side, 0.52, 0.50), (0.045, 0.07, 0.06)) <= 1
        hu = np.where(gland, -40 + soft, hu)
    # mandible: a U of bone in the plane w = 0.42, v = 0.19 + 0.26 (u - 0.5)^2 / 0.17^2
    arc_v = 0.19 + 0.26 * ((u - 0.5) / 0.17) ** 2
    mandible = (np.abs(v - arc_v) <= 0.025) & (np.abs(w - 0.42) <= 0.035) & (v <= 0.46)
    hu = np.where(mandible, 800 + trabecular, hu)
    # vertebral bodies C2 (top) to C6, discs between them
    canal = (u - 0.5) ** 2 + (v - 0.62) ** 2
    for k in range(5):
        top = 0.42 - k * 0.075
        body = (canal <= 0.06**2) & (w <= top) & (w >= top - 0.06)
        rim = body & (canal >= 0.05**2)
        disc = (canal <= 0.06**2) & (w < top + 0.015) & (w > top)
        hu = np.where(body, 600 + trabecular, hu)
        hu = np.where(rim, 1000.0, hu)
        if k:
            hu = np.where(disc, 80.0, hu)
    airway = ((u - 0.5) ** 2 + (v - 0.42) ** 2 <= 0.035**2) & (w <= 0.52)
    return np.where(airway, -900.0, hu)


def subject_params(seed: int, index: int) -> dict[str, Any]:
    """Subject ``index`` of ``seed``: the first draw (``draw_params``' attempts 0, 1, ...)
    whose every landmark lies ``MARGIN`` inside the field, so that no subject loses one."""
    for attempt in range(100):
        p = draw_params(seed, index, attempt)
        unit = forward(TEMPLATE_LANDMARKS, p)
        if np.all((unit >= MARGIN) & (unit <= 1 - MARGIN)):
            return p
    raise RuntimeError(f"synthetic3d: no draw of subject {index} keeps its landmarks inside")


def render(seed: int, index: int, size: tuple[int, int, int]) -> tuple[np.ndarray, dict]:
    """Subject ``index`` of ``seed`` in HU, ``(D, H, W)``, and its parameters."""
    p = subject_params(seed, index)
    d, h, w = size
    axes = [(np.arange(n) + 0.5) / n for n in (w, h, d)]  # u, v, w of voxel centres
    grid = np.stack(np.meshgrid(axes[2], axes[1], axes[0], indexing="ij")[::-1], -1)
    hu = template_hu(backward(grid, p), p)
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence((seed, index, 3, d, h, w))))
    return hu + rng.normal(0, 15, hu.shape), p


def generate(
    index: int, *, seed: int = 0, size: tuple[int, int, int] = (64, 64, 64), num_landmarks=12
) -> dict[str, Any]:
    """Synthetic subject ``index`` of ``seed``: ``image`` uint8 ``(D, H, W)`` through
    ``WINDOW_HU``, ``landmarks`` float32 ``(L, 3)`` (x, y, z voxels), ``spacing`` ``(3,)`` mm
    along x, y, z, ``id``."""
    hu, p = render(seed, index, size)
    shape_xyz = np.asarray(size[::-1], np.float64)
    unit = forward(TEMPLATE_LANDMARKS[:num_landmarks], p)
    return {
        "image": to_uint8(hu, *WINDOW_HU),
        "landmarks": (unit * shape_xyz - 0.5).astype(np.float32),
        "spacing": FOV_MM / shape_xyz,
        "id": f"synthetic3d-{seed}-{index:04d}",
    }


class Synthetic3D(Sequence):
    """Lazy dataset of ``num_images`` subjects: ``ds[i]`` is ``generate(i, ...)``; the
    attributes of every dataset (``name``, ``ids``, ``num_landmarks``, ``source_files`` (none),
    ``options``, ``report``, ``image_path(i)`` (None), ``dims`` = 3)."""

    name = "synthetic3d"
    dims = 3

    def __init__(self, num_images: int, *, seed: int, size, num_landmarks: int) -> None:
        self.num_images, self.seed = int(num_images), int(seed)
        self.size, self.num_landmarks = tuple(int(n) for n in size), int(num_landmarks)
        self.source_files: list = []
        self.report: list[str] = []
        self.options: dict[str, Any] = {}

    @property
    def ids(self) -> list[str]:
        return [f"synthetic3d-{self.seed}-{i:04d}" for i in range(self.num_images)]

    def __len__(self) -> int:
        return self.num_images

    def _index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"index must be an integer, got {i!r}")
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for {self.num_images} synthetic volumes")
        return int(i) % self.num_images

    def image_path(self, i: int) -> None:
        self._index(i)
        return None

    def __getitem__(self, i: int) -> dict[str, Any]:
        return generate(
            self._index(i), seed=self.seed, size=self.size, num_landmarks=self.num_landmarks
        )

    def __repr__(self) -> str:
        return f"Synthetic3D({self.num_images} volumes, seed={self.seed}, size={self.size})"


NAME = "synthetic3d"
SPLITS = ("train", "test")
DEFAULTS: dict[str, Any] = {
    "num_images": 16,
    "seed": 0,
    "size": (64, 64, 64),  # (D, H, W) voxels over a 240 mm field
    "num_landmarks": MAX_LANDMARKS,
}


def load(root: Any = None, split: str | None = None, **options: Any) -> Synthetic3D:
    """``num_images`` synthetic volumes (``root`` is ignored); ``split`` ``train`` (default)
    draws from ``seed``, ``test`` from ``seed + 1``."""
    del root
    opts = check_options(NAME, options, DEFAULTS)
    split = check_split(NAME, "train" if split is None else split, SPLITS)
    try:
        size = tuple(int(n) for n in opts["size"])
    except (TypeError, ValueError):
        size = ()
    if len(size) != 3 or min(size) < MIN_SIZE:
        raise UserError(
            f"synthetic3d option size={opts['size']!r}: give (D, H, W), each >= {MIN_SIZE}"
        )
    num = opts["num_landmarks"]
    if isinstance(num, bool) or not isinstance(num, int) or not 1 <= num <= MAX_LANDMARKS:
        raise UserError(f"synthetic3d option num_landmarks={num!r}: give 1 to {MAX_LANDMARKS}")
    if isinstance(opts["num_images"], bool) or int(opts["num_images"]) < 1:
        raise UserError(f"synthetic3d option num_images={opts['num_images']!r}: give >= 1")
    seed = int(opts["seed"])
    seed_of_split = seed + (split == "test")
    ds = Synthetic3D(opts["num_images"], seed=seed_of_split, size=size, num_landmarks=num)
    ds.options = {"split": split, **opts, "seed": seed, "size": list(size)}
    return ds


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults={k: v for k, v in DEFAULTS.items() if k != "seed"},  # the seed is config.seed
    train_split="train",
    eval_split="test",
    description="The built-in synthetic head-and-neck CT-like volumes.",
    seeded=True,
    dims=3,
)
