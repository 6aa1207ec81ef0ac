"""One-shot landmark matching with the full-image encoder (DESIGN.md 1, the paper's Eq. 4).

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

``choose_template`` picks the template without labels, in the spirit of the paper's policy
("which images to label"): salient points of each candidate (local maxima of its IIE map, away
from the border and from each other) are matched into every other image, and the candidate
whose points match most confidently (mean of the maximum similarity) wins.

Points are (row, col) in the pixels of the encoder's input grid throughout.
"""

from __future__ import annotations

import concurrent.futures
import os
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm import tqdm

from piaug.losses import cell
from piaug.mixing import unit
from piaug.models import STRIDES

UPSAMPLING = ("nearest", "bilinear")
COMBINE = ("product", "sum")  # of the scales' similarity maps
SAMPLING = ("cell", "bilinear")  # of the template's vectors at its landmarks


def template_vectors(
    features: Sequence[jnp.ndarray],
    points: jnp.ndarray,
    *,
    strides: Sequence[int] = STRIDES,
    sampling: str = "cell",
) -> list[jnp.ndarray]:
    """The ``(L, E)`` feature vectors at ``points`` (``(L, 2)``, row and col) of one image,
    one array per scale; ``features`` are its ``(h, w, E)`` maps (coarsest first).

    ``sampling``: 'cell' reads the cell that holds each point (the authors'); 'bilinear'
    interpolates the map at the point, its cells' centres at ``(i + 0.5) * stride - 0.5``
    pixels as bilinear upsampling places them. A cell's vector describes its centre, up to
    ``stride / 2`` pixels from the point (16 at stride 32), and each scale's map then peaks
    that far from the point's match; the interpolated vector does not carry that offset.
    """
    if sampling not in SAMPLING:
        raise ValueError(f"sampling must be one of {SAMPLING}, got {sampling!r}")
    points = jnp.asarray(points)
    out = []
    for f, s in zip(features, strides, strict=True):
        if sampling == "cell":
            c = cell(points, s, f.shape)
            out.append(f[c[:, 0], c[:, 1]])
            continue
        limit = jnp.asarray(f.shape[:2], jnp.float32) - 1
        u = jnp.clip((points.astype(jnp.float32) + 0.5) / s - 0.5, 0.0, limit)
        lo = jnp.floor(u).astype(jnp.int32)
        hi = jnp.minimum(lo + 1, limit.astype(jnp.int32))
        a = (u - lo)[..., None]  # (L, 2, 1): the weight of the higher row, column
        top = (1 - a[:, 1]) * f[lo[:, 0], lo[:, 1]] + a[:, 1] * f[lo[:, 0], hi[:, 1]]
        bottom = (1 - a[:, 1]) * f[hi[:, 0], lo[:, 1]] + a[:, 1] * f[hi[:, 0], hi[:, 1]]
        out.append((1 - a[:, 0]) * top + a[:, 0] * bottom)
    return out


def _upsample(maps: jnp.ndarray, stride: int, size: tuple[int, int], method: str) -> jnp.ndarray:
    """``(..., h, w)`` maps to ``(..., H, W)``."""
    if method == "nearest":
        up = jnp.repeat(jnp.repeat(maps, stride, axis=-2), stride, axis=-1)
        return up[..., : size[0], : size[1]]
    return jax.image.resize(maps, (*maps.shape[:-2], *size), method="bilinear")


