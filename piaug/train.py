"""Contrastive pretraining of the two CC2D encoders (DESIGN.md 1, 4).

* ``TrainState``: the step, both encoders' parameters and batch statistics, and the state of
  their two optimizers (Adam with PyTorch's L2 weight decay, the learning rate times
  ``lr_decay`` every ``lr_decay_epochs``).
* ``train_step(state, batch, ...) -> (state, metrics)``: pure; jitted once over a ``('data',)``
  mesh with the batch sharded, the state replicated and donated (``compile_step``). The step
  has no randomness of its own: the input pipeline draws every anchor and augmentation.
* ``train``: the loop. It resumes from the latest orbax checkpoint in ``workdir/checkpoints``
  (restored onto the current mesh, so the device count may change), asks the input pipeline
  for global batch ``step`` onwards (the batches are a function of the seed and the step, see
  ``piaug.data.input_pipeline``), appends to ``metrics.jsonl``, saves every
  ``checkpoint_every`` steps and at the end, stops on a non-finite loss or gradient (keeping
  the last good checkpoint) and saves and exits on SIGTERM.
"""

from __future__ import annotations

import functools
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from piaug import losses, models
from piaug.data import input_pipeline
from piaug.errors import UserError

ENCODERS = ("image", "crop")  # F (the whole image, RFB blocks) and F' (the augmented crop)
BATCH_KEYS = ("image", "crop", "anchor", "crop_anchor")  # what the step reads of a batch


class TrainingStopped(UserError):
    """The run stopped before its last step (non-finite loss, pre-emption); see the message."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: dict


def steps_per_epoch(num_examples: int, batch_size: int) -> float:
    return num_examples / batch_size


def num_steps(config, num_examples: int) -> int:
    """``config.train.steps`` if set, else the steps of ``config.train.epochs`` epochs."""
    if config.train.steps:
        return int(config.train.steps)
    return math.ceil(config.train.epochs * steps_per_epoch(num_examples, config.train.batch_size))


def learning_rate(cfg, per_epoch: float) -> optax.Schedule:
    """``cfg.lr`` times ``cfg.lr_decay`` every ``cfg.lr_decay_epochs`` epochs (StepLR)."""
    return optax.exponential_decay(
        cfg.lr,
        transition_steps=max(1, round(cfg.lr_decay_epochs * per_epoch)),
        decay_rate=cfg.lr_decay,
        staircase=True,
    )


def optimizer(cfg, per_epoch: float) -> optax.GradientTransformation:
    """Adam as PyTorch applies ``weight_decay``: the decay is added to the gradient first."""
    return optax.chain(
        optax.add_decayed_weights(cfg.weight_decay),
        optax.scale_by_adam(b1=0.9, b2=0.999, eps=1e-8),
        optax.scale_by_learning_rate(learning_rate(cfg, per_epoch)),
    )


def create_state(
    key: jax.Array,
    nets: tuple[models.Encoder, models.Encoder],
    txs: dict[str, optax.GradientTransformation],
    *,
    image_size: tuple[int, int],
    crop_size: int,
) -> TrainState:
    params, stats = {}, {}
    shapes = {"image": (1, *image_size), "crop": (1, crop_size, crop_size)}
    for name, net, k in zip(ENCODERS, nets, jax.random.split(key), strict=True):
        variables = net.init(k, jnp.zeros(shapes[name], jnp.float32), train=False)
        params[name], stats[name] = variables["params"], variables["batch_stats"]
    opt_state = {name: txs[name].init(params[name]) for name in ENCODERS}
    return TrainState(jnp.zeros((), jnp.int32), params, stats, opt_state)


def train_step(
    state: TrainState,
    batch: dict,
    *,
    nets: tuple[models.Encoder, models.Encoder],
    txs: dict[str, optax.GradientTransformation],
    window: int | None = 9,
    temperature: float = 1.0,
    clamp: bool = True,
) -> tuple[TrainState, dict]:
    """One step of both encoders on a batch.

    ``batch``: ``image`` uint8 ``(B, H, W)``, ``crop`` float32 ``(B, C, C)`` in [0, 1],
    ``anchor`` and ``crop_anchor`` int ``(B, 2)`` (row, col). Metrics: ``loss`` (the sum over
    scales of the batch means), ``loss_s{stride}`` and ``psi_s{stride}`` per scale, the
    gradient norm of each encoder.
    """
    net_image, net_crop = nets
    image = batch["image"].astype(jnp.float32) / 255.0

    def loss_fn(params):
        feats, new_image = net_image.apply(
            {"params": params["image"], "batch_stats": state.batch_stats["image"]},
            image,
            train=True,
            mutable=["batch_stats"],
        )
        crop_feats, new_crop = net_crop.apply(
            {"params": params["crop"], "batch_stats": state.batch_stats["crop"]},
            batch["crop"],
            train=True,
            mutable=["batch_stats"],
        )
        per_example, psi = losses.multiscale_info_nce(
            feats,
            crop_feats,
            batch["anchor"],
            batch["crop_anchor"],
            window=window,
            temperature=temperature,
            clamp=clamp,
        )
        per_scale = per_example.mean(0)
        stats = {"image": new_image["batch_stats"], "crop": new_crop["batch_stats"]}
        return per_scale.sum(), (per_scale, psi.mean(0), stats)

    grads, (per_scale, psi, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, metrics = {}, {}, {"loss": per_scale.sum()}
    for name in ENCODERS:
        updates, opt_state[name] = txs[name].update(
            grads[name], state.opt_state[name], state.params[name]
        )
        params[name] = optax.apply_updates(state.params[name], updates)
        metrics[f"grad_norm_{name}"] = optax.global_norm(grads[name])
    for i, stride in enumerate(models.STRIDES):
        metrics[f"loss_s{stride}"] = per_scale[i]
        metrics[f"psi_s{stride}"] = psi[i]
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def make_mesh(devices=None) -> Mesh:
    """A 1-D ``('data',)`` mesh over all (global) devices."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), ("data",))


