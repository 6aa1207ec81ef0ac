"""Contrastive pretraining of the two CC2D encoders (DESIGN.md 1, 4).

* ``TrainState``: the step, both encoders' parameters and batch statistics, and the state of
  their two optimizers (Adam with PyTorch's L2 weight decay, the learning rate times
  ``lr_decay`` every ``lr_decay_epochs``).
* ``train_step(state, batch, ...) -> (state, metrics)``: pure; jitted once over a ``('data',)``
  mesh with the batch sharded, the state replicated and donated (``compile_step``). The step
  has no randomness of its own: the input pipeline draws every anchor and augmentation.
* ``train``: the encoders' run of ``fit``, the loop that every model here shares (the
  detector's too, ``piaug.detector.fit``). It resumes from the latest orbax checkpoint in
  ``workdir/checkpoints`` (restored onto the current mesh, so the device count may change),
  asks the input pipeline
  for global batch ``step`` onwards (the batches are a function of the seed and the step, see
  ``piaug.data.input_pipeline``), appends to ``metrics.jsonl``, saves every
  ``checkpoint_every`` steps and at the end, stops on a non-finite loss or gradient (keeping
  the last good checkpoint) and saves and exits on SIGTERM.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm import tqdm

from piaug import losses, mixing, models, tb
from piaug.checkpoints import Checkpoints
from piaug.data import input_pipeline
from piaug.errors import UserError, require
from piaug.layout import CHECKPOINTS, METRICS_FILE

ENCODERS = models.ENCODERS
SCHEDULES = ("step", "cosine")  # the learning rate's: StepLR (the paper's) or a cosine to 0
BATCH_KEYS = ("image", "crop", "anchor", "crop_anchor")  # what the step reads of a batch
UNMIX_KEYS = ("angle", "scale")  # ... and with mixing.method unmix (each crop's rotation)


class TrainingStopped(UserError):
    """The run stopped before its last step (non-finite loss, pre-emption); see the message."""


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: dict


@dataclasses.dataclass(frozen=True)
class TrainSettings:
    """The optimisation and bookkeeping of a training run (``config.train``'s fields).
    ValueError, naming the field, for values that cannot work."""

    batch_size: int = 8  # global: split across hosts and devices
    epochs: float = 400
    epoch_passes: float = 1  # passes over the dataset in one epoch (the authors' ceph: 11)
    steps: int = 0  # if > 0, the number of steps (instead of epochs)
    lr: float = 1e-4  # Adam, one per encoder
    weight_decay: float = 1e-4  # added to the gradient, as PyTorch's Adam does
    lr_decay: float = 0.8  # the learning rate times lr_decay every lr_decay_epochs
    lr_decay_epochs: float = 50
    warmup_steps: int = 0  # the learning rate rises linearly from 0 over these first steps
    # step: x lr_decay every lr_decay_epochs (the paper's StepLR); cosine: from lr after the
    # warm-up down to 0 at the last step (for short runs, which never reach a step decay)
    schedule: str = "step"
    checkpoint_every: int = 500  # steps
    keep_checkpoints: int = 2
    log_every: int = 10  # steps between metrics.jsonl rows

    def __post_init__(self):
        require(
            [
                ("batch_size", self.batch_size, self.batch_size >= 1, "must be at least 1"),
                ("lr", self.lr, self.lr > 0, "must be positive"),
                ("weight_decay", self.weight_decay, self.weight_decay >= 0, "must be 0 or more"),
                ("lr_decay", self.lr_decay, 0 < self.lr_decay <= 1, "must be in (0, 1]"),
                ("lr_decay_epochs", self.lr_decay_epochs, self.lr_decay_epochs > 0, "must be > 0"),
                ("steps", self.steps, self.steps >= 0, "must be 0 (use epochs) or more"),
                ("epoch_passes", self.epoch_passes, self.epoch_passes > 0, "must be positive"),
                ("warmup_steps", self.warmup_steps, self.warmup_steps >= 0, "must be 0 or more"),
                (
                    "schedule",
                    self.schedule,
                    self.schedule in SCHEDULES,
                    f"use one of {', '.join(SCHEDULES)}",
                ),
                ("epochs", self.epochs, self.steps > 0 or self.epochs > 0, "must be positive"),
                ("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1"),
                ("keep_checkpoints", self.keep_checkpoints, self.keep_checkpoints >= 1, ">= 1"),
            ]
        )

    def steps_per_epoch(self, num_examples: int) -> float:
        return num_examples * self.epoch_passes / self.batch_size

    def num_steps(self, num_examples: int) -> int:
        """``steps`` if set, else the steps of ``epochs`` epochs of ``num_examples``."""
        if self.steps:
            return int(self.steps)
        return math.ceil(self.epochs * self.steps_per_epoch(num_examples))


def learning_rate(cfg, per_epoch: float) -> optax.Schedule:
    """``cfg.lr`` times ``cfg.lr_decay`` every ``cfg.lr_decay_epochs`` epochs (StepLR), after
    a linear warm-up from 0 over ``cfg.warmup_steps`` steps (none by default, as the paper).
    With ``cfg.schedule == "cosine"``: a cosine from ``cfg.lr`` at the end of the warm-up to 0
    at the run's last step (``cfg.steps``, else its epochs)."""
    warmup = int(cfg.warmup_steps)
    if cfg.schedule == "cosine":
        total = int(cfg.steps) or math.ceil(cfg.epochs * per_epoch)
        cosine = optax.cosine_decay_schedule(cfg.lr, decay_steps=max(1, total - warmup))

        def decay(step):
            return cosine(jnp.maximum(step - warmup, 0))
    else:
        decay = optax.exponential_decay(
            cfg.lr,
            transition_steps=max(1, round(cfg.lr_decay_epochs * per_epoch)),
            decay_rate=cfg.lr_decay,
            staircase=True,
        )
    if not warmup:
        return decay
    # Step s (0-based) of the warm-up applies lr * (s + 1) / warmup; StepLR counts from step 0,
    # the cosine from the end of the warm-up.
    return lambda step: decay(step) * jnp.minimum(1.0, (step + 1) / warmup)


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
    window_mode: str = "closed",
    mix: mixing.MixSettings | None = None,
    seed: int = 0,
    mix_start: int = 0,
) -> tuple[TrainState, dict]:
    """One step of both encoders on a batch.

    ``batch``: ``image`` uint8 ``(B, H, W)``, ``crop`` float32 ``(B, C, C)`` in [0, 1],
    ``anchor`` and ``crop_anchor`` int ``(B, 2)`` (row, col), or ``(B, K, 2)`` for K anchors
    per crop. With M crops per image (``crop`` ``(B, M, C, C)``, anchors ``(B, M, ...)``) the
    image encoder runs once per image and each crop is paired with its image's maps. Metrics:
    ``loss`` (the sum over scales of the means over crops), ``loss_s{stride}`` and
    ``psi_s{stride}`` per scale, the gradient norm of each encoder.

    ``mix`` (``piaug.mixing``): a comparison method, with the step's randomness drawn from
    ``mixing.step_key(seed, state.step)`` (MoCHi's negatives from step ``mix_start`` on).
    ``unmix`` also reads ``angle`` and ``scale``
    (``UNMIX_KEYS``), runs the crop encoder on the unmixed and the mixed crops, and its
    ``loss`` adds the mixed crops' weighted terms to the unmixed crops' loss (PSI: the unmixed).
    """
    net_image, net_crop = nets
    mix = mixing.MixSettings() if mix is None else mix
    key = mixing.step_key(seed, state.step) if mix.method != "none" else None
    image = batch["image"].astype(jnp.float32) / 255.0
    crops, anchors, crop_anchors = batch["crop"], batch["anchor"], batch["crop_anchor"]
    per_image = 1
    if crops.ndim == 4:  # (B, M, C, C): M crops of each image
        per_image = crops.shape[1]
        crops = crops.reshape(-1, *crops.shape[2:])
        anchors = anchors.reshape(-1, *anchors.shape[2:])
        crop_anchors = crop_anchors.reshape(-1, *crop_anchors.shape[2:])
    count = crops.shape[0]
    if mix.method == "unmix":
        draws = mixing.unmix_draws(key, crops.shape[-1], alpha=mix.alpha, mixup_prob=mix.mixup_prob)
        mixed, lam = mixing.unmix_crops(crops, draws)
        partner, partner_ok = mixing.partner_points(
            crop_anchors,
            anchors,
            batch["angle"].reshape(-1),
            batch["scale"].reshape(-1),
            image.shape[1:3],
        )
        crops = jnp.concatenate([crops, mixed])

    def loss_fn(params):
        feats, new_image = net_image.apply(
            {"params": params["image"], "batch_stats": state.batch_stats["image"]},
            image,
            train=True,
            mutable=["batch_stats"],
        )
        crop_feats, new_crop = net_crop.apply(
            {"params": params["crop"], "batch_stats": state.batch_stats["crop"]},
            crops,
            train=True,
            mutable=["batch_stats"],
        )
        if per_image > 1:  # each image's maps once per crop of it (the gradient sums back)
            feats = [jnp.repeat(f, per_image, axis=0) for f in feats]
        nce = functools.partial(
            losses.multiscale_info_nce,
            window=window,
            temperature=temperature,
            clamp=clamp,
            window_mode=window_mode,
        )
        if mix.method == "unmix":
            own = [g[:count] for g in crop_feats]
            mixed_feats = [g[count:] for g in crop_feats]
            per_example, psi = nce(feats, own, anchors, crop_anchors)
            self_term, _ = nce(feats, mixed_feats, anchors, crop_anchors)
            partner_term, _ = nce(
                [f[::-1] for f in feats], mixed_feats, partner, crop_anchors, weights=partner_ok
            )
            per_example = per_example + lam * self_term + (1.0 - lam) * partner_term
        else:
            per_example, psi = nce(
                feats,
                crop_feats,
                anchors,
                crop_anchors,
                mix=mix,
                key=key,
                active=state.step >= mix_start,
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
        metrics[f"grad_norm_{name}"] = optax.tree_utils.tree_norm(grads[name])
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


def compile_step(mesh: Mesh, step: Callable | None = None, **step_kwargs) -> Callable:
    """``step`` (``train_step`` by default) with ``step_kwargs`` jitted over ``mesh``: batch
    sharded, state replicated and donated."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.jit(
        functools.partial(train_step if step is None else step, **step_kwargs),
        in_shardings=(replicated, NamedSharding(mesh, PartitionSpec("data"))),
        out_shardings=(replicated, replicated),
        donate_argnums=0,
    )


def device_batch(batch: dict, mesh: Mesh, keys: Sequence[str] = BATCH_KEYS) -> dict:
    """The fields ``keys`` that a step reads of a host batch, as global arrays sharded over
    ``mesh``."""
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    return input_pipeline.to_global({k: batch[k] for k in keys}, sharding)


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


def _watched(metrics: dict) -> list[str]:
    """The metrics whose non-finite value stops a run: the loss and every gradient norm."""
    return [k for k in metrics if k == "loss" or k.startswith("grad_norm")]


def train(
    workdir: str | Path,
    source,
    transform: input_pipeline.AnchorCrop,
    *,
    model: models.ModelSettings,
    settings: TrainSettings,
    loss: losses.LossSettings,
    image_size: tuple[int, int],
    mix: mixing.MixSettings | None = None,
    seed: int = 0,
    workers: int = 0,
    pretrained: str = "",
    desc: str = "train",
    probe: Callable[[dict, dict], dict] | None = None,
    probe_every: int = 0,
    tensorboard: Path | None = None,
) -> TrainState:
    """Trains both encoders for ``settings.num_steps(len(source))`` steps into ``workdir``
    (``checkpoints/``, ``metrics.jsonl``), resuming if a checkpoint exists (``fit``).

    Args:
      source: a prepared dataset's record source (``piaug.data.prepare``).
      transform: the per-example anchor, crop and augmentation.
      model, settings, loss: the encoders, the optimisation, the loss.
      mix: a comparison method of the paper's Table 2 (``piaug.mixing``; None: none).
      image_size: the training size (height, width) of ``source``'s images.
      seed: the initialisation's and the input pipeline's.
      workers: input pipeline worker processes (0: in this process).
      pretrained: a torchvision VGG19 state dict for both backbones ('' for none).
      probe: called with the full-image encoder's params and batch stats every
        ``probe_every`` steps (and at step 0 and the last): its metrics (``piaug.probe``) go
        into ``metrics.jsonl`` as rows of their own.
      tensorboard: a folder for TensorBoard's copy of the rows and images (``piaug.tb``).
    Returns:
      The final state.
    """
    per_epoch = settings.steps_per_epoch(len(source))
    total = settings.num_steps(len(source))
    nets = model.encoders()
    txs = {name: optimizer(settings, per_epoch) for name in ENCODERS}
    image_size = tuple(int(s) for s in image_size)
    init = functools.partial(
        create_state, nets=nets, txs=txs, image_size=image_size, crop_size=transform.crop_size
    )
    return fit(
        workdir,
        init=init,
        initialize=(lambda state: with_pretrained_backbone(state, pretrained))
        if pretrained
        else None,
        step=functools.partial(
            train_step,
            nets=nets,
            txs=txs,
            mix=mix,
            seed=int(seed),
            mix_start=0 if mix is None else mixing.start_step(mix, total),
            **dataclasses.asdict(loss),
        ),
        loader=lambda start: input_pipeline.make_loader(
            source,
            transform,
            global_batch_size=int(settings.batch_size),
            seed=int(seed),
            workers=int(workers),
            start_batch=start,
        ),
        batch_keys=BATCH_KEYS + (UNMIX_KEYS if mix is not None and mix.method == "unmix" else ()),
        settings=settings,
        total=total,
        schedule=learning_rate(settings, per_epoch),
        seed=seed,
        desc=desc,
        probe=probe,
        probe_every=probe_every,
        probe_model="image",
        tensorboard=tensorboard,
        panel=tb.anchor_panel,
    )


def fit(
    workdir: str | Path,
    *,
    init: Callable[[jax.Array], TrainState],
    step: Callable[[TrainState, dict], tuple[TrainState, dict]],
    loader: Callable[[int], Iterable[dict]],
    batch_keys: Sequence[str],
    settings: TrainSettings,
    total: int,
    schedule: optax.Schedule,
    seed: int = 0,
    desc: str = "train",
    initialize: Callable[[TrainState], TrainState] | None = None,
    probe: Callable[[dict, dict], dict] | None = None,
    probe_every: int = 0,
    probe_model: str = "image",
    tensorboard: Path | None = None,
    panel: Callable[[dict], np.ndarray] | None = None,
) -> TrainState:
    """The training loop of every model here (the encoders, ``piaug.train_detector``).

    Resumes from the latest checkpoint in ``workdir/checkpoints`` (restored onto the current
    mesh), else starts from ``init(key)`` (then ``initialize``, e.g. pretrained weights); runs
    ``step`` (pure, compiled over a ``('data',)`` mesh by ``compile_step``) on the
    ``batch_keys`` of ``loader(start)``'s host batches up to step ``total``; appends to
    ``metrics.jsonl``, saves every ``settings.checkpoint_every`` steps and at the end, stops on
    a non-finite loss or gradient norm (keeping the last good checkpoint) and saves and exits
    on SIGTERM. ``probe`` gets ``state.params[probe_model]`` and its batch stats every
    ``probe_every`` steps (and at step 0 and the last). With ``tensorboard`` (a folder) the
    rows go to TensorBoard too (``piaug.tb``), with ``panel(host batch)`` of the first batch
    and the probe's ``panel()`` (if it has one) each time it runs.
    """
    workdir = Path(workdir)
    ckpt_dir = workdir / CHECKPOINTS
    batch_size = int(settings.batch_size)  # its split over the devices: configure.check
    mesh = make_mesh()
    # Initialised on one device and then replicated: the same program whatever the mesh, so
    # the compilation cache serves every device count (and each process computes the same).
    init = jax.jit(init)
    checkpoints = Checkpoints(
        ckpt_dir, every=settings.checkpoint_every, keep=settings.keep_checkpoints
    )
    key = jax.random.key(int(seed))
    replicated = NamedSharding(mesh, PartitionSpec())
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_state(init, key, mesh))
        logging.info("%s: resumed from %s at step %d", desc, ckpt_dir, int(state.step))
    else:
        state = init(key)
        if initialize is not None:
            state = initialize(state)
        state = jax.device_put(state, replicated)
    start = int(state.step)
    if start >= total:
        checkpoints.close()
        logging.info("%s: %s already holds step %d of %d", desc, ckpt_dir, start, total)
        return state

    step_fn = compile_step(mesh, step)
    writer = MetricsWriter(workdir / METRICS_FILE, start=start)
    board = tb.Writer(tensorboard, start=start) if tensorboard is not None else None
    bar = tqdm(
        total=total,
        initial=start,
        unit="step",
        desc=desc,
        disable=jax.process_index() != 0,
        dynamic_ncols=True,
    )
    log_every = max(1, int(settings.log_every))
    probe_every = int(probe_every) if probe is not None else 0

    def run_probe(step) -> float:
        """Runs the probe on the current state; its time in seconds."""
        begin = time.perf_counter()
        row = probe(state.params[probe_model], state.batch_stats[probe_model])
        writer.write({"step": step, **row, "time": time.time()})
        if board is not None:
            board.scalars(row, step)
            if hasattr(probe, "panel"):
                board.image("probe/matches", probe.panel(), step)
        bar.write(f"{desc}: step {step}, probe MRE {row['probe_mre_mm']:.2f} mm")
        return time.perf_counter() - begin

    tick, tick_step = time.perf_counter(), start
    finished = start
    try:
        if probe_every and start == 0:
            run_probe(0)
        with _Preemption() as preemption:
            batches = iter(loader(start))
            tick = time.perf_counter()
            for i in range(start + 1, total + 1):
                host = next(batches)
                if board is not None and panel is not None and i == start + 1:
                    board.image("batch/first", panel(host), i)
                batch = device_batch(host, mesh, batch_keys)
                state, metrics = step_fn(state, batch)
                finished = i
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                watched = {k: metrics[k] for k in _watched(metrics)}
                if not all(np.isfinite(v) for v in watched.values()):
                    checkpoints.close()
                    raise TrainingStopped(
                        f"non-finite loss or gradient at step {i} ({watched}); the last good "
                        f"checkpoint is step {checkpoints.latest_step()} in {ckpt_dir}. Check "
                        "the inputs, or lower the learning rate"
                    )
                checkpoints.save(i, state, force=i == total)
                bar.update(1)
                bar.set_postfix(loss=f"{metrics['loss']:.3f}")
                if i % log_every == 0 or i == total:
                    now = time.perf_counter()
                    rate = (i - tick_step) * batch_size / max(now - tick, 1e-9)
                    tick, tick_step = now, i
                    lr = float(schedule(i - 1))
                    row = {"step": i, **metrics, "lr": lr, "samples_per_s": rate}
                    writer.write(row | {"time": time.time()})
                    if board is not None:
                        board.scalars(row, i)
                if probe_every and (i % probe_every == 0 or i == total):
                    tick += run_probe(i)  # samples_per_s leaves the probe's time out
                if preemption.agreed() and i < total:
                    checkpoints.save(i, state, force=True)
                    checkpoints.close()
                    raise TrainingStopped(
                        f"SIGTERM: saved step {i} of {total} to {ckpt_dir}; run the same "
                        "command again to resume"
                    )
    except KeyboardInterrupt:
        checkpoints.close()  # the saves under way finish first
        raise TrainingStopped(
            f"{desc}: interrupted (Ctrl-C) after step {finished} of {total}; the last "
            f"checkpoint is step {checkpoints.latest_step()} in {ckpt_dir}: run the same "
            "command again to resume from it"
        ) from None
    finally:
        bar.close()
        writer.close()
        if board is not None:
            board.close()
        host = None  # the last host batch: its shared memory freed before _close waits for it
        _close(locals().get("batches"))
    checkpoints.close()
    return state


def _close(batches) -> None:
    """Stops a grain iterator's worker processes when training ends, rather than when the
    interpreter exits (a notebook runs several trainings in one process), and frees the batches
    they had prefetched into shared memory: left to the exit, multiprocessing's resource
    tracker reports them as "leaked shared_memory objects" (tests/test_input_pipeline.py)."""
    inner = getattr(batches, "_iterator", batches)  # grain's DataLoaderIterator wraps one
    close = getattr(inner, "close", None)
    if callable(close):
        close()
    # grain unlinks the batches the main process dropped on a thread of its own (one thread,
    # first in, first out): a task queued behind them returns once they are all unlinked.
    try:
        from grain._src.python.ipc.shared_memory_array import SharedMemoryArray
    except ImportError:  # another grain: nothing to wait for here
        return
    pool = getattr(SharedMemoryArray, "_del_thread_pool", None)
    if pool is not None:
        pool.apply(int)


def abstract_state(init: Callable, key: jax.Array, mesh: Mesh) -> TrainState:
    """The shapes of ``init(key)``, replicated over ``mesh``: the target of a restore."""
    replicated = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        jax.eval_shape(init, key),
    )


def with_pretrained_backbone(state: TrainState, path: str) -> TrainState:
    """Both encoders' VGG19 backbones from a torchvision state dict (``piaug.pretrained``):
    ``vgg19`` for a backbone without normalisation, ``vgg19_bn`` (with its running
    statistics) for one with batch norm."""
    from piaug import pretrained

    batch_norm = "vgg" in state.batch_stats.get("image", {})
    vgg = pretrained.vgg_variables(
        pretrained.load_state_dict(path), batch_norm=batch_norm, source=path
    )
    params = {
        name: pretrained.place_backbone(state.params[name], vgg["params"], path)
        for name in ENCODERS
    }
    stats = dict(state.batch_stats)
    if batch_norm:
        stats = {name: {**stats[name], "vgg": vgg["batch_stats"]} for name in ENCODERS}
    params, stats = jax.tree.map(jnp.asarray, (params, stats))
    logging.info("train: VGG19%s backbones from %s", "_bn" if batch_norm else "", path)
    return state.replace(params=params, batch_stats=stats)
