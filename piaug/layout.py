"""The layout of a run's workdir: its file names, ``config.json``, JSON files, checkpoint folders.

A run lives in one folder::

    DIR/config.json         the config of the run (written first; a different one is refused)
    DIR/info_stats.json     the info stage
    DIR/checkpoints/        the baseline encoders (pretrain), DIR/metrics.jsonl
    DIR/template.json       the template, chosen once
    DIR/augment.json        the estimate
    DIR/piaug/checkpoints/  the piaug encoders (train), DIR/piaug/metrics.jsonl
    DIR/pseudo/ENCODER.csv  one-shot pseudo-labels of the training images (pseudo)
    DIR/detectors/NAME/     a detector (detector): checkpoints/, metrics.jsonl, examples.json
    DIR/results.json        the evaluate stage (results.TAG.json under other eval.* settings)
    DIR/predictions.csv     ... and every model's landmarks of every image (original pixels)
    DIR/analysis.json       the analyze stage
    DIR/figures/            every PNG
    DIR/tb/STAGE/           TensorBoard's copy of the metrics, and a few images (piaug.tb)

This module only names and reads these; the stages that write them are in ``piaug.pipeline``.
With several processes (``jax.distributed``), process 0 writes and the others wait for it
(``primary_first``).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jax
from absl import logging
from jax.experimental import multihost_utils

from piaug.errors import UserError

CONFIG_FILE = "config.json"
TENSORBOARD = "tb"
INFO_FILE = "info_stats.json"
TEMPLATE_FILE = "template.json"
ESTIMATE_FILE = "augment.json"
RESULTS_FILE = "results.json"
ANALYSIS_FILE = "analysis.json"
METRICS_FILE = "metrics.jsonl"
CHECKPOINTS = "checkpoints"
PIAUG_DIR = "piaug"  # the piaug encoders' checkpoints/ and metrics.jsonl, inside the workdir
PSEUDO_DIR = "pseudo"  # the pseudo stage's labels, one CSV per encoder
DETECTORS = "detectors"  # one folder per detector: checkpoints/, metrics.jsonl, examples.json
DETECTOR_EXAMPLES = "examples.json"  # what a detector trained on
PREDICTIONS_FILE = "predictions.csv"  # the evaluate stage's landmarks, original pixels
FIGURES = "figures"
# Fields that say how to run or what to watch, not what the result is: they may change between
# calls (a section's name covers all its fields).
RUN_FIELDS = ("stages", "force", "eval.every", "eval.probe_images", "data.cache_original_iie")
# Fields that only change evaluation: they may change on a call that only evaluates.
EVAL_FIELDS = ("eval",)


def read_json(path: Path):
    """The JSON in ``path``, None when there is no such file; UserError when it is not JSON."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"{path} is not valid JSON ({e}); move it away") from None


