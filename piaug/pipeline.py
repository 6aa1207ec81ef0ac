"""The stages of a run, their order, their outputs and when they are skipped (DESIGN.md 2, 3).

A run lives in a workdir that holds ``config.json``; a workdir made by another config is refused,
and a stage whose output exists is skipped unless ``config.force`` is set, so no finished result
is overwritten without being asked. Stages so far:

* ``info``: prepares the dataset (``piaug.data.prepare``: IIE maps at the original resolution,
  resized with the images to the training size, stored as TFDS array_record in a shared cache)
  and writes ``info_stats.json`` (IIE histogram, fraction of pixels per information group, IIE
  at the landmarks, all in the training grid that the sampler sees) and ``figures/``
  (image | IIE | groups).
* ``pretrain``: the baseline encoders (uniform anchors, the default jitter for every group)
  trained on the prepared data (``piaug.train``) into ``checkpoints/``, with ``metrics.jsonl``;
  an interrupted run resumes from its latest checkpoint, a finished one is skipped.

With several processes (``jax.distributed``), process 0 writes the workdir and builds the
prepared dataset while the others wait for it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from piaug import augment, data, evaluate, info, matching, plots, train
from piaug.data import input_pipeline, prepare
from piaug.errors import UserError

STAGES = ("info", "pretrain", "evaluate")
# Fields that say how to run, not what the result is: they may change between calls on a workdir.
_RUN_FIELDS = ("stages", "force")
_HIST_EDGES = np.linspace(0.0, 8.0, 81)  # IIE histogram bins (bits); 8 bits is the maximum


def run(config, workdir: str | os.PathLike) -> None:
    """Runs ``config.stages`` in pipeline order, writing into ``workdir``."""
    stages = parse_stages(config.stages)
    check_config(config)  # before anything is written: a typo leaves no workdir behind
    workdir = Path(workdir)
    _primary_first(lambda: prepare_workdir(config, workdir), "workdir")
    for stage in STAGES:
        if stage not in stages:
            continue
        if stage == "info":
            prepared = prepare_data(config)  # every process takes part (process 0 builds)
            _primary_first(lambda p=prepared: info_stage(config, workdir, p), "info")
        elif stage == "pretrain":
            pretrain_stage(config, workdir)
        elif stage == "evaluate":
            evaluate_stage(config, workdir)  # every process computes, process 0 writes


def _primary_first(fn, name: str, *, others: bool = False):
    """Runs ``fn`` on process 0, then (if ``others``) on the rest once it is done there; with
    one process just runs it."""
    if jax.process_count() == 1:
        return fn()
    result = fn() if jax.process_index() == 0 else None
    multihost_utils.sync_global_devices(f"piaug:{name}")
    if others and jax.process_index() != 0:
        result = fn()
    return result


def parse_stages(spec: str) -> list[str]:
    stages = [s.strip() for s in str(spec).split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGES]
    if unknown or not stages:
        raise UserError(
            f"config.stages={spec!r}: unknown or no stage {unknown}; "
            f"give a comma-separated subset of {', '.join(STAGES)}"
        )
    return stages


def check_config(config) -> None:
    """Raises UserError, naming the field, for values no stage could use."""
    footprint = make_footprint(config.info.footprint)
    _thresholds(config)
    size = tuple(config.data.image_size)
    if len(size) != 2 or min(size) < 8:
        raise UserError(f"config.data.image_size={size}: need (height, width), each >= 8")
    if not 1 <= int(config.data.crop_size) <= min(size):
        raise UserError(
            f"config.data.crop_size={config.data.crop_size}: must be between 1 and the "
            f"training size {size}"
        )
    input_pipeline.anchor_crop_from_config(config, ranges_required=False)
    train.check_config(config)
    if config.eval.upsample not in matching.UPSAMPLING:
        raise UserError(
            f"config.eval.upsample={config.eval.upsample!r}: use one of {matching.UPSAMPLING}"
        )
    if config.model.pretrained and not Path(config.model.pretrained).is_file():
        raise UserError(
            f"config.model.pretrained={config.model.pretrained!r} is not a file: give the path "
            "of a torchvision vgg19 state dict (.pth, .npz or .safetensors), or '' for none"
        )
    if int(config.train.batch_size) % jax.device_count():
        raise UserError(
            f"config.train.batch_size={config.train.batch_size} does not split over the "
            f"{jax.device_count()} devices: use a multiple of the device count"
        )
    first = load_dataset(config)[0]  # datasets are lazy: this reads one example
    if footprint.ndim != np.ndim(first["image"]):
        raise UserError(
            f"config.info.footprint={config.info.footprint!r} is {footprint.ndim}-D but "
            f"image {first['id']!r} is {np.ndim(first['image'])}-D: use disk or square for "
            "images, ball or cube for volumes"
        )


def _thresholds(config) -> tuple[float, float]:
    try:
        low, high = (float(t) for t in config.info.thresholds)
    except (TypeError, ValueError):
        low = high = float("nan")
    if not low <= high:
        raise UserError(
            f"config.info.thresholds={config.info.thresholds}: need two numbers t0 <= t1"
        )
    return low, high


def _flatten(tree, prefix=""):
    if isinstance(tree, dict):
        out = {}
        for key, value in tree.items():
            out.update(_flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def prepare_workdir(config, workdir: Path) -> None:
    """Creates ``workdir`` with ``config.json``, or checks that it holds a run of this config."""
    current = json.loads(config.to_json_best_effort())
    saved_path = workdir / "config.json"
    if saved_path.exists():
        try:
            saved = json.loads(saved_path.read_text())
        except json.JSONDecodeError as e:
            raise UserError(f"{saved_path} is not valid JSON ({e}); move it away") from None
        old, new = _flatten(saved), _flatten(current)
        changed = sorted(
            k
            for k in set(old) | set(new)
            if k.split(".")[0] not in _RUN_FIELDS and old.get(k) != new.get(k)
        )
        if changed:
            details = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed[:8])
            raise UserError(
                f"workdir {workdir} holds a run of a different config ({details}). "
                "Use a new --workdir, or delete this one to start over."
            )
    elif workdir.exists() and any(workdir.iterdir()):
        raise UserError(
            f"workdir {workdir} is not empty and has no config.json, so it is not a piaug run: "
            "choose an empty or new --workdir."
        )
    workdir.mkdir(parents=True, exist_ok=True)
    _write_json(saved_path, current)


def _write_json(path: Path, payload) -> None:
    """Writes atomically (a temporary file, then a rename): a crash leaves no half file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)