def compile_step(mesh: Mesh, **step_kwargs) -> Callable:
    """``train_step`` jitted over ``mesh``: batch sharded, state replicated and donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        functools.partial(train_step, **step_kwargs),
        in_shardings=(replicated, NamedSharding(mesh, PartitionSpec("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def device_batch(batch: dict, mesh: Mesh) -> dict:
    """The fields the step reads of a host batch, as global arrays sharded over ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return input_pipeline.to_global({k: batch[k] for k in BATCH_KEYS}, sharding)


def nets_from_config(config) -> tuple[models.Encoder, models.Encoder]:
    m = config.model
    if m.dtype not in ("float32", "bfloat16", "float16"):
        raise UserError(f"config.model.dtype={m.dtype!r}: use float32, bfloat16 or float16")
    if not m.width > 0:
        raise UserError(f"config.model.width={m.width}: must be positive")
    if not m.embedding >= 1:
        raise UserError(f"config.model.embedding={m.embedding}: must be at least 1")
    return models.encoders(embedding=int(m.embedding), width=float(m.width), dtype=m.dtype)


def check_config(config) -> None:
    """Raises UserError, naming the field, for model, loss and training values that cannot
    work."""
    nets_from_config(config)
    loss, cfg = config.loss, config.train
    checks = [
        ("loss.temperature", loss.temperature, loss.temperature > 0, "must be positive"),
        ("loss.window", loss.window, loss.window >= 0, "must be 0 or more cells"),
        ("train.batch_size", cfg.batch_size, cfg.batch_size >= 1, "must be at least 1"),
        ("train.lr", cfg.lr, cfg.lr > 0, "must be positive"),
        ("train.weight_decay", cfg.weight_decay, cfg.weight_decay >= 0, "must be 0 or more"),
        ("train.lr_decay", cfg.lr_decay, 0 < cfg.lr_decay <= 1, "must be in (0, 1]"),
        ("train.lr_decay_epochs", cfg.lr_decay_epochs, cfg.lr_decay_epochs > 0, "must be > 0"),
        ("train.steps", cfg.steps, cfg.steps >= 0, "must be 0 (use epochs) or more"),
        ("train.epochs", cfg.epochs, cfg.steps > 0 or cfg.epochs > 0, "must be positive"),
        ("train.checkpoint_every", cfg.checkpoint_every, cfg.checkpoint_every >= 1, "must be >= 1"),
        ("train.keep_checkpoints", cfg.keep_checkpoints, cfg.keep_checkpoints >= 1, "must be >= 1"),
    ]
    for field, value, ok, what in checks:
        if not ok:
            raise UserError(f"config.{field}={value!r}: {what}")


