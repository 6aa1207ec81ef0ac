"""Augmentation-intensity estimation: the paper's Eq. 7-10 (docs/design.md 1).

For each information group (low, medium, high, by the IIE thresholds):

1. ``key_points``: k pixels of the group in the template image, drawn with a seed, far enough
   from the border for a whole patch.
2. Their correspondences in every training image, by one-shot matching (``piaug.matching``)
   with a pretrained (baseline) encoder.
3. The target: ``alpha_hat`` times the mean mutual information between each key point's patch
   in the template and the patch at its correspondence in every other image (Eq. 3, 10).
4. Brightness and contrast grown together from the identity, in steps of 0.03 and 0.04 (the
   authors'), in both directions (``1 +- 0.03 s``, ``1 +- 0.04 s``), applied as in training
   (brightness, then contrast about the patch's mean gray, ``piaug.augment``) and quantised
   back to uint8: for every patch, the last step at which the MI between the patch and its
   augmented self is still at or above the target. The group's ranges are the factors at the
   mean of those steps over its points and images.

The search is vectorised. Brightness and contrast map each gray value to one gray value,
the same for every pixel of a patch, and the map is monotone. The MI between a patch X and
g(X) is then H(g(X)): sklearn's ``mutual_info_score`` on the pixel pairs gives exactly that.
H(g(X)) needs only the patch's 256-bin histogram. The bins that g merges are consecutive, so
their masses are differences of the cumulative histogram. Every patch, step and direction
is one jitted call over ``(patches, 2, steps + 1, 256)`` values, in chunks. The
authors' estimator (``estimator='count_vector'``, ``piaug.info.count_vector_mutual_information``)
has no such identity: there the augmented patches are made and measured, step by step.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from piaug import info, matching
from piaug.errors import require

STEP_SIZES = (0.03, 0.04)  # brightness, contrast: the authors' steps
ESTIMATORS = ("joint", "count_vector")
_LEVELS = np.arange(info.NUM_BINS, dtype=np.float32) / 255.0


@dataclasses.dataclass(frozen=True)
class EstimateSettings:
    """The estimate's knobs (``config.estimate``, with ``patch_size`` resolved), as
    ``estimate`` takes them (``dataclasses.asdict``). ValueError, naming the field."""

    num_points: int = 16  # key points per group (k)
    patch_size: int = 64  # side of the square patches whose MI is measured
    alpha: float = 1.0  # alpha_hat: the target is alpha_hat x the mean MI
    max_steps: int = 100  # most steps grown each way
    estimator: str = "joint"  # joint (Eq. 3) | count_vector (the authors' release)

    def __post_init__(self):
        require(
            [
                ("num_points", self.num_points, self.num_points >= 1, "need at least 1"),
                ("patch_size", self.patch_size, self.patch_size >= 2, "need at least 2"),
                ("alpha", self.alpha, self.alpha > 0, "need alpha_hat > 0"),
                ("max_steps", self.max_steps, self.max_steps >= 1, "need at least 1"),
                ("estimator", self.estimator, self.estimator in ESTIMATORS, f"use {ESTIMATORS}"),
            ]
        )

    def check_size(self, size) -> None:
        """ValueError when the patches do not fit images of ``size`` (H, W)."""
        require(
            [
                (
                    "patch_size",
                    self.patch_size,
                    self.patch_size <= min(size),
                    f"exceeds the image size {tuple(size)}",
                )
            ]
        )


def key_points(
    iie: np.ndarray,
    thresholds: Sequence[float],
    count: int,
    *,
    margin: int,
    seed: int = 0,
) -> list[np.ndarray]:
    """Per group (low, medium, high), up to ``count`` pixels (row, col) of that group, at
    least ``margin`` pixels from every border, drawn without replacement (seeded). A volume's:
    voxels (slice, row, col)."""
    groups = np.asarray(info.information_groups(np.asarray(iie), tuple(thresholds)))
    inside = np.zeros(groups.shape, bool)
    inside[tuple(slice(margin, n - margin) for n in groups.shape)] = True
    out = []
    for g in range(len(info.GROUP_NAMES)):
        candidates = np.argwhere(inside & (groups == g))
        rng = np.random.default_rng([seed, g])
        take = rng.choice(len(candidates), size=min(count, len(candidates)), replace=False)
        out.append(candidates[np.sort(take)].astype(np.int64))
    return out


def patch_corners(points, size: int, shape) -> np.ndarray:
    """Top-left (row, col) of the ``size`` x ``size`` patch centred on each point, shifted
    inside an image of ``shape`` (height, width); of a cubic patch for (slice, row, col)
    points of a volume of shape (D, H, W)."""
    points = np.asarray(points, np.int64)
    d = points.shape[-1]
    return np.clip(points - size // 2, 0, np.asarray(shape[:d]) - size)


def patches(images: np.ndarray, points: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` patches of ``images`` ``(N, H, W)`` centred on ``points``
    ``(N, P, 2)`` (row, col), shifted inside the image where they would cross a border:
    ``(N, P, size, size)``, the images' dtype. Volumes ``(N, D, H, W)``, points
    ``(N, P, 3)``: ``(N, P, size, size, size)``."""
    images = np.asarray(images)
    d = images.ndim - 1
    corner = patch_corners(points, size, images.shape[1:])
    grid = np.ix_(*[np.arange(size)] * d)  # d open ranges, each along its own axis
    index = tuple(corner[..., a].reshape(corner.shape[:-1] + (1,) * d) + grid[a] for a in range(d))
    n = np.arange(len(images)).reshape((-1,) + (1,) * (d + 1))
    return images[(n, *index)]


