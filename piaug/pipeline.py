"""The stages of a run, their order, their outputs and when they are skipped (DESIGN.md 2, 3).

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
prepared dataset while the others wait for it.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import jax
import numpy as np
from absl import logging
from tqdm import tqdm

from piaug import (
    analyze,
    checkpoints,
    configure,
    detector,
    estimate,
    evaluate,
    info,
    layout,
    matching,
    mixing,
    plots,
    probe,
    tb,
    train,
)
from piaug.data import input_pipeline, prepare
from piaug.errors import UserError

STAGES = configure.STAGES
COPY_KEY = "template_copy"  # results.json: the template's landmarks copied, the floor to beat


def run(config, workdir: str | Path) -> None:
    """Runs ``config.stages`` in pipeline order, writing into ``workdir``."""
    stages = configure.parse_stages(config.stages)
    configure.check(config, stages)  # before anything is written: a typo leaves no workdir
    workdir = Path(workdir)
    current = configure.as_dict(config)
    only_eval = configure.evaluate_only(stages)
    fresh = not (workdir / layout.CONFIG_FILE).exists()
    layout.primary_first(
        lambda: layout.prepare_workdir(current, workdir, evaluate_only=only_eval), "workdir"
    )
    try:
        _run_stages(config, workdir, stages, current)
    except UserError:
        if fresh and jax.process_index() == 0 and layout.remove_if_nothing_made(workdir):
            logging.info("removed %s: the run stopped before it made anything", workdir)
        raise


def _run_stages(config, workdir: Path, stages, current: dict) -> None:
    saved = layout.read_json(workdir / layout.CONFIG_FILE)
    where = configure.describe_devices()
    for stage in STAGES:
        if stage not in stages:
            continue
        logging.info("%s: on %s, %d process(es)", stage, where, jax.process_count())
        if stage == "info":
            prepared = configure.prepare_data(config)  # every process takes part (0 builds)
            layout.primary_first(lambda p=prepared: info_stage(config, workdir, p), "info")
        elif stage == "pretrain":
            pretrain_stage(config, workdir)
        elif stage == "estimate":
            estimate_stage(config, workdir)  # every process computes, process 0 writes
        elif stage == "train":
            train_stage(config, workdir)
        elif stage == "pseudo":
            pseudo_stage(config, workdir)
        elif stage == "detector":
            detector_stage(config, workdir)
        elif stage == "evaluate":  # every process computes, process 0 writes
            evaluate_stage(config, workdir, tag=layout.eval_tag(saved, current))
        elif stage == "analyze":
            layout.primary_first(lambda: analyze_stage(config, workdir), "analyze")


def _done(path: Path, config, stage: str) -> bool:
    """Whether ``path`` (a stage's output) exists and ``config.force`` does not redo it."""
    if path.exists() and not config.force:
        logging.info("%s: %s exists, skipping (--config.force=True redoes it)", stage, path)
        return True
    return False


def info_stage(config, workdir: Path, prepared: prepare.Prepared | None = None) -> None:
    """Prepares the dataset; statistics and figures of its IIE maps."""
    stats_path = workdir / layout.INFO_FILE
    if _done(stats_path, config, "info"):
        return
    prepared = configure.prepare_data(config) if prepared is None else prepared
    thresholds = configure.thresholds(config)
    figures = workdir / layout.FIGURES
    figures.mkdir(exist_ok=True)
    examples = (
        prepared.source[i] for i in tqdm(range(len(prepared)), desc="info: statistics", unit="img")
    )
    computed, landmark_iie = analyze.info_statistics(examples, thresholds)
    stats = {
        "dataset": config.data.name,
        "prepared": str(prepared.path),
        "num_images": computed["num_images"],
        "footprint": config.info.footprint,
        "grid": list(config.data.image_size),
        "units": "bits",
        "thresholds": list(thresholds),
        "iie_histogram": computed["iie_histogram"],
        "group_fraction": computed["group_fraction"],
        "landmark_iie": computed["landmark_iie"],
        "report": prepared.metadata.get("report", []),
        "per_image": computed["per_image"],
    }
    board = tb.Writer(workdir / layout.TENSORBOARD / "info")
    for i in range(min(int(config.info.num_figures), len(prepared))):
        ex = prepared.source[i]
        name = ex["id"].decode()
        groups = np.asarray(info.information_groups(ex["iie"], thresholds))
        plots.info_panel(
            ex["image"],
            ex["iie"],
            groups,
            ex["landmarks"],
            thresholds,
            figures / f"info_{name}.png",
            title=f"{name}  IIE {config.info.footprint}",
            original_size=ex["original_size"],
        )
        panel = tb.side_by_side(
            tb.rgb(ex["image"]), tb.colour_map(ex["iie"]), tb.colour_map(groups, 0, 2)
        )
        board.image(f"info/image_iie_groups/{name}", panel, 0)
    board.close()
    plots.iie_histogram(
        analyze.HIST_EDGES,
        np.asarray(stats["iie_histogram"]["counts"]),
        thresholds,
        landmark_iie,
        figures / "iie_histogram.png",
        title=f"{config.data.name}: IIE {config.info.footprint}, {stats['num_images']} images",
    )
    layout.write_json(stats_path, stats)  # last: its presence marks the stage as done
    fractions = ", ".join(f"{k} {v:.1%}" for k, v in stats["group_fraction"].items())
    logging.info("info: %d images, pixels per group: %s", stats["num_images"], fractions)
    logging.info("info: wrote %s and %s", stats_path, figures)


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
        configure.describe_devices(),
        jax.process_count(),
    )
    _warn_if_slow_on_cpu(stage, configure.cpu_hours(config, total - (done or 0)), total)
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


