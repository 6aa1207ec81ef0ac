r"""One 3 x 3 convolution layer at a time, XLA's CPU backend against PyTorch's (oneDNN), and the
kernel gradient written in other ways, in one run (docs/performance.md).

python benchmarks/conv_layers.py     # VGG's four 3x3 layer shapes of the 192 x 192 step, batch 4
python benchmarks/conv_layers.py --dims 3   # 3x3x3 layers of volumes, batch 2

For each shape ``(batch, size, size, channels)`` (channels in = out, the image encoder's
VGG layers at width 0.25), lines of JSON:

* ``part: layer``: seconds per call of the forward, the input gradient and the kernel gradient,
  each jitted alone, for XLA with the training steps' options (``devices.step_compiler_options``:
  convolutions on Eigen), XLA with YNNPACK's convolutions, and PyTorch's ``conv2d`` (NCHW, its
  own threads as the machine gives them; its input and kernel gradients are the time of forward
  and backward less the forward); ``torch_over_xla`` per operation (above 1: XLA is faster).
* ``part: kernel_gradient``: the kernel gradient written as one image at a time (batch 1, so the
  gradient's layout change is a bitcast), as nine matrix products of shifted slices of the padded
  maps flattened to rows (the shifted window of a padded image is a contiguous range of rows),
  and as one product with those nine slices side by side (im2col); each checked against XLA's
  own (``max_rel_diff``) and timed against it in the same run.
* ``--dims 3``, ``part: layer3d``: a 3x3x3 layer of volumes ``(batch, size, size, size,
  channels)``: XLA's own 3-D convolution, ``models.VolumeConv`` (the depth taps side by side in
  the channels, one 2-D convolution over the slices) and PyTorch's ``conv3d``, each forward,
  input and kernel gradient; ``volume_conv_over_xla`` and ``torch_over_volume_conv`` per
  operation (above 1: the second is slower).
"""

from __future__ import annotations

import argparse
import json

import jax
import jax.numpy as jnp
import numpy as np
from profile_step import _timed

from piaug import devices, models

YNN = "xla_cpu_experimental_ynn_fusion_type"


def conv(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


def kernel_gradient(x, g, w):
    """XLA's own: the VJP of the convolution with respect to its kernel."""
    return jax.vjp(lambda k: conv(x, k), w)[1](g)[0]


def per_image(x, g, w):
    return sum(kernel_gradient(x[i : i + 1], g[i : i + 1], w) for i in range(x.shape[0]))


def _shifted_rows(x, g):
    """The padded input and the gradient on the same padded grid, flattened to rows, and the
    row offsets of the nine taps: tap (i, j)'s window of row q of ``grads`` is row
    ``q + offset`` of ``inputs`` (rows of the padding are zero in ``grads``)."""
    n, h, w, c = x.shape
    p = w + 2
    inputs = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
    grads = jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, g.shape[-1])
    rows = inputs.shape[0] - (2 * p + 2)
    return inputs, grads[:rows], rows, [i * p + j for i in range(3) for j in range(3)]


def nine_products(x, g, w):
    inputs, grads, rows, offsets = _shifted_rows(x, g)
    taps = [inputs[o : o + rows].T @ grads for o in offsets]
    return jnp.stack(taps).reshape(w.shape)


def im2col(x, g, w):
    inputs, grads, rows, offsets = _shifted_rows(x, g)
    cols = jnp.concatenate([inputs[o : o + rows] for o in offsets], axis=1)
    return (cols.T @ grads).reshape(w.shape)


