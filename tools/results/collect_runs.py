r"""Gathers training runs into a result file of this folder: each run's settings (its
``config.json`` against a preset), steps, training minutes, probe curve and evaluation.

python -m tools.results.collect_runs --preset=configs/ceph.py:cpu --out=from_scratch \
    runs/fs/s1_none_t01 runs/fs/s2_bn_t01 ...

A run given as ``RUN:ENCODER`` (``runs/enc:piaug``) is collected with that encoder instead of
``--encoder``'s, so one file can hold both encoders of a run.

writes ``docs/results/from_scratch.json`` and ``docs/results/from_scratch_probe.png`` (the probe
curves of every run). The minutes are the training steps' own (from ``samples_per_s``; the
probe's time and compiling are left out); ``mre_mm`` is the run's ``results.json`` baseline
entry (or the encoder named by ``--encoder``), when the run has one; ``--results`` reads
another results file of each run (``results.template-075*.json``: the evaluation with another
template, ``--config.stages=evaluate --config.eval.template=075``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from pathlib import Path

from ml_collections import ConfigDict

from piaug import analyze, configure, defaults, layout, plots
from tools import REPO
from tools.results import RESULTS, command

# Fields that name where the data is or how the run was watched, not the recipe.
IGNORED = (
    "data.dir",
    "data.cache_dir",
    "data.workers",
    "eval.split",
    "eval.every",
    "eval.probe_images",
    "stages",
    "force",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.baseline",
)


def preset_config(spec: str) -> dict:
    """The plain dict of ``configs/NAME.py:ARG``."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("preset", REPO / path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return configure.as_dict(module.get_config(arg or None))


def _setting(key: str, value) -> str:
    return f"{key}={value!r}".replace("'", "")


def preset_values(preset: dict) -> dict[str, str]:
    """The preset's fields as the file records them (``KEY=VALUE``), so that a later
    ``--append`` against a changed preset can re-express the file's older runs."""
    flat = layout.flatten(resolved(preset))
    return {
        k: _setting(k, v)
        for k, v in sorted(flat.items())
        if k not in IGNORED and k.split(".")[0] not in IGNORED
    }


def rebase(settings: list[str], was: dict[str, str], now: dict[str, str]) -> list[str]:
    """A run's overrides of the preset ``was`` as overrides of ``now`` (both as
    ``preset_values`` gives them): a field the two presets set differently keeps the run's
    value, which is the old preset's when the run did not override it."""
    by_key = {s.partition("=")[0]: s for s in settings}
    for key in sorted(set(was) & set(now)):
        if was[key] == now[key]:
            continue
        value = by_key.get(key, was[key])
        if value == now[key]:
            by_key.pop(key, None)
        else:
            by_key[key] = value
    return [by_key[k] for k in sorted(by_key)]


def with_defaults(config: dict) -> dict:
    """A run's saved ``config.json`` with the fields it predates at their defaults (each
    option was added with the code's earlier behaviour as its default)."""
    base = configure.as_dict(defaults.base_config(config["data"]["name"]))
    return unflatten({**layout.flatten(base), **layout.flatten(config)})


def overrides(config: dict, preset: dict) -> list[str]:
    """The run's fields that differ from the preset's. A field the run's ``config.json`` lacks
    (the run is older than the field) counts as its default: each option was added with the
    paper's behaviour, the code's before it existed, as its default."""
    config = with_defaults(config)
    changed = layout.changed_fields(resolved(preset), resolved(config), ignore=IGNORED)
    return [_setting(k, v) for k, (_, v) in changed.items()]


def resolved(config: dict) -> dict:
    """``config`` with ``estimate.patch_size`` as ``configure`` reads it (0: the crop size)."""
    patch = configure.estimate_settings(ConfigDict(config)).patch_size
    return {**config, "estimate": {**config["estimate"], "patch_size": patch}}


def unflatten(flat: dict) -> dict:
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def training_minutes(rows: list[dict], batch_size: int) -> float:
    seconds, previous = 0.0, 0
    for row in rows:
        if row.get("samples_per_s"):
            seconds += (row["step"] - previous) * batch_size / row["samples_per_s"]
            previous = row["step"]
    return seconds / 60


def one_file(folder: Path, pattern: str) -> Path | None:
    """The file of ``folder`` that ``pattern`` (a name or a glob) names; None when none does,
    and an error when it names several."""
    found = sorted(Path(folder).glob(pattern)) if Path(folder).is_dir() else []
    if len(found) > 1:
        raise SystemExit(f"{folder}: {pattern} names {len(found)} files: {[p.name for p in found]}")
    return found[0] if found else None


