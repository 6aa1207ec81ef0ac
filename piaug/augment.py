"""Intensity and geometric transforms of the crop view, and the per-group (adaptive) jitter.

The intensity transforms follow torchvision's ``ColorJitter`` on float images in [0, 1]:
brightness scales (``clip(f * x)``), contrast blends with the mean gray of the image
(``clip(f * x + (1 - f) * mean)``), each factor is drawn uniformly from its range, and the two
are applied in a random order. They are written with array methods only, so they work on NumPy
arrays (the input pipeline's workers) and on JAX arrays (the augmentation estimate, Eq. 10) alike.

The rotation resamples the crop from the whole image about the anchor pixel, so the anchor lands
exactly on its integer position in the crop at any angle: no one-hot channel and argmax are needed
to track it, and the corners of a rotated crop show image content rather than zeros, except where
they fall outside the image (zeros there, as batchgenerators' constant border). Interpolation is
cubic B-spline (order 3), as batchgenerators' ``rotate``; the result is clipped to [0, 1].

Volumes (docs/volumes.md): the same crops in 3-D, cubic around the anchor voxel, with three
angles (rotations in the (row, col), (slice, col) and (slice, row) planes, in that order); the
contrast blends with the mean of the whole crop (``dims=3``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy import ndimage

# torchvision ColorJitter(brightness=0.15, contrast=0.25): the CC2D baseline's jitter.
DEFAULT_BRIGHTNESS = (0.85, 1.15)
DEFAULT_CONTRAST = (0.75, 1.25)
GROUPS = ("low", "medium", "high")  # piaug.info.GROUP_NAMES, in group-index order
_SPLINE_MARGIN = 8  # pixels of context around the sampled window: spline prefilter edge < 3e-5


def factor_range(value, name: str = "factor") -> tuple[float, float]:
    """A jitter range in torchvision's convention: ``b`` means ``[max(0, 1 - b), 1 + b]``.

    A pair ``(lo, hi)`` is taken as it is; both must satisfy ``0 <= lo <= hi``.
    """
    if isinstance(value, int | float | np.number):
        if value < 0:
            raise ValueError(f"{name}={value}: a jitter strength must be >= 0")
        return (max(0.0, 1.0 - float(value)), 1.0 + float(value))
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r}: expected a number or a pair (lo, hi)") from None
    if not 0.0 <= lo <= hi or not np.isfinite(hi):
        raise ValueError(f"{name}={value!r}: need finite 0 <= lo <= hi")
    return (lo, hi)


def adjust_brightness(x, factor):
    """``clip(factor * x, 0, 1)`` (torchvision ``adjust_brightness`` on float images)."""
    return (x * factor).clip(0.0, 1.0)


def adjust_contrast(x, factor, dims: int = 2):
    """Blends ``x`` (..., H, W) in [0, 1] with its mean gray: ``clip(f x + (1 - f) mean)``
    (the mean over the last ``dims`` axes: 3 for volumes)."""
    mean = x.mean(axis=tuple(range(-dims, 0)), keepdims=True)
    return (factor * x + (1.0 - factor) * mean).clip(0.0, 1.0)


def degrade(x: np.ndarray, rng: np.random.Generator, *, blur: float, noise: float) -> np.ndarray:
    """A Gaussian blur of sigma uniform in [0, ``blur``] pixels, then Gaussian noise of std
    uniform in [0, ``noise``], clipped to [0, 1]; each drawn only when its maximum is > 0.
    On the crop only, they take away the pixel-exact texture that the crop shares with its
    image: a shortcut to the contrastive task that does not carry over to other images."""
    x = np.asarray(x, np.float32)
    if blur > 0:
        x = ndimage.gaussian_filter(x, float(rng.uniform(0.0, blur)), mode="nearest")
    if noise > 0:
        std = float(rng.uniform(0.0, noise))
        x = x + std * rng.standard_normal(x.shape).astype(np.float32)
    return np.clip(x, 0.0, 1.0).astype(np.float32)


def color_jitter(x, brightness, contrast, *, contrast_first=False, dims: int = 2):
    """Brightness then contrast (or the reverse): one draw of torchvision's ColorJitter
    (``dims``: the image's axes, 3 for volumes)."""
    if contrast_first:
        return adjust_brightness(adjust_contrast(x, contrast, dims), brightness)
    return adjust_contrast(adjust_brightness(x, brightness), contrast, dims)


class GroupJitter:
    """The brightness and contrast ranges of each information group (Eq. 6).

    ``GroupJitter.uniform(b, c)`` gives every group the same ranges (the baseline);
    ``GroupJitter.from_mapping({'medium': {'brightness': (lo, hi), 'contrast': ...}, ...})``
    reads the ranges of an estimate (``augment.json``'s ``groups``), where a group that is
    missing takes the medium group's ranges (the authors' low group reuses medium's).

    ``centers`` (optional, bits): a representative IIE of each group (the estimate's
    ``iie_mean``), increasing. With them, ``draw_at`` gives the per-pixel continuous variant:
    ranges interpolated linearly in the anchor's IIE between the groups' centers (constant
    beyond the first and last).
    """

    def __init__(self, brightness: Sequence[tuple[float, float]], contrast, centers=None) -> None:
        self.brightness = np.asarray(brightness, np.float64).reshape(len(GROUPS), 2)
        self.contrast = np.asarray(contrast, np.float64).reshape(len(GROUPS), 2)
        self.centers = None if centers is None else np.asarray(centers, np.float64)
        if self.centers is not None and (
            self.centers.shape != (len(GROUPS),) or np.any(np.diff(self.centers) < 0)
        ):
            raise ValueError(f"centers={centers}: need one increasing IIE per group")

    @classmethod
    def uniform(cls, brightness=DEFAULT_BRIGHTNESS, contrast=DEFAULT_CONTRAST) -> GroupJitter:
        b = factor_range(brightness, "brightness")
        c = factor_range(contrast, "contrast")
        return cls([b] * len(GROUPS), [c] * len(GROUPS))

    @classmethod
    def from_mapping(cls, groups: Mapping, where: str = "the ranges") -> GroupJitter:
        unknown = sorted(set(groups) - set(GROUPS))
        if unknown:
            raise ValueError(f"{where}: unknown groups {unknown}; expected {', '.join(GROUPS)}")
        if "medium" not in groups:
            raise ValueError(f"{where}: the medium group's ranges are required")
        ranges = {"brightness": [], "contrast": []}
        centers = []
        for group in GROUPS:
            name = group if group in groups else "medium"
            entry = groups[name]
            for kind, out in ranges.items():
                if kind not in entry:
                    raise ValueError(f"{where}: group {name!r} has no {kind!r} range")
                out.append(factor_range(entry[kind], f"{where}: {name}.{kind}"))
            centers.append(entry.get("iie_mean") if group in groups else None)
        if any(c is None for c in centers):  # a group was missing or has no IIE: no centers
            centers = None
        return cls(ranges["brightness"], ranges["contrast"], centers)

    def to_mapping(self) -> dict:
        return {
            g: {"brightness": list(self.brightness[i]), "contrast": list(self.contrast[i])}
            for i, g in enumerate(GROUPS)
        }

    def draw(self, rng: np.random.Generator, group: int) -> tuple[float, float, bool]:
        """Brightness and contrast factors for an anchor of ``group``, and the op order."""
        b = rng.uniform(*self.brightness[group])
        c = rng.uniform(*self.contrast[group])
        return float(b), float(c), bool(rng.integers(2))

    def ranges_at(self, iie: float) -> tuple[np.ndarray, np.ndarray]:
        """The continuous variant's (brightness, contrast) ranges at an IIE value (bits)."""
        if self.centers is None:
            raise ValueError("these ranges have no group centers (the estimate's iie_mean)")

        def interp(r):
            return np.array([np.interp(iie, self.centers, r[:, i]) for i in range(2)])

        return interp(self.brightness), interp(self.contrast)

    def draw_at(self, rng: np.random.Generator, iie: float) -> tuple[float, float, bool]:
        """As ``draw`` with the ranges of ``ranges_at(iie)``."""
        b_range, c_range = self.ranges_at(iie)
        b = rng.uniform(*b_range)
        c = rng.uniform(*c_range)
        return float(b), float(c), bool(rng.integers(2))


def crop_position(
    rng: np.random.Generator, anchor, crop_size: int, image_shape, *, grid: int = 0
) -> np.ndarray:
    """Where the anchor sits in a crop drawn uniformly among the crops that contain it.

    The crop is ``crop_size`` square and lies inside the image; its corner is uniform among the
    corners that keep ``anchor`` (row, col) inside it; with ``grid`` > 0, among those on
    multiples of ``grid`` pixels (so the crop's cells at every stride dividing ``grid`` are the
    image's cells: the anchor sits at the same place in its cell of both views; where no such
    corner keeps the anchor inside, the nearest valid corner is used). Returns the anchor's
    (row, col) in the crop.
    """
    pos = []
    for a, n in zip(anchor, image_shape, strict=True):
        lo, hi = max(0, int(a) - crop_size + 1), min(int(a), n - crop_size)
        if grid > 0:
            first, last = -(-lo // grid), hi // grid
            if first <= last:
                pos.append(int(a) - grid * int(rng.integers(first, last + 1)))
                continue
        pos.append(int(a) - int(rng.integers(lo, hi + 1)))
    return np.asarray(pos, np.int64)


def rotation_matrix(angle_deg) -> np.ndarray:
    """The rotation of crop offsets to image offsets: ``(2, 2)`` for one angle (a positive
    angle turns the content counter-clockwise on screen, rows growing downwards), ``(3, 3)``
    for three (volumes: the (row, col), (slice, col) and (slice, row) planes, applied in that
    order), on (row, col) or (slice, row, col) vectors."""
    angles = np.atleast_1d(np.asarray(angle_deg, np.float64))

    def plane(t, i, j, n):
        r = np.eye(n)
        c, s = np.cos(np.deg2rad(t)), np.sin(np.deg2rad(t))
        r[i, i], r[i, j], r[j, i], r[j, j] = c, s, -s, c
        return r

    if angles.size == 1:
        return plane(angles[0], 0, 1, 2)
    if angles.size != 3:
        raise ValueError(f"angle_deg={angle_deg!r}: one angle (images) or three (volumes)")
    return plane(angles[2], 0, 1, 3) @ plane(angles[1], 0, 2, 3) @ plane(angles[0], 1, 2, 3)


def rotation_coordinates(
    anchor, crop_anchor, crop_size: int, angle_deg, scale: float = 1.0
) -> np.ndarray:
    """Source (row, col) in the image of every crop pixel: ``(2, crop_size, crop_size)``
    (volumes, three angles: (slice, row, col), ``(3, C, C, C)``).

    Crop pixel ``p`` shows image point ``anchor + R(angle) (p - crop_anchor) / scale``, so
    ``crop_anchor`` shows ``anchor`` exactly. A positive angle turns the content
    counter-clockwise on screen (rows grow downwards); ``scale`` > 1 enlarges it.
    """
    rotation = rotation_matrix(angle_deg)
    n = rotation.shape[0]
    d = np.indices((crop_size,) * n, dtype=np.float64)
    d -= np.asarray(crop_anchor, np.float64).reshape(n, *(1,) * n)
    d /= scale
    source = np.tensordot(rotation, d, axes=1)
    return source + np.asarray(anchor, np.float64).reshape(n, *(1,) * n)


def rotated_crop(
    image: np.ndarray,
    anchor,
    crop_anchor,
    crop_size: int,
    angle_deg: float,
    *,
    order: int = 3,
    scale: float = 1.0,
) -> np.ndarray:
    """The crop around ``anchor`` rotated by ``angle_deg`` (and enlarged ``scale`` times about
    the anchor), float32 in [0, 1]; volumes: a ``(D, H, W)`` image, three angles, a cubic crop.

    Args:
      image: ``(H, W)`` float image in [0, 1] (or uint8, scaled by 1/255).
      anchor: the anchor's integer (row, col) in the image.
      crop_anchor: where the anchor lands in the crop, integer (row, col).
      crop_size: side of the square crop.
      angle_deg: rotation angle in degrees.
      order: spline order of the interpolation (3: cubic, 1: bilinear, 0: nearest).

    Returns:
      ``(crop_size, crop_size)`` float32; the pixel at ``crop_anchor`` equals the image at
      ``anchor`` (exactly at angle 0 and for order <= 1; to float rounding otherwise).
    """
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    coords = rotation_coordinates(anchor, crop_anchor, crop_size, angle_deg, scale)
    # Interpolate on a window around the sampled points only: the spline prefilter of the whole
    # image would cost more than the crop itself.
    n = coords.shape[0]
    lo = np.floor(coords.reshape(n, -1).min(1)).astype(int) - _SPLINE_MARGIN
    hi = np.ceil(coords.reshape(n, -1).max(1)).astype(int) + _SPLINE_MARGIN + 1
    window = np.zeros(tuple(hi - lo), np.float32)
    src_lo = np.maximum(lo, 0)
    src_hi = np.minimum(hi, image.shape)
    if np.all(src_hi > src_lo):
        into = tuple(slice(a - b, c - b) for a, b, c in zip(src_lo, lo, src_hi, strict=True))
        window[into] = image[tuple(slice(a, c) for a, c in zip(src_lo, src_hi, strict=True))]
    coords -= lo.reshape(n, *(1,) * n)
    out = ndimage.map_coordinates(window, coords, order=order, mode="constant", cval=0.0)
    return out.clip(0.0, 1.0).astype(np.float32)
