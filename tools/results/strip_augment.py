"""Writes the ranges of an estimate (a run's ``augment.json``) without its per-patch MI arrays
and search statistics, the encoder's path relative to the current folder:

python -m tools.results.strip_augment runs/cpu5/seed_0/adaptive/augment.json \
    docs/results/ceph_cpu_seed0_augment.json

With ``--max-brightness`` / ``--max-contrast`` every group's upper end is capped there (the
low ends kept) and the caps are recorded under ``"capped"``: a ranges file for
``config.augment.ranges_file`` that tests what the estimate's wide upper ends do:

python -m tools.results.strip_augment docs/results/ceph_cpu_C5_seed0_augment.json \
    docs/results/ceph_cpu_C5_seed0_augment_capped.json --max-brightness=1.15 --max-contrast=1.25
"""

import argparse
import json
import os

KEEP = ("brightness", "contrast", "target_mi", "mi_mean", "num_points", "iie_mean")


def strip(d: dict, caps: dict | None = None) -> dict:
    out = {k: d[k] for k in ("template", "encoder", "num_images", "patch_size")}
    out["encoder"] = (
        os.path.relpath(out["encoder"]) if os.path.isabs(out["encoder"]) else out["encoder"]
    )
    out["groups"] = {g: {k: v[k] for k in KEEP} for g, v in d["groups"].items()}
    caps = {k: v for k, v in (caps or {}).items() if v is not None}
    for group in out["groups"].values():
        for key, cap in caps.items():
            low, high = group[key]
            if cap <= low:
                raise SystemExit(f"--max-{key}={cap} is not above the low end {low}")
            group[key] = [low, min(high, cap)]
    if caps:
        out["capped"] = caps
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source")
    parser.add_argument("target")
    parser.add_argument("--max-brightness", type=float, help="cap the upper ends here")
    parser.add_argument("--max-contrast", type=float, help="cap the upper ends here")
    args = parser.parse_args(argv)
    with open(args.source) as f:
        d = json.load(f)
    caps = {"brightness": args.max_brightness, "contrast": args.max_contrast}
    with open(args.target, "w") as f:
        f.write(json.dumps(strip(d, caps), indent=1) + "\n")


if __name__ == "__main__":
    main()
