r"""The result tables of README.md and docs/**/*.md, generated from the result files of
docs/results/.

Each table sits in one page, any of them, between ``<!-- table:NAME -->`` and
``<!-- /table:NAME -->``; its numbers come only from the JSON files named below (written by the
commands in docs/results/README.md), so they cannot drift from what the runs measured.
tests/test_results_tables.py fails when a page differs from what this module writes, or when a
table is in no page or in two.

python -m tools.results.tables           # rewrite the tables in every page
python -m tools.results.tables --check   # exit 1 (naming the page and table) if one is stale
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import statistics
import sys
from pathlib import Path

from piaug.data import synthetic3d
from tools import DOCS, REPO
from tools.results import RESULTS

README = REPO / "README.md"


def pages() -> list[Path]:
    """The pages whose tables are generated: README.md and every page under docs/ (sorted)."""
    return [README, *sorted(DOCS.rglob("*.md"))]


PAGES = pages()  # as the repository holds them when this module is imported
RADII = ("2.0", "2.5", "3.0", "4.0")
ROW_NAMES = {
    "template_copy": "the template's landmarks copied unmoved (no encoder)",
    "baseline": "baseline (uniform anchors, default jitter)",
    "weightmap": "the weight map alone (gamma 0.3, default jitter)",
    "piaug": "piaug (weight map, estimated adaptive jitter)",
    "piaug_capped": "piaug, the jitter's upper ends capped at the default's (1.15, 1.25)",
}


def _load(name: str):
    return json.loads((RESULTS / name).read_text())


def _sdr(entry: dict) -> str:
    return " / ".join(f"{entry['sdr'][r]:.1f}" for r in RADII)


def results_table(rows: dict) -> str:
    """One row per encoder: MRE and SDRs (grid protocol), full-resolution MRE. ``rows`` maps
    each encoder to a ``results.json`` entry, or to a ``ceph_cpu_seeds.json`` one (which holds
    ``full_resolution_mre_mm``)."""
    lines = [
        "| encoder | MRE, grid protocol (mm) | SDR 2 / 2.5 / 3 / 4 mm (%) "
        "| MRE, full resolution (mm) |",
        "|---|---|---|---|",
    ]
    for key in ROW_NAMES:
        if key in rows:
            e = rows[key]
            full = e.get("full_resolution_mre_mm") or e["full_resolution"]["mre_mm"]
            lines.append(f"| {ROW_NAMES[key]} | {e['mre_mm']:.2f} | {_sdr(e)} | {full:.2f} |")
    return "\n".join(lines)


def demo() -> str:
    return results_table(_load("demo_results.json"))


def volumes(name: str) -> str:
    """A run on volumes (its ``results.json`` kept as ``name``): every encoder's row."""
    return results_table(_load(name))


def volume_landmarks(name: str, landmark_names: tuple[str, ...]) -> str:
    """Per landmark of a run on volumes, each encoder's MRE (mm, grid protocol)."""
    data = _load(name)
    keys = [k for k in ROW_NAMES if k in data]
    lines = ["| landmark | " + " | ".join(k.replace("_", " ") for k in keys) + " |"]
    lines.append("|---" * (len(keys) + 1) + "|")
    for i, landmark in enumerate(landmark_names):
        values = " | ".join(f"{data[k]['per_landmark_mre_mm'][i]:.1f}" for k in keys)
        lines.append(f"| {i + 1}. {landmark} | {values} |")
    return "\n".join(lines)


def volume_runs(names: dict[str, str]) -> str:
    """Runs on volumes side by side (``{label: results file}``): each encoder's MRE (mm, grid
    protocol and full resolution) and the template each run chose."""
    data = {label: _load(name) for label, name in names.items()}
    keys = [k for k in ROW_NAMES if all(k in d for d in data.values())]
    lines = ["| run | template | " + " | ".join(k.replace("_", " ") for k in keys) + " |"]
    lines.append("|---" * (len(keys) + 2) + "|")
    for label, d in data.items():
        cells = " | ".join(
            f"{d[k]['mre_mm']:.2f} ({d[k]['full_resolution']['mre_mm']:.2f})" for k in keys
        )
        lines.append(f"| {label} | {d['baseline']['template']['id']} | {cells} |")
    return "\n".join(lines)


