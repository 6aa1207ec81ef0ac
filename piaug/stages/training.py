"""The training stages: ``pretrain`` (the baseline encoders: uniform anchors, the default jitter
for every group) into ``checkpoints/``, and ``train`` (piaug's: anchors from the weight map, the
estimate's ranges per group) into ``piaug/checkpoints/``, each watched by the probe
(``piaug.probe``) every ``eval.every`` steps. An interrupted training resumes from its latest
checkpoint, a finished one is skipped."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import logging

from piaug import configure, devices, info, layout, mixing, probe, recipes, train
from piaug.data import input_pipeline, prepare
from piaug.errors import UserError


def pretrain_stage(config, workdir: Path) -> None:
    """The baseline encoders (uniform anchors, default jitter) into ``workdir/checkpoints``,
    or, with ``config.train.baseline``, a check that those checkpoints exist."""
    if config.train.baseline:  # configure.check made sure it holds checkpoints
        logging.info(
            "pretrain: using the baseline in %s (config.train.baseline)", config.train.baseline
        )
        return
    _train(
        config,
        workdir,
        configure.baseline_anchor_crop(config),
        "pretrain",
        tb_dir=workdir / layout.TENSORBOARD / "pretrain",
    )


def train_stage(config, workdir: Path) -> None:
    """The piaug encoders: anchors from the weight map, the estimate's ranges per group
    (``config.augment``) into ``workdir/piaug``."""
    transform = configure.anchor_crop(config, estimate_file=workdir / layout.ESTIMATE_FILE)
    jitter = transform.jitter
    ranges = {
        g: [np.round(b, 3).tolist(), np.round(c, 3).tolist()]
        for g, b, c in zip(info.GROUP_NAMES, jitter.brightness, jitter.contrast, strict=True)
    }
    how = (
        " (continuous in the anchor's IIE)"
        if transform.continuous
        else " (adaptive)"
        if transform.adaptive
        else f" ({info.GROUP_NAMES[transform.fixed_group]}'s for every anchor)"
    )
    mix = configure.mixing_settings(config)
    if mix.method != "none":
        how += f", comparison method {mix.method} (config.mixing)"
    logging.info("train: %s anchors, ranges per group %s%s", transform.anchors, ranges, how)
    _train(
        config,
        workdir / layout.PIAUG_DIR,
        transform,
        "train",
        mix=mix,
        tb_dir=workdir / layout.TENSORBOARD / "train",
    )


def _train(
    config,
    out: Path,
    transform: input_pipeline.AnchorCrop,
    stage: str,
    mix: mixing.MixSettings | None = None,
    tb_dir: Path | None = None,
) -> None:
    """Trains both encoders with ``transform`` (and ``mix``) into ``out`` (``piaug.train``),
    TensorBoard's copy into ``tb_dir``."""
    if config.force:
        layout.clear_training(out, stage)
    prepared = configure.prepare_data(config)
    size = configure.image_size(config)
    input_pipeline.check_sampling(transform, prepared.metadata["iie_max"], prepared.ids, size)
    settings = configure.train_settings(config)
    total, done = settings.num_steps(len(prepared)), layout.latest_step(out / layout.CHECKPOINTS)
    if done is not None and done >= total:  # finished: nothing to build, compile or restore
        logging.info(
            "%s: %s already holds step %d of %d", stage, out / layout.CHECKPOINTS, done, total
        )
        return
    logging.info(
        "%s: %d steps of batch %d on %d images (%s), %s, %d process(es)",
        stage,
        total,
        settings.batch_size,
        len(prepared),
        config.data.name,
        devices.describe_devices(),
        jax.process_count(),
    )
    warn_if_slow_on_cpu(stage, devices.cpu_hours(config, total - (done or 0)), total)
    if warning := recipes.from_scratch_warning(config):
        logging.warning("%s: %s", stage, warning)
    out.mkdir(parents=True, exist_ok=True)
    model = configure.model(config)
    train.train(
        out,
        prepared.source,
        transform,
        model=model,
        settings=settings,
        loss=configure.loss(config),
        image_size=size,
        mix=mix,
        seed=int(config.seed),
        workers=int(config.data.workers),
        pretrained=config.model.pretrained,
        desc=stage,
        probe=_probe(config, prepared, model),
        probe_every=int(config.eval.every),
        tensorboard=tb_dir,
    )
    logging.info("%s: checkpoints and metrics.jsonl in %s", stage, out)