def collect(run: Path, preset: dict, encoder: str, results_file: str = "") -> dict:
    config = layout.read_json(run / layout.CONFIG_FILE)
    sub = run if encoder == "baseline" else run / layout.PIAUG_DIR
    train_rows = analyze.read_rows(sub / layout.METRICS_FILE, "loss")
    probes = analyze.read_rows(sub / layout.METRICS_FILE, "probe_mre_mm")
    path = one_file(run, results_file or layout.RESULTS_FILE)
    results = (layout.read_json(path) if path else None) or {}
    # an evaluation under other settings than the run's records them: those count
    evaluated = results.get(encoder, {}).get("eval", {})
    entry = {
        "name": run.name,
        "encoder": encoder,
        "overrides": overrides({**config, "eval": {**config["eval"], **evaluated}}, preset),
        "steps": train_rows[-1]["step"] if train_rows else 0,
        "minutes": round(training_minutes(train_rows, config["train"]["batch_size"]), 2),
        "loss_first_last": [train_rows[0]["loss"], train_rows[-1]["loss"]] if train_rows else [],
        "probe": {
            "step": [r["step"] for r in probes],
            "mre_mm": [r["probe_mre_mm"] for r in probes],
            "copy_mre_mm": probes[-1].get("probe_copy_mre_mm") if probes else None,
            # The probe matches from eval.template when the run set one, else from the
            # typical image by the labels: curves of different templates are not comparable.
            "template": config["eval"].get("template") or None,
        },
        "mre_mm": None,
        "copy_mre_mm": None,
    }
    if encoder in results:
        entry["mre_mm"] = results[encoder]["mre_mm"]
        entry["sdr"] = results[encoder]["sdr"]
        entry["per_landmark_mre_mm"] = results[encoder].get("per_landmark_mre_mm")
        entry["n_images"] = results[encoder]["n_images"]
        entry["template"] = results[encoder]["template"]["id"]
        entry["copy_mre_mm"] = results["template_copy"]["mre_mm"]
    return entry


def curve_name(entry: dict, encoder: str = "baseline") -> str:
    """The curve's label: the run, its encoder unless it is ``encoder`` (the file's), and the
    probe's template."""
    name = entry["name"]
    if entry.get("encoder", encoder) != encoder:
        name += f" ({entry['encoder']})"
    template = entry["probe"].get("template")
    return f"{name} (probe template {template})" if template else name


def run_and_encoder(spec: str, default: str) -> tuple[Path, str]:
    """``RUN:ENCODER`` or ``RUN`` (with ``default``) as a path and an encoder name."""
    path, _, encoder = spec.rpartition(":")
    if path and encoder in ("baseline", "piaug"):
        return Path(path), encoder
    return Path(spec), default


def append(old: dict, new: dict) -> dict:
    """``old``'s file with ``new``'s runs added (a run of the same name and encoder replaced),
    sorted by name, and ``new``'s command after ``old``'s. The preset must be the same; when
    its fields changed since the file was written (``preset_values``), the file's runs are
    re-expressed against the new ones (``rebase``)."""
    if old["preset"] != new["preset"]:
        raise SystemExit(
            f"--append: the file's runs are against {old['preset']}, not {new['preset']}"
        )
    was, now = old.get("preset_values"), new["preset_values"]
    if was is None:
        raise SystemExit(
            "--append: the file does not record its preset's fields (preset_values): write it "
            "again from its runs without --append"
        )
    old_runs = [{**r, "overrides": rebase(r["overrides"], was, now)} for r in old["runs"]]

    def key(run):
        return run["name"], run.get("encoder", old["encoder"])

    fresh = {key(r) for r in new["runs"]}
    runs = [r for r in old_runs if key(r) not in fresh] + new["runs"]
    commands = old.get("commands") or [old["command"]]
    return {
        **old,
        "preset_values": now,
        "command": new["command"],
        "commands": [*commands, new["command"]],
        "runs": sorted(runs, key=lambda r: r["name"]),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="RUN or RUN:ENCODER (baseline | piaug)")
    parser.add_argument("--preset", required=True, help="e.g. configs/ceph.py:cpu")
    parser.add_argument("--out", required=True, help="the result file's name, without .json")
    parser.add_argument("--encoder", default="baseline", help="baseline | piaug")
    parser.add_argument("--note", default="", help="a line kept in the file")
    parser.add_argument(
        "--results",
        default="",
        help="the results file of every run, a name or a glob naming one file in each "
        "(results.template-075*.json: an evaluation with another template); results.json "
        "by default",
    )
    parser.add_argument(
        "--append",
        action="store_true",
        help="add the runs to the file's (replacing those of the same name and encoder; the "
        "others' folders need not exist any more), sorted by name",
    )
    args = parser.parse_args()
    preset = preset_config(args.preset)
    runs = []
    for spec in args.runs:
        run, encoder = run_and_encoder(spec, args.encoder)
        runs.append(collect(run, preset, encoder, args.results))
    payload = {
        "preset": args.preset,
        "encoder": args.encoder,
        "note": args.note,
        "preset_values": preset_values(preset),
        "command": command("tools.results.collect_runs", sys.argv[1:]),
        "runs": runs,
    }
    out = RESULTS / f"{args.out}.json"
    if args.append and out.exists():
        payload = append(json.loads(out.read_text()), payload)
        runs = payload["runs"]
    out.write_text(json.dumps(payload, indent=1) + "\n")
    curves = {
        curve_name(r, args.encoder): (r["probe"]["step"], r["probe"]["mre_mm"])
        for r in runs
        if r["probe"]["step"]
    }
    copies = {r["probe"]["copy_mre_mm"] for r in runs if r["probe"]["copy_mre_mm"]}
    reference = {"template copied": copies.pop()} if len(copies) == 1 else None
    if curves:
        plots.probe_curves(
            curves, RESULTS / f"{args.out}_probe.png", title=args.preset, reference=reference
        )
    print(f"wrote {RESULTS / args.out}.json ({len(runs)} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
