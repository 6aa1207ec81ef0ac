"""The evaluate stage: one-shot matching with each encoder that has checkpoints, the same
template for all, and each detector on the images it did not train on: MRE/SDR under both
protocols in ``results.json`` (one entry per model), every model's landmarks in
``predictions.csv`` (original pixels), a table, overlays. A call that only evaluates may change
``eval.*``: its results then go to ``results.TAG.json``. Every process computes, process 0
writes."""

from __future__ import annotations

import functools
from pathlib import Path

import jax
import numpy as np
from absl import logging

from piaug import checkpoints, configure, detector, evaluate, layout, matching, plots
from piaug.data import landmarks
from piaug.errors import UserError
from piaug.stages.common import COPY_KEY, encoder_run, eval_images, held_out
from piaug.stages.detectors import network
from piaug.templates import ImagePool, choose_templates


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
        run, dirs = encoder_run(config, workdir)
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
            _table(results),
        )
        return
    figures = workdir / layout.FIGURES / tag if tag else workdir / layout.FIGURES
    predictions_path = path.with_name(
        layout.PREDICTIONS_FILE.replace(".csv", f".{tag}.csv" if tag else ".csv")
    )
    predictions = landmarks.read_predictions(predictions_path)
    shown = {}
    if todo:
        shown |= _encoders(
            config, run, results, available, todo, path, figures, predictions, tag=tag
        )
    if todo_detectors:
        shown |= _detectors(config, results, todo_detectors, path, figures, predictions)
    if jax.process_index() == 0:
        landmarks.write_csv(
            predictions_path,
            [({"model": m, "image": i}, p) for m, rows in predictions.items() for i, p in rows],
        )
    logging.info("evaluate: %s\n%s", path, evaluate.table(shown))
    _summary(results, todo_detectors, detectors)


def _table(results: dict) -> str:
    """The table of ``results.json``'s entries (those with both protocols)."""
    return evaluate.table(
        {
            name: {"grid": r, "full": r["full_resolution"]}
            for name, r in results.items()
            if "full_resolution" in r
        }
    )


def _summary(results: dict, todo_detectors: dict, detectors: dict) -> None:
    """The log lines that compare the models: baseline against piaug, each detector against
    the encoders on its images."""
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
            k: subset_mre(results[k], ids)
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


def subset_mre(entry: dict, ids: list[str]) -> float | None:
    """An entry's MRE on the images ``ids`` (its per-image MREs averaged), None unless it
    evaluated every one of them."""
    per_image = dict(zip(entry["ids"], entry["per_image_mre_mm"], strict=True))
    if not all(i in per_image for i in ids):
        return None
    return float(np.mean([per_image[i] for i in ids]))


def _record(results, predictions, name, pred, examples, ids, size, both, **extra) -> None:
    entry = dict(both["grid"])
    entry["full_resolution"] = both["full"]
    entry["ids"] = ids
    entry.update(extra)
    results[name] = entry
    original = evaluate.to_original(pred, np.stack([e["original_size"] for e in examples]), size)
    predictions[name] = list(zip(ids, original, strict=True))


def _targets(config, pool: ImagePool, template: list[int]) -> tuple[ImagePool, list[int]]:
    """The images of ``eval.split`` one-shot matching is measured on: the labelled ones but
    the templates (``pool`` when the splits are the same)."""
    split = config.eval.split
    targets = ImagePool(config, split) if split != config.data.split else pool
    keep = [
        i
        for i in range(len(targets.ids))
        if targets.labelled[i] and not (targets is pool and i in template)
    ]
    if not keep:
        raise UserError(
            f"evaluate: no labelled image of split {split!r} besides the templates to "
            "evaluate on (config.eval.split)"
        )
    if not targets.labelled.all():
        logging.info(
            "evaluate: %d unlabelled images of %s left out", (~targets.labelled).sum(), split
        )
    return targets, keep


