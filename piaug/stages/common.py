"""What several stages share: skipping a finished output, the run whose encoders a stage uses,
and the images a model is evaluated on."""

from __future__ import annotations

from pathlib import Path

from absl import logging

from piaug import layout
from piaug.errors import UserError
from piaug.templates import ImagePool, Subset

COPY_KEY = "template_copy"  # results.json: the template's landmarks copied, the floor to beat


def done(path: Path, config, stage: str) -> bool:
    """Whether ``path`` (a stage's output) exists and ``config.force`` does not redo it."""
    if path.exists() and not config.force:
        logging.info("%s: %s exists, skipping (--config.force=True redoes it)", stage, path)
        return True
    return False


def encoder_run(config, workdir: Path) -> tuple[Path, dict[str, Path]]:
    """The run whose encoders the detectors use (``detector.encoders``, else this one) and
    its encoders' checkpoint folders."""
    if not config.detector.encoders:
        return workdir, layout.encoder_dirs(workdir, config.train.baseline)
    run = Path(config.detector.encoders)
    saved = layout.read_json(run / layout.CONFIG_FILE) or {}
    return run, layout.encoder_dirs(run, saved.get("train", {}).get("baseline", ""))


def checkpoint_or_error(dirs: dict[str, Path], name: str, field: str) -> Path:
    """The checkpoint folder of encoder ``name``; UserError naming ``field`` without one."""
    if not layout.has_checkpoint(dirs[name]):
        raise UserError(
            f"{field}: the {name} encoder has no checkpoint in {dirs[name]}: run its "
            f"{'pretrain' if name == 'baseline' else 'train'} stage first"
        )
    return dirs[name]


def eval_images(config, pool: ImagePool | None = None) -> ImagePool | None:
    """The images of ``eval.split``: ``pool`` (the training split's, when already read) if
    the splits are the same, None when the split cannot be read."""
    if config.eval.split == config.data.split:
        return pool or ImagePool(config)
    try:
        return ImagePool(config, config.eval.split)
    except UserError:
        return None


def held_out(targets: ImagePool | None, trained_ids: list[str]) -> Subset | None:
    """The labelled images of ``targets`` (``eval_images``) that a detector trained on
    ``trained_ids`` did not see (None without targets: the probe then has nothing to measure)."""
    if targets is None:
        return None
    seen = set(trained_ids)
    return Subset(
        targets,
        [i for i, k in enumerate(targets.ids) if k not in seen and targets.labelled[i]],
    )
