r"""Device memory of the encoders' training step before it runs, per config and batch, and a
check of the figure against the memory the step really takes on this CPU.

python benchmarks/memory.py                                    # the three configs below
python benchmarks/memory.py --configs configs/hand.py:scratch --batches 4,8,16
python benchmarks/memory.py --no-predict --check configs/ceph.py configs/ceph.py:scratch \
    --check-steps 1                                            # the CPU check alone

For each config (``configs/NAME.py[:PRESETS]``) and batch (images a step) prints one JSON line:
XLA's ``memory_analysis()`` of the step compiled for this machine's backend from shapes alone
(``piaug.memory.encoder_step``; nothing allocated, no data read): ``peak_gb`` (arguments, the
outputs that do not reuse donated buffers, temporaries), its parts, and whether it fits 75 % of
a 16, 40 and 80 GB GPU (what JAX takes of a GPU by default). Compiled for the CPU, the figures
estimate a GPU's (XLA fuses and lays out differently there): rerun on the GPU for its own.

``--check CONFIG ...`` (default ``configs/ceph.py:cpu``) runs each config's step on random data
in a process of its own: the resident memory sampled every millisecond while its first steps
run, less the resident memory before them (state and batch in memory, the step compiled), set
against the prediction's share that running adds (the outputs not aliased, the temporaries).
The process runs with ``MALLOC_MMAP_THRESHOLD_`` fixed, so that glibc returns freed buffers to
the system and the resident memory follows the live buffers.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from piaug import devices, memory, train

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIGS = ("configs/ceph.py", "configs/ceph.py:scratch", "configs/ceph.py:cpu")
GPUS_GB = (16, 40, 80)


def load_config(spec: str):
    """``configs/NAME.py[:PRESETS]``'s config, as the command line loads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("config", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg or None)


def _describe(spec: str, config, batch: int) -> dict:
    return {
        "config": spec,
        "batch": batch,
        "image_size": list(config.data.image_size),
        "crop_size": int(config.data.crop_size),
        "crops_per_image": int(config.augment.crops_per_image),
        "anchors_per_crop": int(config.augment.anchors_per_crop),
        "width": float(config.model.width),
        "norm": config.model.norm,
        "device": jax.devices()[0].device_kind,
    }


def predicted(spec: str, batch: int | None, options: dict | None = None) -> dict:
    config = load_config(spec)
    batch = int(batch or config.train.batch_size)
    start = time.perf_counter()
    mem = memory.encoder_step(config, batch, options)
    row = {**_describe(spec, config, batch), "compile_s": round(time.perf_counter() - start, 1)}
    row["compiler_options"] = devices.step_compiler_options() if options is None else options
    row.update({f"{k}_gb": round(v / memory.GB, 3) for k, v in mem.as_dict().items()})
    row.update({f"fits_{g}gb": memory.fits(mem, g) for g in GPUS_GB})
    return row


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def check(spec: str, steps: int = 3) -> dict:
    """The step's memory as predicted and as measured on this CPU (see the module doc)."""
    config = load_config(spec)
    batch_size = int(config.train.batch_size)
    init, step, mesh = memory.encoder_program(config)
    state = jax.jit(init, out_shardings=NamedSharding(mesh, PartitionSpec()))(jax.random.key(0))
    rng = np.random.default_rng(0)
    host = {}
    for key, shape in memory.encoder_batch(config, batch_size).items():
        high = 256 if key == "image" else min(config.data.image_size)
        if key == "crop_anchor":
            high = int(config.data.crop_size)
        values = (
            rng.uniform(size=shape.shape) if key == "crop" else rng.integers(0, high, shape.shape)
        )
        host[key] = values.astype(shape.dtype)
    batch = train.device_batch(host, mesh)
    compiled = step.lower(state, batch).compile(devices.step_compiler_options())
    mem = memory.of_compiled(compiled)
    before, peak, running = _rss(), [0], [True]

    def sample():
        while running[0]:
            peak[0] = max(peak[0], _rss())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    for _ in range(steps):
        state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics)
    running[0] = False
    sampler.join()
    added = mem.outputs - mem.aliased + mem.temporaries
    measured = peak[0] - before
    return {
        **_describe(spec, config, batch_size),
        "check": "cpu_rss",
        "check_steps": steps,
        "predicted_peak_gb": round(mem.peak / memory.GB, 3),
        "predicted_added_gb": round(added / memory.GB, 3),
        "measured_added_gb": round(measured / memory.GB, 3),
        "rss_before_gb": round(before / memory.GB, 3),
        "measured_vs_predicted": round(measured / added, 3),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    parser.add_argument("--batches", default="", help="comma-separated; default the config's")
    parser.add_argument("--check", nargs="*", default=["configs/ceph.py:cpu"], help="configs")
    parser.add_argument("--check-steps", type=int, default=3)
    parser.add_argument("--no-predict", action="store_true", help="the check alone")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--compiler-options",
        default="",
        help="JSON, for the predictions: XLA options instead of the training loop's",
    )
    args = parser.parse_args()
    if not args.no_predict:
        batches = [int(b) for b in args.batches.split(",") if b] or [None]
        for spec in args.configs:
            for batch in batches:
                options = json.loads(args.compiler_options) if args.compiler_options else None
                print(json.dumps(predicted(spec, batch, options)), flush=True)
    for spec in args.check:
        if args.child:
            print(json.dumps(check(spec, args.check_steps)), flush=True)
            continue
        # in a child process whose allocator returns freed buffers at once
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 17)}
        cmd = [sys.executable, __file__, "--no-predict", "--child", "--check", spec]
        cmd += ["--check-steps", str(args.check_steps)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True)
        print(out.stdout.strip().splitlines()[-1], flush=True)


if __name__ == "__main__":
    main()