def warn_if_slow_on_cpu(stage: str, hours: float | None, total: int) -> None:
    """A warning when training on the CPU would take more than 2 hours (``hours``: the
    estimate of ``devices.cpu_hours``, None off the CPU)."""
    if hours is None or hours <= 2:
        return
    logging.warning(
        "%s: this config is meant for an accelerator: its %d steps would take about %s on a "
        "2-core laptop CPU (scaled from the README's measured step). Install JAX for your GPU "
        "or TPU (the README's Install section), or use the CPU preset that every config takes "
        "(e.g. configs/folder.py:cpu); Ctrl-C stops, and the same command resumes.",
        stage,
        total,
        f"{hours / 24:.0f} days" if hours >= 48 else f"{hours:.0f} hours",
    )


def _probe(config, prepared: prepare.Prepared, model) -> probe.Probe | None:
    """The learning monitor of ``config.eval.every`` (``piaug.probe``): the template
    ``config.eval.template`` (else the training split's typical image by its labels,
    ``probe.typical``) matched into the first ``config.eval.probe_images`` other images of
    ``config.eval.split``, with the evaluate stage's matching settings."""
    cfg = config.eval
    if int(cfg.every) <= 0:
        return None
    template_id = _probe_template(config, prepared)
    if template_id is None:
        return None
    template = prepared.source[prepared.ids.index(template_id)]
    pool = (
        prepared
        if cfg.split == config.data.split
        else configure.prepare_data(config, split=cfg.split)
    )
    annotated = [
        k for i, k in enumerate(pool.ids) if np.isfinite(pool.source[i]["landmarks"]).all()
    ]
    chosen = [
        pool.ids.index(annotated[i])
        for i in probe.choose(annotated, template_id, int(cfg.probe_images))
    ]
    if not chosen:
        raise UserError(
            f"config.eval.probe_images={cfg.probe_images}: the probe needs at least one image "
            f"of split {cfg.split!r} besides the template (or config.eval.every=0 for none)"
        )
    logging.info(
        "probe: template %s matched into %d images of %s every %d steps",
        template_id,
        len(chosen),
        cfg.split,
        int(cfg.every),
    )
    return probe.Probe(
        model.encoders()[0],
        template,
        [pool.source[i] for i in chosen],
        configure.image_size(config),
        settings=configure.match_settings(config),
    )


def _probe_template(config, prepared: prepare.Prepared) -> str | None:
    """The probe's template: ``config.eval.template``, else the typical labelled image (None,
    with a log line, when no image is labelled)."""
    cfg = config.eval
    marks = np.stack([prepared.source[i]["landmarks"] for i in range(len(prepared))])
    labelled = np.isfinite(marks).all(axis=(1, 2))
    if not labelled.any():
        logging.info("probe: no labelled image in %s: training is not watched", config.data.split)
        return None
    if cfg.template:
        template_id = cfg.template
    else:
        template_id = prepared.ids[np.flatnonzero(labelled)[probe.typical(marks[labelled])]]
    if template_id not in prepared.ids:
        raise UserError(
            f"config.eval.template={template_id!r} is not an image of split "
            f"{config.data.split!r} (e.g. {prepared.ids[:3]}); name one that is"
        )
    if not np.isfinite(prepared.source[prepared.ids.index(template_id)]["landmarks"]).all():
        raise UserError(f"config.eval.template={template_id!r} has no landmarks: name one that has")
    return template_id