class Checkpoints:
    """Orbax checkpoints of the train state in ``directory`` (every ``every`` steps, the last
    ``keep`` kept), restored onto a given sharding so the device count may change."""

    def __init__(self, directory: Path, *, every: int, keep: int):
        self.every = max(1, int(every))
        options = ocp.CheckpointManagerOptions(max_to_keep=max(1, int(keep)), create=True)
        self.manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=options,
            item_handlers=ocp.StandardCheckpointHandler(),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, *, force: bool = False) -> bool:
        """Saves (in the background) at multiples of ``every`` or when forced."""
        if not (force or step % self.every == 0):
            return False
        return self.manager.save(step, args=ocp.args.StandardSave(state), force=True)

    def restore(self, abstract: TrainState, step: int | None = None) -> TrainState:
        """Restores ``step`` (the latest by default) onto ``abstract``'s shapes and shardings;
        ValueError, naming the first differences, when the saved arrays do not fit them."""
        step = self.latest_step() if step is None else step
        saved, wanted = (_shapes(t) for t in (self.manager.item_metadata(step), abstract))
        if saved != wanted:
            diff = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
            details = "; ".join(
                f"{k}: saved {saved.get(k)}, needed {wanted.get(k)}" for k in diff[:3]
            )
            raise ValueError(f"{len(diff)} arrays differ ({details})")
        return self.manager.restore(step, args=ocp.args.StandardRestore(abstract))

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _shapes(tree) -> dict[str, tuple]:
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


class _Preemption:
    """SIGTERM (a scheduler's pre-emption) sets a flag; the loop checks it after each step."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def __enter__(self):
        try:
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        except ValueError:  # not the main thread: no handler, nothing to restore
            self._previous = None
        return self

    def _handle(self, signum, frame):
        del signum, frame
        self.requested = True

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)

    def agreed(self) -> bool:
        """Whether any process got the signal (every process must stop at the same step)."""
        if jax.process_count() == 1:
            return self.requested
        flags = multihost_utils.process_allgather(np.int32(self.requested))
        return bool(np.max(flags))


class MetricsWriter:
    """``metrics.jsonl``, one JSON object per logged step; written by process 0 only. On a
    resume from step ``start`` the rows after ``start`` (logged before the last checkpoint was
    lost to a crash) are dropped, as the resumed run logs those steps again."""

    def __init__(self, path: Path, *, start: int):
        self.path = path
        self.active = jax.process_index() == 0
        if not self.active:
            return
        rows = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:  # a line cut by a crash
                    continue
                if row.get("step", 0) <= start:
                    rows.append(line)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text("".join(r + "\n" for r in rows))
        tmp.replace(path)
        self._file = path.open("a")

    def write(self, row: dict) -> None:
        if self.active:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self.active:
            self._file.close()


def _finite(metrics: dict) -> bool:
    return all(np.isfinite(metrics[k]) for k in ("loss", "grad_norm_image", "grad_norm_crop"))


def train(
    config,
    workdir: str | Path,
    source,
    transform: input_pipeline.AnchorCrop,
    *,
    desc: str = "train",
) -> TrainState:
    """Trains both encoders for ``num_steps(config, len(source))`` steps, resuming if a
    checkpoint exists. ``source`` is a prepared dataset's record source, ``transform`` the
    per-example anchor, crop and augmentation. Returns the final state."""
    workdir = Path(workdir)
    ckpt_dir = workdir / "checkpoints"
    cfg = config.train
    batch_size = int(cfg.batch_size)  # its split over the devices: pipeline.check_config
    mesh = make_mesh()
    total = num_steps(config, len(source))
    per_epoch = steps_per_epoch(len(source), batch_size)
    nets = nets_from_config(config)
    txs = {name: optimizer(cfg, per_epoch) for name in ENCODERS}
    schedule = learning_rate(cfg, per_epoch)
    image_size = tuple(int(s) for s in config.data.image_size)
    # Initialised on one device and then replicated: the same program whatever the mesh, so
    # the compilation cache serves every device count (and each process computes the same).
    init = jax.jit(
        functools.partial(
            create_state, nets=nets, txs=txs, image_size=image_size, crop_size=transform.crop_size
        )
    )
    checkpoints = Checkpoints(ckpt_dir, every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
    key = jax.random.key(int(config.seed))
    replicated = NamedSharding(mesh, PartitionSpec())
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_state(init, key, mesh))
        logging.info("train: resumed from %s at step %d", ckpt_dir, int(state.step))
    else:
        state = init(key)
        if config.model.pretrained:
            state = _with_pretrained_backbone(state, config.model.pretrained)
        state = jax.device_put(state, replicated)
    start = int(state.step)
    if start >= total:
        checkpoints.close()
        logging.info("train: %s already holds step %d of %d", ckpt_dir, start, total)
        return state

    step_fn = compile_step(
        mesh,
        nets=nets,
        txs=txs,
        window=config.loss.window,
        temperature=config.loss.temperature,
        clamp=config.loss.clamp,
    )
    loader = input_pipeline.make_loader(
        source,
        transform,
        global_batch_size=batch_size,
        seed=int(config.seed),
        workers=int(config.data.workers),
        start_batch=start,
    )
    writer = MetricsWriter(workdir / "metrics.jsonl", start=start)
    bar = tqdm(
        total=total,
        initial=start,
        unit="step",
        desc=desc,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    log_every = max(1, int(cfg.log_every))
    tick, tick_step = time.perf_counter(), start
    try:
        with _Preemption() as preemption:
            batches = iter(loader)
            for step in range(start + 1, total + 1):
                batch = device_batch(next(batches), mesh)
                state, metrics = step_fn(state, batch)
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                if not _finite(metrics):
                    checkpoints.close()
                    raise TrainingStopped(
                        f"non-finite loss or gradient at step {step} (loss {metrics['loss']}, "
                        f"gradient norms {metrics['grad_norm_image']}, "
                        f"{metrics['grad_norm_crop']}); the last good checkpoint is step "
                        f"{checkpoints.latest_step()} in {ckpt_dir}. Check the inputs, or lower "
                        "config.train.lr"
                    )
                checkpoints.save(step, state, force=step == total)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                if step % log_every == 0 or step == total:
                    now = time.perf_counter()
                    rate = (step - tick_step) * batch_size / max(now - tick, 1e-9)
                    tick, tick_step = now, step
                    lr = float(schedule(step - 1))
                    writer.write({"step": step, **metrics, "lr": lr, "samples_per_s": rate})
                if preemption.agreed() and step < total:
                    checkpoints.save(step, state, force=True)
                    checkpoints.close()
                    raise TrainingStopped(
                        f"SIGTERM: saved step {step} of {total} to {ckpt_dir}; run the same "
                        "command again to resume"
                    )
    finally:
        bar.close()
        writer.close()
    checkpoints.close()
    return state


def abstract_state(init: Callable, key: jax.Array, mesh: Mesh) -> TrainState:
    """The shapes of ``init(key)``, replicated over ``mesh``: the target of a restore."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init, key),
    )


