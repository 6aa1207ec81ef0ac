"""Seeded synthetic lateral-cephalogram-like X-ray images with landmarks.

The project's built-in default dataset, for when no real data is at hand.  Each subject is a
2-D grayscale "radiograph" of a head seen from the side (face to the right), assembled from
simple analytic shapes in a canonical template frame (the unit square):

* bright, smooth bone-like structures with sharp edges and corners (skull vault, cranial base
  with sella turcica, nasal bone, orbit rim, maxilla with palate and spines, mandible, teeth,
  cervical vertebrae, hyoid, ear rods), each with a brighter cortical rim;
* trabecular-like band-limited texture inside the bones (per-subject ridged B-spline noise);
* soft tissue whose brightness ramps up with depth below the skin plus smooth random blobs, and
  a darker airway;
* air in front of the face with film grain, and a collimated border that is exactly constant
  (black, no grain);
* mild intensity-dependent film grain on the exposed area only;
* a burned-in film label (bright rectangle with blocky digits, drawn with numpy) in the top-right
  corner.

This exercises what information-guided augmentation depends on: the per-pixel image information
entropy (IIE) of gray values in a disk of radius ~10 px is low (< 2 bits) on the collimated border
and the label, medium on soft tissue and air, and high on bone texture and edges, and the
landmarks sit on structural points (corners, tips, junctions, extrema) of high local entropy.

Per-subject shape variation is a smooth non-rigid warp (a random cubic Bezier displacement field)
composed with a small random affine map (rotation <= 3 deg, scale +-5 %, translation <= 3 % of
the field).  The image is rendered by backward mapping: every pixel centre p is mapped to
template coordinates q = B(p) and the template is evaluated there analytically.  Landmarks are
fixed template points (``LANDMARK_NAMES``) mapped forward by solving B(p) = q to machine
precision, so landmarks and pixels agree to ~1e-4 px (pixels are rendered in float32) and each
landmark lands on the same structural point in every subject.  All random parameters are
bounded so that landmarks provably stay inside the image (at least 1 % of the field from the
border).

Geometry and spacing: the template unit square is fitted to the shorter image side and centred;
it spans a field of view of 193.5 mm (the width of an ISBI 2015 cephalogram, 1935 px at
0.1 mm/px), so ``spacing = 193.5 / min(height, width)`` mm per pixel (0.504 mm at 384 x 384).

Determinism: subject ``index`` of ``seed`` draws from ``PCG64(SeedSequence((seed, index)))``
only, so it does not depend on other subjects; anatomy parameters are drawn before the
size-dependent grain, so a subject has the same anatomy at every size.  Rendering uses only
+, -, *, /, sqrt, comparisons and gathers in numpy (no BLAS, no transcendental functions, no
library resampling), which are exactly rounded under IEEE 754, so results should be bit-identical
across machines and library versions.

Layout: ``piaug.data.anatomy`` holds the template's shapes and landmark points,
``piaug.data.phantom`` the warp and the rendering, this module the subjects and the dataset.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np

from piaug.data import phantom
from piaug.data.anatomy import LANDMARK_NAMES, MAX_LANDMARKS, TEMPLATE_LANDMARKS
from piaug.data.common import DatasetSpec, check_options, check_split
from piaug.errors import UserError

__all__ = ["LANDMARK_NAMES", "MAX_LANDMARKS", "SPEC", "SyntheticDataset", "generate", "load"]

FOV_MM = 193.5
MIN_SIZE = 64
# The drawing's steps under their names of before the split (tests/test_synthetic.py uses them).
_TEMPLATE_LANDMARKS = TEMPLATE_LANDMARKS
_draw_params, _backward, _forward, _render = (
    phantom.draw_params,
    phantom.backward,
    phantom.forward,
    phantom.render,
)


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_args(seed: Any, size: Any, num_landmarks: Any) -> tuple[int, tuple[int, int], int]:
    seed = _check_int("seed", seed, 0)
    try:
        h, w = (_check_int("size", s, MIN_SIZE) for s in size)
    except (TypeError, ValueError) as e:
        raise ValueError(
            f"size must be a (height, width) pair of ints >= {MIN_SIZE}, got {size!r}"
        ) from e
    if not isinstance(num_landmarks, int | np.integer) or isinstance(num_landmarks, bool):
        raise ValueError(f"num_landmarks must be an integer, got {num_landmarks!r}")
    if not 1 <= num_landmarks <= MAX_LANDMARKS:
        raise ValueError(
            f"num_landmarks must be in [1, {MAX_LANDMARKS}] "
            f"(maximum {MAX_LANDMARKS}), got {num_landmarks}"
        )
    return seed, (h, w), int(num_landmarks)


def generate(
    index: int, *, seed: int = 0, size: tuple[int, int] = (384, 384), num_landmarks: int = 19
) -> dict[str, Any]:
    """Generate synthetic subject ``index`` of ``seed``.

    Returns a dict with 'image' (uint8, (H, W)), 'landmarks' (float32, (L, 2), x = column,
    y = row, in pixels), 'spacing' (mm per pixel) and 'id' (``f"synthetic-{seed}-{index:04d}"``).
    """
    index = _check_int("index", index, 0)
    seed, hw, num_landmarks = _check_args(seed, size, num_landmarks)
    img, p = phantom.render(seed, index, hw)
    lm = phantom.forward(TEMPLATE_LANDMARKS[:num_landmarks], p, hw)
    return {
        "image": np.clip(np.round(img), 0, 255).astype(np.uint8),
        "landmarks": lm.astype(np.float32),
        "spacing": FOV_MM / min(hw),
        "id": f"synthetic-{seed}-{index:04d}",
    }


class SyntheticDataset(Sequence):
    """Lazy dataset: ``ds[i]`` is ``generate(i, seed=seed, size=size, ...)``.

    Has the attributes of every dataset returned by ``piaug.data.load``: ``name``, ``ids``,
    ``num_landmarks``, ``source_files`` (none: nothing is read), ``options``, ``report`` (empty)
    and ``image_path(i)`` (None: the images are generated).  Negative indices are refused.
    """

    name = "synthetic"

    def __init__(
        self,
        num_images: int,
        *,
        seed: int = 0,
        size: tuple[int, int] = (384, 384),
        num_landmarks: int = 19,
    ) -> None:
        self.num_images = _check_int("num_images", num_images, 1)
        self.seed, self.size, self.num_landmarks = _check_args(seed, size, num_landmarks)
        self.source_files: list = []
        self.report: list[str] = []
        self.options: dict[str, Any] = {  # ``piaug.data.load`` sets the user's (split, seed)
            "num_images": self.num_images,
            "seed": self.seed,
            "size": list(self.size),
            "num_landmarks": self.num_landmarks,
        }

    @property
    def ids(self) -> list[str]:
        return [f"synthetic-{self.seed}-{i:04d}" for i in range(self.num_images)]

    def image_path(self, i: int) -> None:
        """None: synthetic images have no file."""
        self._check_index(i)
        return None

    def __len__(self) -> int:
        return self.num_images

    def _check_index(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, int | np.integer):
            raise TypeError(f"index must be an integer, got {i!r}")
        if not -self.num_images <= i < self.num_images:
            raise IndexError(f"index {i} out of range for SyntheticDataset of {self.num_images}")
        return int(i) % self.num_images

    def __getitem__(self, i: int) -> dict[str, Any]:
        i = self._check_index(i)
        return generate(i, seed=self.seed, size=self.size, num_landmarks=self.num_landmarks)

    def __repr__(self) -> str:
        return (
            f"SyntheticDataset(num_images={self.num_images}, seed={self.seed}, "
            f"size={self.size}, num_landmarks={self.num_landmarks})"
        )


NAME = "synthetic"
SPLITS = ("train", "test")
DEFAULTS: dict[str, Any] = {
    "num_images": 32,
    "seed": 0,
    "size": (768, 768),  # original resolution (height, width)
    "num_landmarks": 19,
}


def load(root: Any = None, split: str | None = None, **options: Any) -> SyntheticDataset:
    """``num_images`` synthetic subjects; ``root`` is ignored (nothing is read). ``split``
    picks a disjoint stream of subjects: ``train`` (default) uses ``seed``, ``test``
    ``seed + 1``."""
    del root
    opts = check_options(NAME, options, DEFAULTS)
    split = check_split(NAME, "train" if split is None else split, SPLITS)
    try:
        seed = int(opts["seed"])
        ds = SyntheticDataset(
            opts["num_images"],
            seed=seed + (split == "test"),
            size=tuple(opts["size"]),
            num_landmarks=opts["num_landmarks"],
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


SPEC = DatasetSpec(
    name=NAME,
    load=load,
    defaults={k: v for k, v in DEFAULTS.items() if k != "seed"},  # the seed is config.seed
    train_split="train",
    eval_split="test",
    description="The built-in synthetic X-ray-like set.",
    seeded=True,
)