def _warn_if_slow_on_cpu(stage: str, hours: float | None, total: int) -> None:
    """A warning when training on the CPU would take more than 2 hours (``hours``: the
    estimate of ``configure.cpu_hours``, None off the CPU)."""
    if hours is None or hours <= 2:
        return
    logging.warning(
        "%s: this config is meant for an accelerator: its %d steps would take about %s on a "
        "2-core laptop CPU (scaled from the README's measured step). Install JAX for your GPU "
        "or TPU (the README's Install section), or use a CPU preset such as "
        "configs/ceph.py:cpu; Ctrl-C stops, and the same command resumes.",
        stage,
        total,
        f"{hours / 24:.0f} days" if hours >= 48 else f"{hours:.0f} hours",
    )


def _probe(config, prepared: prepare.Prepared, model) -> probe.Probe | None:
    """The learning monitor of ``config.eval.every`` (``piaug.probe``): the template
    ``config.eval.template`` (else the training split's typical image by its labels,
    ``probe.typical``) matched into the first ``config.eval.probe_images`` other images of
    ``config.eval.split``."""
    cfg = config.eval
    if int(cfg.every) <= 0:
        return None
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
    template = prepared.source[prepared.ids.index(template_id)]
    if not np.isfinite(template["landmarks"]).all():
        raise UserError(f"config.eval.template={template_id!r} has no landmarks: name one that has")
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
        upsample=cfg.upsample,
        batch_size=int(cfg.batch_size),
        combine=cfg.combine,
        sampling=cfg.template_sampling,
    )


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


class _Images:
    """The prepared examples of one split, each record read once."""

    def __init__(self, config, split: str | None = None):
        self.prepared = configure.prepare_data(config, split=split)
        self.ids = self.prepared.ids
        self.examples = [self.prepared.source[i] for i in range(len(self.prepared))]
        self.images = np.stack([e["image"] for e in self.examples])
        # The images with landmarks (a folder's unlabelled images have NaN ones).
        self.labelled = np.array([np.isfinite(e["landmarks"]).all() for e in self.examples])


def choose_template(config, workdir: Path, pool: _Images, features, encoder: Path, *, save=True):
    """The template's index in ``pool`` (``config.data.split``) and how it was chosen.

    ``config.eval.template`` if set; else the choice saved in ``workdir/template.json``; else
    the salient-point policy with ``features`` (a callable giving them, so they are computed
    only when needed) of the encoder in ``encoder``, saved there (when ``save``) so that every
    later stage and encoder uses the same template (delete the file to choose again).
    """
    cfg, size = config.eval, configure.image_size(config)
    path = workdir / layout.TEMPLATE_FILE
    if cfg.template or path.exists():
        if cfg.template:
            chosen = {"id": cfg.template, "chosen_by": "config.eval.template", "score": None}
            where = "config.eval.template"
        else:
            chosen, where = layout.read_json(path), str(path)
            logging.info(
                "template: %s, chosen earlier and kept in %s (--config.force keeps it too, so "
                "that every stage and encoder shares it): delete the file to choose again",
                chosen["id"],
                path,
            )
        if chosen["id"] not in pool.ids:
            raise UserError(
                f"{where}: template {chosen['id']!r} is not an image of split "
                f"{config.data.split!r} (e.g. {pool.ids[:3]}); name one that is"
                + ("" if cfg.template else ", or delete the file to choose again")
            )
        index = pool.ids.index(chosen["id"])
        if not pool.labelled[index]:
            raise UserError(
                f"{where}: template {chosen['id']!r} has no landmarks; the one-shot template "
                "must be annotated: name a labelled image, or annotate it"
            )
        return index, chosen
    points = salient_points(config, pool.examples)
    # Scored with nearest upsampling whatever eval.upsample: the score only ranks candidates,
    # and nearest takes the fast path (maps at the finest stride). 150 ceph candidates at 192
    # with 64-d embeddings: about 5 minutes beside a training, on course for over ten bilinear.
    if not pool.labelled.any():
        raise UserError(
            f"no image of split {config.data.split!r} has landmarks: the one-shot template is "
            "chosen among the labelled images (use piaug.predict --choose-template to pick the "
            "image to annotate)"
        )
    candidates = spread(pool.labelled, int(cfg.template_candidates))
    index, scores = matching.choose_template(
        features(),
        points,
        size=size,
        upsample="nearest",
        batch_size=cfg.batch_size,
        combine=cfg.combine,
        candidates=candidates,
    )
    chosen = {
        "id": pool.ids[index],
        "chosen_by": "salient-point policy",
        "score": float(scores[index]),
        "encoder": str(encoder),
    }
    if save and jax.process_index() == 0:
        layout.write_json(path, chosen)
    logging.info(
        "template: %s (score %.4f, of %d candidates scored%s)",
        chosen["id"],
        scores[index],
        int(candidates.sum()),
        f" of {int(pool.labelled.sum())} labelled: eval.template_candidates=0 scores all"
        if candidates.sum() < pool.labelled.sum()
        else "",
    )
    return index, chosen


