r"""Training step throughput: samples/s of the jitted step of both encoders, on this machine.

python benchmarks/train_step.py --image-size 384 --crop-size 64 --batch 8 --width-mult 1
python benchmarks/train_step.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25
python benchmarks/train_step.py ... --dtype bfloat16          # mixed precision (for GPUs)
python benchmarks/train_step.py --image-size 192 --crop-size 128 --width-mult 0.25 \
    --norm batch --embedding 64 --anchors 16                    # configs/ceph.py:cpu
python benchmarks/train_step.py ... --batch 4 --crops-per-image 2   # 2 crops of each image

Prints one JSON line. ``samples_per_s`` (images; ``crops_per_s`` counts crops) is the rate of
``piaug.train.train_step`` (both encoders forward and backward, the multi-scale InfoNCE, both
Adam updates; jitted over a ``('data',)`` mesh of all devices, state donated) on a fixed random
batch, after compiling;
``params`` counts both encoders; ``peak_rss_mb`` is this process's peak resident memory. The
reference measured in the same run is ``vgg19_features``: forward and backward of the two VGG19
backbones alone at the same width on the same batch (a lower bound on any implementation's cost
of the architecture); ``step_vs_vgg19_features`` is the share of that bound the step reaches.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from piaug import models, train


def _batch(image_size: int, crop_size: int, batch: int, anchors: int = 1, crops: int = 1) -> dict:
    rng = np.random.default_rng(0)
    lead = (batch,) if crops == 1 else (batch, crops)  # M crops per image: (B, M, ...)
    shape = (*lead, 2) if anchors == 1 else (*lead, anchors, 2)
    return {
        "image": rng.integers(0, 256, (batch, image_size, image_size), dtype=np.uint8),
        "crop": rng.uniform(0, 1, (*lead, crop_size, crop_size)).astype(np.float32),
        "anchor": rng.integers(0, image_size, shape).astype(np.int32),
        "crop_anchor": rng.integers(0, crop_size, shape).astype(np.int32),
    }


def _time(fn, steps: int) -> tuple[float, float]:
    """(seconds of the first call, i.e. compiling; seconds per later call)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    compile_s = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        out = fn()
    jax.block_until_ready(out)
    return compile_s, (time.perf_counter() - start) / steps


def _vgg_reference(args, batch) -> float:
    """Seconds per forward + backward of two VGG19 backbones (image and crop)."""
    vgg = models.VGGFeatures(args.width_mult, jnp.dtype(args.dtype))
    images = jnp.broadcast_to(
        jnp.asarray(batch["image"], jnp.float32)[..., None] / 255, (*batch["image"].shape, 3)
    )
    crop = jnp.asarray(batch["crop"]).reshape(-1, *batch["crop"].shape[-2:])  # (B * M, C, C)
    crops = jnp.broadcast_to(crop[..., None], (*crop.shape, 3))
    keys = jax.random.split(jax.random.key(0))
    params = [jax.jit(vgg.init)(k, x[:1]) for k, x in zip(keys, (images, crops), strict=True)]

    def loss(params):
        out = 0.0
        for p, x in zip(params, (images, crops), strict=True):
            out += sum(jnp.mean(f.astype(jnp.float32)) for f in vgg.apply(p, x))
        return out

    grad = jax.jit(jax.grad(loss))
    _, per_step = _time(lambda: grad(params), args.steps)
    return per_step


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--norm", default="none", choices=list(models.NORMS))
    parser.add_argument("--embedding", type=int, default=16)
    parser.add_argument("--anchors", type=int, default=1, help="anchors per crop")
    parser.add_argument("--crops-per-image", type=int, default=1, help="crops of each image")
    parser.add_argument("--steps", type=int, default=5, help="timed steps after compiling")
    parser.add_argument("--no-reference", action="store_true", help="skip vgg19_features")
    args = parser.parse_args()

    nets = models.ModelSettings(
        embedding=args.embedding, width=args.width_mult, dtype=args.dtype, norm=args.norm
    ).encoders()
    txs = {name: train.optimizer(train.TrainSettings(), 1.0) for name in train.ENCODERS}
    mesh = train.make_mesh()
    init = jax.jit(
        functools.partial(
            train.create_state,
            nets=nets,
            txs=txs,
            image_size=(args.image_size, args.image_size),
            crop_size=args.crop_size,
        ),
        out_shardings=NamedSharding(mesh, PartitionSpec()),
    )
    state = init(jax.random.key(0))
    params = {name: models.num_params(state.params[name]) for name in train.ENCODERS}
    step = train.compile_step(mesh, nets=nets, txs=txs)
    batch = _batch(args.image_size, args.crop_size, args.batch, args.anchors, args.crops_per_image)
    device_batch = train.device_batch(batch, mesh)

    def run():
        nonlocal state
        state, metrics = step(state, device_batch)
        return metrics["loss"]

    compile_s, per_step = _time(run, args.steps)
    result = {
        "benchmark": "train_step",
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "image_size": args.image_size,
        "crop_size": args.crop_size,
        "batch": args.batch,
        "width_mult": args.width_mult,
        "dtype": args.dtype,
        "norm": args.norm,
        "embedding": args.embedding,
        "anchors": args.anchors,
        "crops_per_image": args.crops_per_image,
        "samples_per_s": round(args.batch / per_step, 3),
        "crops_per_s": round(args.batch * args.crops_per_image / per_step, 3),
        "step_s": round(per_step, 4),
        "compile_s": round(compile_s, 1),
        "params": sum(params.values()),
        "params_image_encoder": params["image"],
        "params_crop_encoder": params["crop"],
    }
    if not args.no_reference:
        reference = _vgg_reference(args, batch)
        result["reference"] = "vgg19_features"
        result["vgg19_features_samples_per_s"] = round(args.batch / reference, 3)
        result["step_vs_vgg19_features"] = round(reference / per_step, 3)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
