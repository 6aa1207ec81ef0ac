"""Mutual information of co-located gray values (Eq. 3 of the paper; docs/design.md 1).

* ``mutual_information``: the MI of the joint gray-value histogram of two co-located patches, in
  nats, as ``sklearn.metrics.mutual_info_score(a.ravel(), b.ravel())``.
* ``count_vector_mutual_information``: the estimator of the authors' release (sklearn's MI
  between the two 256-bin count vectors, treated as label arrays), for reproduction only.

Both run a jitted per-pair kernel over chunks of patch pairs, on several CPU threads
(``_map_pairs``). ``piaug.info`` re-exports both.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from piaug.kernels import (
    NUM_BINS,
    check_uint8,
    compiled,
    in_threads,
    is_traced,
    num_threads,
    positive_int,
)


def _check_pair(a, b, patch_ndim: int):
    for name, x in (("a", a), ("b", b)):
        check_uint8(x, name)
    if a.shape != b.shape:
        raise ValueError(f"a and b must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < patch_ndim:
        raise ValueError(f"patches need {patch_ndim} axes (patch_ndim), got shape {a.shape}")
    batch = a.shape[: a.ndim - patch_ndim]
    size = int(np.prod(a.shape[a.ndim - patch_ndim :]))
    if size == 0:
        raise ValueError(f"patches of shape {a.shape} are empty")
    return batch, size


def _histograms(x, size):
    """256-bin counts of each row of ``x`` (int32 ``(P, size)``): ``(P, 256)``."""
    p = x.shape[0]
    flat = (jnp.arange(p, dtype=jnp.int32)[:, None] * NUM_BINS + x).reshape(-1)
    return jnp.zeros(p * NUM_BINS, jnp.int32).at[flat].add(1).reshape(p, NUM_BINS)


def _pairwise_sum(x):
    """Sum over the last axis by halving (error O(log n) ulp; XLA's CPU reduce is sequential)."""
    n = x.shape[-1]
    size = 1 << max(0, (n - 1).bit_length())
    x = jnp.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, size - n)])
    while x.shape[-1] > 1:
        half = x.shape[-1] // 2
        x = x[..., :half] + x[..., half:]
    return x[..., 0]


def _log_table(n: int) -> np.ndarray:
    """``log c`` for c = 0..n (0 at c = 0), in float64 then rounded: exact to float32."""
    return np.log(np.maximum(np.arange(n + 1), 1)).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _mi_kernel(a, b, *, chunk):
    """MI of each row pair of uint8 ``(P, n)`` gray values; P is a multiple of ``chunk``.

    ``MI = H(a) + H(b) - H(a, b)``. For the joint entropy, with ``c(i)`` the count of pixel i's
    cell, ``-H = mean_i log(c(i) / n)``: one scatter-add and one gather per pixel, never a pass
    over all 65,536 cells. The marginals are sums over their 256 bins. Logs come from one table
    and every term is taken relative to ``log n``, so constant patches give exactly 0.
    """
    n = a.shape[1]
    log_ratio = jnp.asarray(_log_table(n) - _log_table(n)[n])  # log(c / n)
    pair = jnp.arange(chunk, dtype=jnp.int32)[:, None]

    def neg_entropy(counts):  # (chunk, 256) bin counts -> sum_v (c_v / n) log(c_v / n)
        return _pairwise_sum(counts.astype(jnp.float32) * log_ratio[counts]) / n

    def one_chunk(ab):
        a, b = (x.astype(jnp.int32) for x in ab)
        flat = (pair * NUM_BINS**2 + a * NUM_BINS + b).reshape(-1)
        joint = jnp.zeros(chunk * NUM_BINS**2, jnp.int32).at[flat].add(1)[flat]
        neg_joint = _pairwise_sum(log_ratio[joint.reshape(chunk, n)]) / n
        mi = neg_joint - neg_entropy(_histograms(a, n)) - neg_entropy(_histograms(b, n))
        return jnp.maximum(mi, 0.0)

    pairs = (a.reshape(-1, chunk, n), b.reshape(-1, chunk, n))
    return jax.lax.map(one_chunk, pairs).reshape(-1)


