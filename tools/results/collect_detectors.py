r"""Gathers the detectors of some runs into a result file of this folder: each detector's
settings (its run's ``config.json`` against a preset), steps, training minutes, probe curve,
MRE on the images it did not train on, and the one-shot encoders' MRE on those same images.

python -m tools.results.collect_detectors --preset=configs/ceph.py:cpu --out=detectors_ceph_cpu \
    --reference=runs/det_s2 runs/det_sup100 runs/det_s2 ...

writes ``docs/results/detectors_ceph_cpu.json`` and ``..._probe.png``. The encoders' figures on
the same images come from the per-image MREs of the run's own ``results.json``, or of the
``--reference`` runs' (repeatable; runs that evaluated the encoders on a superset of those
images; ``RUN=RESULTS`` reads another results file of RUN, a name or a glob, e.g. an
evaluation with the template's vectors interpolated, whose figures are marked so).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from piaug import analyze, layout, plots
from tools.results import RESULTS, command
from tools.results.collect_runs import (
    IGNORED,
    one_file,
    overrides,
    preset_config,
    training_minutes,
)

# Where the encoders come from and how the run was kept: not the recipe.
DETECTOR_IGNORED = (
    *IGNORED,
    "detector.encoders",
    "detector.checkpoint_every",
    "detector.keep_checkpoints",
    "detector.log_every",
)


ENCODERS = ("baseline", "piaug")


def same_images(entry: dict, ids: list[str]) -> float | None:
    """An entry's MRE on ``ids`` (the mean of its per-image MREs), None unless it has all."""
    per_image = dict(zip(entry.get("ids", []), entry.get("per_image_mre_mm", []), strict=False))
    if not ids or not all(i in per_image for i in ids):
        return None
    return round(sum(per_image[i] for i in ids) / len(ids), 4)


def reference_results(spec: str) -> dict:
    """The results file of ``RUN`` (its ``results.json``) or ``RUN=RESULTS``."""
    run, _, name = spec.partition("=")
    path = one_file(Path(run), name or layout.RESULTS_FILE)
    if path is None:
        raise SystemExit(f"--reference={spec}: no such results file")
    return layout.read_json(path)


def _label(name: str, entry: dict) -> str:
    """``baseline (template 054)``, with ``, interpolated`` when the template's vectors were."""
    sampling = entry.get("eval", {}).get("template_sampling", "cell")
    interpolated = ", interpolated" if sampling == "bilinear" else ""
    return f"{name} (template {entry['template']['id']}{interpolated})"


def collect(run: Path, preset: dict, references: list[dict]) -> list[dict]:
    config = layout.read_json(run / layout.CONFIG_FILE)
    results = layout.read_json(run / layout.RESULTS_FILE) or {}
    changed = [
        o
        for o in overrides(config, preset)
        if not any(o.startswith(f"{field}=") for field in DETECTOR_IGNORED)
    ]
    out = []
    for name in layout.trained_detectors(run):
        folder = run / layout.DETECTORS / name
        rows = analyze.read_rows(folder / layout.METRICS_FILE, "loss")
        probes = analyze.read_rows(folder / layout.METRICS_FILE, "probe_mre_mm")
        batch = config["detector"]["batch_size"]  # the template comes on top
        # as run: the median step (its input pipeline beside it) and the mean probe
        step_s = [batch / r["samples_per_s"] for r in rows if r.get("samples_per_s")]
        probe_s = [r["probe_s"] for r in probes if "probe_s" in r]
        entry = {
            "run": run.name,
            "name": name,
            "overrides": changed,
            "trained_on": layout.read_json(folder / layout.DETECTOR_EXAMPLES),
            "steps": rows[-1]["step"] if rows else 0,
            "batch_size": batch,
            "minutes": round(training_minutes(rows, batch), 2),
            "seconds_per_step": round(float(np.median(step_s)), 3) if step_s else None,
            "probe_seconds": round(float(np.mean(probe_s)), 2) if probe_s else None,
            "probe": {
                "step": [r["step"] for r in probes],
                "mre_mm": [r["probe_mre_mm"] for r in probes],
            },
        }
        if name in results:
            r = results[name]
            entry |= {
                "mre_mm": r["mre_mm"],
                "sdr": r["sdr"],
                "full_resolution_mre_mm": r["full_resolution"]["mre_mm"],
                "per_landmark_mre_mm": r["per_landmark_mre_mm"],
                "n_images": r["n_images"],
                "mean_confidence": r.get("mean_confidence"),
            }
            # Each encoder of this run's evaluation and of the reference's, named with its
            # template (the two may have matched from different ones).
            found = {}
            for source in (results, *references):
                for k, v in source.items():
                    mre = same_images(v, r["ids"]) if k in ENCODERS else None
                    if mre is not None:
                        found[_label(k, v)] = mre
            entry["encoders_on_same_images"] = found
        out.append(entry)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--preset", required=True, help="e.g. configs/ceph.py:cpu")
    parser.add_argument("--out", required=True, help="the result file's name, without .json")
    parser.add_argument(
        "--reference",
        action="append",
        default=[],
        help="RUN[=RESULTS], repeatable: runs whose encoders' results to compare",
    )
    parser.add_argument("--note", default="", help="a line kept in the file")
    args = parser.parse_args()
    preset = preset_config(args.preset)
    references = [reference_results(spec) for spec in args.reference]
    detectors = [d for run in args.runs for d in collect(run, preset, references)]
    payload = {
        "preset": args.preset,
        "note": args.note,
        "command": command("tools.results.collect_detectors", sys.argv[1:]),
        "detectors": detectors,
    }
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    curves = {
        f"{d['run']}/{d['name']}": (d["probe"]["step"], d["probe"]["mre_mm"])
        for d in detectors
        if d["probe"]["step"]
    }
    if curves:
        plots.probe_curves(curves, RESULTS / f"{args.out}_probe.png", title=args.preset)
    print(f"wrote {RESULTS / args.out}.json ({len(detectors)} detectors)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
