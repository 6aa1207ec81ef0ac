"""The stages of a run, their order, their outputs and when they are skipped (DESIGN.md 2, 3).

A run lives in a workdir that holds ``config.json``; a workdir made by another config is refused,
and a stage whose output exists is skipped unless ``config.force`` is set, so no finished result
is overwritten without being asked. The stages, in order:

* ``info``: prepares the dataset (``piaug.data.prepare``: IIE maps at the original resolution,
  resized with the images to the training size, stored as TFDS array_record in a shared cache)
  and writes ``info_stats.json`` (IIE histogram, fraction of pixels per information group, IIE
  at the landmarks, all in the training grid that the sampler sees) and ``figures/``
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
* ``evaluate``: one-shot matching with each encoder that has checkpoints, the same template
  for all, MRE/SDR in ``results.json`` (one entry per encoder), a table, overlays.
* ``analyze``: the paper's figures from these files (``piaug.analyze``).

With several processes (``jax.distributed``), process 0 writes the workdir and builds the
prepared dataset while the others wait for it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
from pathlib import Path

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from tqdm import tqdm

from piaug import analyze, augment, data, estimate, evaluate, info, matching, plots, train
from piaug.data import input_pipeline, prepare
from piaug.errors import UserError

STAGES = ("info", "pretrain", "estimate", "train", "evaluate", "analyze")
PIAUG_DIR = "piaug"  # the piaug encoders' checkpoints/ and metrics.jsonl, inside the workdir
ESTIMATE_FILE = "augment.json"
TEMPLATE_FILE = "template.json"
COPY_KEY = "template_copy"  # results.json: the template's landmarks copied, the floor to beat
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
        elif stage == "estimate":
            estimate_stage(config, workdir)  # every process computes, process 0 writes
        elif stage == "train":
            train_stage(config, workdir)
        elif stage == "evaluate":
            evaluate_stage(config, workdir)  # every process computes, process 0 writes
        elif stage == "analyze":
            _primary_first(lambda: analyze.analyze(config, workdir), "analyze")


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
    _check_estimate(config, size)
    for spec in config.analyze.footprints:
        make_footprint(spec, "config.analyze.footprints")
    if int(config.analyze.anchor_stride) < 1 or int(config.analyze.num_images) < 1:
        raise UserError(
            f"config.analyze.anchor_stride={config.analyze.anchor_stride}, num_images="
            f"{config.analyze.num_images}: both must be >= 1"
        )
    if config.model.pretrained and not Path(config.model.pretrained).is_file():
        raise UserError(
            f"config.model.pretrained={config.model.pretrained!r} is not a file: give the path "
            "of a torchvision vgg19 state dict (.pth, .npz or .safetensors), or '' for none"
        )
    if config.train.baseline and not _has_checkpoint(Path(config.train.baseline)):
        raise UserError(
            f"config.train.baseline={config.train.baseline!r} holds no checkpoint: give the "
            "checkpoints/ folder of a finished pretrain run, or '' to train one"
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


def _check_estimate(config, size) -> None:
    cfg = config.estimate
    patch = int(cfg.patch_size) or int(config.data.crop_size)
    problems = []
    if int(cfg.num_points) < 1:
        problems.append(f"num_points={cfg.num_points}: need at least 1")
    if not 2 <= patch <= min(size):
        problems.append(f"patch_size={cfg.patch_size}: need 2..{min(size)} (0: the crop size)")
    if not float(cfg.alpha) > 0:
        problems.append(f"alpha={cfg.alpha}: need alpha_hat > 0")
    if int(cfg.max_steps) < 1:
        problems.append(f"max_steps={cfg.max_steps}: need at least 1")
    if cfg.estimator not in estimate.ESTIMATORS:
        problems.append(f"estimator={cfg.estimator!r}: use one of {estimate.ESTIMATORS}")
    if problems:
        raise UserError("config.estimate." + "; config.estimate.".join(problems))


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


def make_footprint(spec: str, field: str = "config.info.footprint") -> np.ndarray:
    """A footprint field as a boolean array (``piaug.info.parse_footprint``)."""
    try:
        return info.parse_footprint(spec)
    except ValueError as e:
        raise UserError(f"{field}={spec!r}: {e}") from None


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
        transform,
        anchors="uniform",
        jitter=augment.GroupJitter.uniform(),
        adaptive=False,
        continuous=False,
    )


def baseline_dir(config, workdir: Path) -> Path:
    """The baseline's checkpoints: ``config.train.baseline``, or the run's own."""
    return Path(config.train.baseline) if config.train.baseline else workdir / "checkpoints"


def _latest_step(ckpt_dir: Path) -> int | None:
    """The newest checkpoint step in ``ckpt_dir``, None when it holds none."""
    if not ckpt_dir.is_dir():
        return None
    return max((int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()), default=None)


def _has_checkpoint(ckpt_dir: Path) -> bool:
    return _latest_step(ckpt_dir) is not None


def _clear_training(out: Path, stage: str) -> None:
    """``config.force``: removes ``out/checkpoints`` and ``out/metrics.jsonl``."""
    ckpt_dir, metrics = out / "checkpoints", out / "metrics.jsonl"
    if not ckpt_dir.exists():
        return

    def clear():
        logging.info("%s: config.force is set, removing %s and %s", stage, ckpt_dir, metrics)
        shutil.rmtree(ckpt_dir)
        metrics.unlink(missing_ok=True)

    _primary_first(clear, f"{stage}-force")


def _train(config, out: Path, transform: input_pipeline.AnchorCrop, stage: str) -> None:
    """Trains both encoders with ``transform`` into ``out`` (``piaug.train``)."""
    if config.force:
        _clear_training(out, stage)
    prepared = prepare_data(config)
    input_pipeline.check_sampling(
        transform, prepared.metadata["iie_max"], prepared.ids, tuple(config.data.image_size)
    )
    steps = train.num_steps(config, len(prepared))
    logging.info(
        "%s: %d steps of batch %d on %d images (%s), %d device(s), %d process(es)",
        stage,
        steps,
        config.train.batch_size,
        len(prepared),
        config.data.name,
        jax.device_count(),
        jax.process_count(),
    )
    out.mkdir(parents=True, exist_ok=True)
    train.train(config, out, prepared.source, transform, desc=stage)
    logging.info("%s: checkpoints and metrics.jsonl in %s", stage, out)


def pretrain_stage(config, workdir: Path) -> None:
    """The baseline encoders (uniform anchors, default jitter) into ``workdir/checkpoints``,
    or, with ``config.train.baseline``, a check that those checkpoints exist."""
    if config.train.baseline:  # check_config made sure it holds checkpoints
        logging.info(
            "pretrain: using the baseline in %s (config.train.baseline)", config.train.baseline
        )
        return
    _train(config, workdir, baseline_transform(config), "pretrain")


def train_stage(config, workdir: Path) -> None:
    """The piaug encoders: anchors from the weight map, the estimate's ranges per group
    (``config.augment``) into ``workdir/piaug``."""
    transform = input_pipeline.anchor_crop_from_config(
        config, estimate_file=workdir / ESTIMATE_FILE
    )
    logging.info(
        "train: %s anchors, ranges per group %s%s",
        transform.anchors,
        {
            g: [np.round(b, 3).tolist(), np.round(c, 3).tolist()]
            for g, b, c in zip(
                info.GROUP_NAMES,
                transform.jitter.brightness,
                transform.jitter.contrast,
                strict=True,
            )
        },
        " (continuous in the anchor's IIE)"
        if transform.continuous
        else " (adaptive)"
        if transform.adaptive
        else " (medium's for every anchor)",
    )
    _train(config, workdir / PIAUG_DIR, transform, "train")


class _Images:
    """The prepared examples of one split, each record read once."""

    def __init__(self, config, split: str | None = None):
        self.prepared = prepare_data(config, split=split)
        self.ids = self.prepared.ids
        self.examples = [self.prepared.source[i] for i in range(len(self.prepared))]
        self.images = np.stack([e["image"] for e in self.examples])


def _encoder(config, ckpt_dir: Path):
    """The full-image encoder of the checkpoints in ``ckpt_dir``, as ``images -> maps``. The
    parameters are an argument of the jitted call, not constants baked into it, so every
    checkpoint of one config shares one compiled program."""
    variables = train.restore_params(ckpt_dir, config)
    net, _ = train.nets_from_config(config)
    return functools.partial(jax.jit(net.apply), variables["image"])


def choose_template(config, workdir: Path, pool: _Images, features, encoder: Path):
    """The template's index in ``pool`` (``config.data.split``) and how it was chosen.

    ``config.eval.template`` if set; else the choice saved in ``workdir/template.json``; else
    the salient-point policy with ``features`` (a callable giving them, so they are computed
    only when needed) of the encoder in ``encoder``, saved there so that every later stage and
    encoder uses the same template (delete the file to choose again).
    """
    cfg, size = config.eval, tuple(config.data.image_size)
    path = workdir / TEMPLATE_FILE
    if cfg.template or path.exists():
        if cfg.template:
            chosen = {"id": cfg.template, "chosen_by": "config.eval.template", "score": None}
            where = "config.eval.template"
        else:
            chosen, where = json.loads(path.read_text()), str(path)
        if chosen["id"] not in pool.ids:
            raise UserError(
                f"{where}: template {chosen['id']!r} is not an image of split "
                f"{config.data.split!r} (e.g. {pool.ids[:3]}); name one that is"
                + ("" if cfg.template else ", or delete the file to choose again")
            )
        return pool.ids.index(chosen["id"]), chosen
    border = int(round(cfg.border * min(size)))
    points = [
        matching.salient_points(
            e["iie"], count=cfg.salient_points, min_distance=cfg.salient_distance, border=border
        )
        for e in pool.examples
    ]
    index, scores = matching.choose_template(
        features(), points, size=size, upsample=cfg.upsample, batch_size=cfg.batch_size
    )
    chosen = {
        "id": pool.ids[index],
        "chosen_by": "salient-point policy",
        "score": float(scores[index]),
        "encoder": str(encoder),
    }
    if jax.process_index() == 0:
        _write_json(path, chosen)
    logging.info(
        "template: %s (score %.4f, of %d candidates)", chosen["id"], scores[index], len(scores)
    )
    return index, chosen


def estimate_stage(config, workdir: Path) -> None:
    """The augmentation ranges of each information group (Eq. 10) with the baseline encoder,
    into ``workdir/augment.json``."""
    path = workdir / ESTIMATE_FILE
    if path.exists() and not config.force:
        logging.info("estimate: %s exists, skipping (--config.force=True redoes it)", path)
        return
    cfg = config.estimate
    ckpt_dir = baseline_dir(config, workdir)
    apply = _encoder(config, ckpt_dir)
    pool = _Images(config)
    features = matching.encode(apply, pool.images, batch_size=config.eval.batch_size)
    index, chosen = choose_template(config, workdir, pool, lambda: features, ckpt_dir)
    result = estimate.estimate(
        features,
        pool.images,
        pool.examples[index]["iie"],
        index,
        thresholds=_thresholds(config),
        num_points=int(cfg.num_points),
        patch_size=int(cfg.patch_size) or int(config.data.crop_size),
        alpha=float(cfg.alpha),
        max_steps=int(cfg.max_steps),
        estimator=cfg.estimator,
        upsample=config.eval.upsample,
        batch_size=int(config.eval.batch_size),
        seed=int(config.seed),
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
    logging.info(
        "estimate: %d images, %.1f s (match %.1f s, MI %.1f s, search %.1f s)\n%s",
        len(pool.ids),
        result["timing_s"]["total"],
        result["timing_s"]["match"],
        result["timing_s"]["target_mi"],
        result["timing_s"]["search"],
        "\n".join(lines),
    )
    if "medium" not in result["groups"]:
        raise UserError(
            f"estimate: template {chosen['id']!r} has no medium-information pixel far enough "
            "from the border, so the medium ranges (which the low group reuses) cannot be "
            "estimated: check config.info.thresholds against info_stats.json"
        )
    if jax.process_index() == 0:
        _write_json(path, result)


def _encoders(config, workdir: Path) -> dict[str, Path]:
    return {"baseline": baseline_dir(config, workdir), "piaug": workdir / PIAUG_DIR / "checkpoints"}


def evaluate_stage(config, workdir: Path) -> None:
    """One-shot matching on ``config.eval.split`` with every encoder the run has (the baseline
    and piaug's), the same template for both: MRE/SDR under both protocols into
    ``results.json`` (one entry per encoder), a table, overlays."""
    path = workdir / "results.json"
    results = json.loads(path.read_text()) if path.exists() else {}
    available = {k: d for k, d in _encoders(config, workdir).items() if _has_checkpoint(d)}
    if not available:
        raise UserError(
            f"evaluate: no encoder in {workdir} (nor config.train.baseline): run the pretrain "
            "or train stage first"
        )
    todo = {k: d for k, d in available.items() if config.force or k not in results}
    if not todo:
        logging.info(
            "evaluate: %s holds %s, skipping (--config.force=True redoes it)",
            path,
            [k for k in results if k != COPY_KEY],
        )
        return
    cfg, size = config.eval, tuple(config.data.image_size)
    pool = _Images(config)
    # Each encoder restored on first use, once: the template's may also be evaluated.
    encoders = {
        k: functools.cache(functools.partial(_encoder, config, d)) for k, d in available.items()
    }
    first = next(iter(available))  # the baseline when there is one
    index, chosen = choose_template(
        config,
        workdir,
        pool,
        lambda: matching.encode(encoders[first](), pool.images, batch_size=cfg.batch_size),
        available[first],
    )
    template = pool.examples[index]
    rows_cols = np.round(template["landmarks"][:, ::-1]).astype(np.int64)
    rows_cols = np.clip(rows_cols, 0, np.asarray(size) - 1)
    targets = _Images(config, cfg.split) if cfg.split != config.data.split else pool
    keep = [i for i in range(len(targets.ids)) if not (targets is pool and i == index)]
    examples = [targets.examples[i] for i in keep]
    truth = {
        "landmarks_original": np.stack([e["landmarks_original"] for e in examples]),
        "spacing": np.array([float(e["spacing"]) for e in examples]),
        "original_size": np.stack([e["original_size"] for e in examples]),
        "image_size": size,
    }
    # What an encoder must beat: the template's landmarks copied to every image unmoved.
    copied = np.repeat(template["landmarks"][None].astype(np.float64), len(examples), axis=0)
    shown = {COPY_KEY: evaluate.evaluate(copied, **truth)}
    results[COPY_KEY] = dict(shown[COPY_KEY]["grid"], full_resolution=shown[COPY_KEY]["full"])
    for name, ckpt_dir in todo.items():
        apply = encoders[name]()
        template_features = [f[0] for f in matching.encode(apply, pool.images[index : index + 1])]
        vectors = matching.template_vectors(template_features, rows_cols)
        features = matching.encode(apply, targets.images[keep], batch_size=cfg.batch_size)
        pred = matching.match_all(
            features,
            vectors,
            size=size,
            batch_size=cfg.batch_size,
            upsample=cfg.upsample,
            subpixel=cfg.subpixel,
        )[..., ::-1]  # (x, y)
        both = evaluate.evaluate(pred, **truth)
        entry = dict(both["grid"])
        entry["full_resolution"] = both["full"]
        entry["split"] = cfg.split
        entry["ids"] = [targets.ids[i] for i in keep]
        entry["template"] = chosen
        entry["checkpoint"] = {"dir": str(ckpt_dir), "step": _latest_step(ckpt_dir)}
        results[name] = entry
        shown[name] = both
        if jax.process_index() == 0:
            _write_json(path, results)
            _overlays(config, workdir, name, examples, pred, chosen["id"])
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


def _overlays(config, workdir: Path, name: str, examples, pred, template_id: str) -> None:
    figures = workdir / "figures"
    figures.mkdir(exist_ok=True)
    for e, p in list(zip(examples, pred, strict=True))[: config.eval.num_overlays]:
        image_id = e["id"].decode()
        err = np.hypot(*(p - e["landmarks"]).T).mean()
        plots.overlay(
            e["image"],
            e["landmarks"],
            p,
            figures / f"overlay_{name}_{image_id}.png",
            title=f"{name}, {image_id}: template {template_id}, mean error {err:.1f} grid px",
        )
