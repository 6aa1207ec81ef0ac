r"""Detector training step throughput: samples/s of the jitted step of ``piaug.detector``.

python benchmarks/detector_step.py                                   # configs/ceph.py:cpu
python benchmarks/detector_step.py --image-size 384 --width-mult 1 --batch 3 --template
                                                                     # the authors' TPL

Prints one JSON line: ``samples_per_s`` (images through the step: the batch, and the template
when ``--template`` appends it) and ``step_s`` of ``piaug.detector.train_step`` (the U-Net
forward and backward at full resolution, the targets, the loss, the Adam update; jitted over a
``('data',)`` mesh of all devices) on a fixed random batch after compiling, and the minutes
that ``--steps-per-run`` steps take at that rate. The reference measured in the same run is
``vgg19_features``: forward and backward of the VGG19 backbone alone at the same width on the
same images (a lower bound of the architecture's cost); ``step_vs_vgg19_features`` is the
share of that bound the step reaches.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec
from train_step import _time  # beside this script

from piaug import detector, models, train


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--width-mult", type=float, default=0.25)
    parser.add_argument("--norm", default="batch", choices=list(models.NORMS))
    parser.add_argument("--landmarks", type=int, default=19)
    parser.add_argument("--template", action="store_true", help="append a template (CC2D-S2)")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after compiling")
    parser.add_argument("--steps-per-run", type=int, default=2000)
    args = parser.parse_args()

    size = (args.image_size, args.image_size)
    net = detector.Detector(args.landmarks, args.width_mult, norm=args.norm)
    settings = detector.DetectorSettings(heatmap_loss="balanced")
    tx = train.optimizer(train.TrainSettings(), 1.0)
    mesh = train.make_mesh()
    init = jax.jit(
        functools.partial(detector.create_state, net=net, tx=tx, image_size=size),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
    state = init(jax.random.key(0))
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 1, (args.batch, *size)).astype(np.float32)
    points = rng.uniform(0, args.image_size - 1, (args.batch, args.landmarks, 2))
    batch = {"image": images, "landmarks": points.astype(np.float32)}
    template = None
    if args.template:
        template = {"image": images[0], "landmarks": batch["landmarks"][0]}
    step = train.compile_step(
        mesh,
        detector.train_step,
        net=net,
        tx=tx,
        radius=settings.radius_px(size),
        heatmap_loss=settings.heatmap_loss,
        template=template,
    )
    device_batch = train.device_batch(batch, mesh, detector.BATCH_KEYS)

    def run():
        nonlocal state
        state, metrics = step(state, device_batch)
        return metrics["loss"]

    compile_s, per_step = _time(run, args.steps)
    seen = args.batch + (1 if args.template else 0)

    vgg = models.VGGFeatures(args.width_mult, norm=args.norm)
    x = jnp.broadcast_to(jnp.asarray(images)[..., None], (*images.shape, 3))
    x = jnp.concatenate([x, x[:1]]) if args.template else x
    variables = jax.jit(functools.partial(vgg.init, train=False))(jax.random.key(0), x[:1])

    def reference_loss(params):
        out, _ = vgg.apply({**variables, "params": params}, x, train=True, mutable=["batch_stats"])
        return sum(jnp.mean(f) for f in out)

    grad = jax.jit(jax.grad(reference_loss))
    _, reference = _time(lambda: grad(variables["params"]), args.steps)
    result = {
        "benchmark": "detector_step",
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "image_size": args.image_size,
        "batch": args.batch,
        "template": args.template,
        "width_mult": args.width_mult,
        "norm": args.norm,
        "landmarks": args.landmarks,
        "samples_per_s": round(seen / per_step, 3),
        "step_s": round(per_step, 4),
        "minutes_per_run": round(per_step * args.steps_per_run / 60, 1),
        "steps_per_run": args.steps_per_run,
        "compile_s": round(compile_s, 1),
        "params": models.num_params(state.params[detector.NAME]),
        "reference": "vgg19_features",
        "vgg19_features_samples_per_s": round(seen / reference, 3),
        "step_vs_vgg19_features": round(reference / per_step, 3),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
