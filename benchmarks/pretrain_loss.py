r"""Does pretraining learn? The baseline pretrain stage on a small synthetic set, loss and PSI
at the start against the end, in float32 and (``--dtype bfloat16``) mixed precision.

python benchmarks/pretrain_loss.py                                # float32, 300 steps
python benchmarks/pretrain_loss.py --dtype float32 bfloat16       # both, curves compared

Runs ``python -m piaug.main --config=configs/test.py`` with a larger set and model (see
``_config``) in a temporary workdir, reads its ``metrics.jsonl`` and prints one JSON line per
dtype: the mean loss and stride-2 PSI over the first and the last ``--window`` steps and their
ratio (the reference is the run's own start). With two dtypes, a last line compares their
final losses (mixed precision should leave the curve unharmed: a ratio near 1).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from configs import test as test_config  # noqa: E402
from piaug import pipeline  # noqa: E402


def _config(args, dtype: str):
    config = test_config.get_config()
    config.stages = "pretrain"
    config.data.options.num_images = 16
    config.data.options.size = (256, 256)
    config.data.image_size = (128, 128)
    config.data.crop_size = 64
    config.model.width = args.width
    config.model.embedding = 16
    config.model.dtype = dtype
    config.loss.window = 9
    config.train.batch_size = 8
    config.train.steps = args.steps
    config.train.checkpoint_every = args.steps
    config.train.log_every = 1
    return config


def _run(args, dtype: str) -> dict:
    with tempfile.TemporaryDirectory() as workdir:
        start = time.perf_counter()
        pipeline.run(_config(args, dtype), workdir)
        seconds = time.perf_counter() - start
        rows = [json.loads(line) for line in (Path(workdir) / "metrics.jsonl").open()]
    loss = np.array([r["loss"] for r in rows])
    psi = np.array([r["psi_s2"] for r in rows])
    w = args.window
    return {
        "benchmark": "pretrain_loss",
        "dtype": dtype,
        "steps": len(rows),
        "width_mult": args.width,
        "seconds": round(seconds, 1),
        "loss_first": round(float(loss[:w].mean()), 4),
        "loss_last": round(float(loss[-w:].mean()), 4),
        "loss_last_vs_first": round(float(loss[-w:].mean() / loss[:w].mean()), 3),
        "psi_s2_first": round(float(psi[:w].mean()), 4),
        "psi_s2_last": round(float(psi[-w:].mean()), 4),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--window", type=int, default=30, help="steps averaged at each end")
    parser.add_argument("--width", type=float, default=0.125)
    parser.add_argument("--dtype", nargs="+", default=["float32"])
    args = parser.parse_args()
    results = [_run(args, dtype) for dtype in args.dtype]
    for r in results:
        print(json.dumps(r))
    if len(results) == 2:
        a, b = results
        ratio = round(b["loss_last"] / a["loss_last"], 3)
        print(json.dumps({"benchmark": "pretrain_loss", f"{b['dtype']}_vs_{a['dtype']}": ratio}))


if __name__ == "__main__":
    main()