def write_json(path: Path, payload) -> None:
    """Writes atomically (a temporary file, then a rename): a crash leaves no half file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def flatten(tree: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` as ``{"a.b": 1}``."""
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def changed_fields(saved: dict, current: dict, *, ignore=RUN_FIELDS) -> dict[str, tuple]:
    """``{field: (saved value, current value)}`` of the fields that differ, but ``ignore``'s."""
    old, new = flatten(saved), flatten(current)
    return {
        k: (old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if k.split(".")[0] not in ignore and k not in ignore and old.get(k) != new.get(k)
    }


def prepare_workdir(
    config: dict, workdir: Path, *, evaluate_only: bool = False, eval_defaults: dict | None = None
) -> dict:
    """Creates ``workdir`` with ``config.json``, or checks that it holds a run of ``config``
    (a plain dict). Returns the run's saved config.

    ``eval.*`` may differ from the saved config when ``evaluate_only`` (a call whose stages
    only evaluate): the saved config stays, and the evaluation names its results by the
    fields that differ (``eval_tag``). An ``eval.*`` field the run predates is recorded at its
    value in ``eval_defaults`` (flat, ``{"eval.scales": ...}``: what the run's evaluation did),
    so that only a field this call sets otherwise names the results.
    """
    workdir = Path(workdir)
    path = workdir / CONFIG_FILE
    saved = read_json(path)
    if saved is not None:
        ignore = RUN_FIELDS + (EVAL_FIELDS if evaluate_only else ())
        changed = changed_fields(saved, config, ignore=ignore)
        known = flatten(saved)
        added = [k for k in changed if k not in known]  # the run predates them (older piaug)
        changed = {k: v for k, v in changed.items() if k not in added}
        if changed:
            details = "; ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in list(changed.items())[:8])
            hint = ""
            if not evaluate_only and all(k.startswith("eval.") for k in changed):
                hint = " (eval.* may change on a call that only evaluates: stages=evaluate)"
            raise UserError(
                f"workdir {workdir} holds a run of a different config ({details}). "
                f"Use a new --workdir, or delete this one to start over{hint}."
            )
        if added:
            logging.info(
                "%s predates %s: they take this call's values, now recorded in it",
                path,
                _field_names(added, flatten(config)),
            )
            saved = _with_fields(saved, flatten(config), added)
            write_json(path, saved)
        recorded = flatten(saved)
        lacking = [k for k in (eval_defaults or {}) if evaluate_only and k not in recorded]
        if lacking:
            logging.info(
                "%s predates %s: its evaluation had their defaults, now recorded in it",
                path,
                _field_names(lacking, flatten(config)),
            )
            saved = _with_fields(saved, eval_defaults, lacking)
            write_json(path, saved)
        if eval_tag(saved, config):  # the run's own evaluation settings stay in config.json
            return saved
    elif workdir.exists() and any(workdir.iterdir()):
        raise UserError(
            f"workdir {workdir} is not empty and has no {CONFIG_FILE}, so it is not a piaug "
            "run: choose an empty or new --workdir."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    write_json(path, config)  # with the run fields (stages, force) of this call
    return config


def holds_no_file(folder: Path, *, but: tuple[str, ...] = ()) -> bool:
    """Whether ``folder`` holds no file (at any depth) other than those named ``but`` at its
    top: only empty folders."""
    return all(
        p.is_dir() or (p.parent == folder and p.name in but) for p in Path(folder).rglob("*")
    )


def remove_if_nothing_made(workdir: Path) -> bool:
    """Removes a new run's ``workdir`` when it holds nothing but ``config.json`` and empty
    folders (its first stage failed); True if it did. Never removes any other file."""
    workdir = Path(workdir)
    if not workdir.is_dir() or not holds_no_file(workdir, but=(CONFIG_FILE,)):
        return False
    shutil.rmtree(workdir)
    return True


def _field_names(fields, every) -> str:
    """``fields`` (dotted) named for a log line: a section whose fields are all there is
    ``section.*``."""
    names, whole = [], set()
    for field in fields:
        section = field.split(".")[0]
        if "." in field and all(k in fields for k in every if k.startswith(section + ".")):
            if section not in whole:
                whole.add(section)
                names.append(f"{section}.*")
        else:
            names.append(field)
    return f"the config fields {', '.join(names)}"


def _with_fields(tree: dict, values: dict, fields) -> dict:
    """``tree`` (nested) with ``fields`` (dotted names) set to ``values[field]``."""
    out = json.loads(json.dumps(tree))
    for field in fields:
        *parents, leaf = field.split(".")
        node = out
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = values[field]
    return out


def eval_tag(saved: dict, current: dict) -> str:
    """'' when ``current``'s ``eval`` fields are the run's saved ones, else a name of the
    differing fields and values (``split-test1.upsample-bilinear``) for its results file."""
    changed = changed_fields(
        {"eval": saved.get("eval", {})}, {"eval": current.get("eval", {})}, ignore=RUN_FIELDS
    )
    parts = []
    for key, (_, value) in changed.items():
        text = "-".join(str(v) for v in value) if isinstance(value, list | tuple) else str(value)
        text = "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
        parts.append(f"{key.removeprefix('eval.')}-{text}")
    return ".".join(parts)


def results_file(tag: str = "") -> str:
    """``results.json``, or ``results.TAG.json`` for evaluation settings other than the run's."""
    return f"results.{tag}.json" if tag else RESULTS_FILE


def latest_step(ckpt_dir: Path) -> int | None:
    """The newest checkpoint step in ``ckpt_dir``, None when it holds none."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return None
    return max((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()), default=None)


def has_checkpoint(ckpt_dir: Path) -> bool:
    return latest_step(ckpt_dir) is not None


def encoder_dirs(workdir: Path, baseline: str = "") -> dict[str, Path]:
    """``{"baseline": ..., "piaug": ...}``: each encoder pair's checkpoint folder (the baseline
    is ``baseline`` when set, i.e. ``config.train.baseline``, else the run's own)."""
    workdir = Path(workdir)
    return {
        "baseline": Path(baseline) if baseline else workdir / CHECKPOINTS,
        "piaug": workdir / PIAUG_DIR / CHECKPOINTS,
    }


def trained_encoders(workdir: Path, baseline: str = "") -> dict[str, Path]:
    """The ``encoder_dirs`` that hold a checkpoint."""
    return {k: d for k, d in encoder_dirs(workdir, baseline).items() if has_checkpoint(d)}


def trained_detectors(workdir: Path) -> dict[str, Path]:
    """``{NAME: DIR/detectors/NAME/checkpoints}`` of every detector holding a checkpoint."""
    root = Path(workdir) / DETECTORS
    if not root.is_dir():
        return {}
    found = {d.name: d / CHECKPOINTS for d in sorted(root.iterdir()) if d.is_dir()}
    return {k: d for k, d in found.items() if has_checkpoint(d)}


def primary_first(fn, name: str, *, others: bool = False):
    """Runs ``fn`` on process 0, then (if ``others``) on the rest once it is done there; with
    one process just runs it."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"piaug:{name}")
    if others and jax.process_index() != 0:
        result = fn()
    return result


def clear_training(out: Path, stage: str) -> None:
    """Removes ``out/checkpoints`` and ``out/metrics.jsonl`` (``config.force``)."""
    ckpt_dir, metrics = Path(out) / CHECKPOINTS, Path(out) / METRICS_FILE
    if not ckpt_dir.exists():
        return

    def clear():
        logging.info("%s: config.force is set, removing %s and %s", stage, ckpt_dir, metrics)
        shutil.rmtree(ckpt_dir)
        metrics.unlink(missing_ok=True)

    primary_first(clear, f"{stage}-force")
