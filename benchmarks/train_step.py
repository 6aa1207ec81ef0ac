r"""Training step throughput: samples/s of the jitted step of both encoders, on this machine.

python benchmarks/train_step.py --image-size 384 --crop-size 64 --batch 8 --width-mult 1
python benchmarks/train_step.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25
python benchmarks/train_step.py ... --dtype bfloat16          # mixed precision (for GPUs)
python benchmarks/train_step.py --image-size 192 --crop-size 128 --width-mult 0.25 \
    --norm batch --embedding 64 --anchors 16                    # configs/ceph.py:cpu
python benchmarks/train_step.py ... --batch 4 --crops-per-image 2   # 2 crops of each image
python benchmarks/train_step.py --config configs/ceph.py:cpu          # a config's settings
python benchmarks/train_step.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25 \
    --torch --no-reference      # against benchmarks/torch_reference.py, in alternating turns
python benchmarks/train_step.py --dims 3 --image-size 64 --crop-size 32 --batch 2 \
    --width-mult 0.125 --norm batch --torch --no-reference   # volumes (64^3, cubic crops)

Prints one JSON line. ``samples_per_s`` (images; ``crops_per_s`` counts crops) is the rate of
``piaug.train.train_step`` (both encoders forward and backward, the multi-scale InfoNCE, both
Adam updates; jitted over a ``('data',)`` mesh of all devices, state donated) on a fixed random
batch, after compiling;
``params`` counts both encoders; ``peak_rss_mb`` is this process's peak resident memory. The
reference measured in the same run is ``vgg19_features``: forward and backward of the two VGG19
backbones alone at the same width on the same batch (a lower bound on any implementation's cost
of the architecture); ``step_vs_vgg19_features`` is the share of that bound the step reaches.

With ``--torch`` the PyTorch twin (benchmarks/torch_reference.py, same settings) runs in a
process of its own, and the two take turns: ``--rounds`` rounds of ``--steps`` steps of each,
half a second apart, so that both see the same load on a shared machine. ``vs_torch`` is the
median over rounds of PyTorch's step time over piaug's (above 1: piaug is faster);
``step_s`` is then piaug's median round.
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from piaug import configure, devices, models, train


def _batch(
    image_size: int, crop_size: int, batch: int, anchors: int = 1, crops: int = 1, dims: int = 2
) -> dict:
    rng = np.random.default_rng(0)
    lead = (batch,) if crops == 1 else (batch, crops)  # M crops per image: (B, M, ...)
    shape = (*lead, dims) if anchors == 1 else (*lead, anchors, dims)
    return {
        "image": rng.integers(0, 256, (batch, *(image_size,) * dims), dtype=np.uint8),
        "crop": rng.uniform(0, 1, (*lead, *(crop_size,) * dims)).astype(np.float32),
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


def add_settings(parser: argparse.ArgumentParser) -> None:
    """The step's settings as flags (``--config`` takes them from a config instead)."""
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--dims", type=int, default=2, choices=(2, 3), help="3: volumes")
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--width-mult", type=float, default=1.0)
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    parser.add_argument("--norm", default="none", choices=list(models.NORMS))
    parser.add_argument("--embedding", type=int, default=16)
    parser.add_argument("--anchors", type=int, default=1, help="anchors per crop")
    parser.add_argument("--crops-per-image", type=int, default=1, help="crops of each image")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--no-clamp", dest="clamp", action="store_false")
    parser.add_argument("--window", type=int, default=9)
    parser.add_argument("--half-open", action="store_true")
    parser.add_argument("--config", default="", help="configs/NAME.py[:PRESETS]: its settings")


def from_config(args) -> None:
    """``args``' model, sizes and loss from ``--config`` (``configs/NAME.py[:PRESETS]``); a
    flag given on the command line as well keeps its value (``--batch 2`` with a config)."""
    from memory import load_config  # noqa: PLC0415 (benchmarks/memory.py, beside this file)

    config = load_config(args.config)
    loss = configure.loss(config)
    values = {
        "image_size": int(config.data.image_size[0]),
        "dims": len(config.data.image_size),
        "crop_size": int(config.data.crop_size),
        "batch": int(config.train.batch_size),
        "width_mult": float(config.model.width),
        "dtype": config.model.dtype,
        "norm": config.model.norm,
        "embedding": int(config.model.embedding),
        "anchors": int(config.augment.anchors_per_crop),
        "crops_per_image": int(config.augment.crops_per_image),
        "temperature": loss.temperature,
        "clamp": loss.clamp,
        "window": loss.window,
        "half_open": loss.window_mode == "half_open",
    }
    given = {a[2:].split("=")[0].replace("-", "_") for a in sys.argv[1:] if a.startswith("--")}
    for key, value in values.items():
        if key not in given:
            setattr(args, key, value)


def program(args) -> SimpleNamespace:
    """The step at ``args``' settings: ``init(key)`` (the replicated state), ``step`` (jitted,
    not yet compiled), ``mesh`` (every device), and the ``nets``, ``txs`` and ``loss`` it
    was built from."""
    nets = models.ModelSettings(
        embedding=args.embedding,
        width=args.width_mult,
        dtype=args.dtype,
        norm=args.norm,
        dims=args.dims,
    ).encoders()
    txs = {name: train.optimizer(train.TrainSettings(), 1.0) for name in train.ENCODERS}
    mesh = train.make_mesh()
    init = functools.partial(
        train.create_state,
        nets=nets,
        txs=txs,
        image_size=(args.image_size,) * args.dims,
        crop_size=args.crop_size,
    )
    init = jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))
    loss = {"temperature": args.temperature, "clamp": args.clamp, "window": args.window}
    loss["window_mode"] = "half_open" if args.half_open else "closed"
    step = train.compile_step(mesh, nets=nets, txs=txs, **loss)
    return SimpleNamespace(init=init, step=step, mesh=mesh, nets=nets, txs=txs, loss=loss)