def _map_pairs(kernel, a, b, patch_ndim: int, chunk: int, threads: int | None) -> jax.Array:
    """Applies a jitted per-pair kernel to all patch pairs, in chunks, on several CPU threads."""
    batch, size = _check_pair(a, b, patch_ndim)
    traced = is_traced(a) or is_traced(b)
    xp = jnp if traced else np
    a, b = xp.reshape(a, (-1, size)), xp.reshape(b, (-1, size))
    p = a.shape[0]
    chunk = positive_int(chunk, "chunk", minimum=1)
    if p == 0:
        return jnp.zeros(batch, jnp.float32)
    blocks = 1 if traced or jax.default_backend() != "cpu" else num_threads(threads)
    blocks = min(blocks, p)
    chunk = min(chunk, -(-p // blocks))
    per_block = -(-p // (chunk * blocks)) * chunk
    extra = per_block * blocks - p
    if extra:
        a, b = xp.pad(a, ((0, extra), (0, 0))), xp.pad(b, ((0, extra), (0, 0)))

    if not traced:
        spec = ((per_block, size), "uint8")
        kernel = compiled(kernel, spec, spec, chunk=chunk)
    else:
        kernel = functools.partial(kernel, chunk=chunk)

    def run(i):
        rows = slice(i * per_block, (i + 1) * per_block)
        return kernel(jnp.asarray(a[rows]), jnp.asarray(b[rows]))

    out = jnp.concatenate(in_threads(run, blocks))
    return out[:p].reshape(batch)


def mutual_information(
    a, b, *, patch_ndim: int = 2, chunk: int = 16, threads: int | None = None
) -> jax.Array:
    """Mutual information (Eq. 3) of co-located gray values of two patches, in nats.

    The joint distribution is the 256 x 256 histogram of pixel pairs ``(a[i], b[i])``, as in
    ``sklearn.metrics.mutual_info_score(a.ravel(), b.ravel())``.

    Args:
      a, b: uint8 patches of the same shape; the last ``patch_ndim`` axes form a patch, leading
        axes are a batch.
      patch_ndim: number of trailing axes that make up one patch.
      chunk: patch pairs whose 65,536-bin joint histograms are held at once.
      threads: on the CPU, blocks of pairs run concurrently on this many threads (default: the
        number of cores, at most 8).
    Returns:
      float32 array of the batch shape (a scalar for one pair).
    """
    return _map_pairs(_mi_kernel, a, b, patch_ndim, chunk, threads)


@functools.partial(jax.jit, static_argnames=("chunk",))
def _count_vector_kernel(a, b, *, chunk):
    """As ``_mi_kernel`` with the 256 bins as samples and their counts as labels."""
    n = a.shape[1]
    log_table = jnp.asarray(_log_table(NUM_BINS))

    def one_chunk(ab):
        ha, hb = (_histograms(x.astype(jnp.int32), n) for x in ab)
        same_a = ha[:, :, None] == ha[:, None, :]
        same_b = hb[:, :, None] == hb[:, None, :]
        count_ab, count_a, count_b = (
            jnp.sum(same, axis=2) for same in (same_a & same_b, same_a, same_b)
        )
        terms = log_table[count_ab] + log_table[NUM_BINS] - log_table[count_a] - log_table[count_b]
        return jnp.maximum(_pairwise_sum(terms) / NUM_BINS, 0.0)

    pairs = (a.reshape(-1, chunk, n), b.reshape(-1, chunk, n))
    return jax.lax.map(one_chunk, pairs).reshape(-1)


def count_vector_mutual_information(
    a, b, *, patch_ndim: int = 2, chunk: int = 16, threads: int | None = None
) -> jax.Array:
    """The MI estimator of the authors' release, for reproducing their numbers only.

    It is ``sklearn.metrics.mutual_info_score(hist_a, hist_b)`` where ``hist_a`` and ``hist_b``
    are the two patches' 256-bin gray-value count vectors, treated as label arrays (so it ignores
    where pixels are). ``mutual_information`` is the measure of Eq. 3; prefer it.

    Args and returns as ``mutual_information``.
    """
    return _map_pairs(_count_vector_kernel, a, b, patch_ndim, chunk, threads)