def salient_points(config, examples) -> list[np.ndarray]:
    """Each example's candidate points for the template policy: the ``eval.salient_points``
    strongest maxima of its IIE map, ``eval.salient_distance`` apart, inside the border."""
    cfg, size = config.eval, configure.image_size(config)
    border = int(round(cfg.border * min(size)))
    return [
        matching.salient_points(
            e["iie"], count=cfg.salient_points, min_distance=cfg.salient_distance, border=border
        )
        for e in examples
    ]


def spread(allowed: np.ndarray, count: int) -> np.ndarray:
    """A mask of ``count`` of the ``allowed`` entries, evenly spaced in order (all of them
    when ``count`` is 0 or not fewer)."""
    allowed = np.asarray(allowed, bool)
    where = np.flatnonzero(allowed)
    if count <= 0 or count >= len(where):
        return allowed.copy()
    mask = np.zeros_like(allowed)
    mask[where[np.unique(np.round(np.linspace(0, len(where) - 1, count)).astype(int))]] = True
    return mask


def estimate_stage(config, workdir: Path) -> None:
    """The augmentation ranges of each information group (Eq. 10) with the baseline encoder,
    into ``workdir/augment.json``."""
    path = workdir / layout.ESTIMATE_FILE
    if _done(path, config, "estimate"):
        return
    ckpt_dir = layout.encoder_dirs(workdir, config.train.baseline)["baseline"]
    apply = checkpoints.image_encoder(ckpt_dir, configure.model(config))
    pool = _Images(config)
    features = matching.encode(apply, pool.images, batch_size=config.eval.batch_size)
    index, chosen = choose_template(config, workdir, pool, lambda: features, ckpt_dir)
    settings = configure.estimate_settings(config)
    result = estimate.estimate(
        features,
        pool.images,
        pool.examples[index]["iie"],
        index,
        thresholds=configure.thresholds(config),
        upsample=config.eval.upsample,
        combine=config.eval.combine,
        batch_size=int(config.eval.batch_size),
        seed=int(config.seed),
        **dataclasses.asdict(settings),
    )
    result["template"] = chosen
    result["encoder"] = str(ckpt_dir)
    result["num_images"] = len(pool.ids)
    lines = [
        f"{name:<7} target MI {g['target_mi']:.3f} (mean {g['mi_mean']:.3f}), brightness "
        f"[{g['brightness'][0]:.3f}, {g['brightness'][1]:.3f}], contrast "
        f"[{g['contrast'][0]:.3f}, {g['contrast'][1]:.3f}], {g['num_points']} points"
        for name, g in result["groups"].items()
    ]
    timing = result["timing_s"]
    logging.info(
        "estimate: %d images, %.1f s (match %.1f s, MI %.1f s, search %.1f s)\n%s",
        len(pool.ids),
        timing["total"],
        timing["match"],
        timing["target_mi"],
        timing["search"],
        "\n".join(lines),
    )
    if "medium" not in result["groups"]:
        raise UserError(
            f"estimate: template {chosen['id']!r} has no medium-information pixel far enough "
            "from the border, so the medium ranges (which the low group reuses) cannot be "
            "estimated: check config.info.thresholds against info_stats.json"
        )
    if jax.process_index() == 0:
        layout.write_json(path, result)


def landmark_columns(num_landmarks: int) -> list[str]:
    """The folder format's landmark columns: ``1_x, 1_y, ..., L_x, L_y``."""
    return [f"{i}_{a}" for i in range(1, num_landmarks + 1) for a in ("x", "y")]


def write_landmarks(path: Path, rows: list[tuple[dict, np.ndarray]]) -> None:
    """A CSV of ``(leading columns, (L, 2) points)`` rows: the leading columns (e.g. model,
    image), then ``1_x, 1_y, ...`` with 3 decimals. Written whole, then renamed into place."""
    import csv

    lead = list(rows[0][0]) if rows else []
    count = len(rows[0][1]) if rows else 0
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", newline="") as f:
        out = csv.writer(f)
        out.writerow(lead + landmark_columns(count))
        for first, points in rows:
            out.writerow(list(first.values()) + [f"{v:.3f}" for v in np.ravel(points)])
    tmp.replace(path)