def make_footprint(spec: str) -> np.ndarray:
    """``config.info.footprint`` as a boolean array (``piaug.info.parse_footprint``)."""
    try:
        return info.parse_footprint(spec)
    except ValueError as e:
        raise UserError(f"config.info.footprint={spec!r}: {e}") from None


def load_dataset(config, split: str | None = None):
    """The dataset named by ``config.data``, its ``split`` (default ``config.data.split``; the
    synthetic set is drawn from ``config.seed``)."""
    cfg = config.data
    options = {k: v for k, v in cfg.options.to_dict().items() if v is not None}
    if cfg.name == "synthetic":
        options["seed"] = config.seed
    try:
        return data.load(cfg.name, cfg.dir or None, split=split or cfg.split, **options)
    except UserError as e:
        hint = ""
        if "unknown options" in str(e):
            hint = (
                f"; config.data.options holds the reader options of the config's dataset: "
                f"start from configs/{cfg.name}.py"
            )
        raise UserError(f"config.data (dataset {cfg.name!r} at {cfg.dir!r}): {e}{hint}") from None
    except ValueError as e:
        raise UserError(f"config.data: {e}") from None


def prepare_data(config, dataset=None, split: str | None = None) -> prepare.Prepared:
    """The prepared (TFDS) copy of ``config.data`` (or its ``split``) at the training size,
    built on first use (by process 0 while the others wait, when there are several)."""
    split = split or config.data.split
    dataset = load_dataset(config, split) if dataset is None else dataset
    return _primary_first(
        lambda: prepare.prepare(
            dataset,
            image_size=tuple(config.data.image_size),
            footprint=config.info.footprint,
            cache_dir=config.data.cache_dir or None,
            split=split,
        ),
        "prepare",
        others=True,
    )


def _fractions(group_counts) -> dict[str, float]:
    total = max(1, int(np.sum(group_counts)))
    return {name: int(c) / total for name, c in zip(info.GROUP_NAMES, group_counts, strict=True)}


