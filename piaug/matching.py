"""One-shot landmark matching with the full-image encoder (docs/design.md 1, the paper's Eq. 4).

For each landmark of a template image, its feature vector at every scale (its cell's, or the
map interpolated at the landmark: ``template_vectors``); for a query image, at
each scale the cosine map between that vector and the query's features, upsampled to the input
size (nearest: each cell repeated ``stride`` times, or bilinear) and combined over scales: the
``product`` of the cosines clamped to [0, 1] (CC2D's), or their ``sum`` (unclamped: the log of
the product of the InfoNCE's ``exp(cosine / temperature)`` over scales, whatever the
temperature, so it suits encoders trained without the clamp, whose cosines at a true match in
another image are often negative at some scale and zero the product there); the prediction is
its argmax (optionally refined to sub-pixel precision by a parabola through the peak and its
neighbours in each axis).

The template itself is chosen in ``piaug.templates``. Several annotated templates
(``eval.templates``): ``predict_many`` matches each into every image and ``fuse`` combines the
predictions per landmark (``eval.fusion``; docs/templates.md).

How matching runs (upsampling, combination and clamp, sub-pixel refinement, the template's
vectors, the scales, the batch) travels as one ``MatchSettings``, built once from a config's
``eval`` section (``MatchSettings.from_eval``) or a run's ``config.json``; every caller (the
evaluate stage, the probe, the pseudo-labels, the template choice, the estimate, ``predict`` and
``piaug.api``) hands it to ``predict``, ``match_all`` or ``choose_template``, so one procedure
is one code path.

Points are (row, col) in the pixels of the encoder's input grid throughout. Volumes
(docs/volumes.md): the same functions on ``(B, d, h, w, E)`` maps, points (slice, row, col),
trilinear upsampling, a parabola per axis; the number of axes is ``len(size)``.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from piaug.losses import cell
from piaug.mixing import unit
from piaug.models import STRIDES

FUSION = ("median", "mean", "weighted", "best")  # of several templates' predictions
UPSAMPLING = ("nearest", "bilinear")
COMBINE = ("product", "sum")  # of the scales' similarity maps
SAMPLING = ("cell", "bilinear")  # of the template's vectors at its landmarks


@dataclasses.dataclass(frozen=True)
class MatchSettings:
    """How one-shot matching runs; the fields of ``config.eval`` that it reads.

    Attributes:
      upsample: 'nearest' | 'bilinear': each scale's cosine map to the grid (``eval.upsample``).
      combine: 'product' of the cosines clamped to [0, 1] (CC2D's) | 'sum' of the unclamped
        cosines (``eval.combine``): the clamp goes with the product.
      subpixel: parabolic refinement of each peak (``eval.subpixel``).
      sampling: 'cell' | 'bilinear': the template's vector at each landmark
        (``eval.template_sampling``, ``template_vectors``).
      strides: the scales matched, coarsest first (the encoder's).
      batch_size: images matched at once (``eval.batch_size``).
      radius: a landmark is sought within this many grid pixels (voxels) of where the
        template has it (``eval.search_radius``): the prior of images that lie roughly alike
        in their grid; 0 searches the whole image (the paper's).
      scales: the strides whose maps are combined (``eval.scales``), a subset of ``strides``;
        () combines them all (the paper's). The maps of every stride are still computed and
        passed: ``match_all`` picks (``pick``).
    """

    upsample: str = "nearest"
    combine: str = "product"
    subpixel: bool = False
    sampling: str = "cell"
    strides: tuple[int, ...] = STRIDES
    batch_size: int = 8
    radius: float = 0.0
    scales: tuple[int, ...] = ()

    def __post_init__(self):
        for field, value, allowed in (
            ("upsample", self.upsample, UPSAMPLING),
            ("combine", self.combine, COMBINE),
            ("template_sampling", self.sampling, SAMPLING),
        ):
            if value not in allowed:
                raise ValueError(f"eval.{field}={value!r}: use one of {allowed}")
        if int(self.batch_size) < 1:
            raise ValueError(f"eval.batch_size={self.batch_size}: use 1 or more")
        if not float(self.radius) >= 0:
            raise ValueError(f"eval.search_radius={self.radius}: use 0 (everywhere) or more")
        object.__setattr__(self, "radius", float(self.radius))
        object.__setattr__(self, "strides", tuple(int(s) for s in self.strides))
        try:
            scales = tuple(int(s) for s in self.scales)
        except (TypeError, ValueError):
            scales = None
        if scales is None or not set(scales) <= set(self.strides) or len(set(scales)) < len(scales):
            raise ValueError(
                f"eval.scales={self.scales!r}: give distinct strides of the encoder's "
                f"{self.strides} (e.g. (8, 4, 2)), or () for all of them"
            )
        object.__setattr__(self, "scales", scales)
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "subpixel", bool(self.subpixel))

    @classmethod
    def from_eval(cls, cfg: Mapping) -> MatchSettings:
        """The settings of a config's ``eval`` section (a ConfigDict, or the dict of a run's
        ``config.json``; fields a run predates take their defaults)."""
        get = cfg.get
        return cls(
            upsample=get("upsample", "nearest"),
            combine=get("combine", "product"),
            subpixel=bool(get("subpixel", False)),
            sampling=get("template_sampling", "cell"),
            batch_size=int(get("batch_size", 8)),
            radius=float(get("search_radius", 0.0)),
            scales=tuple(get("scales", ())),
        )

    def scoring(self) -> MatchSettings:
        """The template choice's settings: its score only ranks candidates, so nearest
        upsampling (the fast path: maps at the finest stride), no refinement, the cell's
        vectors, the whole image and every scale, whatever the evaluation's."""
        return dataclasses.replace(
            self, upsample="nearest", subpixel=False, sampling="cell", radius=0.0, scales=()
        )

    def pick(self, maps: Sequence) -> list:
        """The entries of ``maps`` (one per stride of ``strides``) that ``scales`` keeps."""
        if not self.scales:
            return list(maps)
        if len(maps) != len(self.strides):
            raise ValueError(f"{len(maps)} maps for the {len(self.strides)} strides {self.strides}")
        return [m for m, s in zip(maps, self.strides, strict=True) if s in self.scales]

    def keywords(self) -> dict:
        """``match``'s keyword arguments (strides, upsample, subpixel, combine, radius), the
        strides those that ``scales`` keeps (the maps to pass: ``pick``)."""
        return {
            "strides": tuple(self.pick(self.strides)),
            "upsample": self.upsample,
            "subpixel": self.subpixel,
            "combine": self.combine,
            "radius": self.radius,
        }


def template_cells(landmarks: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A template's landmarks ``(L, 2)`` (x, y in the grid of ``size``) as the integer
    ``(L, 2)`` (row, col) pixels that matching takes, rounded and kept inside the grid."""
    rows_cols = np.round(np.asarray(landmarks, np.float64)[:, ::-1]).astype(np.int64)
    return np.clip(rows_cols, 0, np.asarray(size) - 1)


def template_vectors(
    features: Sequence[jnp.ndarray],
    points: jnp.ndarray,
    *,
    strides: Sequence[int] = STRIDES,
    sampling: str = "cell",
) -> list[jnp.ndarray]:
    """The ``(L, E)`` feature vectors at ``points`` (``(L, 2)``, row and col) of one image,
    one array per scale; ``features`` are its ``(h, w, E)`` maps (coarsest first). Volumes:
    ``(L, 3)`` points of ``(d, h, w, E)`` maps, trilinear.

    ``sampling``: 'cell' reads the cell that holds each point (the authors'); 'bilinear'
    interpolates the map at the point, its cells' centres at ``(i + 0.5) * stride - 0.5``
    pixels as bilinear upsampling places them. A cell's vector describes its centre, up to
    ``stride / 2`` pixels from the point (16 at stride 32), and each scale's map then peaks
    that far from the point's match; the interpolated vector does not carry that offset.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    points = jnp.asarray(points)
    d = points.shape[-1]
    out = []
    for f, s in zip(features, strides, strict=True):
        if sampling == "cell":
            c = cell(points, s, f.shape)
            out.append(f[tuple(c[:, k] for k in range(d))])
            continue
        limit = jnp.asarray(f.shape[:d], jnp.float32) - 1
        u = jnp.clip((points.astype(jnp.float32) + 0.5) / s - 0.5, 0.0, limit)
        lo = jnp.floor(u).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, limit.astype(jnp.int32))
        a = u - lo  # (L, d): the weight of the higher cell along each axis
        total = 0.0
        for corner in itertools.product((0, 1), repeat=d):  # the 2^d cells around the point
            index = tuple(jnp.where(c, hi[:, k], lo[:, k]) for k, c in enumerate(corner))
            weight = jnp.prod(
                jnp.stack([a[:, k] if c else 1 - a[:, k] for k, c in enumerate(corner)]), 0
            )
            total = total + weight[:, None] * f[index]
        out.append(total)
    return out


def _upsample(maps: jnp.ndarray, stride: int, size: tuple[int, ...], method: str) -> jnp.ndarray:
    """``(..., h, w)`` maps to ``(..., H, W)`` (``(..., d, h, w)`` to ``(..., D, H, W)``)."""
    d = len(size)
    if method == "nearest":
        for axis in range(-d, 0):
            maps = jnp.repeat(maps, stride, axis=axis)
        return maps[(Ellipsis, *(slice(0, n) for n in size))]
    return jax.image.resize(maps, (*maps.shape[:-d], *size), method="linear")


def similarity(
    query_features: Sequence[jnp.ndarray],
    templates: Sequence[jnp.ndarray],
    *,
    size: tuple[int, int],
    strides: Sequence[int] = STRIDES,
    upsample: str = "nearest",
    combine: str = "product",
) -> jnp.ndarray:
    """The ``(B, L, H, W)`` product (or sum) over scales of each template vector's cosine map
    (volumes: ``(B, L, D, H, W)``).

    Args:
      query_features: per scale, ``(B, h, w, E)`` maps of B query images.
      templates: per scale, ``(L, E)`` template vectors (``template_vectors``).
      size: the input grid ``(H, W)``.
      upsample: 'nearest' (each cell covers its stride x stride pixels) or 'bilinear'.
      combine: 'product' of the cosines clamped to [0, 1] (CC2D) or 'sum' of the cosines.
    """
    if upsample not in UPSAMPLING:
        raise ValueError(f"upsample must be one of {UPSAMPLING}, got {upsample!r}")
    if combine not in COMBINE:
        raise ValueError(f"combine must be one of {COMBINE}, got {combine!r}")
    total = None
    for f, t, s in zip(query_features, templates, strides, strict=True):
        # the cosine as one contraction of unit vectors: broadcasting (B, L, h, w, E) instead
        # ran 500x slower with many templates into one image (cycle-consistency's way back)
        sim = jnp.einsum(
            "b...e,le->bl...", unit(f), unit(t), precision=jax.lax.Precision.HIGHEST
        )  # (B, L, h, w)
        if combine == "product":
            sim = jnp.clip(sim, 0.0, 1.0)
        sim = _upsample(sim, s, size, upsample)
        if total is None:
            total = sim
        else:
            total = total * sim if combine == "product" else total + sim
    return total


def refine(maps: jnp.ndarray, peaks: jnp.ndarray) -> jnp.ndarray:
    """Sub-pixel peaks: in each axis, the vertex of the parabola through the peak and its two
    neighbours (no shift at the border, next to a point outside the search radius, or where the
    three are not a maximum).

    ``maps`` ``(..., H, W)``, ``peaks`` ``(..., 2)`` int (volumes: ``(..., D, H, W)``,
    ``(..., 3)``); returns ``(..., 2)`` (``(..., 3)``) float."""
    d = peaks.shape[-1]
    shape = maps.shape[-d:]
    flat = maps.reshape(-1, *shape)
    p = peaks.reshape(-1, d)
    idx = jnp.arange(flat.shape[0])

    def at(q):
        return flat[(idx, *(q[:, k] for k in range(d)))]

    def offset(axis):
        lo = p.at[:, axis].add(-1)  # past the border these read some other pixel: masked below
        hi = p.at[:, axis].add(1)
        inside = (p[:, axis] > 0) & (p[:, axis] < shape[axis] - 1)
        a, b, c = at(lo), at(p), at(hi)
        # a neighbour outside the search radius is -inf (``_within``): no shift there either
        inside &= jnp.isfinite(a) & jnp.isfinite(b) & jnp.isfinite(c)
        a, b, c = (jnp.where(inside, v, 0.0) for v in (a, b, c))
        denom = a - 2 * b + c
        shift = jnp.where(
            inside & (denom < 0), 0.5 * (a - c) / jnp.where(denom < 0, denom, -1.0), 0
        )
        return jnp.clip(shift, -0.5, 0.5)

    out = p.astype(jnp.float32) + jnp.stack([offset(k) for k in range(d)], axis=-1)
    return out.reshape(peaks.shape)


def _within(maps: jnp.ndarray, centres: jnp.ndarray, radius: float, step: int = 1) -> jnp.ndarray:
    """``maps`` ``(B, L, *grid)`` with every point farther than ``radius`` pixels from its
    landmark's centre (``centres`` ``(L, d)``, pixels) set to -inf; ``step``: the pixels a
    grid point stands for (the fast path's cells)."""
    d = centres.shape[-1]
    grid = jnp.stack(
        jnp.meshgrid(*(jnp.arange(n) * step for n in maps.shape[-d:]), indexing="ij"), -1
    )  # (*grid, d) pixels
    offsets = grid[None] - centres.reshape(-1, *(1,) * d, d).astype(jnp.float32)
    near = jnp.sum(offsets**2, axis=-1) <= radius**2  # (L, *grid)
    return jnp.where(near[None], maps, -jnp.inf)


def match(
    query_features: Sequence[jnp.ndarray],
    templates: Sequence[jnp.ndarray],
    *,
    size: tuple[int, int],
    strides: Sequence[int] = STRIDES,
    upsample: str = "nearest",
    subpixel: bool = False,
    combine: str = "product",
    radius: float = 0.0,
    centres: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Predicted points ``(B, L, 2)`` (row, col) and their scores ``(B, L)`` (the maximum of
    the combined map, ``similarity``). Integer pixels unless ``subpixel``. Volumes (a
    3-entry ``size``): ``(B, L, 3)`` (slice, row, col). With ``radius`` > 0 each landmark is
    sought within ``radius`` pixels of its ``centres`` entry (``(L, 2)`` row, col: where the
    template has it).

    With nearest upsampling and no refinement the combined map is constant on the finest
    stride's cells, so it is formed at that stride (a quarter of the pixels at stride 2) and
    the peak mapped to its cell's first pixel: the same point and score as at full size.
    """
    if radius > 0 and centres is None:
        raise ValueError("match: a search radius needs the template's landmarks (centres)")
    finest = min(strides)
    if upsample == "nearest" and not subpixel and all(n % finest == 0 for n in size):
        cells = tuple(n // finest for n in size)
        coarse = [s // finest for s in strides]
        if all(c * finest == s for c, s in zip(coarse, strides, strict=True)):
            maps = similarity(
                query_features,
                templates,
                size=cells,
                strides=coarse,
                upsample="nearest",
                combine=combine,
            )
            if radius > 0:
                maps = _within(maps, centres, radius, finest)
            peaks, scores = _peaks(maps, len(size))
            return peaks * finest, scores
    maps = similarity(
        query_features, templates, size=size, strides=strides, upsample=upsample, combine=combine
    )
    if radius > 0:
        maps = _within(maps, centres, radius)
    peaks, scores = _peaks(maps, len(size))
    if subpixel:
        return refine(maps, peaks), scores
    return peaks, scores


# One compiled program per shape and setting, shared by every caller (template choice, the
# estimate, evaluation of each encoder) instead of one per call.
match_jit = jax.jit(
    match, static_argnames=("size", "strides", "upsample", "subpixel", "combine", "radius")
)


def _peaks(maps: jnp.ndarray, d: int = 2) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The first maximum (row-major) of each ``(..., H, W)`` map (``d`` axes) and its
    value."""
    lead, shape = maps.shape[:-d], maps.shape[-d:]
    flat = maps.reshape(*lead, -1)
    arg = jnp.argmax(flat, axis=-1)
    return jnp.stack(jnp.unravel_index(arg, shape), axis=-1), jnp.max(flat, axis=-1)


def encode(apply_fn, images: np.ndarray, *, batch_size: int = 8) -> list[np.ndarray]:
    """The five maps of ``apply_fn`` (a jitted encoder) for ``(N, H, W)`` uint8 images, in
    batches, as host arrays ``(N, h, w, E)`` per scale (the last batch is padded)."""
    outs = []
    for start in range(0, len(images), batch_size):
        chunk = np.asarray(images[start : start + batch_size], np.float32) / 255.0
        pad = batch_size - len(chunk)
        if pad:
            chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), np.float32)])
        maps = jax.device_get(apply_fn(chunk))
        outs.append([m[: batch_size - pad] for m in maps])
    return [np.concatenate(scale) for scale in zip(*outs, strict=True)]


def match_all(
    features: Sequence[np.ndarray],
    templates: Sequence[jnp.ndarray],
    *,
    size: tuple[int, int],
    settings: MatchSettings = MatchSettings(),
    with_scores: bool = False,
    centres: np.ndarray | None = None,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``match`` over all images of ``features`` in batches of ``settings.batch_size``:
    ``(N, L, 2)`` (row, col), and with ``with_scores`` each peak's value of the combined
    similarity map ``(N, L)``. ``centres``: the template's landmarks ``(L, 2)`` (row, col),
    which ``settings.radius`` needs."""
    kw = {"size": tuple(size)} | settings.keywords()
    if settings.radius > 0 and centres is not None:  # (match refuses a radius without)
        kw["centres"] = jnp.asarray(centres, jnp.float32)
    features, templates = settings.pick(features), settings.pick(templates)
    n, batch_size = features[0].shape[0], settings.batch_size
    found = [
        match_jit([f[i : i + batch_size] for f in features], templates, **kw)
        for i in range(0, n, batch_size)
    ]
    points = np.concatenate([np.asarray(p) for p, _ in found])
    if with_scores:
        return points, np.concatenate([np.asarray(s) for _, s in found])
    return points


def predict(
    apply_fn,
    template_image: np.ndarray,
    template_points: np.ndarray,
    images: np.ndarray,
    *,
    size: tuple[int, int],
    settings: MatchSettings = MatchSettings(),
    with_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One-shot landmarks of ``images`` ``(N, H, W)`` uint8 with one encoder (``apply_fn``,
    images -> maps) from one annotated template: ``template_points`` ``(L, 2)`` (row, col) in
    ``template_image``'s grid (``template_cells``). Returns ``(N, L, 2)`` (x, y) in the grid of
    ``size``, and with ``with_scores`` the peak similarity of each ``(N, L)``."""
    template_features = [f[0] for f in encode(apply_fn, template_image[None])]
    vectors = template_vectors(
        template_features, template_points, strides=settings.strides, sampling=settings.sampling
    )
    features = encode(apply_fn, images, batch_size=settings.batch_size)
    found, scores = match_all(
        features, vectors, size=size, settings=settings, with_scores=True, centres=template_points
    )
    return (found[..., ::-1], scores) if with_scores else found[..., ::-1]


def fuse(
    points: np.ndarray, scores: np.ndarray, rule: str = "weighted"
) -> tuple[np.ndarray, np.ndarray]:
    """Several templates' predictions of the same landmarks, fused into one per landmark.

    Args:
      points: ``(K, N, L, d)``: K templates' points in N images (any coordinate order).
      scores: ``(K, N, L)``: each prediction's peak of the combined similarity map.
      rule: ``median`` (per coordinate), ``mean``, ``weighted`` (the mean weighted by the
        scores clipped at 0; the plain mean where every weight is 0) or ``best`` (the point of
        the template with the highest score; the first on a tie).

    Returns:
      ``(points (N, L, d), scores (N, L))``: the fused points (float64) and their score (the
      mean of the K, the weighted mean for ``weighted``, the highest for ``best``). One
      template (K = 1) gives its own points and scores unchanged.
    """
    if rule not in FUSION:
        raise ValueError(f"eval.fusion={rule!r}: use one of {FUSION}")
    points, scores = np.asarray(points), np.asarray(scores)
    if points.ndim != 4 or scores.shape != points.shape[:3]:
        raise ValueError(
            f"fuse: points (K, N, L, d) and scores (K, N, L), got {points.shape} and {scores.shape}"
        )
    if len(points) == 1:
        return points[0], scores[0]
    points = points.astype(np.float64)
    scores = scores.astype(np.float64)
    if rule == "median":
        return np.median(points, axis=0), scores.mean(0)
    if rule == "mean":
        return points.mean(0), scores.mean(0)
    if rule == "best":
        best = np.argmax(scores, axis=0)[None, ..., None]  # (1, N, L, 1)
        return np.take_along_axis(points, best, 0)[0], scores.max(0)
    weights = np.clip(scores, 0.0, None)
    total = weights.sum(0)
    weights = np.where(total > 0, weights / np.where(total > 0, total, 1.0), 1.0 / len(points))
    return (weights[..., None] * points).sum(0), (weights * scores).sum(0)


def predict_many(
    apply_fn,
    template_images: np.ndarray,
    template_points: np.ndarray,
    images: np.ndarray,
    *,
    size: tuple[int, ...],
    settings: MatchSettings = MatchSettings(),
    fusion: str = "weighted",
    with_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``predict`` from K annotated templates: ``template_images`` ``(K, *size)`` uint8 and
    their ``template_points`` ``(K, L, d)`` (grid pixels, row first), each matched into every
    image of ``images``, the K predictions fused per landmark (``fuse``). Returns ``(N, L, d)``
    with x first, as ``predict``, and with ``with_scores`` the fused scores. One template is
    ``predict`` exactly."""
    template_images = np.asarray(template_images)
    template_points = np.asarray(template_points)
    if len(template_images) != len(template_points):
        raise ValueError(
            f"{len(template_images)} template images for {len(template_points)} sets of points"
        )
    if len(template_images) == 1:
        return predict(
            apply_fn,
            template_images[0],
            template_points[0],
            images,
            size=size,
            settings=settings,
            with_scores=with_scores,
        )
    bs = settings.batch_size
    template_features = encode(apply_fn, template_images, batch_size=bs)
    features = encode(apply_fn, images, batch_size=bs)
    found, scores = [], []
    for k, points in enumerate(template_points):
        vectors = template_vectors(
            [f[k] for f in template_features],
            points,
            strides=settings.strides,
            sampling=settings.sampling,
        )
        p, s = match_all(
            features, vectors, size=size, settings=settings, with_scores=True, centres=points
        )
        found.append(p)
        scores.append(s)
    fused, fused_scores = fuse(np.stack(found), np.stack(scores), fusion)
    fused = fused[..., ::-1]
    return (fused, fused_scores) if with_scores else fused