def similarity(
    query_features: Sequence[jnp.ndarray],
    templates: Sequence[jnp.ndarray],
    *,
    size: tuple[int, int],
    strides: Sequence[int] = STRIDES,
    upsample: str = "nearest",
    combine: str = "product",
) -> jnp.ndarray:
    """The ``(B, L, H, W)`` product (or sum) over scales of each template vector's cosine map.

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
            "bhwe,le->blhw", unit(f), unit(t), precision=jax.lax.Precision.HIGHEST
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
    neighbours (no shift at the border or where the three are not a maximum).

    ``maps`` ``(..., H, W)``, ``peaks`` ``(..., 2)`` int; returns ``(..., 2)`` float."""
    h, w = maps.shape[-2:]
    flat = maps.reshape(-1, h, w)
    p = peaks.reshape(-1, 2)
    idx = jnp.arange(flat.shape[0])

    def offset(axis):
        lo = p.at[:, axis].add(-1)  # past the border these read some other pixel: masked below
        hi = p.at[:, axis].add(1)
        inside = (p[:, axis] > 0) & (p[:, axis] < (h, w)[axis] - 1)
        a = flat[idx, lo[:, 0], lo[:, 1]]
        b = flat[idx, p[:, 0], p[:, 1]]
        c = flat[idx, hi[:, 0], hi[:, 1]]
        denom = a - 2 * b + c
        shift = jnp.where(
            inside & (denom < 0), 0.5 * (a - c) / jnp.where(denom < 0, denom, -1.0), 0
        )
        return jnp.clip(shift, -0.5, 0.5)

    out = p.astype(jnp.float32) + jnp.stack([offset(0), offset(1)], axis=-1)
    return out.reshape(peaks.shape)