def _torch_twin(args) -> subprocess.Popen:
    """benchmarks/torch_reference.py at ``args``' settings, serving timed runs on stdin."""
    cmd = [sys.executable, str(Path(__file__).with_name("torch_reference.py")), "--serve"]
    cmd += ["--image-size", str(args.image_size), "--crop-size", str(args.crop_size)]
    cmd += ["--dims", str(args.dims)]
    cmd += ["--batch", str(args.batch), "--width-mult", str(args.width_mult)]
    cmd += ["--norm", args.norm, "--embedding", str(args.embedding)]
    cmd += ["--anchors", str(args.anchors), "--crops-per-image", str(args.crops_per_image)]
    cmd += ["--temperature", str(args.temperature), "--window", str(args.window)]
    cmd += ["--no-clamp"] * (not args.clamp) + ["--half-open"] * args.half_open
    twin = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    json.loads(twin.stdout.readline())  # ready: built and warmed up
    return twin


def _alternate(run, twin, args) -> dict:
    """``args.rounds`` rounds of ``args.steps`` piaug steps then as many PyTorch steps (a
    pause between, for the other's threads to go idle): each round's ratio, and the median."""
    rounds = []
    for _ in range(args.rounds):
        time.sleep(0.5)
        start = time.perf_counter()
        for _ in range(args.steps):
            out = run()
        jax.block_until_ready(out)
        ours = (time.perf_counter() - start) / args.steps
        time.sleep(0.5)
        twin.stdin.write(f"{args.steps}\n")
        twin.stdin.flush()
        theirs = json.loads(twin.stdout.readline())["step_s"]
        rounds.append((ours, theirs))
    twin.stdin.close()
    twin.wait()
    ratios = [t / o for o, t in rounds]
    return {
        "reference": "torch_reference",
        "torch_step_s": round(float(np.median([t for _, t in rounds])), 4),
        "torch_samples_per_s": round(args.batch / float(np.median([t for _, t in rounds])), 3),
        "step_s_rounds": [round(o, 4) for o, _ in rounds],
        "torch_step_s_rounds": [round(t, 4) for _, t in rounds],
        "vs_torch_rounds": [round(r, 3) for r in ratios],
        "vs_torch": round(float(np.median(ratios)), 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_settings(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed steps after compiling")
    parser.add_argument("--no-reference", action="store_true", help="skip vgg19_features")
    parser.add_argument(
        "--torch",
        action="store_true",
        help="against benchmarks/torch_reference.py at the same settings, in turns",
    )
    parser.add_argument("--rounds", type=int, default=5, help="turns of each with --torch")
    args = parser.parse_args()
    if args.config:
        from_config(args)

    built = program(args)
    step, mesh = built.step, built.mesh
    state = built.init(jax.random.key(0))
    params = {name: models.num_params(state.params[name]) for name in train.ENCODERS}
    batch = _batch(
        args.image_size, args.crop_size, args.batch, args.anchors, args.crops_per_image, args.dims
    )
    device_batch = train.device_batch(batch, mesh)

    # Compiled as training compiles it (piaug.train.fit: the CPU's compiler options).
    start = time.perf_counter()
    step = step.lower(state, device_batch).compile(devices.step_compiler_options())
    compile_s = time.perf_counter() - start

    def run():
        nonlocal state
        state, metrics = step(state, device_batch)
        return metrics["loss"]

    twin = _torch_twin(args) if args.torch else None
    first_s, per_step = _time(run, args.steps)
    compile_s += first_s
    compared = _alternate(run, twin, args) if twin is not None else {}
    if compared:
        per_step = float(np.median(compared["step_s_rounds"]))
    result = {
        "benchmark": "train_step",
        "device": jax.devices()[0].device_kind,
        "devices": jax.device_count(),
        "image_size": args.image_size,
        "dims": args.dims,
        "crop_size": args.crop_size,
        "batch": args.batch,
        "width_mult": args.width_mult,
        "dtype": args.dtype,
        "norm": args.norm,
        "embedding": args.embedding,
        "anchors": args.anchors,
        "crops_per_image": args.crops_per_image,
        "temperature": args.temperature,
        "clamp": args.clamp,
        "config": args.config,
        "samples_per_s": round(args.batch / per_step, 3),
        "crops_per_s": round(args.batch * args.crops_per_image / per_step, 3),
        "step_s": round(per_step, 4),
        "compile_s": round(compile_s, 1),
        "params": sum(params.values()),
        "params_image_encoder": params["image"],
        "params_crop_encoder": params["crop"],
    }
    result.update(compared)
    if not args.no_reference and args.dims == 2:  # (the VGG reference is 2-D)
        reference = _vgg_reference(args, batch)
        result["reference"] = "vgg19_features"
        result["vgg19_features_samples_per_s"] = round(args.batch / reference, 3)
        result["step_vs_vgg19_features"] = round(reference / per_step, 3)
    result["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
