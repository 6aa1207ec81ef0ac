"""The targets, loss and decoding of CC2D's second-stage detector (``piaug.detector``: its
network, training and inference), as pure array functions of heatmaps and offset maps:

* **targets** (``targets``): the heatmap is 1 on a disk of radius R around the landmark (R is
  5 % of the larger side: 19 pixels at 384) and 0 elsewhere; inside the disk the offsets are the
  vector from the pixel to the landmark divided by R (so in [-1, 1]), 0 outside. Here the
  landmark is a float and the disk is centred on it (the authors' integer disk is shifted one
  pixel up and to the left of its zero offset, and misplaced within R of the top or left edge).
* **loss** (``loss``): the authors' focal-style term on the heatmap's probabilities, averaged
  over every pixel, times ``heatmap_weight`` (2 in their config), plus the L1 error of the x and
  of the y offsets, summed over the pixels inside the disks and divided by their number.
* **decoding** (``decode``): ``vote`` (the authors'): the ``int(3.14 R^2)`` most probable
  pixels of each landmark's heatmap vote, one vote each, at the point their offsets give;
  the landmark is at the cell with most votes, refined here to the mean of the votes that fall
  within a pixel of it (the authors keep the integer cell). ``peak``: the heatmap's maximum
  plus its offsets. Both also give a confidence, the heatmap's peak probability.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

DECODES = ("vote", "peak")
HEATMAP_LOSSES = ("focal", "balanced")
_LOG_EPS = math.log(1e-7)  # the authors clamp probabilities to [1e-7, 1 - 1e-7]


def targets(
    landmarks: jnp.ndarray, size: tuple[int, int], radius: float
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """The heatmap ``(H, W, L)`` and offsets ``(H, W, L, 2)`` of one image's landmarks
    ``(L, 2)`` (x, y in pixels of ``size``): 1 and (landmark - pixel) / radius on the pixels
    closer than ``radius`` to the landmark, 0 elsewhere."""
    rows = jnp.arange(size[0], dtype=jnp.float32)[:, None, None]
    cols = jnp.arange(size[1], dtype=jnp.float32)[None, :, None]
    dx = landmarks[:, 0].astype(jnp.float32) - cols  # (1, W, L) -> broadcast (H, W, L)
    dy = landmarks[:, 1].astype(jnp.float32) - rows
    dx, dy = jnp.broadcast_arrays(dx, dy)
    inside = dx**2 + dy**2 < radius**2
    offsets = jnp.stack([dx, dy], axis=-1) / radius * inside[..., None]
    return inside.astype(jnp.float32), offsets


def loss(
    logits: jnp.ndarray,
    offsets: jnp.ndarray,
    heatmap: jnp.ndarray,
    target_offsets: jnp.ndarray,
    *,
    heatmap_weight: float = 2.0,
    heatmap_loss: str = "focal",
) -> dict[str, jnp.ndarray]:
    """The authors' TPL loss of a batch: ``loss`` = ``offset`` + ``heatmap_weight`` x
    ``heatmap``, where ``heatmap`` is the mean over every element of
    ``-(1 - p) t log p - p (1 - t) log(1 - p)`` (p the sigmoid of ``logits``, clamped to
    [1e-7, 1 - 1e-7]; t the target) and ``offset`` the L1 error of both offset maps summed over
    the pixels inside the disks (t = 1) and divided by their number. ``heatmap_loss="balanced"``
    averages that term over the disks' pixels and over the others apart, then takes the mean
    of the two (the disks are under 1 % of the pixels: their share of the authors' mean is
    small, and a detector trained from scratch learns its heatmaps slowly)."""
    p = jnp.clip(jax.nn.sigmoid(logits), 1e-7, 1 - 1e-7)
    log_p = jnp.maximum(jax.nn.log_sigmoid(logits), _LOG_EPS)
    log_not_p = jnp.maximum(jax.nn.log_sigmoid(-logits), _LOG_EPS)
    positive = -(1 - p) * heatmap * log_p
    negative = -p * (1 - heatmap) * log_not_p
    if heatmap_loss == "balanced":
        inside = jnp.maximum(heatmap.sum(), 1.0)
        outside = jnp.maximum((1 - heatmap).sum(), 1.0)
        heat = 0.5 * (positive.sum() / inside + negative.sum() / outside)
    else:
        heat = (positive + negative).mean()
    inside = heatmap[..., None]
    offset = (jnp.abs(offsets - target_offsets) * inside).sum() / jnp.maximum(heatmap.sum(), 1.0)
    return {"loss": offset + heatmap_weight * heat, "loss_heatmap": heat, "loss_offset": offset}


def _vote_one(prob: jnp.ndarray, offsets: jnp.ndarray, radius: float, count: int):
    """One landmark's vote: ``prob`` ``(H, W)``, ``offsets`` ``(H, W, 2)`` -> (x, y)."""
    h, w = prob.shape
    _, flat = jax.lax.top_k(prob.reshape(-1), count)
    rows, cols = (flat // w).astype(jnp.float32), (flat % w).astype(jnp.float32)
    off = offsets.reshape(-1, 2)[flat] * radius
    vx, vy = cols + off[:, 0], rows + off[:, 1]
    cx, cy = jnp.round(vx).astype(jnp.int32), jnp.round(vy).astype(jnp.int32)
    inside = (cx >= 0) & (cx < w) & (cy >= 0) & (cy < h)
    cell = jnp.where(inside, cy * w + cx, h * w)  # outside: one spare cell, dropped
    votes = jnp.zeros(h * w + 1, jnp.float32).at[cell].add(1.0)[: h * w]
    best = jnp.argmax(votes)
    by, bx = best // w, best % w
    near = inside & (jnp.abs(cx - bx) <= 1) & (jnp.abs(cy - by) <= 1)
    n = jnp.maximum(near.sum(), 1)
    return jnp.stack([jnp.where(near, vx, 0).sum() / n, jnp.where(near, vy, 0).sum() / n])


def _peak_one(prob: jnp.ndarray, offsets: jnp.ndarray, radius: float, count: int):
    del count
    w = prob.shape[1]
    best = jnp.argmax(prob.reshape(-1))
    by, bx = best // w, best % w
    off = offsets[by, bx] * radius
    return jnp.stack([bx + off[0], by + off[1]]).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("radius", "method"))
def decode(
    logits: jnp.ndarray, offsets: jnp.ndarray, *, radius: float, method: str = "vote"
) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Landmarks ``(B, L, 2)`` (x, y in pixels) and their confidence ``(B, L)`` (the heatmap's
    peak probability) from the detector's outputs (``logits`` ``(B, H, W, L)``, ``offsets``
    ``(B, H, W, L, 2)``), by ``method`` (``DECODES``; see the module's docstring)."""
    one = {"vote": _vote_one, "peak": _peak_one}[method]
    count = max(1, int(3.14 * radius**2))
    prob = jax.nn.sigmoid(logits)
    per_landmark = jax.vmap(lambda p, o: one(p, o, radius, count), in_axes=(2, 2))
    points = jax.vmap(per_landmark)(prob, offsets)
    return points, prob.max(axis=(1, 2))
