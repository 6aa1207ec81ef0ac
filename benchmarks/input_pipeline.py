r"""Input pipeline throughput: samples/s fed at the paper's setting (384 x 384, 64 x 64 crops).

python benchmarks/input_pipeline.py                      # synthetic 768 x 768 images
python benchmarks/input_pipeline.py --ceph-dir ../shared/data/isbi2015_ceph_train

Measures, in one run on the same prepared dataset:
* ``reads``: the reference, bare random reads of prepared records (no transform, no batching);
* ``pipeline``: the whole grain pipeline (exponential anchors, crop, rotation, adaptive
  jitter, batches of ``--batch``) with ``--workers`` worker processes (0: in this process).
The target (issue 3) is at least 200 samples/s on 2 cores. The training step's rate at the same
setting comes from ``benchmarks/train_step.py`` once the trainer exists; the pipeline must feed
at least 4x that.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np

from piaug import data
from piaug.data import input_pipeline as ip
from piaug.data import prepare

TARGET = 200.0  # samples/s


def _reads(source, n: int, seed: int = 0) -> float:
    order = np.random.default_rng(seed).integers(0, len(source), n)
    start = time.perf_counter()
    for i in order:
        source[int(i)]
    return n / (time.perf_counter() - start)


def _pipeline(source, transform, *, batch: int, workers: int, batches: int) -> float:
    loader = ip.make_loader(
        source,
        transform,
        global_batch_size=batch,
        seed=0,
        workers=workers,
        process_index=0,
        process_count=1,
    )
    it = iter(loader)
    for _ in range(max(4, 2 * workers)):  # start-up: worker processes, first reads
        next(it)
    start = time.perf_counter()
    for _ in range(batches):
        next(it)
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ceph-dir", default="", help="ISBI 2015 ceph folder (else synthetic)")
    parser.add_argument("--images", type=int, default=32, help="synthetic images")
    parser.add_argument("--image-size", type=int, default=384)
    parser.add_argument("--crop-size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--cache-dir", default="", help="prepared datasets (default: a temp dir)")
    args = parser.parse_args()

    if args.ceph_dir:
        dataset = data.load("ceph", args.ceph_dir, split="train")
    else:
        dataset = data.load("synthetic", num_images=args.images, size=(768, 768))
    cache = args.cache_dir or tempfile.mkdtemp(prefix="piaug_bench_")
    size = (args.image_size, args.image_size)
    start = time.perf_counter()
    prepared = prepare.prepare(dataset, image_size=size, footprint="disk(10)", cache_dir=cache)
    prep_s = time.perf_counter() - start

    medium = {"brightness": [0.505, 1.997], "contrast": [0.340, 2.329]}  # the authors' ranges
    high = {"brightness": [0.5617, 1.612], "contrast": [0.416, 1.817]}
    transform = ip.AnchorCrop(
        crop_size=args.crop_size,
        anchors="exponential",
        gamma=0.3,
        jitter=ip.augment.GroupJitter.from_mapping({"medium": medium, "high": high}),
    )
    reads = _reads(prepared.source, 400)
    results = {
        "dataset": str(dataset),
        "images": len(prepared),
        "image_size": args.image_size,
        "crop_size": args.crop_size,
        "batch": args.batch,
        "cpus": os.cpu_count(),
        "prepare_s": round(prep_s, 2),
        "reference_reads_per_s": round(reads, 1),
    }
    for workers in args.workers:
        rate = _pipeline(
            prepared.source, transform, batch=args.batch, workers=workers, batches=args.batches
        )
        results[f"pipeline_workers{workers}_samples_per_s"] = round(rate, 1)
        results[f"workers{workers}_vs_reads"] = round(rate / reads, 3)
        results[f"workers{workers}_vs_target_{TARGET:.0f}"] = round(rate / TARGET, 2)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
