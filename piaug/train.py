"""The training loop of every model here, and the encoders' run of it (docs/design.md 1, 4).

* ``fit``: the loop that every model shares (the encoders' and the detector's,
  ``piaug.detector.fit``). It resumes from the latest orbax checkpoint in
  ``workdir/checkpoints`` (restored onto the current mesh, so the device count may change),
  asks the input pipeline for global batch ``step`` onwards (the batches are a function of the
  seed and the step, see ``piaug.data.input_pipeline``), runs a pure step (``compile_step``:
  jitted once over a ``('data',)`` mesh, the batch sharded, the state replicated and donated),
  appends to ``metrics.jsonl`` (``piaug.run_log``), saves every
  ``checkpoint_every`` steps and at the end, stops on a non-finite loss or gradient (keeping
  the last good checkpoint) and saves and exits on SIGTERM (``_Preemption``).
* ``train``: the encoders' run of ``fit`` with ``piaug.train_step.train_step``.

The step itself, its state and optimizer (``TrainState``, ``TrainSettings``, ``train_step``,
...) live in ``piaug.train_step``; they are importable from here too.
"""

from __future__ import annotations

import dataclasses
import functools
import signal
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import jax
import numpy as np
import optax
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from piaug import devices, losses, mixing, models, tb
from piaug import memory as step_memory
from piaug.checkpoints import Checkpoints
from piaug.data import input_pipeline
from piaug.data.transforms import AnchorCrop
from piaug.errors import UserError
from piaug.layout import CHECKPOINTS
from piaug.run_log import RunLog
from piaug.train_step import (  # noqa: F401  (the step's names, importable from here too)
    BATCH_KEYS,
    ENCODERS,
    SCHEDULES,
    UNMIX_KEYS,
    TrainSettings,
    TrainState,
    create_state,
    learning_rate,
    optimizer,
    train_step,
    with_pretrained_backbone,
)


class TrainingStopped(UserError):
    """The run stopped before its last step (non-finite loss, pre-emption); see the message."""


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


def _watched(metrics: dict) -> list[str]:
    """The metrics whose non-finite value stops a run: the loss and every gradient norm."""
    return [k for k in metrics if k == "loss" or k.startswith("grad_norm")]


def train(
    workdir: str | Path,
    source,
    transform: AnchorCrop,
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
    """The training loop of every model here (the encoders, ``piaug.detector.fit``).

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
    mesh = make_mesh()
    # Initialised on one device and then replicated: the same program whatever the mesh, so
    # the compilation cache serves every device count (and each process computes the same).
    init = jax.jit(init)
    checkpoints = Checkpoints(
        ckpt_dir, every=settings.checkpoint_every, keep=settings.keep_checkpoints
    )
    key = jax.random.key(int(seed))
    state = _first_state(checkpoints, ckpt_dir, init, initialize, key, mesh, desc)
    start = int(state.step)
    if start >= total:
        checkpoints.close()
        logging.info("%s: %s already holds step %d of %d", desc, ckpt_dir, start, total)
        return state

    step_fn = compile_step(mesh, step)
    log = RunLog(
        workdir,
        start=start,
        total=total,
        desc=desc,
        settings=settings,
        schedule=schedule,
        tensorboard=tensorboard,
    )
    probe_every = int(probe_every) if probe is not None else 0
    finished = start
    try:
        if probe_every and start == 0:
            log.probe(0, probe, state.params[probe_model], state.batch_stats[probe_model])
        with _Preemption() as preemption:
            batches = iter(loader(start))
            log.restart_clock()
            for i in range(start + 1, total + 1):
                host = next(batches)
                if panel is not None and i == start + 1:
                    log.image("batch/first", functools.partial(panel, host), i)
                batch = device_batch(host, mesh, batch_keys)
                if i == start + 1:  # compiled ahead, so that its memory is known
                    step_fn = _compile(step_fn, state, batch, desc)
                state, metrics = step_fn(state, batch)
                finished = i
                metrics = _finite_metrics(metrics, i, checkpoints, ckpt_dir)
                checkpoints.save(i, state, force=i == total)
                log.step(i, metrics)
                if probe_every and (i % probe_every == 0 or i == total):
                    log.probe(i, probe, state.params[probe_model], state.batch_stats[probe_model])
                if preemption.agreed() and i < total:
                    _save_and_stop(checkpoints, ckpt_dir, state, i, total)
    except KeyboardInterrupt:
        checkpoints.close()  # the saves under way finish first
        raise TrainingStopped(
            f"{desc}: interrupted (Ctrl-C) after step {finished} of {total}; the last "
            f"checkpoint is step {checkpoints.latest_step()} in {ckpt_dir}: run the same "
            "command again to resume from it"
        ) from None
    finally:
        log.close()
        host = None  # the last host batch: its shared memory freed before _close waits for it
        _close(locals().get("batches"))
    checkpoints.close()
    return state


def _compile(step_fn, state: TrainState, batch: dict, desc: str):
    """``step_fn`` compiled for ``state`` and ``batch``, its device memory logged
    (``piaug.memory``)."""
    compiled = step_fn.lower(state, batch).compile(devices.step_compiler_options())
    if (memory := step_memory.of_compiled(compiled)) is not None:
        logging.info("%s: the compiled step needs %s", desc, memory.describe())
    return compiled


def _first_state(
    checkpoints: Checkpoints,
    ckpt_dir: Path,
    init: Callable[[jax.Array], TrainState],
    initialize: Callable[[TrainState], TrainState] | None,
    key: jax.Array,
    mesh: Mesh,
    desc: str,
) -> TrainState:
    """The state a run starts from: its latest checkpoint, restored onto ``mesh``; else
    ``init(key)``, then ``initialize`` (if any), replicated over ``mesh``."""
    if checkpoints.latest_step() is not None:
        state = checkpoints.restore(abstract_state(init, key, mesh))
        logging.info("%s: resumed from %s at step %d", desc, ckpt_dir, int(state.step))
        return state
    state = init(key)
    if initialize is not None:
        state = initialize(state)
    return jax.device_put(state, NamedSharding(mesh, PartitionSpec()))


def _save_and_stop(checkpoints: Checkpoints, ckpt_dir: Path, state, step: int, total: int):
    """Pre-empted (SIGTERM): saves ``step`` and stops the run with TrainingStopped."""
    checkpoints.save(step, state, force=True)
    checkpoints.close()
    raise TrainingStopped(
        f"SIGTERM: saved step {step} of {total} to {ckpt_dir}; run the same command again to resume"
    )


def _finite_metrics(metrics: dict, step: int, checkpoints: Checkpoints, ckpt_dir: Path) -> dict:
    """A step's metrics as floats; TrainingStopped (the checkpoints closed, so the last good
    one stays) when the loss or a gradient norm is not finite."""
    metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
    watched = {k: metrics[k] for k in _watched(metrics)}
    if not all(np.isfinite(v) for v in watched.values()):
        checkpoints.close()
        raise TrainingStopped(
            f"non-finite loss or gradient at step {step} ({watched}); the last good "
            f"checkpoint is step {checkpoints.latest_step()} in {ckpt_dir}. Check "
            "the inputs, or lower the learning rate"
        )
    return metrics


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
