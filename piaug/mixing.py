"""The paper's comparison methods (its Table 2) in pixel-wise form, inside the training step.

Each replaces or extends how the multi-scale InfoNCE (``piaug.losses``) sees its views; the
paper runs each on top of the CC2D baseline with the augmentation ranges its own estimate gives
the high-information group (``ablations``: presets ``zhu``, ``mochi``, ``unmix`` and
``high_ranges``, sweep ``table2``). The query is the crop encoder's vector at the anchor, the
positive the full-image encoder's at the same anatomy, the negatives the other cells of the
window (the whole map at the coarsest scale); every vector is L2-normalised first.

* ``zhu`` (Zhu et al., ICCV'21, feature transformation): positive extrapolation, one
  ``lam = 1 + Beta(pos_alpha, pos_alpha)`` per step: ``q' = lam q + (1 - lam) k`` and
  ``k' = lam k + (1 - lam) q`` (a harder positive pair, pushed apart); negative interpolation,
  one ``mu ~ Beta(neg_alpha, neg_alpha)`` per step: each negative ``n' = mu n + (1 - mu) n_p``
  with ``n_p`` the negative at a random permutation of the window's cells (not re-normalised,
  as the original's default). The logits are ``q'.k'`` and ``q'.n'`` (``zhu_similarities``).
* ``mochi`` (Kalantidis et al., NeurIPS'20, hard negative mixing): per anchor, the ``hard``
  negatives most similar to the query; ``synthetic`` mixes ``normalise(a n_i + (1 - a) n_j)``,
  ``a ~ U(0, 1)``, and ``harder`` mixes ``normalise(b q + (1 - b) n_j)``, ``b ~ U(0, harder_max)``,
  of random hard ones, detached and added to the softmax's denominator only, after the first
  ``warmup`` fraction of the run's steps (``mochi_negatives``).
* ``unmix`` (Shen et al., AAAI'22, image mixing): each crop mixed with the batch-reversed crop,
  Mixup (``lam x + (1 - lam) x_rev``) with probability ``mixup_prob``, else a CutMix box of
  area ``1 - lam`` (``lam`` recomputed from the box), ``lam ~ Beta(alpha, alpha)`` per step.
  The mixed crop's vector at each anchor's crop position is supervised by the positive of its
  own image (weight ``lam``) and by that of the reversed crop's image at the same crop position
  (weight ``1 - lam``: the point that crop shows there, by its rotation and scale,
  ``partner_points``); the loss adds these to the unmixed crop's own (``unmix_crops``).

The step draws what these need from ``step_key(seed, step)``: a function of the seed and the
step alone, so a resumed run draws the same and the draws do not depend on the device count
(JAX's partitionable threefry).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from piaug.errors import require

METHODS = ("none", "zhu", "mochi", "unmix")


@dataclasses.dataclass(frozen=True)
class MixSettings:
    """``config.mixing``: which comparison method the ``train`` stage uses, and its knobs."""

    method: str = "none"  # none | zhu | mochi | unmix
    pos_alpha: float = 2.0  # zhu: lam = 1 + Beta(pos_alpha, pos_alpha)
    neg_alpha: float = 1.6  # zhu: mu ~ Beta(neg_alpha, neg_alpha)
    hard: int = 32  # mochi: the hardest negatives mixed
    synthetic: int = 16  # mochi: mixes of two hard negatives
    harder: int = 16  # mochi: mixes of the query and a hard negative
    harder_max: float = 0.5  # mochi: the query's share b ~ U(0, harder_max)
    warmup: float = 0.0  # mochi: no synthetic negatives in this fraction of the run's steps
    alpha: float = 1.0  # unmix: lam ~ Beta(alpha, alpha)
    mixup_prob: float = 0.5  # unmix: Mixup with this probability, else CutMix

    def __post_init__(self):
        require(
            [
                ("method", self.method, self.method in METHODS, f"use one of {', '.join(METHODS)}"),
                ("pos_alpha", self.pos_alpha, self.pos_alpha > 0, "must be positive"),
                ("neg_alpha", self.neg_alpha, self.neg_alpha > 0, "must be positive"),
                ("hard", self.hard, self.hard >= 2, "must be 2 or more (pairs of them are mixed)"),
                ("synthetic", self.synthetic, self.synthetic >= 0, "must be 0 or more"),
                ("harder", self.harder, self.harder >= 0, "must be 0 or more"),
                ("harder_max", self.harder_max, 0 <= self.harder_max <= 1, "must be in [0, 1]"),
                ("warmup", self.warmup, 0 <= self.warmup <= 1, "must be a fraction in [0, 1]"),
                ("alpha", self.alpha, self.alpha > 0, "must be positive"),
                ("mixup_prob", self.mixup_prob, 0 <= self.mixup_prob <= 1, "must be in [0, 1]"),
            ]
        )


def start_step(mix: MixSettings, total_steps: int) -> int:
    """The first step with MoCHi's synthetic negatives in a run of ``total_steps``."""
    return int(round(mix.warmup * total_steps))


