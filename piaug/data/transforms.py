"""The per-example transforms of the input pipelines (``piaug.data.input_pipeline``; docs/design.md
1, 2): ``AnchorCrop`` for the encoders, ``LandmarkAugment`` for the detector.

Per example (``AnchorCrop``): an anchor pixel drawn from the weight map of the image's IIE
(Eq. 5; or uniformly), a square crop that contains the anchor at a random position, rotated by a
random angle with the anchor tracked exactly, then brightness and contrast jitter with the ranges
of the anchor's information group (Eq. 6). The full image goes out unaugmented (uint8); the crop
as float32 in [0, 1].

The anchors are drawn by ``weights`` and ``sample_anchor`` (``more_anchors``: further anchors in
a crop); ``check_sampling`` refuses, before training, an image where none could be drawn.

Volumes (``(D, H, W)`` images and IIE maps; docs/volumes.md): the same with a cubic crop, three
rotation angles (``augment.rotation_matrix``) and (slice, row, col) anchors.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import grain.python as grain
import numpy as np

from piaug import augment
from piaug.errors import UserError, require

ANCHORS = ("uniform", "exponential", "piecewise")


def weights(iie: np.ndarray, kind: str, *, gamma: float = 0.3, d: float = 2.0) -> np.ndarray:
    """The sampling ratio of every pixel: NumPy twin of ``piaug.info.weight_map`` (Eq. 5)."""
    if kind == "uniform" or (kind == "exponential" and gamma == 0):
        return np.ones(iie.shape, np.float64)
    if kind == "exponential":
        return np.power(np.maximum(iie.astype(np.float64), 0.0), gamma)
    if kind == "piecewise":
        return (iie >= d).astype(np.float64)
    raise ValueError(f"anchor sampling must be one of {', '.join(ANCHORS)}, got {kind!r}")


def sample_anchor(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """One pixel (row, col) drawn with probability proportional to ``w`` (H, W) (a voxel
    (slice, row, col) of a ``(D, H, W)`` map)."""
    cdf = np.cumsum(w, axis=None)
    flat = int(np.searchsorted(cdf, rng.random() * cdf[-1], side="right"))
    return np.asarray(np.unravel_index(min(flat, cdf.size - 1), w.shape), np.int64)


def more_anchors(
    rng: np.random.Generator, w: np.ndarray, coords: np.ndarray, count: int
) -> tuple[np.ndarray, np.ndarray]:
    """``count`` further anchors inside a crop, drawn with replacement by the weight map.

    Args:
      w: the image's sampling ratios ``(H, W)`` (volumes: ``(D, H, W)``).
      coords: ``(2, C, C)`` the image point each crop pixel shows (``rotation_coordinates``;
        volumes ``(3, C, C, C)``).
      count: how many to draw.

    Returns:
      ``(anchors, crop_anchors)``, each ``(count, 2)`` int64 (volumes ``(count, 3)``): a crop
      pixel drawn with probability proportional to the weight of the image pixel nearest to
      what it shows (0 where that lies outside the image), and that image pixel.
    """
    n = coords.shape[0]
    source = np.rint(coords).astype(np.int64)
    limit = np.asarray(w.shape).reshape(n, *(1,) * n)
    inside = ((source >= 0) & (source < limit)).all(0)
    clipped = tuple(np.clip(source[i], 0, w.shape[i] - 1) for i in range(n))
    p = np.where(inside, w[clipped], 0.0).ravel()
    picks = rng.choice(p.size, size=count, p=p / p.sum())
    crop_anchors = np.stack(np.unravel_index(picks, coords.shape[1:]), axis=1)
    anchors = source[(slice(None), *crop_anchors.T)].T
    return anchors, crop_anchors.astype(np.int64)


@dataclasses.dataclass(frozen=True)
class AnchorCrop(grain.RandomMapTransform):
    """Anchor, crop, rotation and (adaptive) jitter of one prepared example.

    Attributes:
      crop_size: side of the square crop.
      anchors: 'uniform', 'exponential' (IIE ** gamma) or 'piecewise' (IIE >= d).
      gamma, d: the weight map's parameter.
      thresholds: IIE bounds of the low / medium / high groups (bits).
      jitter: brightness and contrast ranges per group.
      adaptive: the anchor's group picks the ranges; False gives every anchor the ranges of
        group ``fixed_group`` (0 low, 1 medium, 2 high).
      continuous: the ranges are interpolated in the anchor's IIE between the groups' centers
        (``GroupJitter.draw_at``; the per-pixel variant) instead of taken from its group.
      max_rotation: angles are uniform in [-max_rotation, max_rotation] degrees.
      order: spline order of the rotation's interpolation (3: cubic).
      max_scale: the crop is also scaled about the anchor by a factor log-uniform in
        [1 / max_scale, max_scale] (1: no scaling, the paper's; no random number is drawn).
      crop_grid: crops cut on corners at multiples of this many pixels (e.g. 32, the coarsest
        stride), so the anchor lies at the same place of its cell in the crop and in the image
        at every stride (0: anywhere, the paper's; the anchor's cell then shows content up to a
        stride away from the image cell it must match).
      blur, noise: the crop blurred (sigma uniform in [0, blur] pixels) and noised (std uniform
        in [0, noise]) after the jitter (``augment.degrade``; 0: not, the paper's).
      anchors_per_crop: 1 (the paper's: ``anchor`` and ``crop_anchor`` are ``(2,)``) or K > 1:
        K - 1 further anchors drawn inside the crop by the same weight map (``more_anchors``),
        after the first one's; ``anchor`` and ``crop_anchor`` are then ``(K, 2)``, the first row
        the anchor the crop was cut around (whose group picks the jitter).
      crops_per_image: 1 (the paper's) or M > 1: M crops of the image, each with its own
        anchors, rotation and jitter, drawn one after the other; every per-crop field gains an
        axis of M after the batch's (``crop`` ``(M, C, C)``, ``anchor`` ``(M, 2)`` or
        ``(M, K, 2)``, ``group`` ``(M,)``, ...). The step runs the image encoder once for them.
    """

    crop_size: int = 64
    anchors: str = "exponential"
    gamma: float = 0.3
    d: float = 2.0
    thresholds: tuple[float, float] = (2.0, 4.5)
    jitter: augment.GroupJitter = dataclasses.field(default_factory=augment.GroupJitter.uniform)
    adaptive: bool = True
    fixed_group: int = 1
    continuous: bool = False
    max_rotation: float = 20.0
    order: int = 3
    max_scale: float = 1.0
    crop_grid: int = 0
    blur: float = 0.0
    noise: float = 0.0
    anchors_per_crop: int = 1
    crops_per_image: int = 1

    def random_map(self, element, rng: np.random.Generator) -> dict:
        image, iie = element["image"], element["iie"]
        w = weights(iie, self.anchors, gamma=self.gamma, d=self.d)
        if self.crops_per_image == 1:
            views = self._crop(image, iie, w, rng)
        else:
            each = [self._crop(image, iie, w, rng) for _ in range(self.crops_per_image)]
            views = {k: np.stack([v[k] for v in each]) for k in each[0]}
        return {"id": element["id"], "image": image, **views}

    def _crop(self, image, iie, w, rng: np.random.Generator) -> dict:
        """One crop of ``image``: its anchors, pixels and the augmentation drawn for it."""
        anchor = sample_anchor(rng, w)
        value = iie[tuple(anchor)]
        group = int(value >= self.thresholds[0]) + int(value >= self.thresholds[1])
        crop_anchor = augment.crop_position(
            rng, anchor, self.crop_size, image.shape, grid=self.crop_grid
        )
        # one angle for an image; three for a volume (augment.rotation_matrix)
        angle = rng.uniform(
            -self.max_rotation, self.max_rotation, *(() if image.ndim == 2 else (3,))
        )
        scale = 1.0
        if self.max_scale != 1.0:  # drawn only when asked: the paper's stream stays the same
            scale = float(np.exp(rng.uniform(-1.0, 1.0) * np.log(self.max_scale)))
        crop = augment.rotated_crop(
            image, anchor, crop_anchor, self.crop_size, angle, order=self.order, scale=scale
        )
        if self.continuous:
            brightness, contrast, contrast_first = self.jitter.draw_at(rng, float(value))
        else:
            group_ranges = group if self.adaptive else self.fixed_group
            brightness, contrast, contrast_first = self.jitter.draw(rng, group_ranges)
        crop = augment.color_jitter(
            crop, brightness, contrast, contrast_first=contrast_first, dims=crop.ndim
        )
        if self.blur > 0 or self.noise > 0:
            crop = augment.degrade(crop, rng, blur=self.blur, noise=self.noise)
        if self.anchors_per_crop > 1:  # drawn last: the first anchor's stream stays the same
            coords = augment.rotation_coordinates(anchor, crop_anchor, self.crop_size, angle, scale)
            more, more_crop = more_anchors(rng, w, coords, self.anchors_per_crop - 1)
            anchor = np.concatenate([anchor[None], more])
            crop_anchor = np.concatenate([crop_anchor[None], more_crop])
        return {
            "crop": crop.astype(np.float32),
            "anchor": anchor.astype(np.int32),
            "crop_anchor": crop_anchor.astype(np.int32),
            "group": np.int32(group),
            "brightness": np.float32(brightness),
            "contrast": np.float32(contrast),
            "angle": np.asarray(angle, np.float32),
            "scale": np.float32(scale),
        }


@dataclasses.dataclass(frozen=True)
class LandmarkAugment(grain.RandomMapTransform):
    """The detector's augmentation of one labelled image (``piaug.detector``).

    An affine map about the image's centre (rotation uniform in
    [-max_rotation, max_rotation] degrees, scale log-uniform in [1 / max_scale, max_scale], a
    shift uniform in [-max_shift, max_shift] times each side), applied to the image (bilinear,
    zero outside) and exactly to its landmarks, then brightness and contrast factors uniform in
    their ranges. The defaults change nothing (the authors' TPL trains without augmentation)
    and draw no random number. Element ``{"image": uint8 (H, W), "landmarks": (L, 2) x, y}``
    -> ``image`` float32 in [0, 1], ``landmarks`` float32.
    """

    max_rotation: float = 0.0
    max_scale: float = 1.0
    max_shift: float = 0.0
    brightness: tuple[float, float] = (1.0, 1.0)
    contrast: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self):
        require(
            [
                ("max_rotation", self.max_rotation, self.max_rotation >= 0, "must be >= 0"),
                ("max_scale", self.max_scale, self.max_scale >= 1, "must be >= 1 (1: none)"),
                ("max_shift", self.max_shift, 0 <= self.max_shift < 0.5, "must be in [0, 0.5)"),
            ]
        )
        augment.factor_range(self.brightness, "brightness")
        augment.factor_range(self.contrast, "contrast")

    def random_map(self, element, rng: np.random.Generator) -> dict:
        image = np.asarray(element["image"], np.float32) / 255.0
        points = np.asarray(element["landmarks"], np.float64)
        if self.max_rotation or self.max_scale != 1.0 or self.max_shift:
            image, points = self._warp(image, points, rng)
        if tuple(self.brightness) != (1.0, 1.0) or tuple(self.contrast) != (1.0, 1.0):
            b, c = rng.uniform(*self.brightness), rng.uniform(*self.contrast)
            image = np.clip(augment.color_jitter(image, b, c), 0.0, 1.0)
        return {
            "id": element["id"],
            "image": image.astype(np.float32),
            "landmarks": points.astype(np.float32),
        }

    def _warp(self, image, points, rng):
        from scipy import ndimage

        h, w = image.shape
        angle = np.deg2rad(rng.uniform(-self.max_rotation, self.max_rotation))
        scale = float(np.exp(rng.uniform(-1.0, 1.0) * np.log(self.max_scale)))
        shift = rng.uniform(-self.max_shift, self.max_shift, 2) * (w, h)  # (x, y)
        centre = np.array([(w - 1) / 2, (h - 1) / 2])
        cos, sin = np.cos(angle) * scale, np.sin(angle) * scale
        forward = np.array([[cos, -sin], [sin, cos]])  # (x, y) -> (x, y) about the centre
        points = (points - centre) @ forward.T + centre + shift
        # ndimage maps output (row, col) to input (row, col): the inverse, in that order.
        inverse = np.linalg.inv(forward)[::-1, ::-1]
        offset = centre[::-1] - inverse @ (centre[::-1] + shift[::-1])
        image = ndimage.affine_transform(image, inverse, offset=offset, order=1, cval=0.0)
        return image, points


def per_crop(batch: dict) -> dict:
    """A batch of ``crops_per_image`` M > 1 (``crop`` ``(B, M, C, C)``, volumes'
    ``(B, M, C, C, C)``) as one of B * M crops, each with its own copy of its image (and id);
    a batch of one crop per image as it is."""
    if np.ndim(batch["crop"]) == np.ndim(batch["image"]):
        return batch
    m = np.shape(batch["crop"])[1]
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if key in ("image", "id"):  # one per image: a copy beside each of its crops
            out[key] = np.repeat(value, m, axis=0)
        else:  # (B, M, ...) per crop
            out[key] = value.reshape(-1, *value.shape[2:])
    return out


def load_jitter(path: str | Path) -> augment.GroupJitter:
    """The per-group ranges of an estimate file (``augment.json``: ``{"groups": {...}}``)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(
            f"augmentation ranges file {path} does not exist: run the estimate stage first, "
            "or set config.augment.ranges_file='' and config.augment.estimated=False to use "
            "config.augment.brightness/contrast"
        ) from None
    except json.JSONDecodeError as e:
        raise UserError(f"augmentation ranges file {path} is not valid JSON: {e}") from None
    try:
        return augment.GroupJitter.from_mapping(payload["groups"], where=str(path))
    except (KeyError, TypeError):
        raise UserError(f"{path} has no 'groups' mapping of per-group ranges") from None
    except ValueError as e:
        raise UserError(str(e)) from None


def check_crop(crop_size: int, image_size) -> None:
    """UserError unless a ``crop_size`` crop fits the training size ``image_size``."""
    if not 1 <= int(crop_size) <= min(image_size):
        raise UserError(
            f"config.data.crop_size={crop_size}: must be between 1 and the training size "
            f"{tuple(image_size)}: use a smaller crop or a larger config.data.image_size"
        )


def check_sampling(transform: AnchorCrop, iie_max, ids, image_size) -> None:
    """Raises UserError, naming the image, where no anchor or crop could be drawn."""
    check_crop(transform.crop_size, image_size)
    for name, top in zip(ids, iie_max, strict=True):
        empty = (transform.anchors == "piecewise" and top < transform.d) or (
            transform.anchors == "exponential" and transform.gamma > 0 and top <= 0
        )
        if empty:
            raise UserError(
                f"image {name!r}: its weight map ({transform.anchors}) has no positive weight "
                f"(highest IIE {top:.3f} bits), so no anchor can be drawn: lower "
                "config.augment.d, or use exponential or uniform anchors"
            )
