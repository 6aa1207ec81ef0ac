"""The detector stages (CC2D's second stage, ``piaug.detector``).

* ``pseudo``: one-shot pseudo-labels of the detectors' training images with the encoder
  ``detector.pseudo_from`` (of this run, or of the run ``detector.encoders``) and the run's
  template, into ``pseudo/ENCODER.csv`` (the folder format's columns, original pixels); with
  ``eval.templates=K`` > 1 from the run's K templates, fused by ``eval.fusion``, into
  ``pseudo/ENCODER.templates-K.csv``;
* ``detector``: one detector per ``detector.inits`` on the pseudo-labels (the template with
  its true labels in every batch; of K templates one a batch, in turn) or on true labels
  (``detector.labels``), into ``detectors/NAME/``.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
from absl import logging

from piaug import checkpoints, configure, detector, devices, evaluate, layout, matching, probe
from piaug.data import input_pipeline, landmarks, prepare
from piaug.errors import UserError
from piaug.stages.common import checkpoint_or_error, done, encoder_run, eval_images, held_out
from piaug.templates import ImagePool, choose_templates


def pseudo_path(config, workdir: Path) -> Path:
    """The pseudo stage's CSV: ``pseudo/ENCODER.csv``, ``pseudo/ENCODER.templates-K.csv``
    from K templates."""
    count = int(config.eval.templates)
    suffix = "" if count == 1 else f".templates-{count}"
    return workdir / layout.PSEUDO_DIR / f"{config.detector.pseudo_from}{suffix}.csv"


def pseudo_stage(config, workdir: Path) -> None:
    """One-shot pseudo-labels of the detectors' training images with the encoder
    ``detector.pseudo_from`` into ``pseudo_path`` (original pixels); from the run's
    ``eval.templates`` templates, fused by ``eval.fusion``."""
    name = config.detector.pseudo_from
    path = pseudo_path(config, workdir)
    if done(path, config, "pseudo"):
        return
    model, size = configure.model(config), configure.image_size(config)
    pool = ImagePool(config)
    run, dirs = encoder_run(config, workdir)
    indices, chosen = _templates(config, workdir, pool, model, run, dirs)
    keep = _images(config, pool)
    pred = matching.predict_many(
        checkpoints.image_encoder(dirs[name], model),
        pool.images[indices],
        np.stack([matching.template_cells(pool.examples[i]["landmarks"], size) for i in indices]),
        pool.images[keep],
        size=size,
        settings=configure.match_settings(config),
        fusion=config.eval.fusion,
    )
    original = evaluate.to_original(pred, [pool.examples[i]["original_size"] for i in keep], size)
    if jax.process_index() == 0:
        path.parent.mkdir(exist_ok=True)
        landmarks.write_csv(
            path, [({"image": pool.ids[i]}, p) for i, p in zip(keep, original, strict=True)]
        )
    logging.info(
        "pseudo: %d images matched with the %s encoder from template%s %s into %s",
        len(keep),
        name,
        "s" if len(indices) > 1 else "",
        ", ".join(chosen["ids"]),
        path,
    )


def detector_stage(config, workdir: Path) -> None:
    """One detector per ``detector.inits`` into ``detectors/NAME/`` (``piaug.detector``)."""
    cfg = config.detector
    pool = ImagePool(config)
    keep = _images(config, pool)
    reserved = [pool.ids[i] for i in keep]  # the detector's images: none is evaluated
    num_landmarks = int(pool.examples[0]["landmarks"].shape[0])
    run, dirs = encoder_run(config, workdir)
    if cfg.labels == "true":
        examples, template, template_ids = _true_labels(config, pool, keep), None, []
    else:
        indices, chosen = _templates(config, workdir, pool, configure.model(config), run, dirs)
        template_ids = chosen["ids"]
        template = {  # with their true labels, one in every batch (detector.train_step)
            "image": pool.images[indices],
            "landmarks": np.stack([pool.examples[i]["landmarks"] for i in indices]),
        }
        examples = _pseudo_labels(config, workdir, pool, keep, indices, num_landmarks)
    input_pipeline.check_batch(
        int(cfg.batch_size), len(examples), jax.process_count(), field="config.detector.batch_size"
    )
    trained = reserved + template_ids
    targets = held_out(eval_images(config, pool), trained)
    for init in configure.detector_inits(config):
        _fit(
            config,
            workdir,
            init,
            examples,
            dirs,
            template=template,
            template_ids=template_ids,
            num_landmarks=num_landmarks,
            reserved=reserved,
            targets=targets,
        )


def _fit(
    config,
    workdir,
    init,
    examples,
    dirs,
    *,
    template,
    template_ids,
    num_landmarks,
    reserved,
    targets,
) -> None:
    """Trains the detector of ``init`` on ``examples`` (skipped when finished)."""
    cfg, size = config.detector, configure.image_size(config)
    name = configure.detector_name(config, init)
    out = workdir / layout.DETECTORS / name
    if config.force:
        layout.clear_training(out, "detector")
    train_settings = configure.detector_train_settings(config)
    total = train_settings.num_steps(len(examples))
    finished = layout.latest_step(out / layout.CHECKPOINTS)
    if finished is not None and finished >= total:
        logging.info("detector: %s already holds step %d of %d", out, finished, total)
        return
    initial = initializer(config, init, dirs)
    logging.info(
        "detector: %s, %d steps of %d images (%s labels%s), init %s, %s",
        name,
        total,
        train_settings.batch_size,
        cfg.labels,
        ""
        if template is None
        else f" of {cfg.pseudo_from}, template {template_ids[0]} in every batch"
        if len(template_ids) == 1
        else f" of {cfg.pseudo_from}, one of templates {', '.join(template_ids)} a batch in turn",
        init,
        devices.describe_devices(),
    )
    out.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
        layout.write_json(
            out / layout.DETECTOR_EXAMPLES,
            {
                "init": init,
                "num_landmarks": num_landmarks,
                "labels": cfg.labels,
                "pseudo_from": cfg.pseudo_from if template is not None else None,
                "template": template_ids[0] if len(template_ids) == 1 else None,
                **({"templates": template_ids} if len(template_ids) > 1 else {}),
                "ids": [e["id"] for e in examples],
                "reserved": reserved,  # detector.images: left out of its evaluation
            },
        )
    net, settings = network(config, num_landmarks), configure.detector_settings(config)
    monitor = None
    if int(config.eval.every) > 0 and targets is not None and len(targets.ids):
        count = min(int(config.eval.probe_images), len(targets.ids))
        monitor = probe.DetectorProbe(
            net, settings, targets.examples[:count], size, batch_size=int(config.eval.batch_size)
        )
    detector.fit(
        out,
        examples,
        net=net,
        settings=settings,
        train_settings=train_settings,
        image_size=size,
        augmentation=configure.detector_augment(config),
        template=template,
        initialize=initial,
        seed=int(config.seed),
        workers=int(config.data.workers),
        desc=name,
        probe=monitor,
        probe_every=int(config.eval.every),
        tensorboard=workdir / layout.TENSORBOARD / name,
    )
    logging.info("detector: checkpoints and metrics.jsonl in %s", out)


def _true_labels(config, pool: ImagePool, keep: list[int]) -> list[dict]:
    """The detector's examples with their true landmarks (``detector.labels='true'``)."""
    keep = [i for i in keep if pool.labelled[i]]
    keep = keep[: int(config.detector.labeled) or len(keep)]
    if not keep:
        raise UserError(
            "config.detector.labels='true': none of the first config.detector.images "
            "images has landmarks"
        )
    return [
        {"id": pool.ids[i], "image": pool.images[i], "landmarks": pool.examples[i]["landmarks"]}
        for i in keep
    ]