def _with_pretrained_backbone(state: TrainState, path: str) -> TrainState:
    """Both encoders' VGG19 backbones from a torchvision state dict (``piaug.pretrained``)."""
    from piaug import pretrained

    vgg = pretrained.vgg_params(pretrained.load_state_dict(path), source=path)
    params = {name: pretrained.place_backbone(state.params[name], vgg, path) for name in ENCODERS}
    params = jax.tree.map(jnp.asarray, params)
    logging.info("train: VGG19 backbones from %s", path)
    return state.replace(params=params)


def restore_params(checkpoint_dir: str | Path, config, *, step: int | None = None) -> dict:
    """The encoders' variables of a checkpoint, ``{"image": {...}, "crop": {...}}`` each with
    ``params`` and ``batch_stats`` (for the matching and estimate stages)."""
    ckpt_dir = Path(checkpoint_dir)
    checkpoints = Checkpoints(ckpt_dir, every=1, keep=1)
    try:
        if checkpoints.latest_step() is None:
            raise UserError(f"{ckpt_dir} holds no checkpoint: run the pretrain stage first")
        nets = nets_from_config(config)
        txs = {name: optimizer(config.train, 1.0) for name in ENCODERS}
        mesh = make_mesh(jax.local_devices()[:1])
        init = functools.partial(
            create_state,
            nets=nets,
            txs=txs,
            image_size=tuple(config.data.image_size),
            crop_size=int(config.data.crop_size),
        )
        try:
            state = checkpoints.restore(abstract_state(init, jax.random.key(0), mesh), step)
        except (ValueError, KeyError, TypeError) as e:
            raise UserError(
                f"{ckpt_dir}: its checkpoint does not fit this config's encoders ({e}). It must "
                "come from a run with the same config.model fields (width, embedding, dtype)"
            ) from None
    finally:
        checkpoints.close()
    return {
        name: {"params": state.params[name], "batch_stats": state.batch_stats[name]}
        for name in ENCODERS
    }
