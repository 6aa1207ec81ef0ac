r"""Where the encoders' train step spends its time on this machine: its phases, and its
operations from a JAX profile.

python benchmarks/profile_step.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25
python benchmarks/profile_step.py --config configs/ceph.py:cpu --steps 3
python benchmarks/profile_step.py ... --xla-defaults     # compiled with XLA's own CPU options

Takes train_step.py's settings. Prints JSON lines:

* ``phases``: seconds of jitted pieces of the step, each compiled as training compiles it
  (``piaug.devices.step_compiler_options``) and timed alone on the same batch:
  ``forward`` (both encoders in training mode), ``forward_backward`` (the same and the gradient
  of every parameter, through a plain sum of the maps), ``loss`` (the multi-scale InfoNCE and
  its gradient with respect to the maps, given them), ``optimizer`` (both Adam updates, given
  gradients), ``transfer`` (the host batch to the device), ``step`` (the whole step). The
  backward's share is ``forward_backward - forward``.
* ``ops``: the whole step's operations from a JAX profile (``jax.profiler``, 3 steps), grouped
  by what XLA's metadata names (``_category``): the convolutions (forward, input gradient,
  kernel gradient), layout transposes and copies, batch norm, pooling, the encoders' other
  operations, the loss, the optimizer; milliseconds per step, summed over the threads.
  Convolutions that XLA hands to Eigen run asynchronously and do not show as operations of
  their own (``untimed_convolutions`` counts them): profile with ``--xla-defaults`` to see
  every convolution timed (XLA then runs them in YNNPACK).
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
import time

import jax
import jax.numpy as jnp
import optax
from train_step import _batch, add_settings, from_config, program

from piaug import devices, losses, train
from piaug.train_step import _features, _flat_crops


def _timed(fn, *args, repeats: int = 20) -> float:
    jax.block_until_ready(fn(*args))
    start = time.perf_counter()
    for _ in range(repeats):
        out = fn(*args)
    jax.block_until_ready(out)
    return (time.perf_counter() - start) / repeats


def _category(meta: str, line: str, body: str = "") -> str:
    """An operation's group, from its metadata (``jit(train_step)/...``), its HLO line and
    the body of the computation it calls (a fusion's)."""
    name = line.split("=")[0]
    if " convolution(" in line or "conv_general_dilated" in meta or "convolution(" in body:
        if not meta:  # kernel gradients lose their metadata in XLA's rewrites
            return "conv kernel gradient"
        return "conv input gradient" if "transpose(" in meta else "conv forward"
    if "transpose" in name or "copy" in name:
        return "layout transposes and copies"
    if "Encoder" in meta:
        if "BatchNorm" in meta:
            return "batch norm"
        if "reduce_window" in meta or "max_pool" in meta or "reduce-window" in name:
            return "pooling"
        return "encoder, other (activations, upsampling, concatenation)"
    if "jvp(" in meta:  # differentiated, outside the encoders: the loss
        return "loss"
    if meta:  # outside the gradient: both Adam updates, the learning rate, the metrics
        return "optimizer and metrics"
    return "other"


def _ops(step, state, batch, trace_dir: str) -> dict:
    for _ in range(2):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.start_trace(trace_dir, create_perfetto_trace=True)
    for _ in range(3):
        state, metrics = step(state, batch)
    jax.block_until_ready(metrics)
    jax.profiler.stop_trace()
    hlo = step.as_text()
    entry = hlo[hlo.index("ENTRY") :]
    info = {}
    for line in entry.splitlines():
        m = re.match(r"\s*(?:ROOT )?%([\w.\-]+) = ", line)
        if m:
            meta = re.search(r'op_name="([^"]*)"', line)
            calls = re.search(r"calls=%([\w.\-]+)", line)
            body = ""
            if calls:
                start = hlo.find(f"%{calls.group(1)} ")
                body = hlo[start : hlo.find("\n}", start)]
            info[m.group(1)] = (meta.group(1) if meta else "", line, body)
    events = json.load(
        gzip.open(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True)[0])
    )
    events = events["traceEvents"] if isinstance(events, dict) else events
    per_step = collections.Counter()
    for e in events:
        if e.get("ph") == "X" and e["name"] in info:
            per_step[_category(*info[e["name"]])] += e["dur"] / 1e3 / 3
    untimed = sum(1 for _, line, _ in info.values() if re.search(r" convolution\(", line))
    return {
        "ops_ms_per_step": {k: round(v, 1) for k, v in per_step.most_common()},
        "untimed_convolutions": untimed,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_settings(parser)
    parser.add_argument("--steps", type=int, default=5, help="timed repeats of each piece")
    parser.add_argument("--xla-defaults", action="store_true", help="XLA's CPU options")
    args = parser.parse_args()
    if args.config:
        from_config(args)
    options = {} if args.xla_defaults else devices.step_compiler_options()
    built = program(args)
    nets, txs, mesh, loss_kw = built.nets, built.txs, built.mesh, built.loss
    state = built.init(jax.random.key(0))
    host = _batch(args.image_size, args.crop_size, args.batch, args.anchors, args.crops_per_image)
    batch = train.device_batch(host, mesh)

    def compiled(fn, *example):
        return jax.jit(fn).lower(*example).compile(options)

    image = batch["image"].astype(jnp.float32) / 255.0
    crops, anchors, crop_anchors, per_image = _flat_crops(batch)

    def forward(params):
        feats, crop_feats, _ = _features(nets, params, state, image, crops, per_image)
        return feats, crop_feats

    def surrogate(params):
        feats, crop_feats = forward(params)
        return sum(jnp.sum(f) for f in [*feats, *crop_feats])

    def loss(feats, crop_feats):
        per_example, _ = losses.multiscale_info_nce(
            feats, crop_feats, anchors, crop_anchors, **loss_kw
        )
        return per_example.mean(0).sum()

    feats, crop_feats = jax.jit(forward)(state.params)
    grads = jax.jit(jax.grad(surrogate))(state.params)

    def optimizer(grads, opt_state, params):
        new = {}
        for name in train.ENCODERS:
            updates, _ = txs[name].update(grads[name], opt_state[name], params[name])
            new[name] = optax.apply_updates(params[name], updates)
        return new

    step = built.step.lower(state, batch).compile(options)
    phases = {
        "forward": _timed(compiled(forward, state.params), state.params, repeats=args.steps),
        "forward_backward": _timed(
            compiled(jax.grad(surrogate), state.params), state.params, repeats=args.steps
        ),
        "loss": _timed(
            compiled(jax.value_and_grad(loss, argnums=(0, 1)), feats, crop_feats),
            feats,
            crop_feats,
            repeats=args.steps,
        ),
        "optimizer": _timed(
            compiled(optimizer, grads, state.opt_state, state.params),
            grads,
            state.opt_state,
            state.params,
            repeats=args.steps,
        ),
        "transfer": _timed(lambda: train.device_batch(host, mesh), repeats=args.steps),
    }
    holder = {"state": state}

    def whole():
        holder["state"], metrics = step(holder["state"], batch)
        return metrics["loss"]

    phases["step"] = _timed(whole, repeats=args.steps)
    settings = {
        k: getattr(args, k)
        for k in ("config", "image_size", "crop_size", "batch", "width_mult", "norm")
    }
    settings.update(
        embedding=args.embedding, anchors=args.anchors, crops_per_image=args.crops_per_image
    )
    settings["compiler_options"] = options
    print(
        json.dumps(
            {
                "benchmark": "profile_step",
                "part": "phases",
                **settings,
                **{f"{k}_s": round(v, 4) for k, v in phases.items()},
            }
        ),
        flush=True,
    )
    with tempfile.TemporaryDirectory() as trace_dir:
        ops = _ops(step, holder["state"], batch, trace_dir)
    print(json.dumps({"benchmark": "profile_step", "part": "ops", **settings, **ops}))


if __name__ == "__main__":
    main()