def _copied(landmarks: np.ndarray, fusion: str, truth: dict) -> dict:
    """The templates' landmarks ``(K, L, d)`` (grid, x first) copied unmoved into every image
    of ``truth``, fused as the encoders' predictions are (every score equal), evaluated."""
    landmarks = np.asarray(landmarks, np.float64)
    fused, _ = matching.fuse(landmarks[:, None], np.zeros(landmarks.shape[:2])[:, None], fusion)
    return evaluate.template_copy(fused[0], truth)


def _encoders(config, run, results, available, todo, path, figures, predictions, *, tag) -> dict:
    """One-shot matching with the encoders ``todo`` (of ``run``) into ``results``."""
    cfg, size = config.eval, configure.image_size(config)
    model, match = configure.model(config), configure.match_settings(config)
    pool = ImagePool(config)
    # Each encoder restored on first use, once: the template's may also be evaluated.
    encoders = {
        k: functools.cache(functools.partial(checkpoints.image_encoder, d, model))
        for k, d in available.items()
    }
    first = next(iter(available))  # the baseline when there is one
    indices, chosen = choose_templates(
        config,
        run,
        pool,
        lambda: matching.encode(encoders[first](), pool.images, batch_size=match.batch_size),
        available[first],
        save=not tag and run == path.parent,
        save_set=run == path.parent,  # templates-K.json: a set no other file names
    )
    if len(indices) == 1:
        chosen = {k: v for k, v in chosen.items() if k != "ids"}  # results.json as before
    else:
        chosen["fusion"] = cfg.fusion
    template_points = np.stack(
        [matching.template_cells(pool.examples[i]["landmarks"], size) for i in indices]
    )
    targets, keep = _targets(config, pool, indices)
    examples = [targets.examples[i] for i in keep]
    ids = [targets.ids[i] for i in keep]
    truth = evaluate.truth(examples, size)
    landmarks = np.stack([pool.examples[i]["landmarks"] for i in indices])
    shown = {COPY_KEY: _copied(landmarks, cfg.fusion, truth)}
    results[COPY_KEY] = dict(shown[COPY_KEY]["grid"], full_resolution=shown[COPY_KEY]["full"])
    results[COPY_KEY]["ids"] = ids
    for name, ckpt_dir in todo.items():
        pred = matching.predict_many(
            encoders[name](),
            pool.images[indices],
            template_points,
            targets.images[keep],
            size=size,
            settings=match,
            fusion=cfg.fusion,
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
            shown_id = chosen.get("id") or "+".join(chosen["ids"])
            _overlays(figures, name, examples, pred, shown_id, cfg.num_overlays, config=config)
    return shown


def _detectors(config, results, todo, path, figures, predictions) -> dict:
    """The detectors ``todo`` on the images of ``eval.split`` each did not train on."""
    cfg, size = config.eval, configure.image_size(config)
    settings = configure.detector_settings(config)
    evaluated = eval_images(config)  # read once for every detector
    shown = {}
    for name, ckpt_dir in todo.items():
        seen = layout.read_json(ckpt_dir.parent / layout.DETECTOR_EXAMPLES) or {}
        reserved = seen.get("reserved", seen.get("ids", []))
        trained = list(reserved) + ([seen["template"]] if seen.get("template") else [])
        trained += seen.get("templates", [])  # K templates (eval.templates)
        targets = held_out(evaluated, trained)
        if targets is None or not targets.ids:
            logging.info(
                "evaluate: %s trained on every image of %s: not evaluated", name, cfg.split
            )
            continue
        net = network(config, int(targets.examples[0]["landmarks"].shape[0]))
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
        spacing = np.asarray(e["spacing"], np.float64)  # () for images, (3,) for volumes
        err = float(evaluate.radial_errors(found[None], true[None], spacing.reshape(1, -1)).mean())
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
            spacing=spacing if spacing.ndim else None,
        )
