"""The stages of a run, their order, their outputs and when they are skipped (docs/design.md 2, 3).

``run(config, workdir)`` checks the whole config first (``piaug.configure.check``: a bad value
writes nothing), then runs ``config.stages`` in this order; each stage is skipped when its
output exists, unless ``config.force`` is set, so no finished result is overwritten without
being asked (the files: ``piaug.layout``):

* ``info``: prepares the dataset (``piaug.data.prepare``: IIE maps at the original resolution,
  resized with the images to the training size, stored as TFDS array_record in a shared cache)
  and writes ``info_stats.json`` (``piaug.analyze.info_statistics``) and ``figures/``
  (image | IIE | groups).
* ``pretrain``: the baseline encoders (uniform anchors, the default jitter for every group)
  trained on the prepared data (``piaug.train``) into ``checkpoints/``, with ``metrics.jsonl``;
  an interrupted run resumes from its latest checkpoint, a finished one is skipped. With
  ``config.train.baseline`` it trains nothing and the later stages use that run's checkpoints.
* ``estimate``: the augmentation ranges per information group (``piaug.estimate``, Eq. 10)
  with the baseline encoder and the template (chosen once, ``template.json``) into
  ``augment.json``.
* ``train``: the piaug encoders (weight-map anchors, the estimate's ranges per group) into
  ``piaug/checkpoints/`` and ``piaug/metrics.jsonl``.
* ``pseudo``: one-shot pseudo-labels of every image of the training split with the encoder
  ``detector.pseudo_from`` (of this run, or of the run ``detector.encoders``) and the template,
  into ``pseudo/ENCODER.csv`` (the folder format's columns, original pixels).
* ``detector``: one landmark detector per ``detector.inits`` (``piaug.detector``: CC2D's
  second stage) on the pseudo-labels (the template with its labels in every batch) or on
  true labels (``detector.labels``), into ``detectors/NAME/``.
* ``evaluate``: one-shot matching with each encoder that has checkpoints, the same template
  for all, and each detector on the images it did not train on: MRE/SDR in ``results.json``
  (one entry per model), every model's landmarks in ``predictions.csv``, a table, overlays.
  A call that only evaluates may change ``eval.*``: its results go to ``results.TAG.json``.
* ``analyze``: the paper's figures from these files (``piaug.analyze``).

With several processes (``jax.distributed``), process 0 writes the workdir and builds the
prepared dataset while the others wait for it. The stage bodies live in ``piaug.stages``, one
module each; this module only runs them.
"""

from __future__ import annotations

from pathlib import Path

import jax
from absl import logging

from piaug import configure, defaults, devices, layout
from piaug.errors import UserError
from piaug.stages.analyze import analyze_stage
from piaug.stages.detectors import detector_stage, pseudo_stage
from piaug.stages.estimate import estimate_stage
from piaug.stages.evaluate import evaluate_stage
from piaug.stages.info import info_stage
from piaug.stages.training import pretrain_stage, train_stage

STAGES = configure.STAGES  # their order


def run(config, workdir: str | Path) -> None:
    """Runs ``config.stages`` in pipeline order, writing into ``workdir``."""
    stages = configure.parse_stages(config.stages)
    configure.check(config, stages)  # before anything is written: a typo leaves no workdir
    workdir = Path(workdir)
    current = configure.as_dict(config)
    only_eval = configure.evaluate_only(stages)
    fresh = not (workdir / layout.CONFIG_FILE).exists()
    # what a run's evaluation did for an eval.* field it predates: the field's default
    eval_defaults = layout.flatten(
        {"eval": configure.as_dict(defaults.base_config(config.data.name))["eval"]}
    )
    layout.primary_first(
        lambda: layout.prepare_workdir(
            current, workdir, evaluate_only=only_eval, eval_defaults=eval_defaults
        ),
        "workdir",
    )
    try:
        _run_stages(config, workdir, stages, current)
    except UserError:
        if fresh and jax.process_index() == 0 and layout.remove_if_nothing_made(workdir):
            logging.info("removed %s: the run stopped before it made anything", workdir)
        raise


def _info(config, workdir: Path, tag: str) -> None:
    prepared = configure.prepare_data(config)  # every process takes part (0 builds)
    layout.primary_first(lambda: info_stage(config, workdir, prepared), "info")


def _analyze(config, workdir: Path, tag: str) -> None:
    layout.primary_first(lambda: analyze_stage(config, workdir), "analyze")


def _evaluate(config, workdir: Path, tag: str) -> None:
    evaluate_stage(config, workdir, tag=tag)  # every process computes, process 0 writes


# Each stage as ``fn(config, workdir, tag)``; ``tag`` names eval settings other than the
# run's (``layout.eval_tag``), only the evaluate stage reads it.
RUNNERS = {
    "info": _info,
    "pretrain": lambda config, workdir, tag: pretrain_stage(config, workdir),
    "estimate": lambda config, workdir, tag: estimate_stage(config, workdir),
    "train": lambda config, workdir, tag: train_stage(config, workdir),
    "pseudo": lambda config, workdir, tag: pseudo_stage(config, workdir),
    "detector": lambda config, workdir, tag: detector_stage(config, workdir),
    "evaluate": _evaluate,
    "analyze": _analyze,
}
assert tuple(RUNNERS) == tuple(STAGES), "every stage, in order"


def _run_stages(config, workdir: Path, stages, current: dict) -> None:
    tag = layout.eval_tag(layout.read_json(workdir / layout.CONFIG_FILE), current)
    where = devices.describe_devices()
    for stage in STAGES:
        if stage in stages:
            logging.info("%s: on %s, %d process(es)", stage, where, jax.process_count())
            RUNNERS[stage](config, workdir, tag)