def several_templates(name: str) -> str:
    """MRE (mm) against the number of templates K (``tools.results.several_templates``), per
    run: the policy's set under each fusion rule, random sets (mean +- std over the draws, the
    median rule), the lowest-MRE templates (labels choose: a bound) and the copy."""
    data = _load(name)
    lines = []
    for run, entry in data.items():
        if run == "command":
            continue
        ks = [k for k in entry if k.isdigit()]
        rules = list(entry[ks[0]]["by_rule"])
        lines.append(
            "| K | "
            + " | ".join(f"policy, {r}" for r in rules)
            + " | random sets, median | best K by their MRE, median | copy, median |"
        )
        lines.append("|---" * (len(rules) + 4) + "|")
        for k in ks:
            by = entry[k]["by_rule"]
            med = by["median"]
            cells = " | ".join(f"{by[r]['policy']:.2f}" for r in rules)
            lines.append(
                f"| {k} | {cells} | {med['random_mean']:.2f} +- {med['random_std']:.2f} | "
                f"{med['oracle']:.2f} | {med['copy']:.2f} |"
            )
    return "\n".join(lines)


def several_templates_seeds(names: tuple[str, ...]) -> str:
    """The policy's K templates over seeds (one ``tools.results.several_templates`` file
    each): per seed the median rule's MRE, then means over the seeds of it, of the weighted
    rule, of random sets and of the labels' best K."""
    entries = []
    for name in names:
        data = _load(name)
        entries += [v for k, v in data.items() if k != "command"]
    ks = [k for k in entries[0] if k.isdigit()]
    head = " | ".join(f"seed {i}" for i in range(len(entries)))
    lines = [
        f"| K | {head} | mean +- std | weighted, mean | random sets, mean | "
        "best K by their MRE, mean |",
        "|---" * (len(entries) + 5) + "|",
    ]

    def mean(k: str, rule: str, key: str) -> float:
        return statistics.mean(e[k]["by_rule"][rule][key] for e in entries)

    for k in ks:
        policy = [e[k]["by_rule"]["median"]["policy"] for e in entries]
        spread = f" +- {statistics.stdev(policy):.2f}" if len(policy) > 1 else ""
        lines.append(
            f"| {k} | "
            + " | ".join(f"{v:.2f}" for v in policy)
            + f" | {statistics.mean(policy):.2f}{spread} | {mean(k, 'weighted', 'policy'):.2f} | "
            f"{mean(k, 'median', 'random_mean'):.2f} | {mean(k, 'median', 'oracle'):.2f} |"
        )
    return "\n".join(lines)


def template_choice(name: str = "ceph_cpu_template_choice.json") -> str:
    """Each ``eval.template_policy`` on each seed's baseline (``tools.results.template_choice``):
    the rank among the N templates of the one chosen from all N and from the 32 evenly spaced
    (the default candidates), the Spearman correlation of its scores with the templates' MRE
    (over all N) and the seconds scoring all N took; in bold a choice in the best tenth."""
    data = _load(name)
    runs = [k for k in data if k.startswith("runs/")]
    policies = [p for p in data[runs[0]] if p != "ids" and p in data[runs[-1]]]
    lines = [
        "| policy | "
        + " | ".join(f"seed {i}: rank (of all / of 32)" for i in range(len(runs)))
        + " | Spearman with MRE | seconds for all |",
        "|---" * (len(runs) + 3) + "|",
    ]
    for policy in policies:
        entries = [data[r][policy] for r in runs]
        cells = " | ".join(
            " / ".join(
                f"**{e[c]['rank']}**" if e[c]["best_tenth"] else str(e[c]["rank"])
                for c in ("all", "spaced_32")
            )
            for e in entries
        )
        spearman = ", ".join(f"{e['all']['spearman_with_mre']:.2f}" for e in entries)
        seconds = ", ".join(f"{e['all']['seconds']:.0f}" for e in entries)
        lines.append(f"| {policy} | {cells} | {spearman} | {seconds} |")
    return "\n".join(lines)


