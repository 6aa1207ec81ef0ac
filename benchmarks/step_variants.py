r"""The encoders' train step compiled with different XLA CPU options, each against the PyTorch
twin, in turns within one run (the options that docs/performance.md reports).

python benchmarks/step_variants.py --image-size 192 --crop-size 64 --batch 4 --width-mult 0.25
python benchmarks/step_variants.py --config configs/ceph.py:cpu --steps 3

Takes train_step.py's settings (``--config`` or the flags). Compiles the step once per variant
(``VARIANTS``: XLA debug options passed as ``compiler_options``, e.g. which operations go to
YNNPACK, XLA's CPU kernel library, and which to XLA's own emitters and Eigen), then runs
``--rounds`` rounds: in each, ``--steps`` steps of every variant and of the PyTorch twin
(benchmarks/torch_reference.py in its own process), half a second apart. Prints one JSON line
per variant: its median step, ``vs_torch`` (the median over rounds of PyTorch's time over the
variant's; above 1 piaug is faster) and ``vs_default`` (the same against XLA's defaults
options).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from train_step import _batch, _torch_twin, add_settings, from_config, program

from piaug import train

YNN = "xla_cpu_experimental_ynn_fusion_type"
_T = "LIBRARY_FUSION_TYPE_"
VARIANTS = {
    "xla_default": {},  # XLA's own defaults (YNNPACK on)
    "ynn_off": {YNN: ""},  # Eigen and XLA's own emitters for everything
    "ynn_dots_only": {YNN: _T + "INDIVIDUAL_DOT"},
    "ynn_convolutions_only": {YNN: _T + "INDIVIDUAL_CONVOLUTION"},
    # piaug's (devices.CPU_STEP_OPTIONS): YNNPACK for the reductions only
    "ynn_reductions_only": {YNN: _T + "REDUCE"},
    "ynn_dots_and_reductions": {YNN: ",".join(_T + t for t in ("DOT", "INDIVIDUAL_DOT", "REDUCE"))},
    # piaug's before: the convolutions on Eigen, the rest as XLA's default
    "ynn_all_but_convolutions": {
        YNN: ",".join(_T + t for t in ("DOT", "INDIVIDUAL_DOT", "ELTWISE", "REDUCE"))
    },
    "ynn_off_onednn": {YNN: "", "xla_cpu_use_onednn": True},  # (onednn: no change here)
    "ynn_off_onednn_custom_call": {YNN: "", "xla_cpu_experimental_onednn_custom_call": True},
    "ynn_off_fast_min_max": {YNN: "", "xla_cpu_enable_fast_min_max": True},
    "ynn_off_eigen_one_thread": {YNN: "", "xla_cpu_multi_thread_eigen": False},
}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_settings(parser)
    parser.add_argument("--steps", type=int, default=5, help="steps of each, a round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated")
    args = parser.parse_args()
    if args.config:
        from_config(args)
    names = args.variants.split(",")
    built = program(args)
    init, step, mesh = built.init, built.step, built.mesh
    batch = train.device_batch(
        _batch(args.image_size, args.crop_size, args.batch, args.anchors, args.crops_per_image),
        mesh,
    )
    states, compiled = {}, {}
    for name in names:
        states[name] = init(jax.random.key(0))
        start = time.perf_counter()
        compiled[name] = step.lower(states[name], batch).compile(compiler_options=VARIANTS[name])
        print(json.dumps({"compiled": name, "s": round(time.perf_counter() - start, 1)}))
        states[name], metrics = compiled[name](states[name], batch)  # warm-up
        jax.block_until_ready(metrics)
    twin = _torch_twin(args)
    times = {name: [] for name in [*names, "torch"]}
    for _ in range(args.rounds):
        for name in names:
            time.sleep(0.5)
            start = time.perf_counter()
            for _ in range(args.steps):
                states[name], metrics = compiled[name](states[name], batch)
            jax.block_until_ready(metrics)
            times[name].append((time.perf_counter() - start) / args.steps)
        time.sleep(0.5)
        twin.stdin.write(f"{args.steps}\n")
        twin.stdin.flush()
        times["torch"].append(json.loads(twin.stdout.readline())["step_s"])
    twin.stdin.close()
    twin.wait()
    torch_s = np.asarray(times["torch"])
    for name in names:
        own = np.asarray(times[name])
        row = {
            "benchmark": "step_variants",
            "variant": name,
            "compiler_options": VARIANTS[name],
            "config": args.config,
            "image_size": args.image_size,
            "crop_size": args.crop_size,
            "batch": args.batch,
            "width_mult": args.width_mult,
            "step_s": round(float(np.median(own)), 4),
            "torch_step_s": round(float(np.median(torch_s)), 4),
            "vs_torch": round(float(np.median(torch_s / own)), 3),
            "vs_torch_rounds": np.round(torch_s / own, 3).tolist(),
            "vs_default": round(float(np.median(np.asarray(times[names[0]]) / own)), 3),
        }
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
