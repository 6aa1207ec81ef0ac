r"""Per landmark, how a run's encoder misses (grid protocol, the run's template and images,
as ``evaluate``): the median and 90th percentile of the errors, the share over 10 mm, the mean
offset (mm; x to the right, y down: a bias when it is as large as the error); for the
template's landmarks copied unmoved, the same offset and the correlation of its errors with
the encoder's; the median distance from the match to the copied landmark (near 0: the match
did not move); and how often each landmark's true point is the one nearest to the match
(another landmark's: the match found that one instead).

python -m tools.results.landmark_errors --out=NAME RUN[:ENCODER] ...

``ENCODER`` is ``baseline`` (default) or ``piaug``; each run needs its ``results.json`` (the
template and the images evaluated: the training split's or another, as ``eval.split``) and its
data where its ``config.json`` says.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from ml_collections import ConfigDict

from piaug import checkpoints, configure, evaluate, layout, matching, templates
from tools.results import RESULTS, command
from tools.results.collect_runs import with_defaults


def setting(run: Path, encoder: str) -> dict:
    """What ``evaluate`` matched for ``encoder`` of ``run``: its config, encoder (images ->
    maps), template image and landmarks (row, col in the grid), the images evaluated, their
    true points in the grid and the grid's spacing (mm per pixel, x and y)."""
    config = ConfigDict(with_defaults(layout.read_json(run / layout.CONFIG_FILE)))
    entry = layout.read_json(run / layout.RESULTS_FILE)[encoder]
    pool = templates.ImagePool(config)  # the template's: the training split
    index = pool.ids.index(entry["template"]["id"])
    split = entry.get("split", config.data.split)  # the images evaluated (a test split)
    targets = pool if split == config.data.split else templates.ImagePool(config, split)
    keep = [targets.ids.index(i) for i in entry["ids"]]
    size = configure.image_size(config)
    template = pool.examples[index]
    spacing, truth = grid_truth([targets.examples[i] for i in keep], size)
    ckpt = layout.trained_encoders(run, config.train.baseline)[encoder]
    return {
        "config": config,
        "mre_mm": entry["mre_mm"],
        "size": size,
        "encoder": checkpoints.image_encoder(ckpt, configure.model(config)),
        "template_image": pool.images[index],
        "template_landmarks": template["landmarks"],
        "template_rows_cols": matching.template_cells(template["landmarks"], size),
        "images": targets.images[keep],
        "spacing": spacing,
        "truth": truth,
    }


def grid_truth(examples: list[dict], size) -> tuple[np.ndarray, np.ndarray]:
    """The grid's spacing (mm per pixel, x and y; volumes x, y, z) of each example and its
    true points in the grid of ``size``, as ``evaluate`` scores them."""
    t = evaluate.truth(examples, size)
    spacing = evaluate.grid_spacing(t["spacing"], t["original_size"], size)
    return spacing, evaluate.truth_in_grid(t["landmarks_original"], t["original_size"], size)


def check_mre(run: Path, offset: np.ndarray, mre_mm: float) -> None:
    """Stop unless the offsets' (mm) mean norm is the MRE the run's results.json holds."""
    mre = np.linalg.norm(offset, axis=-1).mean()
    if not np.isclose(mre, mre_mm, atol=1e-3):
        raise SystemExit(f"{run}: MRE {mre:.4f} != results.json's {mre_mm}")


def errors(run: Path, encoder: str) -> dict[str, np.ndarray]:
    """``{"offset", "copy_offset", "truth"}``, each ``(N, L, 2)`` in mm: the matches of
    ``encoder`` and the template's landmarks copied, less the true points; the true points."""
    s = setting(run, encoder)
    config = s["config"]
    pred = matching.predict(
        s["encoder"],
        s["template_image"],
        s["template_rows_cols"],
        s["images"],
        size=s["size"],
        settings=configure.match_settings(config),
    )
    truth, spacing = s["truth"], s["spacing"]
    copied = np.repeat(s["template_landmarks"][None].astype(np.float64), len(truth), axis=0)
    out = {
        "offset": (np.asarray(pred) - truth) * spacing[:, None, :],
        "copy_offset": (copied - truth) * spacing[:, None, :],
        "truth": truth * spacing[:, None, :],
    }
    check_mre(run, out["offset"], s["mre_mm"])
    return out


def summary(e: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    # For each prediction, the landmark whose true point is nearest to it (in that image).
    pred = e["truth"] + e["offset"]
    nearest = np.linalg.norm(pred[:, :, None] - e["truth"][:, None], axis=-1).argmin(-1)
    errors_mm = np.linalg.norm(e["offset"], axis=-1)
    copy_mm = np.linalg.norm(e["copy_offset"], axis=-1)
    for k in range(errors_mm.shape[1]):
        p, c = errors_mm[:, k], copy_mm[:, k]
        rows.append(
            {
                "landmark": k + 1,
                "mre_mm": float(p.mean()),
                "median_mm": float(np.median(p)),
                "p90_mm": float(np.percentile(p, 90)),
                "over_10mm_pct": float(100 * (p > 10).mean()),
                "mean_offset_mm": [float(v) for v in e["offset"][:, k].mean(0)],
                "copy_mre_mm": float(c.mean()),
                "copy_mean_offset_mm": [float(v) for v in e["copy_offset"][:, k].mean(0)],
                # None where either is constant (no correlation to give).
                "corr_with_copy": float(np.corrcoef(p, c)[0, 1]) if p.std() and c.std() else None,
                # How far the match moved from where the template's landmark was copied.
                "distance_to_copy_median_mm": float(
                    np.median(np.hypot(*(e["offset"][:, k] - e["copy_offset"][:, k]).T))
                ),
                "nearest_true_landmark_pct": {
                    str(j + 1): float(100 * n / len(p))
                    for j, n in enumerate(np.bincount(nearest[:, k], minlength=p.size))
                    if n
                },
            }
        )
    return rows


def cli(doc: str, module: str, analyse, options: dict[str, str] | None = None, finish=None) -> int:
    """The command line of this module and of its siblings (``module``: the one run, e.g.
    ``tools.results.landmark_errors``): ``--out=NAME RUN[:ENCODER] ...``,
    ``analyse(run, encoder)`` for each, written with the command to ``RESULTS/NAME.json``.
    ``options``: a script's own ``--NAME`` options (name -> help), passed to ``analyse`` as
    keywords; ``finish(payload)``, if given, adds to the payload before it is written."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN[:ENCODER]")
    parser.add_argument("--out", required=True, help="the result file's name, without .json")
    for name, text in (options or {}).items():
        parser.add_argument(f"--{name}", default="", help=text)
    args = parser.parse_args()
    extra = {name: getattr(args, name) for name in options or {}}
    payload = {"command": command(module, sys.argv[1:])}
    for spec in args.runs:
        run, _, encoder = spec.partition(":")
        payload[spec] = analyse(Path(run), encoder or "baseline", **extra)
    if finish is not None:
        finish(payload)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {RESULTS / args.out}.json")
    return 0


def main() -> int:
    return cli(
        __doc__,
        "tools.results.landmark_errors",
        lambda run, encoder: summary(errors(run, encoder)),
    )


if __name__ == "__main__":
    sys.exit(main())