def template_offsets(names: tuple[str, ...], choice: str = "ceph_cpu_template_choice.json") -> str:
    """Each template's MRE split into its offset and the scatter around it (the
    ``single_offset_mm`` and ``single_scatter_mm`` of one ``tools.results.several_templates``
    file per seed), and the Spearman correlation of each with the MRE and with the
    ``consensus`` scores of ``choice`` (positive: the policy prefers the lower)."""
    from scipy import stats

    scores = _load(choice)
    lines = [
        "| seed | MRE, mean | offset, mean | scatter, mean | Spearman MRE ~ offset | "
        "MRE ~ scatter | consensus ~ offset | consensus ~ scatter |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for seed, name in enumerate(names):
        ((run, entry),) = [(k, v) for k, v in _load(name).items() if k != "command"]
        ids = scores[run]["ids"]
        mre, offset, scatter = (
            [entry[key][i] for i in ids]
            for key in ("single_mre_mm", "single_offset_mm", "single_scatter_mm")
        )
        consensus = [-v for v in scores[run]["consensus"]["scores"]]  # lower: preferred
        rho = [
            stats.spearmanr(a, b).statistic
            for a, b in ((mre, offset), (mre, scatter), (consensus, offset), (consensus, scatter))
        ]
        lines.append(
            f"| {seed} | {statistics.mean(mre):.2f} | {statistics.mean(offset):.2f} | "
            f"{statistics.mean(scatter):.2f} | " + " | ".join(f"{r:.2f}" for r in rho) + " |"
        )
    return "\n".join(lines)


def template_sets(names: tuple[str, ...], fusion: str = "weighted") -> str:
    """MRE (mm, mean over the seeds' files) against K for each set of ``--policies`` and
    ``--sets`` (``tools.results.several_templates``), with random sets and the labels' best K,
    all fused by ``fusion``."""
    entries = []
    for name in names:
        entries += [v for k, v in _load(name).items() if k != "command"]
    ks = [k for k in entries[0] if k.isdigit()]
    keys = list(entries[0][ks[0]]["sets"])
    lines = [
        "| K | " + " | ".join(keys) + " | random sets | best K by their MRE |",
        "|---" * (len(keys) + 3) + "|",
    ]
    for k in ks:
        cells = [
            statistics.mean(e[k]["sets"][key]["mre_mm"][fusion] for e in entries) for key in keys
        ]
        cells += [
            statistics.mean(e[k]["by_rule"][fusion][field] for e in entries)
            for field in ("random_mean", "oracle")
        ]
        best = min(cells[: len(keys)])
        lines.append(
            f"| {k} | "
            + " | ".join(
                f"**{v:.2f}**" if i < len(keys) and v == best else f"{v:.2f}"
                for i, v in enumerate(cells)
            )
            + " |"
        )
    return "\n".join(lines)


def pseudo_labels(names: tuple[str, ...]) -> str:
    """CC2D-S2 from one template and from K, one ``tools.results.pseudo_labels`` file per
    seed (its runs: one template, then K): the pseudo-labels' MRE and the detector's on the
    images both runs share, beside the one-shot matching on the detector's images; then the
    means over the seeds for each number of templates."""
    lines = [
        "| seed | templates | pseudo-labels' MRE | detector's MRE (shared images) | one-shot "
        "matching on its images | detector's SDR 2 / 2.5 / 3 / 4 mm (%) |",
        "|---|---|---|---|---|---|",
    ]
    by_count: dict[int, list] = {}
    for seed, name in enumerate(names):
        for run, entry in _load(name).items():
            if run == "command":
                continue
            (detector,) = [v for k, v in entry.items() if k.startswith("detector_")]
            by_count.setdefault(len(entry["templates"]), []).append(
                (entry["pseudo_mre_mm_common"], detector["mre_mm_common"])
            )
            sdr = " / ".join(f"{detector['sdr'][r]:.1f}" for r in RADII)
            lines.append(
                f"| {seed} | {len(entry['templates'])} ({', '.join(entry['templates'])}) | "
                f"{entry['pseudo_mre_mm_common']:.2f} | {detector['mre_mm_common']:.2f} "
                f"({detector['common_images']}) | {detector['baseline_mre_mm']:.2f} | {sdr} |"
            )
    for count, rows in sorted(by_count.items()):
        pseudo, det = (statistics.mean(v) for v in zip(*rows, strict=True))
        lines.append(f"| mean | {count} | {pseudo:.2f} | {det:.2f} | | |")
    return "\n".join(lines)


def scale_sets(name: str) -> str:
    """MRE (mm) of each run of a ``tools.results.matching_scales`` file, matched by all five
    scales and with the coarsest ones left out (``eval.scales``)."""
    data = _load(name)
    sets = ("all", "strides_16_8_4_2", "strides_8_4_2", "strides_4_2")
    lines = ["| run: encoder | all five | strides 16-2 | 8-2 | 4-2 |", "|---|---|---|---|---|"]
    for spec, rows in data.items():
        if spec != "command":
            cells = " | ".join(f"{rows[k]['mre_mm']:.2f}" for k in sets)
            lines.append(f"| `{spec}` | {cells} |")
    return "\n".join(lines)


def ceph_cpu(name: str = "ceph_cpu_seeds.json") -> str:
    """Every row of the first seed of ``ceph_cpu_seeds.json`` (or ``name``), with the SDRs."""
    data = _load(name)
    return results_table(data["seeds"][sorted(data["seeds"], key=int)[0]])


def from_scratch() -> str:
    """Every setting tried for learning from scratch (``from_scratch.json``)."""
    runs = _load("from_scratch.json")["runs"]
    lines = [
        "| run | setting (overrides of the preset) | steps | minutes "
        "| probe MRE, first -> best -> last (mm) | MRE, all images (mm) | template copied (mm) |",
        "|---|---|---|---|---|---|---|",
    ]
    for run in runs:
        probe = run["probe"]
        mre = probe["mre_mm"]
        final = f"{run['mre_mm']:.2f}" if run.get("mre_mm") is not None else "not evaluated"
        copy = f"{run['copy_mre_mm']:.2f}" if run.get("copy_mre_mm") is not None else "-"
        setting = " ".join(f"`{o}`" for o in run["overrides"]) or "(the preset)"
        lines.append(
            f"| {run['name']} | {setting} | {run['steps']} | {run['minutes']:.1f} | "
            f"{mre[0]:.2f} -> {min(mre):.2f} -> {mre[-1]:.2f} | {final} | {copy} |"
        )
    return "\n".join(lines)


def seeds(name: str = "ceph_cpu_seeds.json") -> str:
    """Baseline, weight map and piaug over seeds (``ceph_cpu_seeds.json``, or ``name``):
    per-seed rows and the mean +- standard deviation (over seeds; n - 1 in the denominator)."""
    data = _load(name)
    rows = [k for k in ROW_NAMES if k in data["rows"]]
    seeds_ = sorted(data["seeds"], key=int)
    head = "| | " + " | ".join(f"seed {s}" for s in seeds_) + " | mean +- std |"
    lines = [head, "|---" * (len(seeds_) + 2) + "|"]
    for key in rows:
        values = [data["seeds"][s][key]["mre_mm"] for s in seeds_ if key in data["seeds"][s]]
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else " (one seed)"
        cells = " | ".join(
            f"{data['seeds'][s][key]['mre_mm']:.2f}" if key in data["seeds"][s] else "-"
            for s in seeds_
        )
        lines.append(f"| {ROW_NAMES[key]} | {cells} | {statistics.mean(values):.2f}{spread} |")
    return "\n".join(lines)


def _trained_on(d: dict) -> str:
    seen = d["trained_on"]
    if seen["labels"] == "true":
        return f"{len(seen['ids'])} true labels"
    count, template = len(seen["ids"]), seen["template"]
    return f"{seen['pseudo_from']}'s pseudo-labels of {count} images + template {template}"


def detectors() -> str:
    """Every detector of ``detectors_ceph_cpu.json``: what it trained on, its MRE on the images
    it did not train on, and the one-shot encoders' MRE on the same images."""
    data = _load("detectors_ceph_cpu.json")
    lines = [
        "| run | detector | trained on | heatmap term | images a step | steps | minutes | images "
        "| MRE (mm) | SDR 2 / 2.5 / 3 / 4 mm (%) "
        "| one-shot baseline encoder, same images (mm; template) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for d in data["detectors"]:
        heat = (
            "focal (the authors')"
            if "detector.heatmap_loss=focal" in d["overrides"]
            else "balanced"
        )
        same = [
            f"{v:.2f} ({k.split('template ')[1].rstrip(')')})"
            for k, v in sorted(d.get("encoders_on_same_images", {}).items())
            if k.startswith("baseline")
        ]
        per_step = f"{d['batch_size']}" + (
            " + the template" if d["trained_on"]["labels"] != "true" else ""
        )
        lines.append(
            f"| {d['run']} | {d['name']} | {_trained_on(d)} | {heat} | {per_step} | {d['steps']} "
            f"| {d['minutes']:.1f} "
            f"| {d['n_images']} | {d['mre_mm']:.2f} | {_sdr(d)} | {', '.join(same) or '-'} |"
        )
    return "\n".join(lines)


def _seed(d: dict) -> int:
    """A detector's seed: its run's ``seed=`` override, else the preset's (0)."""
    found = [o.split("=", 1)[1] for o in d["overrides"] if o.startswith("seed=")]
    return int(found[0]) if found else 0


def few_shot() -> str:
    """The few-shot detectors of ``detectors_ceph_cpu.json`` (10 true labels) by
    initialisation: each seed's MRE and the mean +- standard deviation (n - 1)."""
    data = _load("detectors_ceph_cpu.json")
    few = [d for d in data["detectors"] if _trained_on(d) == "10 true labels"]
    seeds_ = sorted({_seed(d) for d in few})
    head = "| initialised from | " + " | ".join(f"seed {s}" for s in seeds_) + " | mean +- std |"
    lines = [head, "|---" * (len(seeds_) + 2) + "|"]
    for init in ("random", "baseline", "piaug", "imagenet"):
        by_seed = {_seed(d): d["mre_mm"] for d in few if d["name"] == f"detector_{init}"}
        if not by_seed:
            continue
        values = list(by_seed.values())
        spread = f" +- {statistics.stdev(values):.2f}" if len(values) > 1 else " (one seed)"
        cells = " | ".join(f"{by_seed[s]:.2f}" if s in by_seed else "-" for s in seeds_)
        lines.append(f"| {init} | {cells} | {statistics.mean(values):.2f}{spread} |")
    return "\n".join(lines)


# The paper's Table 2 (ceph Test1+2, ImageNet-initialised VGG19, 82,500 steps at 384): MRE
# (mm) and SDR 2 / 2.5 / 3 / 4 mm (%).
PAPER_TABLE2 = {
    "baseline": ("baseline", 2.91, (39.85, 48.94, 58.87, 72.31)),
    "zhu_high": ("Zhu et al.*", 4.19, (24.35, 32.38, 42.66, 60.10)),
    "mochi_high": ("MoCHi*", 2.56, (50.35, 59.19, 68.70, 82.10)),
    "unmix_high": ("Un-mix*", 2.54, (44.82, 56.48, 67.57, 83.87)),
    "piaug": ('piaug (the paper\'s "ours")', 2.34, (51.28, 62.88, 73.70, 86.50)),
}


def _table2_key(run: dict) -> str:
    """A ``table2_ceph_cpu.json`` entry's row: the sweep's preset, else its encoder."""
    return run["name"] if run["name"] in PAPER_TABLE2 else run["encoder"]


def table2() -> str:
    """The comparison methods beside the paper's Table 2 (``table2_ceph_cpu.json``): each
    row's MRE and its difference to the baseline's, here and in the paper."""
    runs = {_table2_key(r): r for r in _load("table2_ceph_cpu.json")["runs"]}
    base = runs["baseline"]["mre_mm"]
    lines = [
        "| method | MRE here (mm) | SDR 2 / 2.5 / 3 / 4 mm here (%) | B point / pogonion here (mm) "
        "| minutes | the paper: MRE (mm) | the paper: SDR 2 / 2.5 / 3 / 4 mm (%) |",
        "|---|---|---|---|---|---|---|",
    ]
    paper_base = PAPER_TABLE2["baseline"][1]
    for key, (label, paper, paper_sdr) in PAPER_TABLE2.items():
        if key not in runs:
            continue
        r = runs[key]
        ours = f"{r['mre_mm']:.2f}" + ("" if key == "baseline" else f" ({r['mre_mm'] - base:+.2f})")
        theirs = f"{paper:.2f}" + ("" if key == "baseline" else f" ({paper - paper_base:+.2f})")
        chin = " / ".join(f"{r['per_landmark_mre_mm'][i]:.1f}" for i in (5, 6))
        lines.append(
            f"| {label} | {ours} | {_sdr(r)} | {chin} | {r['minutes']:.1f} | {theirs} "
            f"| {' / '.join(f'{v:.1f}' for v in paper_sdr)} |"
        )
    return "\n".join(lines)


SPREAD = "ceph_cpu_template_spread_bilinear.json"  # the preset's matching, today's templates
SPREAD_CELL = "ceph_cpu_template_spread_today.json"  # from the cell's vectors, as before


def template_spread(name: str = SPREAD) -> str:
    """Each seed's baseline matched from every training image as the template
    (the file ``name`` of ``tools.results.template_spread``): the policy's choice against the
    others."""
    data = {
        k: v
        for k, v in _load(name).items()
        if isinstance(v, dict) and "mre_mm" in v and _seed_row(k)[1] == "baseline"
    }
    lines = [
        "| baseline encoder | the policy's template: MRE (mm), rank of 150 "
        "| MRE over the 150 templates: best / 10 % / median / 90 % / worst (mm) "
        "| templates giving <= 5.0 mm |",
        "|---|---|---|---|",
    ]
    for run, d in data.items():
        q = d["quantiles_mm"]
        share = sum(v <= 5.0 for v in d["mre_mm"].values())
        spread = " / ".join(f"{v:.2f}" for v in (d["best"]["mre_mm"], q["0.1"], q["0.5"], q["0.9"]))
        lines.append(
            f"| `{run.partition('=')[0]}` | {d['chosen']}: {d['chosen_mre_mm']:.2f}, "
            f"{d['chosen_rank']} | {spread} / {d['worst']['mre_mm']:.2f} "
            f"| {share} of {d['templates']} |"
        )
    return "\n".join(lines)


def _seed_row(spec: str) -> tuple[str, str]:
    """The seed and row of a ``tools.results.template_spread`` entry of the seeds' runs:
    ``runs/enc`` is seed 0 (its baseline and piaug),
    ``runs/cpu5/seed_S/{shared_baseline,weightmap,adaptive}`` the others' (the sweep's encoder
    is ``piaug``)."""
    run, _, encoder = spec.partition("=")[0].partition(":")
    parts = Path(run).parts
    if parts[-1] == "enc":
        return "0", "piaug" if encoder == "piaug" else "baseline"
    folder = {"shared_baseline": "baseline", "weightmap": "weightmap", "adaptive": "piaug"}
    return parts[-2].removeprefix("seed_"), folder[parts[-1]]


def over_templates(name: str = SPREAD) -> str:
    """Every encoder of the seeds matched from each of the 150 training images as the template
    (``tools.results.template_spread``): its mean MRE over the templates, and piaug's difference
    from the baseline template by template (the same template, the same images)."""
    data = _load(name)
    mre: dict[str, dict[str, dict]] = {}
    for spec, entry in data.items():
        if isinstance(entry, dict) and "mre_mm" in entry:  # an encoder's, not the agreement
            seed, row = _seed_row(spec)
            mre.setdefault(row, {})[seed] = entry["mre_mm"]
    seeds_ = sorted(mre["baseline"], key=int)
    lines = [
        "| mean over the 150 templates (mm) | "
        + " | ".join(f"seed {s}" for s in seeds_)
        + " | mean +- std |",
        "|---" * (len(seeds_) + 2) + "|",
    ]
    for row in ("baseline", "weightmap", "piaug"):
        values = [statistics.mean(mre[row][s].values()) for s in seeds_]
        cells = " | ".join(f"{v:.2f}" for v in values)
        lines.append(
            f"| {ROW_NAMES[row]} | {cells} | "
            f"{statistics.mean(values):.2f} +- {statistics.stdev(values):.2f} |"
        )
    for row in ("weightmap", "piaug"):
        cells, means = [], []
        for s in seeds_:
            diff = [mre[row][s][t] - v for t, v in mre["baseline"][s].items()]
            better = sum(d < 0 for d in diff)
            means.append(statistics.mean(diff))
            cells.append(f"{means[-1]:+.2f} ({better} of {len(diff)} better)")
        lines.append(
            f"| {ROW_NAMES[row].split(' (')[0]} - baseline, template by template | "
            + " | ".join(cells)
            + f" | {statistics.mean(means):+.2f} +- {statistics.stdev(means):.2f} |"
        )
    return "\n".join(lines)


def template_policies() -> str:
    """Label-free template policies on each seed's baseline (``ceph_cpu_template_policies.json``):
    the template each chooses (among the preset's 32 evenly spaced candidates, and all 150), its
    MRE and rank, and the rank correlation of its scores with the templates' MREs."""
    data = _load("ceph_cpu_template_policies.json")
    runs = [k for k in data if k != "command"]
    lines = [
        "| policy | "
        + " | ".join(f"seed {_seed_row(r)[0]}: 32 / all 150 candidates" for r in runs)
        + " | Spearman with the MRE |",
        "|---" * (len(runs) + 2) + "|",
    ]

    def pick(c: dict) -> str:
        return f"{c['id']} {c['mre_mm']:.2f} ({c['rank']})"

    for policy in data[runs[0]]:
        cells = " | ".join(
            f"{pick(data[r][policy]['spaced_32'])} / {pick(data[r][policy]['all'])}" for r in runs
        )
        rho = [data[r][policy]["spearman_with_mre"] for r in runs]
        lines.append(f"| `{policy}` | {cells} | {min(rho):.2f}-{max(rho):.2f} |")
    return "\n".join(lines)


TABLES = {
    "table2": table2,
    "detectors": detectors,
    "few_shot": few_shot,
    "demo": demo,
    "demo3d": functools.partial(volumes, "demo3d_results.json"),
    "demo3d_seeds": functools.partial(seeds, "demo3d_seeds.json"),
    "demo3d_seeds_radius4": functools.partial(seeds, "demo3d_seeds_radius4.json"),
    "demo3d_crops2_seeds": functools.partial(seeds, "demo3d_crops2_seeds.json"),
    # the recipe's former 16 anchors a crop
    "demo3d_anchors16_seeds": functools.partial(seeds, "demo3d_anchors16_seeds.json"),
    "demo3d_anchors16_seeds_radius4": functools.partial(
        seeds, "demo3d_anchors16_seeds_radius4.json"
    ),
    "demo3d_seed10_anchors": functools.partial(
        volume_runs,
        {
            "16 anchors a crop": "demo3d_seed10_anchors16_results.json",
            "64 anchors a crop": "demo3d_seed10_anchors64_results.json",
        },
    ),
    "demo3d_crop32": functools.partial(volumes, "demo3d_crop32_results.json"),
    "demo3d_scale_sets": functools.partial(scale_sets, "demo3d_scale_sets.json"),
    "mni_afids": functools.partial(volumes, "mni_afids_results.json"),
    "demo3d_landmarks": functools.partial(
        volume_landmarks, "demo3d_results.json", synthetic3d.LANDMARK_NAMES
    ),
    "from_scratch": from_scratch,
    "seeds": seeds,
    "template_spread": template_spread,
    "over_templates": over_templates,
    "template_policies": template_policies,
    "several_templates_s0": functools.partial(
        several_templates, "ceph_cpu_several_templates_s0.json"
    ),
    "template_choice": template_choice,
    "template_offsets": functools.partial(
        template_offsets, tuple(f"ceph_cpu_several_templates_s{i}.json" for i in range(3))
    ),
    "pseudo_labels": functools.partial(
        pseudo_labels, tuple(f"ceph_cpu_pseudo_labels_s{i}.json" for i in range(3))
    ),
    "template_sets": functools.partial(
        template_sets, tuple(f"ceph_cpu_several_templates_s{i}.json" for i in range(3))
    ),
    "several_templates_seeds": functools.partial(
        several_templates_seeds,
        tuple(f"ceph_cpu_several_templates_s{s}.json" for s in range(3)),
    ),
    "ceph_cpu": ceph_cpu,
    # the earlier presets: L3 (one anchor per crop), P1 (16 anchors per 64 x 64 crop), C1
    # (128 x 128 crops, 8 images of one crop a step), C5 (16 anchors per crop, 1300 steps)
    "ceph_cpu_L3": functools.partial(ceph_cpu, "ceph_cpu_L3_seeds.json"),
    "ceph_cpu_P1": functools.partial(ceph_cpu, "ceph_cpu_P1_seeds.json"),
    "ceph_cpu_C1": functools.partial(ceph_cpu, "ceph_cpu_C1_seeds.json"),
    "ceph_cpu_C5": functools.partial(ceph_cpu, "ceph_cpu_C5_seeds.json"),
    "seeds_C5": functools.partial(seeds, "ceph_cpu_C5_seeds.json"),
    # the preset's seeds from the templates their logs recorded (075, 054, 145)
    "seeds_075_054_145": functools.partial(seeds, "ceph_cpu_seeds_075_054_145.json"),
    # the preset's seeds and templates matched from the cell's vectors (eval.template_sampling)
    "seeds_cell": functools.partial(seeds, "ceph_cpu_seeds_cell.json"),
    "template_spread_cell": functools.partial(template_spread, SPREAD_CELL),
    "over_templates_cell": functools.partial(over_templates, SPREAD_CELL),
}
_BLOCK = re.compile(r"(<!-- table:(\w+) -->\n)(.*?)(<!-- /table:\2 -->)", re.S)


def render(text: str) -> str:
    """``text`` with every table block regenerated; KeyError for an unknown table name."""
    return _BLOCK.sub(lambda m: m[1] + TABLES[m[2]]() + "\n" + m[4], text)


def blocks(text: str) -> list[str]:
    """The names of the table blocks in ``text``."""
    return [m[2] for m in _BLOCK.finditer(text)]


def placement(found: dict[Path, list[str]]) -> list[str]:
    """What is wrong with where the tables are (``found``: each page's blocks): a table of
    ``TABLES`` in no page, or in more than one; empty when each is in exactly one."""
    where: dict[str, list[str]] = {}
    for page, names in found.items():
        for name in names:
            where.setdefault(name, []).append(_name(page))
    problems = [f"table {n!r} is in no page" for n in TABLES if n not in where]
    problems += [f"table {n!r} is in {len(p)} places: {p}" for n, p in where.items() if len(p) > 1]
    return problems


def _name(page: Path) -> str:
    """``page`` as the messages name it: relative to the repository."""
    return str(page.relative_to(REPO)) if page.is_relative_to(REPO) else str(page)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="only check; exit 1 if a table is stale, or in no page, or in two",
    )
    args = parser.parse_args()
    stale, found = [], {}
    for page in pages():
        text = page.read_text()
        new = render(text)
        found[page] = blocks(text)
        if args.check:
            stale += [
                f"{_name(page)}:{n}"
                for n in blocks(text)
                if render_one(text, n) != render_one(new, n)
            ]
        elif new != text:
            page.write_text(new)
            print(f"{_name(page)}: tables {', '.join(blocks(new))} written")
    problems = placement(found) if args.check else []
    if stale:
        print(f"tables out of date: {', '.join(stale)}; run python -m tools.results.tables")
    for problem in problems:
        print(problem)
    return 1 if stale or problems else 0


def render_one(text: str, name: str) -> str:
    for m in _BLOCK.finditer(text):
        if m[2] == name:
            return m[3]
    return ""


if __name__ == "__main__":
    sys.exit(main())