def factors(num_steps: int) -> np.ndarray:
    """``(2, 2, num_steps + 1)``: [brightness, contrast] x [down, up] factors at steps
    0..num_steps (down factors stop at 0)."""
    s = np.arange(num_steps + 1, dtype=np.float64)
    step = np.asarray(STEP_SIZES)[:, None, None]
    return np.maximum(1.0 + step * np.array([-1.0, 1.0])[:, None] * s, 0.0)


def value_map(hist: jnp.ndarray, brightness, contrast) -> jnp.ndarray:
    """The uint8 gray value (as int32) that each of the 256 values becomes under brightness,
    then contrast about the mean gray of the brightened patch (``piaug.augment``), rounded.

    ``hist`` ``(..., 256)`` counts of the patches; ``brightness`` and ``contrast`` broadcast
    against its leading axes. Returns ``(..., 256)``."""
    b = jnp.asarray(brightness, jnp.float32)[..., None]
    c = jnp.asarray(contrast, jnp.float32)[..., None]
    y = jnp.clip(b * _LEVELS, 0.0, 1.0)
    hist = hist.astype(jnp.float32)
    mean = jnp.sum(hist * y, axis=-1, keepdims=True) / jnp.sum(hist, axis=-1, keepdims=True)
    z = jnp.clip(c * y + (1.0 - c) * mean, 0.0, 1.0)
    return jnp.round(z * 255.0).astype(jnp.int32)


