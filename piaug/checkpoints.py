"""Orbax checkpoints of the encoders: saving and resuming training, and restoring encoders.

* ``Checkpoints``: the train state every ``every`` steps, restored onto a given sharding (so
  the device count may change); ``piaug.train`` uses it to save and resume.
* ``restore_encoders(ckpt_dir, model)``: the two encoders' variables of a checkpoint, from its
  folder and the model settings alone (a partial restore: the optimizer state stays on
  disk): what matching, the estimate and downstream detectors need.
* ``image_encoder(ckpt_dir, model)``: the full-image encoder as a jitted ``images -> maps``.
* ``run_encoders(workdir)``: every trained encoder of a run folder, from its ``config.json``
  alone (no ``configs/`` import).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from piaug import layout, models
from piaug.errors import UserError

_VARIABLES = ("params", "batch_stats")  # what an encoder is; the rest is the optimizer's


class Checkpoints:
    """Orbax checkpoints of the train state in ``directory`` (every ``every`` steps, the last
    ``keep`` kept), restored onto a given sharding so the device count may change."""

    def __init__(self, directory: Path, *, every: int = 1, keep: int = 1):
        self.every = max(1, int(every))
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True)
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=options,
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, *, force: bool = False) -> bool:
        """Saves (in the background) at multiples of ``every`` or when forced."""
        if not (force or step % self.every == 0):
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def metadata(self, step: int | None = None):
        """What step ``step`` (the latest) holds: the tree of its arrays' metadata."""
        step = self.latest_step() if step is None else step
        metadata = self.manager.item_metadata(step)
        return dict(metadata.tree if hasattr(metadata, "tree") else metadata)

    def restore(self, abstract, step: int | None = None):
        """Restores ``step`` (the latest by default) onto ``abstract``'s shapes and shardings;
        ValueError, naming the first differences, when the saved arrays do not fit them."""
        step = self.latest_step() if step is None else step
        _check_fits(shapes(self.metadata(step)), shapes(abstract))
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def restore_variables(
        self, model: models.ModelSettings, step: int | None = None, *, device=None
    ):
        """The ``params`` and ``batch_stats`` of step ``step`` (the latest), on one ``device``
        (the first local one): the encoders of ``model`` alone, the optimizer state left on
        disk. The caller checks that the shapes fit (orbax would pad or cut them)."""
        return self.restore_part(encoder_variables(model), step, device=device)

    def restore_part(self, abstract: dict, step: int | None = None, *, device=None):
        """The arrays of ``abstract`` (a subtree of the saved state, as shapes and dtypes)
        from step ``step`` (the latest), on one ``device`` (the first local one); the rest
        stays on disk. The caller checks that the shapes fit (orbax would pad or cut them)."""
        step = self.latest_step() if step is None else step
        sharding = jax.sharding.SingleDeviceSharding(device or jax.local_devices()[0])
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), abstract
        )
        path = self.manager.directory / str(step) / "default"
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        return ocp.PyTreeCheckpointer().restore(
            path,
            args=ocp.args.PyTreeRestore(
                item=abstract, restore_args=restore_args, partial_restore=True
            ),
        )

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def shapes(tree) -> dict[str, tuple]:
    """``{"params/image/...": shape}`` of a pytree of arrays or array metadata."""

    def name(key):
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                return str(getattr(key, attr))
        return str(key)

    return {
        "/".join(name(k) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(tree)
    }


def _check_fits(saved: dict, wanted: dict) -> None:
    if saved != wanted:
        diff = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        details = "; ".join(f"{k}: saved {saved.get(k)}, needed {wanted.get(k)}" for k in diff[:3])
        raise ValueError(f"{len(diff)} arrays differ ({details})")


@functools.cache
def encoder_variables(model: models.ModelSettings) -> dict:
    """``{"params": {"image", "crop"}, "batch_stats": {...}}`` of ``model``'s encoders, as
    shapes and dtypes (``jax.ShapeDtypeStruct``)."""
    tree = {name: {} for name in _VARIABLES}
    for name, net in zip(models.ENCODERS, model.encoders(), strict=True):
        variables = jax.eval_shape(
            functools.partial(net.init, train=False),
            jax.random.key(0),
            jnp.zeros((1,) + (64,) * model.dims, jnp.float32),  # parameters: any size
        )
        for kind in _VARIABLES:
            tree[kind][name] = variables[kind]
    return tree


def encoder_shapes(model: models.ModelSettings) -> dict[str, tuple]:
    """``shapes`` of the ``params`` and ``batch_stats`` that ``model``'s encoders have."""
    return shapes(encoder_variables(model))


def restore_encoders(
    ckpt_dir: str | Path, model: models.ModelSettings, *, step: int | None = None
) -> dict:
    """The encoders' variables of the checkpoint in ``ckpt_dir`` (its latest step, or
    ``step``): ``{"image": {"params", "batch_stats"}, "crop": {...}}``, on one device.

    UserError when the folder holds no checkpoint, or one of encoders other than ``model``'s.
    """
    ckpt_dir = Path(ckpt_dir)
    checkpoints = Checkpoints(ckpt_dir)
    try:
        if checkpoints.latest_step() is None:
            raise UserError(f"{ckpt_dir} holds no checkpoint: run the pretrain stage first")
        step = checkpoints.latest_step() if step is None else step
        saved = {
            k: v
            for k, v in shapes(checkpoints.metadata(step)).items()
            if k.split("/")[0] in _VARIABLES
        }
        try:
            _check_fits(saved, encoder_shapes(model))
        except ValueError as e:
            raise UserError(
                f"{ckpt_dir}: its checkpoint does not fit this config's encoders ({e}). It must "
                "come from a run with the same config.model fields (width, embedding, dtype)"
            ) from None
        state = checkpoints.restore_variables(model, step)
    finally:
        checkpoints.close()
    return {
        name: {"params": state["params"][name], "batch_stats": state["batch_stats"][name]}
        for name in models.ENCODERS
    }


@functools.cache
def jitted_apply(net: models.Encoder) -> Callable:
    """``jax.jit(net.apply)``, one per encoder: the evaluation, the probe and the estimate share
    its compiled programs (the variables are an argument, not constants)."""
    return jax.jit(net.apply)


def image_encoder(
    ckpt_dir: str | Path, model: models.ModelSettings, *, step: int | None = None
) -> Callable:
    """The full-image encoder of the checkpoint in ``ckpt_dir``, as ``images -> maps``
    (``(B, H, W)`` in [0, 1] -> five ``(B, H/s, W/s, E)`` maps). The parameters are an argument
    of the jitted call, not constants baked into it, so every checkpoint of one model shares
    one compiled program."""
    variables = restore_encoders(ckpt_dir, model, step=step)
    net, _ = model.encoders()
    return functools.partial(jitted_apply(net), variables["image"])


def model_settings(config: dict) -> models.ModelSettings:
    """The model settings of a run's saved ``config.json`` (a plain dict); the encoders'
    number of axes is its grid's (``data.image_size``), as ``configure.model`` gives it."""
    saved = dict(config.get("model", {}))
    if "image_size" in config.get("data", {}):
        saved["dims"] = len(config["data"]["image_size"])
    names = [f.name for f in dataclasses.fields(models.ModelSettings)]
    return models.ModelSettings(**{k: saved[k] for k in names if k in saved})


def run_encoders(run_dir: str | Path) -> dict[str, Callable]:
    """``{"baseline": images -> maps, "piaug": ...}``: the full-image encoder of every trained
    encoder pair of the run in ``run_dir``, from its ``config.json`` alone."""
    run_dir = Path(run_dir)
    config = layout.read_json(run_dir / layout.CONFIG_FILE)
    if config is None:
        raise UserError(f"{run_dir} has no {layout.CONFIG_FILE}: give the folder of a piaug run")
    baseline = config.get("train", {}).get("baseline", "")
    model = model_settings(config)
    found = layout.trained_encoders(run_dir, baseline)
    if not found:
        raise UserError(f"{run_dir}: no trained encoder (run the pretrain or train stage)")
    return {name: image_encoder(d, model) for name, d in found.items()}