def info_stage(config, workdir: Path, prepared: prepare.Prepared | None = None) -> None:
    """Prepares the dataset; statistics and figures of its IIE maps."""
    stats_path = workdir / "info_stats.json"
    if stats_path.exists() and not config.force:
        logging.info("info: %s exists, skipping (--config.force=True redoes it)", stats_path)
        return
    prepared = prepare_data(config) if prepared is None else prepared
    low, high = _thresholds(config)
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)

    hist = np.zeros(len(_HIST_EDGES) - 1, np.int64)
    group_counts = np.zeros(3, np.int64)
    per_image, landmark_iie = [], []
    for i in tqdm(range(len(prepared)), desc="info: statistics", unit="img"):
        ex = prepared.source[i]
        m, name = ex["iie"], ex["id"].decode()
        g = np.asarray(info.information_groups(m, (low, high)))
        hist += np.histogram(m, _HIST_EDGES)[0]
        counts = np.bincount(g.ravel(), minlength=3)
        group_counts += counts
        cols, rows = np.round(ex["landmarks"].astype(np.float64)).astype(int).T
        cols, rows = cols.clip(0, m.shape[1] - 1), rows.clip(0, m.shape[0] - 1)
        at_landmarks = m[rows, cols]
        landmark_iie.append(at_landmarks)
        per_image.append(
            {
                "id": name,
                "original_size": ex["original_size"].tolist(),
                "spacing_mm": float(ex["spacing"]),
                "mean_iie": float(m.mean()),
                "group_fraction": _fractions(counts),
                "landmark_iie": at_landmarks.round(4).tolist(),
            }
        )
        if i < config.info.num_figures:
            plots.info_panel(
                ex["image"],
                m,
                g,
                ex["landmarks"],
                (low, high),
                figures / f"info_{name}.png",
                title=f"{name}  IIE {config.info.footprint}",
            )

    landmark_iie = np.stack(landmark_iie)
    landmark_groups = np.asarray(info.information_groups(landmark_iie, (low, high)))
    stats = {
        "dataset": config.data.name,
        "prepared": str(prepared.path),
        "num_images": len(per_image),
        "footprint": config.info.footprint,
        "grid": list(config.data.image_size),
        "units": "bits",
        "thresholds": [low, high],
        "iie_histogram": {"bin_edges": _HIST_EDGES.round(6).tolist(), "counts": hist.tolist()},
        "group_fraction": _fractions(group_counts),
        "landmark_iie": {
            "mean": landmark_iie.mean(0).round(4).tolist(),
            "std": landmark_iie.std(0).round(4).tolist(),
            "overall_mean": float(landmark_iie.mean()),
            "group_fraction": _fractions(np.bincount(landmark_groups.ravel(), minlength=3)),
        },
        "report": prepared.metadata.get("report", []),
        "per_image": per_image,
    }
    plots.iie_histogram(
        _HIST_EDGES,
        hist,
        (low, high),
        landmark_iie,
        figures / "iie_histogram.png",
        title=f"{config.data.name}: IIE {config.info.footprint}, {len(per_image)} images",
    )
    _write_json(stats_path, stats)  # last: its presence marks the stage as done
    fractions = ", ".join(f"{k} {v:.1%}" for k, v in stats["group_fraction"].items())
    logging.info("info: %d images, pixels per group: %s", len(per_image), fractions)
    logging.info("info: wrote %s and %s", stats_path, figures)


def baseline_transform(config) -> input_pipeline.AnchorCrop:
    """The crop view of the baseline encoder: ``config.augment`` with uniform anchors and the
    default brightness and contrast ranges for every group (CC2D's own augmentation)."""
    transform = input_pipeline.anchor_crop_from_config(config, ranges_required=False)
    return dataclasses.replace(
        transform, anchors="uniform", jitter=augment.GroupJitter.uniform(), adaptive=False
    )


def pretrain_stage(config, workdir: Path) -> None:
    """Trains the baseline encoders into ``workdir/checkpoints`` (``piaug.train``)."""
    ckpt_dir, metrics = workdir / "checkpoints", workdir / "metrics.jsonl"
    if config.force and ckpt_dir.exists():

        def clear():
            logging.info("pretrain: config.force is set, removing %s and %s", ckpt_dir, metrics)
            shutil.rmtree(ckpt_dir)
            metrics.unlink(missing_ok=True)

        _primary_first(clear, "pretrain-force")
    prepared = prepare_data(config)
    transform = baseline_transform(config)
    input_pipeline.check_sampling(
        transform, prepared.metadata["iie_max"], prepared.ids, tuple(config.data.image_size)
    )
    steps = train.num_steps(config, len(prepared))
    logging.info(
        "pretrain: %d steps of batch %d on %d images (%s), %d device(s), %d process(es)",
        steps,
        config.train.batch_size,
        len(prepared),
        config.data.name,
        jax.device_count(),
        jax.process_count(),
    )
    train.train(config, workdir, prepared.source, transform)
    logging.info("pretrain: checkpoints in %s, metrics in %s", ckpt_dir, metrics)