def _pseudo_labels(
    config, workdir, pool, keep, templates: list[int], num_landmarks: int
) -> list[dict]:
    """The detector's examples with the pseudo stage's landmarks, in the grid; the templates
    left out (they come with their true labels, one in every batch)."""
    size = configure.image_size(config)
    path = pseudo_path(config, workdir)
    labels = landmarks.read_csv(path, num_landmarks)
    missing = [pool.ids[i] for i in keep if pool.ids[i] not in labels]
    if missing:
        raise UserError(
            f"{path} has no row for {missing[:3]} ({len(missing)} images): run the pseudo "
            "stage again with --config.force=True"
        )
    return [
        {
            "id": pool.ids[i],
            "image": pool.images[i],
            "landmarks": prepare.resize_points(
                labels[pool.ids[i]], pool.examples[i]["original_size"], size
            ),
        }
        for i in keep
        if i not in templates
    ]


def _templates(config, workdir, pool, model, run, dirs) -> tuple[list[int], dict]:
    """The annotated images of the one-shot detectors: the encoders' run's template, or its
    ``eval.templates`` templates (``choose_templates``)."""
    name = config.detector.pseudo_from
    ckpt = checkpoint_or_error(dirs, name, "config.detector.pseudo_from")
    return choose_templates(
        config,
        run,
        pool,
        lambda: matching.encode(
            checkpoints.image_encoder(ckpt, model), pool.images, batch_size=config.eval.batch_size
        ),
        ckpt,
        save=run == workdir,
        save_set=run == workdir,
    )


def _images(config, pool: ImagePool) -> list[int]:
    """Indices in ``pool`` (the training split) of the images the detectors train on."""
    n = int(config.detector.images) or len(pool.ids)
    return list(range(min(n, len(pool.ids))))


def network(config, num_landmarks: int) -> detector.Detector:
    """The detector network of the config's model settings."""
    m = configure.model(config)
    return detector.Detector(num_landmarks, m.width, jax.numpy.dtype(m.dtype), m.norm)


def initializer(config, init: str, dirs: dict[str, Path]):
    """The function that turns the detector's fresh variables into its initial ones."""
    if init == "random":
        return None
    if init == "imagenet":
        return _from_imagenet(config)
    ckpt = checkpoint_or_error(dirs, init, "config.detector.inits")
    encoder = checkpoints.restore_encoders(ckpt, configure.model(config))["image"]
    return lambda variables: detector.carry_over(variables, encoder, source=str(ckpt))


def _from_imagenet(config):
    from piaug import pretrained

    path = config.model.pretrained
    batch_norm = config.model.norm == "batch"
    vgg = pretrained.vgg_variables(
        pretrained.load_state_dict(path), batch_norm=batch_norm, source=path
    )

    def from_imagenet(variables):
        params = pretrained.place_backbone(variables["params"], vgg["params"], path)
        stats = dict(variables["batch_stats"])
        if batch_norm:
            stats["vgg"] = vgg["batch_stats"]
        return jax.tree.map(jax.numpy.asarray, {"params": params, "batch_stats": stats})

    return from_imagenet
