"""Per-pixel information measures of the paper (docs/design.md section 1).

* ``entropy_map``: image information entropy (IIE, Eq. 2), the Shannon entropy in bits of the
  256-bin gray-value histogram under a footprint centred on each pixel, with
  ``skimage.filters.rank.entropy``'s border convention (only pixels inside the image count).
* ``mutual_information`` (Eq. 3) and ``count_vector_mutual_information`` (the authors'
  release's estimator): ``piaug.mutual_info``'s, importable from here too.
* Weight maps (the sampling ratio rho) and information groups; the anchors are drawn from the
  weight map in the input pipeline (``piaug.data.transforms.sample_anchor``).

How ``entropy_map`` is computed. A footprint is a union of runs along its last axis, so moving the
window one pixel along the image's last axis removes one pixel at the left end of every run and
adds one at the right end. Every image row (every (slice, row) for volumes) keeps its own
histogram, and ``S = sum_v c_v log2 c_v`` is updated exactly in fixed point from a table of
``round(c log2 c * scale)``: integer sums telescope, so no rounding error accumulates along the
row. The entropy is then ``log2 n - S / n`` with ``n`` the number of in-image pixels. All rows
advance together in one ``lax.scan`` over columns; the row axis is optionally cut into tiles of
columns (on accelerators, for parallelism) and, on the CPU, into blocks of rows run on several
threads. Pixels outside the image are a sentinel bin 256 whose count is subtracted at the end.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from piaug.kernels import NUM_BINS, check_uint8, in_threads, is_traced, num_threads, positive_int
from piaug.kernels import compiled as _compiled  # a name of this module: tests spy on it
from piaug.mutual_info import count_vector_mutual_information, mutual_information  # noqa: F401

_SENTINEL = NUM_BINS  # gray value given to pixels outside the image
_INT32_MAX = 2**31 - 1

# ---------------------------------------------------------------------------------------------
# Footprints (identical to skimage.morphology's).


def disk(radius: int) -> np.ndarray:
    """Boolean disk of the given radius, ``(2r+1, 2r+1)``, as ``skimage.morphology.disk``."""
    radius = positive_int(radius, "radius", minimum=0)
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def ball(radius: int) -> np.ndarray:
    """Boolean ball of the given radius, ``(2r+1,) * 3``, as ``skimage.morphology.ball``."""
    radius = positive_int(radius, "radius", minimum=0)
    z, y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1, -radius : radius + 1]
    return x * x + y * y + z * z <= radius * radius


def square(size: int) -> np.ndarray:
    """Boolean ``size x size`` square, as ``skimage.morphology.square`` (centre ``size // 2``)."""
    size = positive_int(size, "size", minimum=1)
    return np.ones((size, size), bool)


def cube(size: int) -> np.ndarray:
    """Boolean ``size``-sided cube, as ``skimage.morphology.cube``."""
    size = positive_int(size, "size", minimum=1)
    return np.ones((size, size, size), bool)


def parse_footprint(spec: str) -> np.ndarray:
    """``'disk(10)'``, ``'square(5)'``, ``'ball(3)'`` or ``'cube(3)'`` as a boolean array."""
    match = re.fullmatch(r"\s*(disk|square|ball|cube)\(\s*(\d+)\s*\)\s*", str(spec))
    if not match:
        raise ValueError("expected disk(r), square(s), ball(r) or cube(s)")
    make = {"disk": disk, "square": square, "ball": ball, "cube": cube}[match.group(1)]
    return make(int(match.group(2)))


# ---------------------------------------------------------------------------------------------
# Image information entropy.


def _as_footprint(footprint) -> np.ndarray:
    if is_traced(footprint):
        raise ValueError("footprint must be a concrete (numpy) boolean array, not a traced value")
    fp = np.asarray(footprint)
    if fp.ndim not in (2, 3):
        raise ValueError(f"footprint must be 2-D or 3-D, got shape {fp.shape}")
    if fp.dtype != bool:
        if not np.all(np.isin(fp, (0, 1))):
            raise ValueError("footprint must be boolean (or 0/1 valued)")
        fp = fp.astype(bool)
    if not fp.any():
        raise ValueError("footprint has no True element")
    return fp


def _fixed_point_table(count: int) -> tuple[np.ndarray, float]:
    """``round(c log2 c * scale)`` for c = 0..count, with the largest scale whose sums fit int32."""
    top = count * np.log2(max(count, 2))
    scale = float(2.0 ** np.floor(np.log2(_INT32_MAX / (top + 1.0))))
    c = np.arange(count + 1, dtype=np.float64)
    table = c * np.log2(np.maximum(c, 1.0)) * scale
    return np.round(table).astype(np.int32), scale


@functools.partial(jax.jit, static_argnames=("fp_shape", "fp_bits", "out_shape", "tile", "unroll"))
def _entropy_kernel(padded, *, fp_shape, fp_bits, out_shape, tile, unroll):
    """Entropy for a sentinel-padded block.

    Args:
      padded: int32 ``(B, *spatial_padded)``: the leading spatial axes padded by the footprint's
        extent, the last axis by ``c + 1`` columns on the left (``c`` the centre column) and on
        the right by ``kw - 1 - c`` plus up to a multiple of ``tile``.
      out_shape: the unpadded spatial shape ``(..., W)``; ``W`` is a multiple of ``tile``.
      unroll: unroll the updates of a step (accelerators: no loop overhead per update; it costs
        compile time, so the CPU keeps a rolled loop).
    Returns:
      float32 ``(B, *out_shape)``.
    """
    fp = np.unpackbits(np.frombuffer(fp_bits, np.uint8))[: int(np.prod(fp_shape))]
    fp = fp.reshape(fp_shape).astype(bool)
    kw, n_fp = fp_shape[-1], int(fp.sum())
    lead, width = tuple(out_shape[:-1]), out_shape[-1]  # lead: (H,) or (D, H)
    batch, n_tiles = padded.shape[0], width // tile
    rows = batch * n_tiles * int(np.prod(lead))
    table, scale = _fixed_point_table(n_fp)
    gain = jnp.asarray(np.diff(table))  # table[c + 1] - table[c]
    table = jnp.asarray(table)

    # Columns of every tile, sliding axis first: (tile + kw, B, n_tiles, *lead_padded).
    cols = np.arange(n_tiles)[:, None] * tile + np.arange(tile + kw)[None, :]
    x = jnp.moveaxis(jnp.take(padded, cols, axis=-1), (-1, -2), (0, 2))

    # The first window of every tile: one gather of all footprint pixels (a slice of the block
    # per footprint pixel, so that the indices stay (n_fp, ndim): a gather with broadcast index
    # arrays made XLA constant-fold n_fp x rows indices, over a second for disk(128)), one
    # scatter-add.
    pos = np.argwhere(fp)  # (n_fp, ndim): row offsets..., column
    sizes = (1,) + x.shape[1:3] + lead
    starts = jnp.asarray(
        np.concatenate([pos[:, -1:] + 1, np.zeros((n_fp, 2), np.int64), pos[:, :-1]], axis=1),
        jnp.int32,
    )
    first = jax.vmap(lambda start: jax.lax.dynamic_slice(x, tuple(start), sizes))(starts)
    first = first.reshape(n_fp, rows)
    hist = jnp.zeros((rows, NUM_BINS + 1), jnp.int32)
    hist = hist.at[np.arange(rows)[None, :], first].add(1)
    total = jnp.sum(table[hist], axis=1)
    hist = hist.reshape(-1)
    base = jnp.arange(rows, dtype=jnp.int32) * (NUM_BINS + 1)

    def entropy(hist, total):
        outside = hist[base + _SENTINEL]
        n = n_fp - outside
        s = (total - table[outside]).astype(jnp.float32) / scale
        nf = jnp.maximum(n, 1).astype(jnp.float32)
        return jnp.where(n > 0, jnp.maximum(jnp.log2(nf) - s / nf, 0.0), 0.0)

    # Moving one column right removes the first pixel of every run of the footprint's rows and
    # adds the pixel after the last: (column in the kw + 1 wide block, row offsets..., +-1).
    updates = []
    for *offsets, j in pos.tolist():
        if j == 0 or not fp[(*offsets, j - 1)]:
            updates.append((j, *offsets, -1))
        if j == kw - 1 or not fp[(*offsets, j + 1)]:
            updates.append((j + 1, *offsets, 1))
    # Unrolled: static numpy indices; rolled: one device array indexed by the loop counter.
    updates = np.asarray(updates, np.int32) if unroll else jnp.asarray(updates, jnp.int32)

    def update(i, carry):
        hist, total, block = carry
        col, *offsets, delta = (updates[i, a] for a in range(updates.shape[1]))
        idx = jax.lax.dynamic_slice(block, (col, 0, 0, *offsets), sizes).reshape(rows)
        idx = base + idx
        count = hist[idx]
        total = total + delta * gain[count - (delta < 0)]
        hist = hist.at[idx].set(count + delta, unique_indices=True, indices_are_sorted=True)
        return hist, total, block

    def step(carry, column):
        block = jax.lax.dynamic_slice_in_dim(x, column, kw + 1, axis=0)
        if unroll:
            carry = (*carry, block)
            for i in range(len(updates)):
                carry = update(i, carry)
            hist, total, _ = carry
        else:
            hist, total, _ = jax.lax.fori_loop(0, len(updates), update, (*carry, block))
        return (hist, total), entropy(hist, total)

    _, out = jax.lax.scan(step, (hist, total), jnp.arange(1, tile))
    out = jnp.concatenate([entropy(hist, total)[None], out])  # (tile, rows)
    out = out.reshape((tile, batch, n_tiles) + lead)
    out = jnp.moveaxis(out, (0, 2), (-1, -2))  # (B, *lead, n_tiles, tile)
    return out.reshape((batch,) + tuple(out_shape))


def _default_tile(width: int) -> int:
    if jax.default_backend() == "cpu":
        return width
    return min(width, 32)


def entropy_map(
    image, footprint, *, tile: int | None = None, threads: int | None = None
) -> jax.Array:
    """Image information entropy (IIE, Eq. 2) of every pixel, in bits.

    Args:
      image: uint8 ``(H, W)`` with a 2-D footprint or ``(D, H, W)`` with a 3-D one, optionally
        with leading batch axes. Other dtypes are rejected (convert to uint8 first).
      footprint: boolean array (``disk(10)``, ``square(5)``, ``ball(3)``, ...); its centre is
        ``shape // 2``, as in skimage. Only pixels inside the image count at the border.
      tile: columns per independent scan; the default is the whole width on the CPU and 32 on
        accelerators (more parallel work per step).
      threads: on the CPU, blocks of rows run concurrently on this many threads (default: the
        number of cores, at most 8). Ignored when traced inside ``jit``.
    Returns:
      float32 array of ``image``'s shape; equals ``skimage.filters.rank.entropy(image, footprint)``
      to about 1e-6.
    """
    fp = _as_footprint(footprint)
    if not hasattr(image, "dtype"):
        image = np.asarray(image)
    check_uint8(image, "image")
    if image.ndim < fp.ndim:
        raise ValueError(
            f"image of shape {image.shape} has fewer axes than the {fp.ndim}-D footprint"
        )
    spatial = tuple(image.shape[image.ndim - fp.ndim :])
    batch_shape = tuple(image.shape[: image.ndim - fp.ndim])
    if min(spatial) == 0:
        raise ValueError(f"image of shape {image.shape} is empty")
    width = spatial[-1]
    tile = _default_tile(width) if tile is None else positive_int(tile, "tile", minimum=1)
    tile = min(tile, width)
    padded_width = -(-width // tile) * tile
    centre = [k // 2 for k in fp.shape]
    pads = [(c, k - 1 - c) for c, k in zip(centre[:-1], fp.shape[:-1], strict=True)]
    pads.append((centre[-1] + 1, fp.shape[-1] - 1 - centre[-1] + padded_width - width))
    static = dict(
        fp_shape=fp.shape,
        fp_bits=np.packbits(fp.ravel()).tobytes(),
        tile=tile,
        unroll=jax.default_backend() != "cpu",
    )

    traced = is_traced(image)
    flat = (
        jnp.reshape(image, (-1,) + spatial).astype(jnp.int32)
        if traced
        else (np.asarray(image).reshape((-1,) + spatial).astype(np.int32))
    )
    xp = jnp if traced else np
    padded = xp.pad(flat, [(0, 0)] + pads, constant_values=_SENTINEL)
    out_shape = spatial[:-1] + (padded_width,)
    if traced or jax.default_backend() != "cpu":
        out = _entropy_kernel(jnp.asarray(padded), out_shape=out_shape, **static)
    else:
        out = _threaded_rows(padded, fp.shape[0], out_shape, static, threads)
    return out[..., :width].reshape(batch_shape + spatial)


def _threaded_rows(padded: np.ndarray, extent: int, out_shape, static, threads) -> jax.Array:
    """Runs the kernel on equal blocks of the first spatial axis, one thread each (CPU only)."""
    n = out_shape[0]
    blocks = max(1, min(num_threads(threads), n))
    size = -(-n // blocks)
    if size * blocks != n:  # equal blocks compile once: pad the first spatial axis
        pad = [(0, 0)] * padded.ndim
        pad[1] = (0, size * blocks - n)
        padded = np.pad(padded, pad, constant_values=_SENTINEL)
    block_shape = (size,) + tuple(out_shape[1:])

    part_shape = (padded.shape[0], size + extent - 1) + padded.shape[2:]
    kernel = _compiled(_entropy_kernel, (part_shape, "int32"), out_shape=block_shape, **static)

    def run(b):
        return kernel(jnp.asarray(padded[:, b * size : b * size + size + extent - 1]))

    return jnp.concatenate(in_threads(run, blocks), axis=1)[:, :n]


# ---------------------------------------------------------------------------------------------
# Weight maps and groups (the sampler that draws anchors from them: piaug.data.transforms).

GROUP_NAMES = ("low", "medium", "high")


@jax.jit
def exponential_weights(iie, gamma=0.3):
    """Sampling ratio rho = IIE ** gamma (Eq. 5); ``gamma = 0`` is uniform sampling."""
    iie = jnp.maximum(jnp.asarray(iie, jnp.float32), 0.0)
    return jnp.where(gamma == 0, 1.0, jnp.power(iie, gamma))


@jax.jit
def piecewise_weights(iie, d=2.0):
    """Sampling ratio rho = 1[IIE >= d]: only pixels with enough information become anchors."""
    return (jnp.asarray(iie, jnp.float32) >= d).astype(jnp.float32)


def weight_map(iie, *, kind: str = "exponential", gamma: float = 0.3, d: float = 2.0):
    """The weight map named by a config: ``kind`` is 'exponential', 'piecewise' or 'uniform'."""
    if kind == "exponential":
        return exponential_weights(iie, gamma)
    if kind == "piecewise":
        return piecewise_weights(iie, d)
    if kind == "uniform":
        return jnp.ones(jnp.shape(iie), jnp.float32)
    raise ValueError(f"weight map kind must be exponential, piecewise or uniform, got {kind!r}")


@jax.jit
def information_groups(iie, thresholds: Sequence[float] = (2.0, 4.5)):
    """Information group of every pixel: 0 low (< t0), 1 medium (t0 <= IIE < t1), 2 high."""
    low, high = thresholds
    iie = jnp.asarray(iie, jnp.float32)
    return (iie >= low).astype(jnp.int32) + (iie >= high).astype(jnp.int32)
