r"""CC2D-S2 from one template and from K (issue 34): how good the pseudo stage's labels are, and
the detector trained on them, per run (``_common``: over the images every run's pseudo-labels,
or every run's detectors, share).

python -m tools.results.pseudo_labels --out=NAME RUN ...

For each run (``--config.stages=pseudo,detector,evaluate``): the MRE (mm, full resolution)
of its pseudo-labels (``pseudo/*.csv``) against the true landmarks, over the images that are
not templates, and over the images no run's templates include (the same images for every
run); then each detector's entry of its ``results.json`` (MRE, SDR, the images it was evaluated
on) beside the encoder's one-shot MRE on the same images, and the minutes from the detector's
first metrics row to its last (its training, with its probes).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from piaug import evaluate, layout
from piaug.data import landmarks
from piaug.templates import ImagePool
from tools.results import RESULTS, command
from tools.results.collect_runs import with_defaults


def pseudo_errors(run: Path) -> tuple[dict[str, float], list[str], dict]:
    """``run``'s pseudo-labels: each image's MRE (mm), the templates, the config."""
    config = ConfigDict(with_defaults(layout.read_json(run / layout.CONFIG_FILE)))
    pool = ImagePool(config)
    (path,) = sorted((run / layout.PSEUDO_DIR).glob("*.csv"))
    num = int(pool.examples[0]["landmarks"].shape[0])
    labels = landmarks.read_csv(path, num)
    (detector,) = sorted((run / layout.DETECTORS).iterdir())
    seen = layout.read_json(detector / layout.DETECTOR_EXAMPLES)
    templates = seen.get("templates") or [seen["template"]]
    errors = {}
    for image_id, found in labels.items():
        if image_id in templates:
            continue
        e = pool.examples[pool.ids.index(image_id)]
        spacing = np.asarray(e["spacing"], np.float64).reshape(1, -1)
        true = np.asarray(e["landmarks_original"], np.float64)
        errors[image_id] = float(evaluate.radial_errors(found[None], true[None], spacing).mean())
    return errors, templates, config


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    found = {run: pseudo_errors(Path(run)) for run in args.runs}
    excluded = {t for _, templates, _ in found.values() for t in templates}
    evaluated = [  # each run's detectors' images
        set(r["ids"])
        for run in args.runs
        for name, r in layout.read_json(Path(run) / layout.RESULTS_FILE).items()
        if name.startswith("detector_")
    ]
    shared = set.intersection(*evaluated)
    payload = {"command": command("tools.results.pseudo_labels", sys.argv[1:])}
    for run, (errors, templates, config) in found.items():
        common = [i for i in errors if i not in excluded]
        results = layout.read_json(Path(run) / layout.RESULTS_FILE)
        entry = {
            "templates": templates,
            "fusion": config.eval.fusion if len(templates) > 1 else None,
            "pseudo_mre_mm": float(np.mean(list(errors.values()))),
            "pseudo_images": len(errors),
            "pseudo_mre_mm_common": float(np.mean([errors[i] for i in common])),
            "common_images": len(common),
        }
        for name, result in results.items():
            if not name.startswith("detector_"):
                continue
            rows = (Path(run) / layout.DETECTORS / name / layout.METRICS_FILE).read_text()
            times = [json.loads(line)["time"] for line in rows.splitlines()]
            entry[name] = {
                "mre_mm": result["mre_mm"],
                "sdr": result["sdr"],
                "images": result["n_images"],
                "steps": result["checkpoint"]["step"],
                "minutes": round((times[-1] - times[0]) / 60, 1),
            }
            per_image = dict(zip(result["ids"], result["per_image_mre_mm"], strict=True))
            entry[name]["mre_mm_common"] = float(np.mean([per_image[i] for i in shared]))
            entry[name]["common_images"] = len(shared)
            for other in ("template_copy", "baseline"):  # on the detector's images
                by = results[other]
                per_image = dict(zip(by["ids"], by["per_image_mre_mm"], strict=True))
                if all(i in per_image for i in result["ids"]):
                    entry[name][f"{other}_mre_mm"] = float(
                        np.mean([per_image[i] for i in result["ids"]])
                    )
        payload[run] = entry
        print(run, json.dumps({k: v for k, v in entry.items() if k != "templates"}), flush=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {RESULTS / args.out}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