def match(
    query_features: Sequence[jnp.ndarray],
    templates: Sequence[jnp.ndarray],
    *,
    size: tuple[int, int],
    strides: Sequence[int] = STRIDES,
    upsample: str = "nearest",
    subpixel: bool = False,
    combine: str = "product",
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Predicted points ``(B, L, 2)`` (row, col) and their scores ``(B, L)`` (the maximum of
    the combined map, ``similarity``). Integer pixels unless ``subpixel``.

    With nearest upsampling and no refinement the combined map is constant on the finest
    stride's cells, so it is formed at that stride (a quarter of the pixels at stride 2) and
    the peak mapped to its cell's first pixel: the same point and score as at full size.
    """
    finest = min(strides)
    if upsample == "nearest" and not subpixel and size[0] % finest == 0 == size[1] % finest:
        cells = (size[0] // finest, size[1] // finest)
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
            peaks, scores = _peaks(maps)
            return peaks * finest, scores
    maps = similarity(
        query_features, templates, size=size, strides=strides, upsample=upsample, combine=combine
    )
    peaks, scores = _peaks(maps)
    if subpixel:
        return refine(maps, peaks), scores
    return peaks, scores


# One compiled program per shape and setting, shared by every caller (template choice, the
# estimate, evaluation of each encoder) instead of one per call.
_match_jit = jax.jit(match, static_argnames=("size", "strides", "upsample", "subpixel", "combine"))


def _peaks(maps: jnp.ndarray) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The first maximum (row-major) of each ``(..., H, W)`` map and its value."""
    *lead, h, w = maps.shape
    flat = maps.reshape(*lead, h * w)
    arg = jnp.argmax(flat, axis=-1)
    return jnp.stack([arg // w, arg % w], axis=-1), jnp.max(flat, axis=-1)


def salient_points(iie: np.ndarray, *, count: int, min_distance: int, border: int) -> np.ndarray:
    """Up to ``count`` local maxima (row, col) of an IIE map (3 x 3 neighbourhoods, plateaus
    excluded), strongest first, at least ``border`` pixels inside the image and
    ``min_distance`` pixels (Chebyshev) apart."""
    from scipy import ndimage

    iie = np.asarray(iie, np.float64)
    peaks = iie == ndimage.maximum_filter(iie, size=3, mode="nearest")
    peaks &= iie > ndimage.minimum_filter(iie, size=3, mode="nearest")  # not on a plateau
    peaks[:border] = peaks[-border:] = False
    peaks[:, :border] = peaks[:, -border:] = False
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-iie[rows, cols], kind="stable")
    chosen: list[tuple[int, int]] = []
    for r, c in zip(rows[order], cols[order], strict=True):
        if all(max(abs(r - a), abs(c - b)) >= min_distance for a, b in chosen):
            chosen.append((int(r), int(c)))
            if len(chosen) == count:
                break
    return np.asarray(chosen, np.int64).reshape(-1, 2)


def choose_template(
    features: Sequence[jnp.ndarray],
    points: Sequence[np.ndarray],
    *,
    size: tuple[int, int],
    strides: Sequence[int] = STRIDES,
    upsample: str = "nearest",
    batch_size: int = 8,
    combine: str = "product",
    candidates: Sequence[bool] | None = None,
) -> tuple[int, np.ndarray]:
    """The candidate whose salient points match most confidently into the other images.

    Args:
      features: per scale, ``(N, h, w, E)`` maps of the N training images.
      points: per image, its ``(P_i, 2)`` salient points (``salient_points``).
      batch_size: images matched at once (memory: ``batch_size * P * H * W`` floats).
      candidates: which images may be chosen (e.g. the labelled ones; all by default); every
        image is matched into either way.

    Returns:
      ``(index, scores)``: the chosen image and every candidate's score, the mean over its
      points and the other images of the maximum of the combined similarity map.
    """
    features = [jnp.asarray(f) for f in features]  # once: every candidate reads them all
    n = features[0].shape[0]
    most = max(len(p) for p in points)
    if most == 0:
        raise ValueError("no candidate has salient points: lower the border or the distance")
    size, strides = tuple(size), tuple(strides)

    def score(f, t):
        return _match_jit(f, t, size=size, strides=strides, upsample=upsample, combine=combine)[1]

    def candidate(i: int) -> float:
        p = np.asarray(points[i]).reshape(-1, 2)
        if len(p) == 0 or (candidates is not None and not candidates[i]):
            return -np.inf
        padded = np.concatenate([p, np.repeat(p[:1], most - len(p), axis=0)])  # one shape
        templates = template_vectors([f[i] for f in features], padded, strides=strides)
        best = np.concatenate(
            [
                np.asarray(score([f[j : j + batch_size] for f in features], templates))
                for j in range(0, n, batch_size)
            ]
        )[:, : len(p)]
        return float(np.delete(best, i, axis=0).mean())

    # XLA's CPU executables run on the calling thread and release the GIL: on a CPU, candidates
    # are scored on several threads at once (one core each); elsewhere one after another.
    threads = min(os.cpu_count() or 1, 8) if jax.default_backend() == "cpu" else 1
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        scores = np.array(
            list(
                tqdm(
                    pool.map(candidate, range(n)),
                    total=n,
                    desc="template choice",
                    unit="candidate",
                    leave=False,
                )
            )
        )
    return int(np.argmax(scores)), scores


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
    strides: Sequence[int] = STRIDES,
    batch_size: int = 8,
    upsample: str = "nearest",
    subpixel: bool = False,
    combine: str = "product",
    with_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """``match`` over all images of ``features`` in batches: ``(N, L, 2)`` (row, col), and
    with ``with_scores`` each peak's value of the combined similarity map ``(N, L)``."""
    kw = {"size": tuple(size), "strides": tuple(strides), "upsample": upsample}
    kw |= {"subpixel": subpixel, "combine": combine}
    n = features[0].shape[0]
    found = [
        _match_jit([f[i : i + batch_size] for f in features], templates, **kw)
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
    batch_size: int = 8,
    upsample: str = "nearest",
    subpixel: bool = False,
    combine: str = "product",
    sampling: str = "cell",
    with_scores: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """One-shot landmarks of ``images`` ``(N, H, W)`` uint8 with one encoder (``apply_fn``,
    images -> maps) from one annotated template: ``template_points`` ``(L, 2)`` (row, col) in
    ``template_image``'s grid. Returns ``(N, L, 2)`` (x, y) in the grid of ``size``, and with
    ``with_scores`` the peak similarity of each ``(N, L)``; ``sampling`` as
    ``template_vectors``."""
    template_features = [f[0] for f in encode(apply_fn, template_image[None])]
    vectors = template_vectors(template_features, template_points, sampling=sampling)
    features = encode(apply_fn, images, batch_size=batch_size)
    found, scores = match_all(
        features,
        vectors,
        size=size,
        batch_size=batch_size,
        upsample=upsample,
        subpixel=subpixel,
        combine=combine,
        with_scores=True,
    )
    return (found[..., ::-1], scores) if with_scores else found[..., ::-1]
