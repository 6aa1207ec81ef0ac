"""piaug.info.entropy_map against skimage.filters.rank.entropy (the reference, one CPU core).

Cases (DESIGN section 1, the paper's setting is a disk of radius 10):
  (a) one full-resolution radiograph (2400 x 1935),
  (b) a batch of 16 images of 384 x 384;
  with --volume N instead: (c) one N^3 synthetic CT-like volume (piaug.data.synthetic3d) under
  a ball of radius --volume-radius (2: the paper's 5-voxel H&N patch), against skimage's
  3-D rank entropy.
Prints one JSON line per case with both times, the ratio skimage / piaug (> 1: piaug faster),
the largest absolute difference, and memory. Run:

  python benchmarks/entropy.py                      # real radiographs from ../shared/data if there
  python benchmarks/entropy.py --image-dir DIR      # any folder of images; else synthetic ones
  python benchmarks/entropy.py --volume 128         # a 128^3 volume (issue 33)
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import time
from pathlib import Path

import jax
import numpy as np
from skimage.filters.rank import entropy as skimage_entropy
from skimage.io import imread
from skimage.transform import resize

from piaug import info

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared/data/isbi2015_ceph_train/images"


def load_images(image_dir: Path | None, count: int) -> tuple[list[np.ndarray], str]:
    if image_dir is not None and image_dir.is_dir():
        paths = sorted(p for p in image_dir.iterdir() if p.suffix.lower() in (".jpg", ".png"))
        images = []
        for path in paths[:count]:
            image = imread(path)
            images.append(image[..., 0] if image.ndim == 3 else image)
        return images, str(image_dir)
    from piaug.data import synthetic

    images = [synthetic.generate(i, size=(2400, 1935))["image"] for i in range(count)]
    return images, "synthetic 2400 x 1935"


def best_time(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return min(times), out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def device_peak_mb() -> float | None:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return None if peak is None else peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--radius", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--tiles", default="", help="comma-separated tile widths to time besides the default"
    )
    parser.add_argument("--skip-skimage-batch", action="store_true")
    parser.add_argument("--volume", type=int, default=0, help="N: case (c), an N^3 volume")
    parser.add_argument("--volume-radius", type=int, default=2)
    args = parser.parse_args()
    if args.volume:
        volume_case(args)
        return

    images, source = load_images(args.image_dir, args.batch)
    footprint = info.disk(args.radius)
    device = jax.devices()[0].device_kind
    rss_before = peak_rss_mb()

    tiles = [None] + [int(t) for t in args.tiles.split(",") if t]

    def run_case(case: str, x: np.ndarray, reference, reference_repeats: int, **extra) -> None:
        """Times piaug at every tile width (first calls apart) and the reference; prints JSON."""

        def ours(tile):
            return np.asarray(info.entropy_map(x, footprint, tile=tile))

        per_tile, first = {}, {}
        for tile in tiles:
            name = str(tile or "default")
            first[name] = round(best_time(functools.partial(ours, tile), 1)[0], 3)
            per_tile[name], out = best_time(functools.partial(ours, tile), args.repeats)
        t_ref, expected = best_time(reference, reference_repeats)
        report = {
            "case": case,
            "shape": list(x.shape),
            "footprint": f"disk({args.radius})",
            "device": device,
            "skimage_s": round(t_ref, 4),
            "piaug_s": round(per_tile["default"], 5),
            "ratio_skimage_over_piaug": round(t_ref / per_tile["default"], 2),
            "max_abs_diff": float(np.abs(out - expected).max()),
            "piaug_s_per_tile": {k: round(v, 5) for k, v in per_tile.items()},
            "piaug_first_call_s": first,
            **extra,
        }
        print(json.dumps(report), flush=True)
        if report["max_abs_diff"] > 1e-4:
            raise SystemExit(f"{case}: values disagree with skimage beyond 1e-4")

    # (a) one full-resolution image.
    full = images[0]
    run_case(
        "a_full_resolution",
        full,
        lambda: skimage_entropy(full, footprint),
        min(args.repeats, 2),
        source=source,
    )
    rss_after = peak_rss_mb()
    memory = {
        "case": "a_full_resolution_memory",
        "process_peak_rss_mb": round(rss_after, 1),
        "rss_before_mb": round(rss_before, 1),
        "device_peak_mb": device_peak_mb(),
    }
    print(json.dumps(memory), flush=True)

    # (b) a batch of small images.
    batch = np.stack(
        [
            (resize(im, (args.size, args.size), preserve_range=True, anti_aliasing=True))
            .round()
            .astype(np.uint8)
            for im in images
        ]
    )
    run_case(
        "b_batch",
        batch,
        lambda: np.stack([skimage_entropy(im, footprint) for im in batch]),
        1 if args.skip_skimage_batch else min(args.repeats, 2),
    )


def volume_case(args) -> None:
    """(c): one synthetic CT-like volume, a ball footprint, piaug against skimage."""
    from piaug.data import synthetic3d

    n = int(args.volume)
    volume = synthetic3d.generate(0, size=(n, n, n))["image"]
    footprint = info.ball(args.volume_radius)

    def ours():
        return np.asarray(info.entropy_map(volume, footprint))

    first, _ = best_time(ours, 1)
    t_ours, out = best_time(ours, args.repeats)
    t_ref, expected = best_time(lambda: skimage_entropy(volume, footprint), min(args.repeats, 2))
    report = {
        "case": "c_volume",
        "shape": list(volume.shape),
        "footprint": f"ball({args.volume_radius})",
        "device": jax.devices()[0].device_kind,
        "skimage_s": round(t_ref, 4),
        "piaug_s": round(t_ours, 5),
        "ratio_skimage_over_piaug": round(t_ref / t_ours, 2),
        "max_abs_diff": float(np.abs(out - expected).max()),
        "piaug_first_call_s": round(first, 3),
        "process_peak_rss_mb": round(peak_rss_mb(), 1),
    }
    print(json.dumps(report), flush=True)
    if report["max_abs_diff"] > 1e-4:
        raise SystemExit("c_volume: values disagree with skimage beyond 1e-4")


if __name__ == "__main__":
    main()
