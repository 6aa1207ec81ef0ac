r"""Runs one of the paper's ablation sweeps (``piaug.ablations.SWEEPS``) and gathers its table.

  python launch/sweep.py --config=configs/ceph.py:cpu --sweep=table1_gamma --root=runs/gamma \
      -- --config.data.dir=/path/to/ISBI2015

First a shared baseline (``ROOT/shared_baseline``: stages info, pretrain, evaluate), then
every preset of the sweep in ``ROOT/PRESET`` with
``--config.train.baseline=ROOT/shared_baseline/checkpoints``, so that all of them use one
baseline encoder (for the estimate and the template). Arguments after
``--`` go to every run. Each run skips the stages it has finished, so running the sweep again
resumes it. Then the results are gathered into ``ROOT/SWEEP.md`` and ``ROOT/SWEEP.csv``
(the piaug encoder of each run, or the baseline where a run trains none).

  --print    prints the commands instead (one per line, the baseline first: run it first, then
             the rest in parallel on a cluster), then exits.
  --gather   only gathers the table from the runs that have finished.
  --presets  a comma-separated subset of the sweep's presets.
  --baseline an existing baseline's checkpoints/ folder (trained with the same config) to use
             instead of training the shared one.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from piaug import ablations  # noqa: E402

_RADII = ("2.0", "2.5", "3.0", "4.0")


def _with_preset(config: str, preset: str) -> str:
    return f"{config},{preset}" if ":" in config else f"{config}:{preset}"


def commands(
    config: str, sweep: str, root: Path, presets, extra, baseline: Path | None = None
) -> list[tuple[str, list[str]]]:
    """``(name, argv)`` of the baseline run (unless ``baseline`` names existing checkpoints)
    and each preset's run."""
    base = [sys.executable, "-m", "piaug.main"]
    runs = [
        (
            "baseline",
            [
                *base,
                f"--config={config}",
                f"--workdir={root / 'shared_baseline'}",
                "--config.stages=info,pretrain,evaluate",
                *extra,
            ],
        )
    ]
    shared = root / "shared_baseline" / "checkpoints"
    if baseline is not None:
        runs, shared = [], baseline
    for preset in presets:
        runs.append(
            (
                preset,
                [
                    *base,
                    f"--config={_with_preset(config, preset)}",
                    f"--workdir={root / preset}",
                    f"--config.train.baseline={shared}",
                    *extra,
                ],
            )
        )
    return runs


def gather(root: Path, names) -> list[dict]:
    """One row per run with a results.json: its piaug entry, else its baseline entry."""
    rows = []
    for name in names:
        path = root / name / "results.json"
        if not path.exists():
            rows.append({"run": name, "encoder": "(not finished)"})
            continue
        results = json.loads(path.read_text())
        encoder = "piaug" if "piaug" in results else "baseline"
        r = results[encoder]
        row = {"run": name, "encoder": encoder, "mre_mm": round(r["mre_mm"], 3)}
        row.update({f"sdr_{k}": round(r["sdr"][k], 2) for k in _RADII})
        row["full_mre_mm"] = round(r["full_resolution"]["mre_mm"], 3)
        row["protocol"] = r["protocol"]
        row["n_images"] = r["n_images"]
        rows.append(row)
    return rows


def to_markdown(rows: list[dict], title: str) -> str:
    cols = [
        "run",
        "encoder",
        "mre_mm",
        *(f"sdr_{k}" for k in _RADII),
        "full_mre_mm",
        "protocol",
        "n_images",
    ]
    head = [
        "run",
        "encoder",
        "MRE (mm)",
        *(f"SDR {k} mm (%)" for k in _RADII),
        "MRE full res. (mm)",
        "protocol",
        "images",
    ]
    lines = [f"## {title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in cols) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    out = io.StringIO()
    writer = csv.DictWriter(out, keys, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = []
    if "--" in argv:
        at = argv.index("--")
        argv, extra = argv[:at], argv[at + 1 :]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True, help="configs/NAME.py[:presets]")
    parser.add_argument("--sweep", required=True, choices=sorted(ablations.SWEEPS))
    parser.add_argument("--root", required=True, type=Path, help="one workdir per run in it")
    parser.add_argument("--presets", default="", help="a comma-separated subset of the sweep")
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="an existing baseline's checkpoints/ folder (same config) instead of training one",
    )
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--print", action="store_true", help="print the commands, run nothing")
    mode.add_argument("--gather", action="store_true", help="only gather the results")
    args = parser.parse_args(argv)

    presets = list(ablations.SWEEPS[args.sweep])
    if args.presets:
        chosen = [p.strip() for p in args.presets.split(",") if p.strip()]
        unknown = [p for p in chosen if p not in presets]
        if unknown:
            parser.error(f"--presets: {unknown} are not in sweep {args.sweep} ({presets})")
        presets = chosen
    if args.baseline is not None and not args.baseline.is_dir():
        parser.error(f"--baseline {args.baseline} is not a folder of checkpoints")
    baseline = None if args.baseline is None else args.baseline.absolute()
    runs = commands(args.config, args.sweep, args.root, presets, extra, baseline)
    if args.print:
        for _, argv_ in runs:
            print(shlex.join(argv_))
        return 0
    if not args.gather:
        for name, argv_ in runs:
            print(f"sweep {args.sweep}: {name}: {shlex.join(argv_)}", flush=True)
            done = subprocess.run(argv_)
            if done.returncode:
                print(
                    f"sweep {args.sweep}: run {name} failed ({done.returncode}); stopping. "
                    "Fix it and run the sweep again: finished stages are skipped.",
                    file=sys.stderr,
                )
                return done.returncode
    rows = gather(args.root, presets)
    title = f"{args.sweep} ({args.config}{' ' + ' '.join(extra) if extra else ''})"
    markdown = to_markdown(rows, title)
    args.root.mkdir(parents=True, exist_ok=True)
    (args.root / f"{args.sweep}.md").write_text(markdown)
    (args.root / f"{args.sweep}.csv").write_text(to_csv(rows))
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