def read_landmarks(path: Path, num_landmarks: int) -> dict[str, np.ndarray]:
    """``{image id: (L, 2)}`` of a CSV that ``write_landmarks`` wrote with an ``image``
    column; UserError naming the file when it is missing or malformed."""
    import csv

    try:
        with Path(path).open(newline="") as f:
            rows = list(csv.DictReader(f))
    except FileNotFoundError:
        raise UserError(f"{path} does not exist: run the pseudo stage first") from None
    columns = landmark_columns(num_landmarks)
    try:
        return {r["image"]: np.array([float(r[c]) for c in columns]).reshape(-1, 2) for r in rows}
    except (KeyError, ValueError, TypeError) as e:
        raise UserError(
            f"{path}: not a labels file of {num_landmarks} landmarks ({e}); delete it and run "
            "the pseudo stage again"
        ) from None


def _encoder_run(config, workdir: Path) -> tuple[Path, dict[str, Path]]:
    """The run whose encoders the detectors use (``detector.encoders``, else this one) and
    its encoders' checkpoint folders."""
    if not config.detector.encoders:
        return workdir, layout.encoder_dirs(workdir, config.train.baseline)
    run = Path(config.detector.encoders)
    saved = layout.read_json(run / layout.CONFIG_FILE) or {}
    return run, layout.encoder_dirs(run, saved.get("train", {}).get("baseline", ""))


def _ckpt_or_error(dirs: dict[str, Path], name: str, field: str) -> Path:
    if not layout.has_checkpoint(dirs[name]):
        raise UserError(
            f"{field}: the {name} encoder has no checkpoint in {dirs[name]}: run its "
            f"{'pretrain' if name == 'baseline' else 'train'} stage first"
        )
    return dirs[name]


def _detector_template(config, workdir: Path, pool: _Images, model) -> tuple[int, dict]:
    """The one annotated image of the one-shot detectors: the encoders' run's template."""
    run, dirs = _encoder_run(config, workdir)
    name = config.detector.pseudo_from
    ckpt = _ckpt_or_error(dirs, name, "config.detector.pseudo_from")
    return choose_template(
        config,
        run,
        pool,
        lambda: matching.encode(
            checkpoints.image_encoder(ckpt, model), pool.images, batch_size=config.eval.batch_size
        ),
        ckpt,
        save=run == workdir,
    )


def _detector_images(config, pool: _Images) -> list[int]:
    """Indices in ``pool`` (the training split) of the images the detectors train on."""
    n = int(config.detector.images) or len(pool.ids)
    return list(range(min(n, len(pool.ids))))


def pseudo_stage(config, workdir: Path) -> None:
    """One-shot pseudo-labels of the detectors' training images with the encoder
    ``detector.pseudo_from`` into ``pseudo/ENCODER.csv`` (original pixels)."""
    name = config.detector.pseudo_from
    path = workdir / layout.PSEUDO_DIR / f"{name}.csv"
    if _done(path, config, "pseudo"):
        return
    model, size = configure.model(config), configure.image_size(config)
    pool = _Images(config)
    index, chosen = _detector_template(config, workdir, pool, model)
    _, dirs = _encoder_run(config, workdir)
    template = pool.examples[index]
    rows_cols = np.clip(
        np.round(template["landmarks"][:, ::-1]).astype(np.int64), 0, np.asarray(size) - 1
    )
    keep = _detector_images(config, pool)
    pred = matching.predict(
        checkpoints.image_encoder(dirs[name], model),
        template["image"],
        rows_cols,
        pool.images[keep],
        size=size,
        batch_size=int(config.eval.batch_size),
        upsample=config.eval.upsample,
        subpixel=config.eval.subpixel,
        combine=config.eval.combine,
        sampling=config.eval.template_sampling,
    )
    original = evaluate.to_original(
        pred, np.stack([pool.examples[i]["original_size"] for i in keep]), size
    )
    if jax.process_index() == 0:
        path.parent.mkdir(exist_ok=True)
        write_landmarks(
            path, [({"image": pool.ids[i]}, p) for i, p in zip(keep, original, strict=True)]
        )
    logging.info(
        "pseudo: %d images matched with the %s encoder from template %s into %s",
        len(keep),
        name,
        chosen["id"],
        path,
    )


def _detector_net(config, num_landmarks: int) -> detector.Detector:
    m = configure.model(config)
    return detector.Detector(num_landmarks, m.width, jax.numpy.dtype(m.dtype), m.norm)