def step_key(seed: int, step) -> jax.Array:
    """The step's random key: a function of the run's seed and the step number only."""
    return jax.random.fold_in(jax.random.key(seed), step)


def unit(x: jnp.ndarray, eps: float = 1e-3) -> jnp.ndarray:
    """``x`` over its norm along the last axis, the norm floored at ``eps`` (as
    ``losses.cosine``: a zero vector has a finite gradient)."""
    return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps * eps))


def _rows(x: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
    """``x[b, index[b, ...]]`` for ``x`` ``(B, N, ...)`` and ``index`` ``(B, ...)``."""
    return jax.vmap(lambda xb, ib: xb[ib])(x, index)


def zhu_draws(key: jax.Array, n: int, *, pos_alpha: float = 2.0, neg_alpha: float = 1.6):
    """Zhu et al.'s randomness of one scale: ``(lam, mu, perm)``, ``lam = 1 + Beta(pos_alpha,
    pos_alpha)``, ``mu ~ Beta(neg_alpha, neg_alpha)`` and a permutation of the ``n`` cells."""
    k_lam, k_mu, k_perm = jax.random.split(key, 3)
    lam = 1.0 + jax.random.beta(k_lam, pos_alpha, pos_alpha)
    return lam, jax.random.beta(k_mu, neg_alpha, neg_alpha), jax.random.permutation(k_perm, n)


def zhu_similarities(
    query: jnp.ndarray,
    candidates: jnp.ndarray,
    valid: jnp.ndarray,
    positive: jnp.ndarray,
    draws,
) -> jnp.ndarray:
    """Zhu et al.'s transformed similarities of one scale.

    Args:
      query: ``(B, E)``; candidates: ``(B, N, E)``, the positive at index ``positive``
        ``(B,)``; valid: ``(B, N)``, the cells on the map; draws: ``zhu_draws``'s.

    Returns:
      ``(B, N)``: ``q'.k'`` at the positive, ``q'.n'`` elsewhere. A negative whose permuted
      partner is off the map or the positive keeps its own vector (``n' = n``).
    """
    lam, mu, perm = draws
    q, c = unit(query), unit(candidates)
    k = _rows(c, positive)
    q_hat, k_hat = lam * q + (1.0 - lam) * k, lam * k + (1.0 - lam) * q
    partner_ok = valid[:, perm] & (perm[None, :] != positive[:, None])
    n_hat = jnp.where(partner_ok[..., None], mu * c + (1.0 - mu) * c[:, perm], c)
    sim = jnp.einsum("bne,be->bn", n_hat, q_hat)
    on_positive = jnp.arange(c.shape[1])[None, :] == positive[:, None]
    return jnp.where(on_positive, jnp.sum(q_hat * k_hat, axis=-1)[:, None], sim)


def mochi_draws(
    key: jax.Array,
    batch: int,
    n: int,
    *,
    hard: int = 32,
    synthetic: int = 16,
    harder: int = 16,
    harder_max: float = 0.5,
) -> dict:
    """MoCHi's randomness of one scale for ``batch`` queries with ``n`` cells each: which of
    the ``min(hard, n - 1)`` hardest negatives each mix takes (``i``, ``j``: ``(batch,
    synthetic)``; ``h``: ``(batch, harder)``) and the shares ``a ~ U(0, 1)`` and
    ``b ~ U(0, harder_max)`` (``(batch, synthetic | harder, 1)``)."""
    count = min(int(hard), n - 1)
    k_i, k_j, k_a, k_h, k_b = jax.random.split(key, 5)
    return {
        "i": jax.random.randint(k_i, (batch, synthetic), 0, count),
        "j": jax.random.randint(k_j, (batch, synthetic), 0, count),
        "a": jax.random.uniform(k_a, (batch, synthetic, 1)),
        "h": jax.random.randint(k_h, (batch, harder), 0, count),
        "b": harder_max * jax.random.uniform(k_b, (batch, harder, 1)),
        "count": count,
    }


def mochi_negatives(
    query: jnp.ndarray,
    candidates: jnp.ndarray,
    valid: jnp.ndarray,
    positive: jnp.ndarray,
    draws: dict,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """MoCHi's synthetic negatives of one scale: their similarities to the query, and which
    are real (both sources on the map and negatives).

    Args: as ``zhu_similarities``; draws: ``mochi_draws``'s.

    Returns:
      ``(sim, ok)``, each ``(B, synthetic + harder)``: ``q.h`` for the detached, normalised mixes
      (the query's gradient flows through ``q`` alone), the ``synthetic`` mixes first.
    """
    q, c = unit(query), unit(candidates)
    n = c.shape[1]
    cosines = jnp.einsum("bne,be->bn", c, q)
    negative = valid & (jnp.arange(n)[None, :] != positive[:, None])
    top, index = jax.lax.top_k(jnp.where(negative, cosines, -jnp.inf), draws["count"])
    hard_ok = jnp.isfinite(top)
    hard = _rows(c, index)  # (B, count, E), the hardest first
    i, j, a, h, b = (draws[k] for k in "ijahb")
    mixed = unit(a * _rows(hard, i) + (1.0 - a) * _rows(hard, j))
    harder_mixed = unit(b * q[:, None, :] + (1.0 - b) * _rows(hard, h))
    extra = jax.lax.stop_gradient(jnp.concatenate([mixed, harder_mixed], axis=1))
    ok = jnp.concatenate([_rows(hard_ok, i) & _rows(hard_ok, j), _rows(hard_ok, h)], axis=1)
    return jnp.einsum("bxe,be->bx", extra, q), ok


def unmix_draws(key: jax.Array, size: int, *, alpha: float = 1.0, mixup_prob: float = 0.5):
    """Un-mix's randomness of one step: ``(lam, mixup, centre)``, ``lam ~ Beta(alpha, alpha)``,
    whether it is Mixup (else CutMix) and the CutMix box's centre ``(2,)`` in a crop of
    ``size``."""
    k_lam, k_kind, k_box = jax.random.split(key, 3)
    lam = jax.random.beta(k_lam, alpha, alpha)
    mixup = jax.random.uniform(k_kind) < mixup_prob
    return lam, mixup, jax.random.randint(k_box, (2,), 0, size)


def unmix_crops(crops: jnp.ndarray, draws) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Each crop of ``crops`` ``(N, C, C)`` mixed with the batch-reversed crop ``crops[::-1]``
    (``draws``: ``unmix_draws``'s).

    Returns:
      ``(mixed, lam)``: ``mixed`` ``(N, C, C)``; ``lam``, a scalar, the own crop's share (its
      Mixup weight, or the fraction of the crop outside the CutMix box, whose side is
      ``2 floor(C sqrt(1 - lam) / 2)`` about the centre, cut at the crop's edges).
    """
    lam, mixup, centre = draws
    size = crops.shape[-1]
    reverse = crops[::-1]
    half = jnp.floor(size * jnp.sqrt(1.0 - lam) / 2.0)
    lo, hi = jnp.clip(centre - half, 0, size), jnp.clip(centre + half, 0, size)
    grid = jnp.arange(size)
    inside_rows = (grid >= lo[0]) & (grid < hi[0])
    inside_cols = (grid >= lo[1]) & (grid < hi[1])
    box = inside_rows[:, None] & inside_cols[None, :]
    mixed = jnp.where(mixup, lam * crops + (1.0 - lam) * reverse, jnp.where(box, reverse, crops))
    return mixed, jnp.where(mixup, lam, 1.0 - jnp.mean(box))


def partner_points(
    crop_anchors: jnp.ndarray,
    anchors: jnp.ndarray,
    angle: jnp.ndarray,
    scale: jnp.ndarray,
    image_shape,
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The image point that the batch-reversed crop shows at each crop's anchor positions.

    Crop ``r`` shows image point ``anchor_r + R(angle_r) (p - crop_anchor_r) / scale_r`` at
    crop pixel ``p`` (``augment.rotation_coordinates``; the crop's own anchor, the first of
    each row when there are K).

    Args:
      crop_anchors, anchors: ``(N, 2)`` or ``(N, K, 2)`` (row, col); angle, scale: ``(N,)``
        (degrees, factor); image_shape: ``(H, W)``.

    Returns:
      ``(points, ok)``: ``points`` like ``anchors`` (int32, clipped to the image), ``ok``
      ``(N,)`` or ``(N, K)``, whether the point lies inside the image.
    """
    many = anchors.ndim == 3
    p = (crop_anchors if many else crop_anchors[:, None]).astype(jnp.float32)  # (N, K, 2)
    own_anchor = (anchors[:, 0] if many else anchors)[::-1].astype(jnp.float32)
    own_crop = (crop_anchors[:, 0] if many else crop_anchors)[::-1].astype(jnp.float32)
    t = jnp.deg2rad(angle[::-1])[:, None]
    d = (p - own_crop[:, None]) / scale[::-1][:, None, None]
    rows = own_anchor[:, None, 0] + jnp.cos(t) * d[..., 0] + jnp.sin(t) * d[..., 1]
    cols = own_anchor[:, None, 1] - jnp.sin(t) * d[..., 0] + jnp.cos(t) * d[..., 1]
    points = jnp.rint(jnp.stack([rows, cols], axis=-1))
    limit = jnp.asarray(image_shape[:2], jnp.float32)
    ok = jnp.all((points >= 0) & (points <= limit - 1), axis=-1)
    points = jnp.clip(points, 0, limit - 1).astype(jnp.int32)
    return (points, ok) if many else (points[:, 0], ok[:, 0])
