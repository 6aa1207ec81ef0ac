r"""Gathers a seeds comparison (baseline, weight map alone, piaug; one table3 sweep per seed)
into ``docs/results/ceph_cpu_seeds.json`` (or ``--out``), which the README's seeds table is made
from.

python -m tools.results.collect_seeds --root=runs/seeds --baseline-runs=0:runs/fs/L3 \
    [--seeds=0,1,2]
python -m tools.results.collect_seeds --out=NAME --pipeline-runs=0:runs/a,1:runs/b,2:runs/c

``--curve NAME=FILE`` (repeatable) draws ``ceph_cpu_seeds_probe.png`` (``OUT_probe.png``
with ``--out``): the probe MRE of each
named ``metrics.jsonl`` (or JSON list of probe rows), e.g. piaug's run and the baseline's
checkpoints probed with the same template.

For each seed ``s``: ``ROOT/seed_s/{weightmap,adaptive}/results.json`` (the sweep's runs, and
``adaptive_capped`` where it exists: piaug with its estimate's upper ends capped) and
the baseline's ``results.json`` (``ROOT/seed_s/shared_baseline``, or the run given for that seed
by ``--baseline-runs``); the template is the one every row of that seed shares. ``--results``
names another results file for a seed's runs, a name or a glob that names one file in each
run (``0:results.template-075*.json``: an evaluation with another template, ``python -m
piaug.main ... --config.stages=evaluate --config.eval.template=075`` on each run). A name
that matches several files of a run is refused. ``--pipeline-runs`` names, per seed, one
pipeline run whose ``results.json`` holds every row (the template copied, the baseline and
piaug: e.g. ``configs/demo3d.py`` at ``--config.seed=S``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from piaug import analyze, plots
from tools.results import RESULTS, command
from tools.results.collect_runs import one_file

# the sweep's runs of a seed and their rows; adaptive_capped: piaug with ranges_file set to
# tools.results.strip_augment's capped copy of the seed's estimate (a diagnostic, not part of
# table3)
ROWS = (("weightmap", "weightmap"), ("adaptive", "piaug"), ("adaptive_capped", "piaug_capped"))
KEEP = ("mre_mm", "std_mm", "sdr", "protocol", "n_images", "per_landmark_mre_mm")


def _entry(results: dict, key: str) -> dict:
    entry = {k: results[key][k] for k in KEEP}
    entry["full_resolution_mre_mm"] = results[key]["full_resolution"]["mre_mm"]
    if "template" in results[key]:
        entry["template"] = results[key]["template"]["id"]
    if "checkpoint" in results[key]:
        entry["checkpoint_step"] = results[key]["checkpoint"]["step"]
    return entry


def gather(root: Path, seeds: list[str], reused: dict, files: dict, whole: bool = False) -> dict:
    """``{seed: {row: entry}}`` from ``ROOT/seed_s``'s runs; ``reused`` maps a seed to its
    baseline run's folder, ``files`` to the results file its runs are read from; ``whole``:
    that run's file gives piaug's row too (a pipeline run of both encoders)."""
    out = {}
    for seed in seeds:
        folder = root / f"seed_{seed}"
        base_dir = Path(reused.get(seed, folder / "shared_baseline"))
        rows = {}
        name = files.get(seed, "results.json")
        base = one_file(base_dir, name)
        if base:
            results = json.loads(base.read_text())
            rows["template_copy"] = _entry(results, "template_copy")
            rows["baseline"] = _entry(results, "baseline")
            if whole:
                rows["piaug"] = _entry(results, "piaug")
        for run, row in ROWS:
            path = one_file(folder / run, name)
            if path:
                rows[row] = _entry(json.loads(path.read_text()), "piaug")
        templates = {r["template"] for r in rows.values() if "template" in r}
        if len(templates) > 1:
            raise SystemExit(f"seed {seed}: rows with different templates {templates}")
        if rows:
            out[seed] = rows
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("runs/seeds"))
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--baseline-runs", default="", help="SEED:RUN_DIR,... reused baselines")
    parser.add_argument(
        "--pipeline-runs", default="", help="SEED:RUN_DIR,... runs that hold every row"
    )
    parser.add_argument(
        "--results",
        default="",
        help="SEED:NAME,... another results file (or glob) for a seed's runs",
    )
    parser.add_argument("--note", default="")
    parser.add_argument("--out", default="ceph_cpu_seeds", help="the file's name, without .json")
    parser.add_argument("--curve", action="append", default=[], help="NAME=FILE, repeatable")
    args = parser.parse_args()
    if args.pipeline_runs and args.baseline_runs:
        parser.error("give --baseline-runs or --pipeline-runs, not both")
    runs = args.pipeline_runs or args.baseline_runs
    reused = dict(item.split(":", 1) for item in runs.split(",") if item)
    files = dict(item.split(":", 1) for item in args.results.split(",") if item)
    wanted = [s.strip() for s in args.seeds.split(",") if s.strip()]
    seeds = gather(args.root, wanted, reused, files, whole=bool(args.pipeline_runs))
    payload = {
        "command": command("tools.results.collect_seeds", sys.argv[1:]),
        "note": args.note,
        "rows": sorted({k for rows in seeds.values() for k in rows}),
        "seeds": seeds,
    }
    out = RESULTS / f"{args.out}.json"
    out.write_text(json.dumps(payload, indent=1) + "\n")
    if args.curve:
        curves, copies = {}, set()
        for item in args.curve:
            name, path = item.split("=", 1)
            if path.endswith(".json"):  # a list of probe rows
                rows = [r for r in json.loads(Path(path).read_text()) if "probe_mre_mm" in r]
            else:
                rows = analyze.read_rows(Path(path), "probe_mre_mm")
            curves[name] = ([r["step"] for r in rows], [r["probe_mre_mm"] for r in rows])
            copies |= {round(r["probe_copy_mre_mm"], 6) for r in rows}
        reference = {"template copied": copies.pop()} if len(copies) == 1 else None
        plots.probe_curves(
            curves,
            RESULTS / f"{args.out}_probe.png",
            title="the probe, one template",
            reference=reference,
        )
    print(f"wrote {out}: seeds {sorted(seeds)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