def evaluate_stage(config, workdir: Path) -> None:
    """One-shot matching with the baseline encoder on ``config.eval.split``: the template
    (chosen without labels from ``config.data.split``, or ``config.eval.template``), MRE/SDR
    under both protocols into ``results.json`` (key ``baseline``), a table, overlays."""
    path = workdir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    if "baseline" in results and not config.force:
        logging.info(
            "evaluate: %s holds the baseline, skipping (--config.force=True redoes it)", path
        )
        return
    cfg, size = config.eval, tuple(config.data.image_size)
    variables = train.restore_params(workdir / "checkpoints", config)
    net, _ = train.nets_from_config(config)
    apply = jax.jit(lambda x: net.apply(variables["image"], x))
    pool = prepare_data(config)
    pool_examples = [pool.source[i] for i in range(len(pool))]  # each record read once
    pool_images = np.stack([e["image"] for e in pool_examples])
    if cfg.template:
        if cfg.template not in pool.ids:
            raise UserError(
                f"config.eval.template={cfg.template!r} is not an image of split "
                f"{config.data.split!r} (e.g. {pool.ids[:3]})"
            )
        index, chosen_by, score = pool.ids.index(cfg.template), "config.eval.template", None
        template_features = matching.encode(apply, pool_images[index : index + 1])
        template_features = [f[0] for f in template_features]
    else:
        features = matching.encode(apply, pool_images, batch_size=cfg.batch_size)
        border = int(round(cfg.border * min(size)))
        points = [
            matching.salient_points(
                e["iie"],
                count=cfg.salient_points,
                min_distance=cfg.salient_distance,
                border=border,
            )
            for e in pool_examples
        ]
        index, scores = matching.choose_template(
            features, points, size=size, upsample=cfg.upsample, batch_size=cfg.batch_size
        )
        chosen_by, score = "salient-point policy", float(scores[index])
        template_features = [f[index] for f in features]
    template = pool_examples[index]
    rows_cols = np.round(template["landmarks"][:, ::-1]).astype(np.int64)
    rows_cols = np.clip(rows_cols, 0, np.asarray(size) - 1)
    vectors = matching.template_vectors(template_features, rows_cols)
    logging.info("evaluate: template %s (%s)", pool.ids[index], chosen_by)

    targets = prepare_data(config, split=cfg.split)
    keep = [
        i
        for i in range(len(targets))
        if not (cfg.split == config.data.split and i == index)  # never the template itself
    ]
    examples = [targets.source[i] for i in keep]
    images = np.stack([e["image"] for e in examples])
    features = matching.encode(apply, images, batch_size=cfg.batch_size)
    pred = matching.match_all(
        features,
        vectors,
        size=size,
        batch_size=cfg.batch_size,
        upsample=cfg.upsample,
        subpixel=cfg.subpixel,
    )[..., ::-1]  # (x, y)
    both = evaluate.evaluate(
        pred,
        landmarks_original=np.stack([e["landmarks_original"] for e in examples]),
        spacing=np.array([float(e["spacing"]) for e in examples]),
        original_size=np.stack([e["original_size"] for e in examples]),
        image_size=size,
    )
    entry = dict(both["grid"])
    entry["full_resolution"] = both["full"]
    entry["split"] = cfg.split
    entry["ids"] = [targets.ids[i] for i in keep]
    entry["template"] = {"id": pool.ids[index], "chosen_by": chosen_by, "score": score}
    results["baseline"] = entry
    logging.info("evaluate: %s\n%s", path, evaluate.table({"baseline": both}))
    if jax.process_index() != 0:
        return
    _write_json(path, results)
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)
    for e, p in list(zip(examples, pred, strict=True))[: cfg.num_overlays]:
        name = e["id"].decode()
        err = np.hypot(*(p - e["landmarks"]).T).mean()
        plots.overlay(
            e["image"],
            e["landmarks"],
            p,
            figures / f"overlay_baseline_{name}.png",
            title=f"baseline, {name}: template {pool.ids[index]}, mean error {err:.1f} grid px",
        )
