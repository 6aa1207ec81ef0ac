r"""Two of the encoder's operations, forward and backward, against the formulation they replaced,
in one run (docs/performance.md).

python benchmarks/encoder_ops.py     # the 192 x 192 step's shapes, batch 4, width 0.25

* ``max_pool``: VGG's five 2 x 2 max-pools (``models.max_pool2x2``, a reshape and a maximum with
  its own gradient) against ``flax.linen.max_pool`` (``reduce_window``, whose gradient XLA's CPU
  backend builds from window reductions and index arrays), on the pools' inputs of the image
  encoder; the gradients are checked equal.
* ``first_conv``: VGG's first convolution on a gray image (``models.GrayConv``: one channel,
  the kernel summed over its three inputs) against the same kernel on the image repeated in
  three channels; value and gradient of a sum of its ReLU, checked equal to float rounding.

Each line: ``ours_s`` and ``reference_s`` per call (compiled with the training steps' compiler
options, ``piaug.devices.step_compiler_options``), ``speedup`` their ratio.
"""

from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from profile_step import _timed

from piaug import devices, models


def _compiled(fn, *args):
    return jax.jit(fn).lower(*args).compile(devices.step_compiler_options())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width-mult", type=float, default=0.25)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    b, s = args.batch, args.image_size
    sizes = [(s >> k, models.channels(c, args.width_mult)) for k, c in enumerate((64, 128, 256))]
    sizes += [(s >> 3, models.channels(512, args.width_mult)), (s >> 4, sizes[-1][1])]
    pools = [jnp.asarray(rng.normal(size=(b, n, n, c)), jnp.float32) for n, c in sizes]
    pools = [jnp.maximum(x, 0) for x in pools]  # after a ReLU, as in VGG: ties at 0

    def pooled(pool):
        return lambda xs: sum(jnp.sum(pool(x) ** 2) for x in xs)

    ours = _compiled(jax.value_and_grad(pooled(models.max_pool2x2)), pools)
    theirs = _compiled(
        jax.value_and_grad(pooled(lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))), pools
    )
    same = all(
        bool(jnp.array_equal(a, c))
        for a, c in zip(jax.tree.leaves(ours(pools)), jax.tree.leaves(theirs(pools)), strict=True)
    )
    rows = [("max_pool", _timed(ours, pools), _timed(theirs, pools), {"gradients_equal": same})]

    gray = jnp.asarray(rng.uniform(size=(b, s, s, 1)), jnp.float32)
    c0 = models.channels(64, args.width_mult)
    conv = models.GrayConv(c0)
    params = conv.init(jax.random.key(0), gray)
    kernel, bias = params["params"]["kernel"], params["params"]["bias"]

    def ours_loss(k):
        return jnp.sum(jax.nn.relu(conv.apply({"params": {"kernel": k, "bias": bias}}, gray)))

    def their_loss(k):
        rgb = jnp.broadcast_to(gray, (b, s, s, 3))
        y = jax.lax.conv_general_dilated(
            rgb, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return jnp.sum(jax.nn.relu(y + bias))

    ours = _compiled(jax.value_and_grad(ours_loss), kernel)
    theirs = _compiled(jax.value_and_grad(their_loss), kernel)
    (_, g1), (_, g2) = ours(kernel), theirs(kernel)
    diff = float(jnp.abs(g1 - g2).max() / jnp.abs(g2).max())
    rows.append(
        ("first_conv", _timed(ours, kernel), _timed(theirs, kernel), {"max_grad_rel_diff": diff})
    )
    for name, ours_s, reference_s, extra in rows:
        row = {"benchmark": "encoder_ops", "op": name, **vars(args)}
        row.update(ours_s=round(ours_s, 5), reference_s=round(reference_s, 5))
        row.update(speedup=round(reference_s / ours_s, 2), **extra)
        print(json.dumps(row))


if __name__ == "__main__":
    main()
