"""Writes the ranges of an estimate (a run's ``augment.json``) without its per-patch MI arrays
and search statistics, the encoder's path relative to the current folder:

python docs/results/strip_augment.py runs/cpu4/seed_0/adaptive/augment.json \
    docs/results/ceph_cpu_seed0_augment.json
"""

import json
import os
import sys

KEEP = ("brightness", "contrast", "target_mi", "mi_mean", "num_points", "iie_mean")


def main(source: str, target: str) -> None:
    with open(source) as f:
        d = json.load(f)
    out = {k: d[k] for k in ("template", "encoder", "num_images", "patch_size")}
    out["encoder"] = (
        os.path.relpath(out["encoder"]) if os.path.isabs(out["encoder"]) else out["encoder"]
    )
    out["groups"] = {g: {k: v[k] for k in KEEP} for g, v in d["groups"].items()}
    with open(target, "w") as f:
        f.write(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(*sys.argv[1:])