def _mapped_entropy(hist: jnp.ndarray, mapped: jnp.ndarray) -> jnp.ndarray:
    """Entropy (nats) of the histogram ``hist`` ``(..., 256)`` after the monotone map
    ``mapped`` ``(..., 256)``: consecutive values mapped to one value merge."""
    hist = hist.astype(jnp.float32)
    n = jnp.sum(hist, axis=-1, keepdims=True)
    cum = jnp.cumsum(hist, axis=-1)
    last = jnp.concatenate(
        [mapped[..., :-1] != mapped[..., 1:], jnp.ones_like(mapped[..., :1], bool)], axis=-1
    )
    at_ends = jnp.where(last, cum, 0.0)
    before = jnp.concatenate(
        [
            jnp.zeros_like(at_ends[..., :1]),
            jax.lax.cummax(at_ends, axis=at_ends.ndim - 1)[..., :-1],
        ],
        axis=-1,
    )
    p = jnp.where(last, (cum - before) / n, 0.0)
    return -jnp.sum(jnp.where(p > 0, p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=-1)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _self_mi_joint(hist, brightness, contrast, *, chunk):
    """``(M, 256)`` histograms, ``(D, S)`` factors -> ``(M, D, S)`` MI(X, g(X)) = H(g(X))."""

    def one(h):  # (chunk, 256)
        h = h[:, None, None, :]
        return _mapped_entropy(h, value_map(h, brightness, contrast))

    m = hist.shape[0]
    out = jax.lax.map(one, hist.reshape(m // chunk, chunk, -1))
    return out.reshape(m, *brightness.shape)


def _histograms(flat: np.ndarray) -> np.ndarray:
    """256-bin counts of each row of ``(M, n)`` uint8: ``(M, 256)`` int32."""
    offsets = np.arange(len(flat), dtype=np.int64)[:, None] * info.NUM_BINS
    counts = np.bincount((flat + offsets).ravel(), minlength=len(flat) * info.NUM_BINS)
    return counts.reshape(len(flat), info.NUM_BINS).astype(np.int32)


def self_information(
    patches_: np.ndarray, num_steps: int, *, estimator: str = "joint", chunk: int = 64
) -> np.ndarray:
    """MI between each patch and its augmented self at every step: ``(M, 2, num_steps + 1)``
    for ``(M, h, w)`` (or ``(M, d, h, w)``) uint8 patches, [down, up] (``factors``), nats."""
    m = len(patches_)
    flat = np.asarray(patches_, np.uint8).reshape(m, -1)
    f = factors(num_steps)
    if estimator == "joint":
        pad = np.zeros((-m % chunk, info.NUM_BINS), np.int32)
        pad[:, 0] = 1  # padding: constant patches
        hist = np.concatenate([_histograms(flat), pad])
        out = _self_mi_joint(jnp.asarray(hist), jnp.asarray(f[0]), jnp.asarray(f[1]), chunk=chunk)
        return np.asarray(out)[:m]
    if estimator != "count_vector":
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")
    hist = _histograms(flat)
    out = np.zeros((m, 2, num_steps + 1), np.float32)
    rows = np.arange(m)[:, None]
    for d in range(2):
        for s in range(num_steps + 1):
            table = np.asarray(value_map(jnp.asarray(hist), f[0, d, s], f[1, d, s]))
            augmented = table[rows, flat.astype(np.int64)].astype(np.uint8)
            out[:, d, s] = np.asarray(
                info.count_vector_mutual_information(flat, augmented, patch_ndim=1)
            )
    return out


def passing_steps(curves: np.ndarray, target: float, limit: Sequence[int]) -> np.ndarray:
    """Per patch and direction, how many steps from the identity keep MI >= ``target``
    (the steps after the first failure do not count): ``(M, 2)`` ints, at most ``limit``
    (down, up)."""
    ok = curves[..., 1:] >= target
    steps = np.cumprod(ok, axis=-1).sum(-1)
    return np.minimum(steps, np.asarray(limit))


def step_limits(num_steps: int) -> tuple[int, int]:
    """(down, up): down stops where a factor would reach 0 (contrast at 1 - 0.04 s)."""
    down = int(np.floor(1.0 / max(STEP_SIZES) + 1e-9))
    return min(num_steps, down), num_steps


def estimate(
    features: Sequence[np.ndarray],
    images: np.ndarray,
    iie_template: np.ndarray,
    template: int,
    *,
    thresholds: Sequence[float] = (2.0, 4.5),
    num_points: int = 16,
    patch_size: int = 64,
    alpha: float = 1.0,
    max_steps: int = 100,
    estimator: str = "joint",
    match: matching.MatchSettings | None = None,
    seed: int = 0,
) -> dict:
    """The augmentation ranges of every information group (Eq. 10).

    Args:
      features: per scale, ``(N, h, w, E)`` full-image encoder maps of the N training images
        (``matching.encode``).
      images: ``(N, H, W)`` uint8 training images (the encoder's input grid); volumes
        ``(N, D, H, W)``, their patches cubic and their points (slice, row, col).
      iie_template: ``(H, W)`` IIE map (bits) of the template image.
      template: index of the template among the N images.
      thresholds: the IIE bounds of the groups (bits).
      num_points: key points per group (k).
      patch_size: side of the square patches whose MI is measured (the crop size).
      alpha: alpha_hat, the target's multiple of the mean MI.
      max_steps: the most steps grown upwards (brightness 1 + 0.03 s, contrast 1 + 0.04 s).
      estimator: 'joint' (Eq. 3) or 'count_vector' (the authors' release).
      match: how the key points are matched (upsampling, combination, batch; the key points'
        own cells and integer peaks whatever its sampling and refinement: the patches are
        cut at pixels); the defaults' when None.
      seed: of the key points.

    Returns:
      A JSON-ready dict: ``groups`` maps each group that has key points to its
      ``brightness``/``contrast`` ranges, ``target_mi``, the MI statistics, ``mi`` (every
      template-to-image MI, for figures), its key points and their mean IIE; ``timing_s``.
    """
    settings = EstimateSettings(num_points, patch_size, alpha, max_steps, estimator)
    images = np.asarray(images)
    n, size = len(images), images.shape[1:]
    if n < 2:
        raise ValueError("the estimate needs the template and at least one other image")
    settings.check_size(size)
    mi_fn = (
        info.mutual_information if estimator == "joint" else info.count_vector_mutual_information
    )
    start = time.perf_counter()
    per_group = key_points(iie_template, thresholds, num_points, margin=patch_size // 2, seed=seed)
    points = np.concatenate(per_group)
    if not len(points):
        raise ValueError("the template has no pixel far enough from the border for a patch")
    found = _correspondences(features, template, points, size, match)
    t_match = time.perf_counter()

    all_patches = patches(images, found, patch_size)  # (N, P, s, s)
    others = np.delete(np.arange(n), template)
    ref = np.broadcast_to(all_patches[template][None], all_patches[others].shape)
    pair_mi = np.asarray(mi_fn(ref, all_patches[others], patch_ndim=len(size)))  # (N - 1, P)
    t_target = time.perf_counter()
    curves = self_information(
        all_patches.reshape(-1, *all_patches.shape[2:]), max_steps, estimator=estimator
    ).reshape(n, len(points), 2, max_steps + 1)
    t_search = time.perf_counter()

    groups = {}
    offset = 0
    for name, pts in zip(info.GROUP_NAMES, per_group, strict=True):
        cols = slice(offset, offset + len(pts))
        offset += len(pts)
        if len(pts):
            groups[name] = _group(
                pair_mi[:, cols], curves[:, cols], pts, iie_template, alpha, max_steps
            )
    return {
        "groups": groups,
        "estimator": estimator,
        "alpha": float(alpha),
        "patch_size": int(patch_size),
        "step_sizes": list(STEP_SIZES),
        "max_steps": int(max_steps),
        "thresholds": [float(t) for t in thresholds],
        "timing_s": {
            "match": t_match - start,
            "target_mi": t_target - t_match,
            "search": t_search - t_target,
            "total": t_search - start,
        },
    }


def _correspondences(
    features: Sequence[np.ndarray],
    template: int,
    points: np.ndarray,
    size: tuple[int, int],
    match: matching.MatchSettings,
) -> np.ndarray:
    """``(N, P, 2)`` (row, col): each key point of the template found in every image (the
    template's own points are the key points themselves)."""
    match = dataclasses.replace(match or matching.MatchSettings(), sampling="cell", subpixel=False)
    vectors = matching.template_vectors(
        [f[template] for f in features], points, strides=match.strides
    )
    found = matching.match_all(features, vectors, size=size, settings=match, centres=points)
    found[template] = points
    return found


def _group(
    mi: np.ndarray,
    curves: np.ndarray,
    points: np.ndarray,
    iie_template: np.ndarray,
    alpha: float,
    max_steps: int,
) -> dict:
    """One group's entry of ``estimate``: ``mi`` ``(N - 1, k)`` template-to-image MIs of its
    ``k`` key ``points``, ``curves`` ``(N, k, 2, max_steps + 1)`` each patch's MI with itself
    augmented (``self_information``)."""
    limit = step_limits(max_steps)
    target = float(alpha * mi.mean())
    steps = passing_steps(curves.reshape(-1, 2, max_steps + 1), target, limit)
    mean_steps = steps.mean(0)  # (down, up)
    ranges = {}
    for kind, step in zip(("brightness", "contrast"), STEP_SIZES, strict=True):
        lo = max(0.0, 1.0 - step * mean_steps[0])
        hi = 1.0 + step * mean_steps[1]
        ranges[kind] = [round(lo, 6), round(hi, 6)]
    identity = curves[:, :, 0, 0]
    return {
        **ranges,
        "target_mi": target,
        "mi_mean": float(mi.mean()),
        "mi_std": float(mi.std()),
        "mi_max": float(mi.max()),
        "self_mi_mean": float(identity.mean()),
        "mean_steps": {"down": float(mean_steps[0]), "up": float(mean_steps[1])},
        "at_limit": {
            "down": float(np.mean(steps[:, 0] == limit[0])),
            "up": float(np.mean(steps[:, 1] == limit[1])),
        },
        "num_points": int(len(points)),
        "num_images": int(len(curves)),
        "points": points.tolist(),
        "iie_mean": float(np.asarray(iie_template)[tuple(points.T)].mean()),
        "mi": mi.round(5).ravel().tolist(),
    }
