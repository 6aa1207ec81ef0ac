r"""The loss's windowed scales: piaug's cut windows against the masked full map.

python benchmarks/loss_window.py                   # the cpu preset: 192, batch 8, 64-d, 16 anchors
python benchmarks/loss_window.py --anchors 1 --image-size 384 --embedding 16   # the paper's

Prints one JSON line. ``window_s`` is the time of one jitted loss and gradient (with respect to
both encoders' feature maps at every scale) of ``piaug.losses.multiscale_info_nce``, which cuts
each anchor's (2 window + 1)^2 cells out of the padded map at the windowed scales; the
reference measured in the same run, ``full_map_s``, computes the same loss the way CC2D's code
(and piaug before) does: the cosine with every cell of the map, the cells outside the window
masked out of the softmax. ``speedup`` is their ratio; ``max_loss_diff`` and ``max_grad_diff``
are the largest differences between the two (float rounding).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np

from piaug import losses, models


def full_map(
    image_features,
    crop_features,
    anchors,
    crop_anchors,
    *,
    window=9,
    temperature=1.0,
    clamp=True,
    window_mode="closed",
):
    """The multi-scale loss ``(B, S)`` by cosines over the whole map, masked to the window;
    anchors ``(B, K, 2)``, the loss averaged over the K. The reference of the benchmark and of
    ``tests/test_losses.py``."""

    def one_scale(f, g, a, c, stride, win):
        b = jnp.arange(f.shape[0])
        t = jnp.clip(a // stride, 0, jnp.asarray(f.shape[1:3]) - 1)
        s = jnp.clip(c // stride, 0, jnp.asarray(g.shape[1:3]) - 1)
        q = g[b, s[:, 0], s[:, 1]]
        sim = losses.cosine(f, q[:, None, None, :])
        sim = jnp.clip(sim, 0.0, 1.0) if clamp else sim
        logits = sim / temperature
        if win is not None:
            hi = win + 1 if window_mode == "closed" else win
            dr = jnp.arange(f.shape[1])[None, :, None] - t[:, 0, None, None]
            dc = jnp.arange(f.shape[2])[None, None, :] - t[:, 1, None, None]
            keep = (dr >= -win) & (dr < hi) & (dc >= -win) & (dc < hi)
            logits = jnp.where(keep, logits, -jnp.inf)
        flat = logits.reshape(f.shape[0], -1)
        return jax.nn.logsumexp(flat, -1) - logits[b, t[:, 0], t[:, 1]]

    per_anchor = []
    for k in range(anchors.shape[1]):
        per_anchor.append(
            jnp.stack(
                [
                    one_scale(
                        f, g, anchors[:, k], crop_anchors[:, k], s, None if i == 0 else window
                    )
                    for i, (f, g, s) in enumerate(
                        zip(image_features, crop_features, models.STRIDES, strict=True)
                    )
                ],
                axis=1,
            )
        )
    return jnp.mean(jnp.stack(per_anchor), axis=0)


def _time(fn, args, repeats):
    jax.block_until_ready(fn(*args))  # compile
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--embedding", type=int, default=64)
    parser.add_argument("--anchors", type=int, default=16)
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)

    def maps(size):
        return [
            jnp.asarray(
                rng.normal(size=(args.batch, size // s, size // s, args.embedding)), jnp.float32
            )
            for s in models.STRIDES
        ]

    image, crop = maps(args.image_size), maps(args.crop_size)
    anchors = jnp.asarray(rng.integers(0, args.image_size, (args.batch, args.anchors, 2)))
    crop_anchors = jnp.asarray(rng.integers(0, args.crop_size, (args.batch, args.anchors, 2)))
    kw = dict(window=args.window, temperature=0.1, clamp=False, window_mode="half_open")

    def grad_of(loss_fn):
        def total(f, g):
            return loss_fn(f, g, anchors, crop_anchors, **kw).sum()

        return jax.jit(jax.value_and_grad(total, argnums=(0, 1)))

    ours = grad_of(lambda *a, **k: losses.multiscale_info_nce(*a, **k)[0])
    window_s, (loss, grads) = _time(ours, (image, crop), args.repeats)
    full_s, (ref_loss, ref_grads) = _time(grad_of(full_map), (image, crop), args.repeats)
    grad_diff = max(
        float(jnp.abs(a - b).max())
        for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(ref_grads), strict=True)
    )
    print(
        json.dumps(
            {
                "benchmark": "loss_window",
                **vars(args),
                "window_s": round(window_s, 4),
                "full_map_s": round(full_s, 4),
                "speedup": round(full_s / window_s, 2),
                "max_loss_diff": float(jnp.abs(loss - ref_loss)),
                "max_grad_diff": grad_diff,
                "devices": str(jax.devices()[0].platform),
            }
        )
    )


if __name__ == "__main__":
    main()
