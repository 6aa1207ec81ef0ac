r"""The K curve: MRE against the number of templates, from ``tools.results.several_templates``'s
files (issue 34), the mean over the files (seeds) with their standard deviation.

python -m tools.results.k_curve --out=NAME [--fusion=weighted] [--sets=KEY,...] FILE ...

``FILE``: result files of ``docs/results`` without .json, one per seed. Lines: each set key
given (``POLICY/RULE`` of ``--policies``/``--sets``), random sets (the mean of the draws), the
K templates of lowest single-template MRE (chosen by the labels: a bound) and the copy, each
fused by ``--fusion``. Writes ``docs/results/NAME.png``.
"""

from __future__ import annotations

import argparse
import json
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tools.results import RESULTS  # noqa: E402


def curves(files: list[dict], fusion: str, keys: list[str]) -> tuple[list[int], dict]:
    """``(ks, {label: (K, seeds) array})`` over the runs of ``files``."""
    entries = [v for f in files for k, v in f.items() if k != "command" and isinstance(v, dict)]
    ks = sorted({int(k) for e in entries for k in e if k.isdigit()})
    lines: dict[str, list] = {}
    for label, read in [
        *[(key, lambda row, key=key: row["sets"][key]["mre_mm"][fusion]) for key in keys],
        ("random sets", lambda row: row["by_rule"][fusion]["random_mean"]),
        ("the labels' best K (a bound)", lambda row: row["by_rule"][fusion]["oracle"]),
    ]:
        lines[label] = np.array([[read(e[str(k)]) for e in entries] for k in ks])
    return ks, lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--out", required=True)
    parser.add_argument("--fusion", default="weighted")
    parser.add_argument("--sets", default="", help="set keys (POLICY/RULE), comma-separated")
    args = parser.parse_args()
    files = [json.loads((RESULTS / f"{name}.json").read_text()) for name in args.files]
    ks, lines = curves(files, args.fusion, [k for k in args.sets.split(",") if k])
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for label, values in lines.items():
        mean = values.mean(1)
        std = values.std(1, ddof=1) if values.shape[1] > 1 else np.zeros_like(mean)
        ax.errorbar(ks, mean, yerr=std, marker="o", capsize=3, label=label)
    ax.set_xlabel("templates annotated (K)")
    ax.set_ylabel(f"MRE (mm), {args.fusion} fusion")
    ax.set_xticks(ks)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{len(files)} seeds' baselines, ISBI 2015 training images", fontsize=9)
    fig.tight_layout()
    path = RESULTS / f"{args.out}.png"
    fig.savefig(path)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