def detector_stage(config, workdir: Path) -> None:
    """One detector per ``detector.inits`` into ``detectors/NAME/`` (``piaug.detector``)."""
    cfg, size = config.detector, configure.image_size(config)
    pool = _Images(config)
    keep = _detector_images(config, pool)
    reserved = [pool.ids[i] for i in keep]  # the detector's images: none is evaluated
    num_landmarks = int(pool.examples[0]["landmarks"].shape[0])
    net = _detector_net(config, num_landmarks)
    template, template_id = None, None
    if cfg.labels == "true":
        keep = [i for i in keep if pool.labelled[i]]
        keep = keep[: int(cfg.labeled) or len(keep)]
        if not keep:
            raise UserError(
                "config.detector.labels='true': none of the first config.detector.images "
                "images has landmarks"
            )
        examples = [
            {"id": pool.ids[i], "image": pool.images[i], "landmarks": pool.examples[i]["landmarks"]}
            for i in keep
        ]
    else:
        index, chosen = _detector_template(config, workdir, pool, configure.model(config))
        template, template_id = pool.examples[index], chosen["id"]
        labels = read_landmarks(
            workdir / layout.PSEUDO_DIR / f"{cfg.pseudo_from}.csv", num_landmarks
        )
        missing = [pool.ids[i] for i in keep if pool.ids[i] not in labels]
        if missing:
            raise UserError(
                f"{workdir / layout.PSEUDO_DIR / (cfg.pseudo_from + '.csv')} has no row for "
                f"{missing[:3]} ({len(missing)} images): run the pseudo stage again with "
                "--config.force=True"
            )
        examples = [
            {
                "id": pool.ids[i],
                "image": pool.images[i],
                "landmarks": prepare.resize_points(
                    labels[pool.ids[i]], pool.examples[i]["original_size"], size
                ),
            }
            for i in keep
            if i != index  # the template comes with its true labels in every batch
        ]
    input_pipeline.check_batch(
        int(cfg.batch_size), len(examples), jax.process_count(), field="config.detector.batch_size"
    )
    _, dirs = _encoder_run(config, workdir)
    trained = reserved + ([template_id] if template_id else [])
    held_out = _held_out(_eval_images(config, pool), trained)
    settings = configure.detector_settings(config)
    for init in configure.detector_inits(config):
        name = configure.detector_name(config, init)
        out = workdir / layout.DETECTORS / name
        if config.force:
            layout.clear_training(out, "detector")
        train_settings = configure.detector_train_settings(config)
        total = train_settings.num_steps(len(examples))
        done = layout.latest_step(out / layout.CHECKPOINTS)
        if done is not None and done >= total:
            logging.info("detector: %s already holds step %d of %d", out, done, total)
            continue
        initial = _detector_init(config, init, dirs)
        logging.info(
            "detector: %s, %d steps of %d images (%s labels%s), init %s, %s",
            name,
            total,
            train_settings.batch_size,
            cfg.labels,
            f" of {cfg.pseudo_from}, template {template_id} in every batch"
            if template is not None
            else "",
            init,
            configure.describe_devices(),
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
                    "template": template_id,
                    "ids": [e["id"] for e in examples],
                    "reserved": reserved,  # detector.images: left out of its evaluation
                },
            )
        monitor = None
        if int(config.eval.every) > 0 and held_out is not None and len(held_out.ids):
            count = min(int(config.eval.probe_images), len(held_out.ids))
            monitor = probe.DetectorProbe(
                net,
                settings,
                held_out.examples[:count],
                size,
                batch_size=int(config.eval.batch_size),
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


class _Subset:
    """Some examples of an ``_Images``: ``ids``, ``examples``, ``images``."""

    def __init__(self, pool: _Images, indices: list[int]):
        self.indices = indices
        self.ids = [pool.ids[i] for i in indices]
        self.examples = [pool.examples[i] for i in indices]
        self.images = pool.images[indices] if indices else pool.images[:0]


def _eval_images(config, pool: _Images | None = None) -> _Images | None:
    """The images of ``eval.split``: ``pool`` (the training split's, when already read) if
    the splits are the same, None when the split cannot be read."""
    if config.eval.split == config.data.split:
        return pool or _Images(config)
    try:
        return _Images(config, config.eval.split)
    except UserError:
        return None


def _held_out(targets: _Images | None, trained_ids: list[str]) -> _Subset | None:
    """The labelled images of ``targets`` (``_eval_images``) that a detector trained on
    ``trained_ids`` did not see (None without targets: the probe then has nothing to measure)."""
    if targets is None:
        return None
    seen = set(trained_ids)
    return _Subset(
        targets,
        [i for i, k in enumerate(targets.ids) if k not in seen and targets.labelled[i]],
    )


def _detector_init(config, init: str, dirs: dict[str, Path]):
    """The function that turns the detector's fresh variables into its initial ones."""
    if init == "random":
        return None
    if init == "imagenet":
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
    ckpt = _ckpt_or_error(dirs, init, "config.detector.inits")
    encoder = checkpoints.restore_encoders(ckpt, configure.model(config))["image"]
    return lambda variables: detector.carry_over(variables, encoder, source=str(ckpt))


def evaluate_stage(config, workdir: Path, *, tag: str = "") -> None:
    """One-shot matching on ``config.eval.split`` with every encoder the run has (the baseline
    and piaug's; those of ``detector.encoders`` when the run has none), the same template for
    both, and every detector of the run on the images it did not train on: MRE/SDR under both
    protocols into ``results.json`` (one entry per model; ``results.TAG.json`` when ``tag``
    names eval settings other than the run's), each model's landmarks in ``predictions.csv``
    (original pixels), a table, overlays."""
    path = workdir / layout.results_file(tag)
    if tag:
        logging.info(
            "evaluate: eval.* differs from the run's config.json (%s): results in %s, "
            "%s keeps the run's own",
            tag,
            path,
            layout.RESULTS_FILE,
        )
    results = layout.read_json(path) or {}
    run, available = workdir, layout.trained_encoders(workdir, config.train.baseline)
    if not available and config.detector.encoders:
        run, dirs = _encoder_run(config, workdir)
        available = {k: d for k, d in dirs.items() if layout.has_checkpoint(d)}
    detectors = layout.trained_detectors(workdir)
    if not available and not detectors:
        raise UserError(
            f"evaluate: no encoder or detector in {workdir} (nor config.train.baseline): run "
            "the pretrain, train or detector stage first"
        )
    todo = {k: d for k, d in available.items() if config.force or k not in results}
    todo_detectors = {k: d for k, d in detectors.items() if config.force or k not in results}
    if not todo and not todo_detectors:
        logging.info(
            "evaluate: %s holds %s, skipping (--config.force=True redoes it)\n%s",
            path,
            [k for k in results if k != COPY_KEY],
            evaluate.table(
                {
                    name: {"grid": r, "full": r["full_resolution"]}
                    for name, r in results.items()
                    if "full_resolution" in r
                }
            ),
        )
        return
    figures = workdir / layout.FIGURES / tag if tag else workdir / layout.FIGURES
    predictions_path = path.with_name(
        layout.PREDICTIONS_FILE.replace(".csv", f".{tag}.csv" if tag else ".csv")
    )
    predictions = _read_predictions(predictions_path)
    shown = {}
    if todo:
        shown |= _evaluate_encoders(
            config, run, results, available, todo, path, figures, predictions, tag=tag
        )
    if todo_detectors:
        shown |= _evaluate_detectors(config, results, todo_detectors, path, figures, predictions)
    if jax.process_index() == 0:
        write_landmarks(
            predictions_path,
            [({"model": m, "image": i}, p) for m, rows in predictions.items() for i, p in rows],
        )
    logging.info("evaluate: %s\n%s", path, evaluate.table(shown))
    if "baseline" in results and "piaug" in results:
        b, p = results["baseline"]["mre_mm"], results["piaug"]["mre_mm"]
        logging.info(
            "evaluate: MRE baseline %.3f mm, piaug %.3f mm, the template copied %.3f mm (%s)",
            b,
            p,
            results[COPY_KEY]["mre_mm"],
            results["piaug"]["protocol"],
        )
    for name in todo_detectors:
        ids = results[name]["ids"]
        same = {
            k: _subset_mre(results[k], ids)
            for k in results
            if k not in detectors and "per_image_mre_mm" in results[k]
        }
        logging.info(
            "evaluate: %s %.3f mm on its %d images; on the same images %s",
            name,
            results[name]["mre_mm"],
            len(ids),
            ", ".join(f"{k} {v:.3f}" for k, v in same.items() if v is not None) or "-",
        )


def _subset_mre(entry: dict, ids: list[str]) -> float | None:
    """An entry's MRE on the images ``ids`` (its per-image MREs averaged), None unless it
    evaluated every one of them."""
    per_image = dict(zip(entry["ids"], entry["per_image_mre_mm"], strict=True))
    if not all(i in per_image for i in ids):
        return None
    return float(np.mean([per_image[i] for i in ids]))


def _read_predictions(path: Path) -> dict[str, list]:
    """``{model: [(image id, (L, 2)), ...]}`` of a ``predictions.csv`` (empty if none)."""
    import csv

    if not path.exists():
        return {}
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    out: dict[str, list] = {}
    for r in rows:
        values = [float(v) for k, v in r.items() if k not in ("model", "image")]
        out.setdefault(r["model"], []).append((r["image"], np.reshape(values, (-1, 2))))
    return out


def _record(results, predictions, name, pred, examples, ids, size, both, **extra) -> None:
    entry = dict(both["grid"])
    entry["full_resolution"] = both["full"]
    entry["ids"] = ids
    entry.update(extra)
    results[name] = entry
    original = evaluate.to_original(pred, np.stack([e["original_size"] for e in examples]), size)
    predictions[name] = list(zip(ids, original, strict=True))


def _evaluate_encoders(
    config, run, results, available, todo, path, figures, predictions, *, tag
) -> dict:
    """One-shot matching with the encoders ``todo`` (of ``run``) into ``results``."""
    cfg, size = config.eval, configure.image_size(config)
    model = configure.model(config)
    pool = _Images(config)
    # Each encoder restored on first use, once: the template's may also be evaluated.
    encoders = {
        k: functools.cache(functools.partial(checkpoints.image_encoder, d, model))
        for k, d in available.items()
    }
    first = next(iter(available))  # the baseline when there is one
    index, chosen = choose_template(
        config,
        run,
        pool,
        lambda: matching.encode(encoders[first](), pool.images, batch_size=cfg.batch_size),
        available[first],
        save=not tag and run == path.parent,
    )
    template = pool.examples[index]
    rows_cols = np.round(template["landmarks"][:, ::-1]).astype(np.int64)
    rows_cols = np.clip(rows_cols, 0, np.asarray(size) - 1)
    targets = _Images(config, cfg.split) if cfg.split != config.data.split else pool
    keep = [
        i
        for i in range(len(targets.ids))
        if targets.labelled[i] and not (targets is pool and i == index)
    ]
    if not keep:
        raise UserError(
            f"evaluate: no labelled image of split {cfg.split!r} besides the template to "
            "evaluate on (config.eval.split)"
        )
    if not targets.labelled.all():
        logging.info(
            "evaluate: %d unlabelled images of %s left out", (~targets.labelled).sum(), cfg.split
        )
    examples = [targets.examples[i] for i in keep]
    ids = [targets.ids[i] for i in keep]
    truth = evaluate.truth(examples, size)
    # What an encoder must beat: the template's landmarks copied to every image unmoved.
    copied = np.repeat(template["landmarks"][None].astype(np.float64), len(examples), axis=0)
    shown = {COPY_KEY: evaluate.evaluate(copied, **truth)}
    results[COPY_KEY] = dict(shown[COPY_KEY]["grid"], full_resolution=shown[COPY_KEY]["full"])
    results[COPY_KEY]["ids"] = ids
    for name, ckpt_dir in todo.items():
        pred = matching.predict(
            encoders[name](),
            pool.images[index],
            rows_cols,
            targets.images[keep],
            size=size,
            batch_size=cfg.batch_size,
            upsample=cfg.upsample,
            subpixel=cfg.subpixel,
            combine=cfg.combine,
            sampling=cfg.template_sampling,
        )
        shown[name] = evaluate.evaluate(pred, **truth)
        extra = {"eval": config.eval.to_dict()} if tag else {}
        _record(
            results,
            predictions,
            name,
            pred,
            examples,
            ids,
            size,
            shown[name],
            split=cfg.split,
            template=chosen,
            checkpoint={"dir": str(ckpt_dir), "step": layout.latest_step(ckpt_dir)},
            **extra,
        )
        if jax.process_index() == 0:
            layout.write_json(path, results)
            _overlays(figures, name, examples, pred, chosen["id"], cfg.num_overlays, config=config)
    return shown


def _evaluate_detectors(config, results, todo, path, figures, predictions) -> dict:
    """The detectors ``todo`` on the images of ``eval.split`` each did not train on."""
    cfg, size = config.eval, configure.image_size(config)
    settings = configure.detector_settings(config)
    evaluated = _eval_images(config)  # read once for every detector
    shown = {}
    for name, ckpt_dir in todo.items():
        seen = layout.read_json(ckpt_dir.parent / layout.DETECTOR_EXAMPLES) or {}
        reserved = seen.get("reserved", seen.get("ids", []))
        trained = list(reserved) + ([seen["template"]] if seen.get("template") else [])
        targets = _held_out(evaluated, trained)
        if targets is None or not targets.ids:
            logging.info(
                "evaluate: %s trained on every image of %s: not evaluated", name, cfg.split
            )
            continue
        num_landmarks = int(targets.examples[0]["landmarks"].shape[0])
        net = _detector_net(config, num_landmarks)
        variables = detector.restore(ckpt_dir, net, size)
        pred, confidence = detector.predict(
            net, variables, targets.images, settings=settings, batch_size=int(cfg.batch_size)
        )
        shown[name] = evaluate.evaluate(pred, **evaluate.truth(targets.examples, size))
        _record(
            results,
            predictions,
            name,
            pred,
            targets.examples,
            targets.ids,
            size,
            shown[name],
            split=cfg.split,
            detector={k: v for k, v in seen.items() if k not in ("ids", "reserved")}
            | {"trained_on": len(seen.get("ids", [])), "left_out": len(trained)},
            mean_confidence=float(confidence.mean()),
            checkpoint={"dir": str(ckpt_dir), "step": layout.latest_step(ckpt_dir)},
        )
        if jax.process_index() == 0:
            layout.write_json(path, results)
            _overlays(figures, name, targets.examples, pred, None, cfg.num_overlays, config=config)
    return shown


def _overlays(
    figures: Path, name: str, examples, pred, template_id: str | None, count: int, *, config
) -> None:
    """The first ``count`` images with their true and predicted landmarks, at the original
    resolution (read again from the dataset), the error in mm at full resolution."""
    figures.mkdir(parents=True, exist_ok=True)
    chosen = list(zip(examples, pred, strict=True))[:count]
    if not chosen:
        return
    dataset = configure.load_dataset(config, config.eval.split)
    where = {k: i for i, k in enumerate(dataset.ids)}
    size = configure.image_size(config)
    for e, p in chosen:
        image_id = e["id"].decode()
        found = evaluate.to_original(p[None], np.asarray(e["original_size"])[None], size)[0]
        true = np.asarray(e["landmarks_original"])
        err = float(np.hypot(*(found - true).T).mean() * float(e["spacing"]))
        template = f"template {template_id}, " if template_id else ""
        image = dataset[where[image_id]]["image"] if image_id in where else None
        if image is None:  # not in the reader's split (should not happen): the grid copy
            image, true, found = e["image"], e["landmarks"], p
        plots.overlay(
            image,
            true,
            found,
            figures / f"overlay_{name}_{image_id}.png",
            title=f"{name}, {image_id}: {template}mean error {err:.2f} mm (full resolution)",
        )


def analyze_stage(config, workdir: Path) -> None:
    """Every figure of ``piaug.analyze`` whose inputs exist, into ``workdir/figures``, and
    the numbers behind them into ``analysis.json``; a figure whose inputs are missing is
    skipped with a log line naming them."""
    summary_path = workdir / layout.ANALYSIS_FILE
    if _done(summary_path, config, "analyze"):
        return
    figures = workdir / layout.FIGURES
    figures.mkdir(exist_ok=True)
    thresholds = configure.thresholds(config)
    cfg = config.analyze
    summary: dict = {}
    skipped = []

    stats = layout.read_json(workdir / layout.INFO_FILE)
    if stats:
        summary["fig3"] = analyze.fig3_sampling(
            stats,
            cfg.gammas,
            float(config.augment.d),
            thresholds,
            figures / "sampling_probability.png",
            title=f"{config.data.name}: anchor IIE under each weight map "
            f"({len(stats['per_image'])} images)",
        )
    else:
        skipped.append(f"Fig. 3 (no {layout.INFO_FILE}: run the info stage)")

    result = layout.read_json(workdir / layout.ESTIMATE_FILE)
    if result:
        analyze.fig6_mi_density(result, figures / "mi_density.png")
    else:
        skipped.append(f"Fig. 6 (no {layout.ESTIMATE_FILE}: run the estimate stage)")

    dirs = layout.encoder_dirs(workdir, config.train.baseline)
    curves = {name: analyze.read_curve(d.parent / layout.METRICS_FILE) for name, d in dirs.items()}
    curves = {name: rows for name, rows in curves.items() if rows}
    if curves:
        plots.loss_curves(curves, figures / "loss_curves.png", title=config.data.name)
    else:
        skipped.append("loss curves (no metrics.jsonl: run pretrain or train)")
    probes, copies = {}, set()
    for name, d in dirs.items():
        rows = analyze.read_rows(d.parent / layout.METRICS_FILE, "probe_mre_mm")
        if rows:
            probes[name] = ([r["step"] for r in rows], [r["probe_mre_mm"] for r in rows])
            copies |= {r["probe_copy_mre_mm"] for r in rows}
    if probes:
        # One probe for every encoder of the run, so one copy line (none if they differ).
        reference = {"template copied": copies.pop()} if len(copies) == 1 else None
        plots.probe_curves(
            probes, figures / "probe_curve.png", title=config.data.name, reference=reference
        )
    else:
        skipped.append("probe curve (no probe in metrics.jsonl: config.eval.every)")

    transforms = {"baseline": configure.baseline_anchor_crop(config)}
    if not config.augment.estimated or (workdir / layout.ESTIMATE_FILE).exists():
        transforms["piaug"] = configure.anchor_crop(
            config, estimate_file=workdir / layout.ESTIMATE_FILE
        )
    prepared = configure.prepare_data(config)
    for name, transform in transforms.items():
        loader = input_pipeline.make_loader(
            prepared.source,
            transform,
            global_batch_size=min(4, len(prepared)),
            seed=int(config.seed),
            process_index=0,
            process_count=1,
        )
        plots.training_batch(next(iter(loader)), figures / f"training_batch_{name}.png")

    available = layout.trained_encoders(workdir, config.train.baseline)
    if available:
        pool = configure.prepare_data(config)
        n = min(int(cfg.num_images), len(pool))
        examples = [pool.source[i] for i in range(n)]
        images = np.stack([e["image"] for e in examples])
        iie = np.stack([e["iie"] for e in examples])
        model = configure.model(config)
        per_encoder = {
            name: analyze.pixel_losses(
                model.encoders(),
                checkpoints.restore_encoders(ckpt_dir, model),
                images,
                iie,
                crop_size=int(config.data.crop_size),
                loss=configure.loss(config),
                stride=int(cfg.anchor_stride),
            )
            for name, ckpt_dir in available.items()
        }
        summary["fig2"] = analyze.fig2_loss_vs_iie(
            per_encoder,
            thresholds,
            figures / "loss_vs_iie.png",
            title=f"per-pixel loss against IIE ({n} images, anchors every {cfg.anchor_stride} px)",
        )
    else:
        skipped.append("Fig. 2 (no checkpoints: run pretrain or train)")

    first = configure.load_dataset(config)[0]
    if np.ndim(first["image"]) == 2:
        footprints = {
            spec: prepare.footprint_of(spec, "config.analyze.footprints") for spec in cfg.footprints
        }
        summary["fig7"] = analyze.fig7_footprints(first, footprints, figures / "footprints.png")
    else:
        skipped.append("Fig. 7 (volumes: not drawn)")

    layout.write_json(summary_path, summary)
    for s in skipped:
        logging.info("analyze: skipped %s", s)
    logging.info("analyze: figures in %s, numbers in %s", figures, summary_path)
