"""The multi-scale pixel-wise InfoNCE of CC2D (docs/design.md 1; the paper's Eq. 1).

At each scale s (stride 32, 16, 8, 4, 2) the query is the crop encoder's feature at the anchor
(``crop_anchor // s``); its cosine with every cell of the full-image encoder's map, clamped to
[0, 1] and divided by the temperature, are the logits of a cross-entropy whose target is the
anchor's cell (``anchor // s``). The candidates are the whole map at the coarsest scale and a
window of +-``window`` cells around the target at the finer ones (cut at the map's borders):
``closed``, ``|cell - target| <= window`` in rows and columns (2 window + 1 cells a side), or
the authors' ``half_open``, ``target - window <= cell < target + window`` (2 window cells).
The total is the sum over scales of the batch means. The positive similarity indicator (PSI) of
the paper is the clamped cosine at the target.

With several anchors per crop (``(B, K, 2)`` anchors, ``augment.anchors_per_crop``), each
anchor is a query of its own against its image's map, and an example's loss and PSI are the
means over its K anchors: one forward pass of both encoders then trains K queries.

Volumes (docs/volumes.md): the same loss on ``(B, d, h, w, E)`` maps with ``(B, 3)`` anchors
(slice, row, col); the window is then a cube of (2 window + 1)^3 cells.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from piaug import mixing
from piaug.errors import require
from piaug.models import STRIDES

WINDOW_MODES = ("closed", "half_open")  # |d| <= window, or -window <= d < window (CC2D's)


@dataclasses.dataclass(frozen=True)
class LossSettings:
    """The loss's knobs, as ``multiscale_info_nce`` takes them (``dataclasses.asdict``)."""

    window: int = 9  # cells around the target at strides 16..2; the whole map at 32
    temperature: float = 1.0
    clamp: bool = True  # cosines clamped to [0, 1] before the softmax
    window_mode: str = "closed"  # closed: |d| <= window; half_open: -window <= d < window

    def __post_init__(self):
        require(
            [
                (
                    "window_mode",
                    self.window_mode,
                    self.window_mode in WINDOW_MODES,
                    f"use one of {', '.join(WINDOW_MODES)}",
                ),
                ("temperature", self.temperature, self.temperature > 0, "must be positive"),
                ("window", self.window, self.window >= 0, "must be 0 or more cells"),
            ]
        )