def _torch_layer(x, g, repeats: int) -> dict:
    import torch

    dims = x.ndim - 2
    kind = torch.nn.Conv2d if dims == 2 else torch.nn.Conv3d
    layer = kind(x.shape[-1], g.shape[-1], 3, padding=1, bias=False)
    order = (0, dims + 1, *range(1, dims + 1))  # channels first
    xt = torch.tensor(np.asarray(x)).permute(*order).contiguous()
    gt = torch.tensor(np.asarray(g)).permute(*order).contiguous()
    xg = xt.clone().requires_grad_(True)

    def forward():
        with torch.no_grad():
            return layer(xt)

    def with_kernel_gradient():
        return torch.autograd.grad(layer(xt), (layer.weight,), gt)

    def with_both():
        return torch.autograd.grad(layer(xg), (xg, layer.weight), gt)

    fwd = _timed(forward, repeats=repeats)
    kernel = _timed(with_kernel_gradient, repeats=repeats) - fwd
    both = _timed(with_both, repeats=repeats) - fwd
    return {"forward": fwd, "input_gradient": both - kernel, "kernel_gradient": kernel}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--shapes", default="192x16,96x32,48x64,24x128", help="SIZExCHANNELS")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3))
    args = parser.parse_args()
    if args.dims == 3:
        if args.shapes == parser.get_default("shapes"):
            args.shapes = "64x8,32x16,16x32,8x64"
        return _volumes(args)
    options = {
        "piaug": devices.step_compiler_options(),
        "ynn_convolutions": {YNN: "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION"},
    }
    rng = np.random.default_rng(0)
    for shape in args.shapes.split(","):
        size, c = (int(v) for v in shape.split("x"))
        x = jnp.asarray(rng.uniform(size=(args.batch, size, size, c)), jnp.float32)
        g = jnp.asarray(rng.normal(size=(args.batch, size, size, c)), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, c, c)) * 0.1, jnp.float32)
        ops = {
            "forward": lambda x, g, w: conv(x, w),
            "input_gradient": lambda x, g, w: jax.vjp(lambda y: conv(y, w), x)[1](g)[0],
            "kernel_gradient": kernel_gradient,
        }
        times = {}
        for name, opts in options.items():
            times[name] = {}
            for op, fn in ops.items():
                compiled = jax.jit(fn).lower(x, g, w).compile(opts)
                times[name][op] = _timed(compiled, x, g, w, repeats=args.repeats)
        if not args.no_torch:
            times["torch"] = _torch_layer(x, g, args.repeats)
        row = {"benchmark": "conv_layers", "part": "layer", "shape": [args.batch, size, size, c]}
        for name, t in times.items():
            row[f"{name}_s"] = {op: round(s, 5) for op, s in t.items()}
        if "torch" in times:
            row["torch_over_xla"] = {
                op: round(times["torch"][op] / times["piaug"][op], 2) for op in ops
            }
        print(json.dumps(row), flush=True)

        reference = jax.jit(kernel_gradient).lower(x, g, w).compile(options["piaug"])
        expected = reference(x, g, w)
        row = {"benchmark": "conv_layers", "part": "kernel_gradient"}
        row.update(shape=[args.batch, size, size, c])
        row["xla_s"] = round(_timed(reference, x, g, w, repeats=args.repeats), 5)
        variants = {"per_image": per_image, "nine_products": nine_products, "im2col": im2col}
        for name, fn in variants.items():
            compiled = jax.jit(fn).lower(x, g, w).compile(options["piaug"])
            diff = float(jnp.abs(compiled(x, g, w) - expected).max() / jnp.abs(expected).max())
            s = _timed(compiled, x, g, w, repeats=args.repeats)
            row[name] = {"s": round(s, 5), "vs_xla": round(row["xla_s"] / s, 2)}
            row[name]["max_rel_diff"] = float(f"{diff:.1e}")
        print(json.dumps(row), flush=True)


def conv3d(x, w):
    return jax.lax.conv_general_dilated(
        x, w, (1, 1, 1), "SAME", dimension_numbers=("NDHWC", "DHWIO", "NDHWC")
    )


def volume_conv(x, w):
    net = models.VolumeConv(w.shape[-1], (3, 3, 3), use_bias=False)
    return net.apply({"params": {"kernel": w}}, x)


def _volumes(args) -> None:
    options = devices.step_compiler_options()
    rng = np.random.default_rng(0)
    batch = 2 if args.batch == 4 else args.batch
    for shape in args.shapes.split(","):
        size, c = (int(v) for v in shape.split("x"))
        x = jnp.asarray(rng.uniform(size=(batch, size, size, size, c)), jnp.float32)
        g = jnp.asarray(rng.normal(size=x.shape), jnp.float32)
        w = jnp.asarray(rng.normal(size=(3, 3, 3, c, c)) * 0.1, jnp.float32)
        times = {}
        for name, fn in (("xla_3d", conv3d), ("volume_conv", volume_conv)):
            ops = {
                "forward": lambda x, g, w, fn=fn: fn(x, w),
                "input_gradient": lambda x, g, w, fn=fn: jax.vjp(lambda y: fn(y, w), x)[1](g)[0],
                "kernel_gradient": lambda x, g, w, fn=fn: jax.vjp(lambda k: fn(x, k), w)[1](g)[0],
            }
            times[name] = {}
            for op, f in ops.items():
                compiled = jax.jit(f).lower(x, g, w).compile(options)
                times[name][op] = _timed(compiled, x, g, w, repeats=args.repeats)
        diff = float(jnp.abs(volume_conv(x, w) - conv3d(x, w)).max())
        if not args.no_torch:
            times["torch"] = _torch_layer(x, g, args.repeats)
        row = {"benchmark": "conv_layers", "part": "layer3d", "shape": list(x.shape)}
        row["max_abs_diff"] = float(f"{diff:.1e}")
        for name, t in times.items():
            row[f"{name}_s"] = {op: round(s, 5) for op, s in t.items()}
        ratio = {op: round(times["xla_3d"][op] / times["volume_conv"][op], 2) for op in ops}
        row["volume_conv_over_xla"] = ratio
        if "torch" in times:
            row["torch_over_volume_conv"] = {
                op: round(times["torch"][op] / times["volume_conv"][op], 2) for op in ops
            }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
