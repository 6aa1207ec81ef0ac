"""piaug.estimate.estimate (Eq. 10, three groups) against the authors' way: a loop over sklearn.

The workload of the issue: the three information groups on the 150 ISBI ceph training images at
384 x 384 (``--ceph-dir``; synthetic X-rays otherwise), k key points per group, 64 x 64 patches,
brightness/contrast grown in steps of 0.03/0.04 both ways. Given the encoder's features: they
are random here (the matching costs the same whatever they hold) unless ``--run`` names a run's
folder, whose baseline encoder then computes them (not timed; restored from the folder alone).

The reference, the authors' way: sklearn's ``mutual_info_score`` per pair of patches for the
targets, then per patch the factors grown one step at a time (jitter the float patch, round,
sklearn MI against the patch) until the MI falls below the target. It is timed on a random
subset of the patches (``--reference-patches``) and scaled to all of them; the piaug figure is
the whole estimate (matching included). Prints one JSON line. Run:

  python benchmarks/estimate.py --ceph-dir ../shared/data/isbi2015_ceph_train
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import numpy as np
from sklearn.metrics import mutual_info_score

from piaug import augment, estimate, info
from piaug.data import prepare


def load_images(ceph_dir: str | None, n: int, size: int):
    if ceph_dir:
        from piaug import data

        ds = data.load("ceph", ceph_dir, split="train")
        source = f"ISBI ceph {ceph_dir}"
    else:
        from piaug.data import synthetic

        ds = [synthetic.generate(i) for i in range(n)]
        source = "synthetic"
    images, first = [], None
    for i in range(min(n, len(ds))):
        ex = ds[i]
        first = ex["image"] if first is None else first
        images.append(prepare.resize_image(ex["image"], (size, size)))
    return np.stack(images), first, f"{source}, {len(images)} images at {size} x {size}"


def features_for(images, args):
    if not args.run:
        rng = np.random.default_rng(0)
        return [
            rng.normal(size=(len(images), -(-args.size // s), -(-args.size // s), 16)).astype(
                np.float32
            )
            for s in (32, 16, 8, 4, 2)
        ], "random"
    from piaug import checkpoints, matching

    apply = checkpoints.run_encoders(args.run)[args.encoder]
    return matching.encode(apply, images), f"{args.encoder} encoder of {args.run}"


def reference(images, found, template, counts, targets, patch, max_steps, subset, seed):
    """The authors' loop on ``subset`` random patches of all groups; seconds, scaled to all."""
    ps = estimate.patches(images, found, patch)  # (N, P, s, s)
    n, p = ps.shape[:2]
    rng = np.random.default_rng(seed)
    group_of = np.repeat(np.arange(len(counts)), counts)
    limit = estimate.step_limits(max_steps)
    # targets: one sklearn call per (image, point) pair, timed on the subset and scaled
    pairs = [(i, j) for i in range(n) if i != template for j in range(p)]
    chosen = rng.choice(len(pairs), size=min(subset, len(pairs)), replace=False)
    start = time.perf_counter()
    for k in chosen:
        i, j = pairs[k]
        mutual_info_score(ps[template, j].ravel(), ps[i, j].ravel())
    target_s = (time.perf_counter() - start) * len(pairs) / len(chosen)
    chosen = rng.choice(n * p, size=min(subset, n * p), replace=False)
    start = time.perf_counter()
    calls = 0
    for k in chosen:
        i, j = divmod(int(k), p)
        x = ps[i, j]
        for sign, lim in ((-1, limit[0]), (1, limit[1])):
            for s in range(1, lim + 1):
                b, c = (max(0.0, 1 + sign * st * s) for st in estimate.STEP_SIZES)
                y = augment.color_jitter(x.astype(np.float32) / 255, np.float32(b), np.float32(c))
                calls += 1
                aug = np.round(y * 255).astype(np.uint8)
                if mutual_info_score(x.ravel(), aug.ravel()) < targets[group_of[j]]:
                    break
    search_s = (time.perf_counter() - start) * (n * p) / len(chosen)
    return target_s + search_s, {
        "target_s": target_s,
        "search_s": search_s,
        "mi_calls_per_patch": calls / len(chosen),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ceph-dir", default=None)
    parser.add_argument("--images", type=int, default=150)
    parser.add_argument("--size", type=int, default=384)
    parser.add_argument("--points", type=int, default=16, help="key points per group")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--max-steps", type=int, default=100)
    parser.add_argument("--reference-patches", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--run", default=None, help="a run folder: its encoder gives the features")
    parser.add_argument("--encoder", default="baseline", choices=["baseline", "piaug"])
    args = parser.parse_args()

    images, original, source = load_images(args.ceph_dir, args.images, args.size)
    template = 0
    iie = prepare.resize_bilinear(
        np.asarray(info.entropy_map(original, info.disk(10))), (args.size, args.size)
    )
    features, kind = features_for(images, args)
    times, out = [], None
    for _ in range(args.repeats):  # the first includes compilation
        start = time.perf_counter()
        out = estimate.estimate(
            features,
            images,
            iie,
            template,
            num_points=args.points,
            patch_size=args.patch,
            max_steps=args.max_steps,
        )
        times.append(time.perf_counter() - start)
    counts = [out["groups"][g]["num_points"] if g in out["groups"] else 0 for g in info.GROUP_NAMES]
    points = np.concatenate(
        [
            np.asarray(out["groups"][g]["points"]).reshape(-1, 2)
            for g in info.GROUP_NAMES
            if g in out["groups"]
        ]
    )
    from piaug import matching

    vectors = matching.template_vectors([f[template] for f in features], points)
    found = matching.match_all(features, vectors, size=(args.size, args.size))
    found[template] = points
    targets = [
        out["groups"][g]["target_mi"] if g in out["groups"] else 0.0 for g in info.GROUP_NAMES
    ]  # the same targets: the search does the same work
    ref_s, ref_detail = reference(
        images,
        found,
        template,
        counts,
        targets,
        args.patch,
        args.max_steps,
        args.reference_patches,
        0,
    )
    print(
        json.dumps(
            {
                "workload": f"{source}; {sum(counts)} key points ({counts} low/medium/high), "
                f"{args.patch} x {args.patch} patches, up to {args.max_steps} steps",
                "features": kind,
                "piaug_s": round(min(times), 2),
                "piaug_first_call_s": round(times[0], 2),
                "piaug_parts_s": {k: round(v, 2) for k, v in out["timing_s"].items()},
                "sklearn_loop_s": round(ref_s, 1),
                "sklearn_loop_parts": {k: round(v, 2) for k, v in ref_detail.items()},
                "sklearn_loop_timed_on": f"{args.reference_patches} random patches, scaled",
                "ratio_sklearn_over_piaug": round(ref_s / min(times), 1),
                "target_s": 60,
                "ranges": {
                    g: {"brightness": v["brightness"], "contrast": v["contrast"]}
                    for g, v in out["groups"].items()
                },
                "device": str(jax.devices()[0]),
            }
        )
    )


if __name__ == "__main__":
    main()