def cell(points: jnp.ndarray, stride: int, shape: Sequence[int]) -> jnp.ndarray:
    """The cell (row, col) of a ``(B, 2)`` pixel position at ``stride`` in a map of ``shape``
    ((slice, row, col) of a ``(B, 3)`` voxel position)."""
    limit = jnp.asarray(shape[: points.shape[-1]], points.dtype) - 1
    return jnp.clip(points // stride, 0, limit)


def cosine(a: jnp.ndarray, b: jnp.ndarray, *, eps: float = 1e-3) -> jnp.ndarray:
    """Cosine along the last axis (each vector's norm floored at ``eps``, 1e-3 as in CC2D; the
    floor is applied before the square root, so a zero vector has a finite gradient)."""
    return jnp.sum(mixing.unit(a, eps) * mixing.unit(b, eps), axis=-1)


def _candidates(
    image_features: jnp.ndarray, target: jnp.ndarray, window: int | None, window_mode: str
) -> tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """The cells a query is compared with: ``(candidates (B, N, E), valid (B, N), positive
    (B,))``, the whole map (``window`` None) or the window around ``target`` (``(B, d)``, the
    map ``(B, *spatial, E)`` having d spatial axes)."""
    bsz, *spatial, e = image_features.shape
    d, cells = len(spatial), math.prod(spatial)
    if window is None:
        positive = sum(target[:, k] * math.prod(spatial[k + 1 :]) for k in range(d))
        return image_features.reshape(bsz, cells, e), jnp.ones((bsz, cells), bool), positive
    if window_mode not in WINDOW_MODES:
        raise ValueError(f"window_mode must be one of {WINDOW_MODES}, got {window_mode!r}")
    # Only the window's cells are compared: cut (2 window + 1)^d cells around the target from
    # the map padded by the window (the padding is outside the map, marked not valid).
    size = 2 * window + 1
    pad = ((window, window),) * d
    padded = jnp.pad(image_features, ((0, 0), *pad, (0, 0)))
    cut = jax.vmap(lambda f, t: jax.lax.dynamic_slice(f, (*t, 0), (size,) * d + (e,)))
    on_map = jnp.pad(jnp.ones(spatial, bool), pad)
    inside = jax.vmap(lambda t: jax.lax.dynamic_slice(on_map, tuple(t), (size,) * d))(target)
    if window_mode == "half_open":  # target - window <= cell < target + window
        for k in range(d):
            inside = inside.at[(slice(None),) * (k + 1) + (-1,)].set(False)
    centre = sum(window * size**k for k in range(d))  # (window, ..., window) raveled
    positive = jnp.full((bsz,), centre, jnp.int32)
    candidates = cut(padded, target).reshape(bsz, size**d, e)
    return candidates, inside.reshape(bsz, -1), positive


def pixel_info_nce(
    image_features: jnp.ndarray,
    crop_features: jnp.ndarray,
    anchors: jnp.ndarray,
    crop_anchors: jnp.ndarray,
    *,
    stride: int,
    window: int | None = None,
    temperature: float = 1.0,
    clamp: bool = True,
    window_mode: str = "closed",
    mix: mixing.MixSettings | None = None,
    key: jax.Array | None = None,
    active=True,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """InfoNCE of one scale, per example.

    Args:
      image_features: ``(B, h, w, E)`` full-image encoder output at ``stride`` (volumes:
        ``(B, d, h, w, E)``).
      crop_features: ``(B, hc, wc, E)`` crop encoder output at ``stride``.
      anchors: ``(B, 2)`` int anchor (row, col) in image pixels (volumes: ``(B, 3)``, (slice,
        row, col)).
      crop_anchors: ``(B, 2)`` int position of the same point in crop pixels.
      stride: the maps' stride in pixels.
      window: candidates are the cells within +-window of the target (rows and columns); None
        uses the whole map.
      window_mode: ``closed`` (``|d| <= window``) or ``half_open`` (``-window <= d < window``,
        the authors').
      temperature: logits are similarities / temperature.
      clamp: clamp the similarities to [0, 1] (CC2D) before the softmax.
      mix, key, active: a feature-level comparison method (``mixing``: ``zhu`` transforms the
        similarities, ``mochi`` adds negatives where ``active``, a boolean scalar: after its
        warm-up) with its random key; ``none`` and ``unmix`` (which mixes crops, not
        features) change nothing here.

    Returns:
      ``(loss, psi)``, each ``(B,)``: the cross-entropy and the (clamped) positive cosine of
      the untransformed vectors.
    """
    d = image_features.ndim - 2
    if d not in (2, 3) or crop_features.ndim != d + 2:
        raise ValueError(
            "features must be (B, h, w, E) or, for volumes, (B, d, h, w, E), got "
            f"{image_features.shape} and {crop_features.shape}"
        )
    if anchors.shape != (image_features.shape[0], d) or crop_anchors.shape != anchors.shape:
        raise ValueError(
            f"anchors must be (B, {d}) for B={image_features.shape[0]}, "
            f"got {anchors.shape} and {crop_anchors.shape}"
        )
    b = jnp.arange(image_features.shape[0])
    target = cell(anchors, stride, image_features.shape[1:])
    source = cell(crop_anchors, stride, crop_features.shape[1:])
    query = crop_features[(b, *(source[:, k] for k in range(d)))]  # (B, E)
    method = "none" if mix is None else mix.method
    if method in ("none", "unmix"):  # the cosines alone: the fast path
        sim, valid, positive = _similarities(image_features, query, target, window, window_mode)
        psi = sim[b, positive]
        return _cross_entropy(sim, psi, valid, positive, temperature, clamp)
    candidates, valid, positive = _candidates(image_features, target, window, window_mode)
    extra = extra_ok = None
    if method == "zhu":
        draws = mixing.zhu_draws(
            key, candidates.shape[1], pos_alpha=mix.pos_alpha, neg_alpha=mix.neg_alpha
        )
        sim = mixing.zhu_similarities(query, candidates, valid, positive, draws)
    else:
        sim = cosine(candidates, query[:, None, :])  # (B, N)
        if method == "mochi":
            draws = mixing.mochi_draws(
                key,
                *candidates.shape[:2],
                hard=mix.hard,
                synthetic=mix.synthetic,
                harder=mix.harder,
                harder_max=mix.harder_max,
            )
            extra, extra_ok = mixing.mochi_negatives(query, candidates, valid, positive, draws)
            extra_ok = extra_ok & active
    psi = cosine(candidates[b, positive], query)
    if extra is not None:
        extra = jnp.clip(extra, 0.0, 1.0) if clamp else extra
        extra = jnp.where(extra_ok, extra / temperature, -jnp.inf)
    return _cross_entropy(sim, psi, valid, positive, temperature, clamp, extra)


def _similarities(image_features, query, target, window, window_mode):
    """The cosines of ``query`` ``(B, E)`` with its candidates (``_candidates``'s cells):
    ``(sim (B, N), valid, positive)``. The map is normalised once and each query's cosine map
    is one matrix product with it, then the window is cut from that map of scalars (cutting
    the window's vectors first, then normalising them, moved (B, N, E) arrays through memory
    several times: docs/performance.md)."""
    sim = jnp.einsum("b...e,be->b...", mixing.unit(image_features), mixing.unit(query))
    sim, valid, positive = _candidates(sim[..., None], target, window, window_mode)
    return sim[..., 0], valid, positive


def _cross_entropy(sim, psi, valid, positive, temperature, clamp, extra=None):
    """The InfoNCE of cosines ``sim`` ``(B, N)`` (``valid`` candidates, the target at
    ``positive``), clamped to [0, 1] with ``clamp``, over ``temperature``; ``extra``: more
    logits (MoCHi's negatives). Returns ``(loss, psi)``, ``psi`` clamped likewise."""
    b = jnp.arange(sim.shape[0])
    if clamp:
        sim, psi = jnp.clip(sim, 0.0, 1.0), jnp.clip(psi, 0.0, 1.0)
    logits = sim / temperature
    positive_logit = logits[b, positive]
    logits = jnp.where(valid, logits, -jnp.inf)
    if extra is not None:
        logits = jnp.concatenate([logits, extra], 1)
    return jax.nn.logsumexp(logits, axis=-1) - positive_logit, psi


def multiscale_info_nce(
    image_features: Sequence[jnp.ndarray],
    crop_features: Sequence[jnp.ndarray],
    anchors: jnp.ndarray,
    crop_anchors: jnp.ndarray,
    *,
    strides: Sequence[int] = STRIDES,
    window: int | None = 9,
    temperature: float = 1.0,
    clamp: bool = True,
    window_mode: str = "closed",
    mix: mixing.MixSettings | None = None,
    key: jax.Array | None = None,
    active=True,
    weights: jnp.ndarray | None = None,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The CC2D loss over all scales, per example and scale.

    ``image_features`` and ``crop_features`` are the encoders' output lists (coarsest first);
    the coarsest scale uses the whole map, the others a +-``window`` window.

    ``anchors`` and ``crop_anchors`` are ``(B, 2)``, or ``(B, K, 2)`` for K anchors per example
    (the loss and PSI are then means over the K, weighted by ``weights`` ``(B, K)`` if given;
    an example whose weights are all 0 gives 0). ``mix``, ``key``, ``active``: a feature-level
    comparison method (``pixel_info_nce``), its key split over the scales and the anchors.

    Returns:
      ``(loss, psi)``, each ``(B, S)`` for the S scales. The training loss is
      ``loss.mean(0).sum()``.
    """
    kwargs = dict(
        strides=strides,
        window=window,
        temperature=temperature,
        clamp=clamp,
        window_mode=window_mode,
        mix=mix,
        active=active,
    )
    if mix is not None and mix.method in ("zhu", "mochi") and key is None:
        raise ValueError(f"mix.method={mix.method!r} needs a random key")
    if anchors.ndim == 3:
        if crop_anchors.shape != anchors.shape:
            raise ValueError(
                f"anchors {anchors.shape} and crop_anchors {crop_anchors.shape} must match"
            )
        count = anchors.shape[1]
        keys = None if key is None else jax.random.split(key, count)

        def one(a, c, k):
            return multiscale_info_nce(image_features, crop_features, a, c, key=k, **kwargs)

        loss, psi = jax.vmap(one, in_axes=(1, 1, 0), out_axes=2)(anchors, crop_anchors, keys)
        if weights is None:  # (B, S, K)
            return loss.mean(-1), psi.mean(-1)
        w = weights[:, None, :].astype(loss.dtype)
        total = jnp.maximum(w.sum(-1), 1e-12)
        return (loss * w).sum(-1) / total, (psi * w).sum(-1) / total
    if not len(image_features) == len(crop_features) == len(strides):
        raise ValueError(
            f"need one feature map per stride {tuple(strides)}, got {len(image_features)} and "
            f"{len(crop_features)}"
        )
    losses, psis = [], []
    for i, (f, g, s) in enumerate(zip(image_features, crop_features, strides, strict=True)):
        loss, psi = pixel_info_nce(
            f,
            g,
            anchors,
            crop_anchors,
            stride=s,
            window=None if i == 0 else window,
            temperature=temperature,
            clamp=clamp,
            window_mode=window_mode,
            mix=mix,
            key=None if key is None else jax.random.fold_in(key, i),
            active=active,
        )
        losses.append(loss)
        psis.append(psi)
    loss, psi = jnp.stack(losses, axis=1), jnp.stack(psis, axis=1)
    if weights is not None:
        w = weights[:, None].astype(loss.dtype)
        loss, psi = loss * w, psi * w
    return loss, psi
