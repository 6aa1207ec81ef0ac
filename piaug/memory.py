"""The device memory of a compiled training step, known before it runs (XLA's
``memory_analysis()`` of the compiled program: its arguments, outputs and temporaries).

* ``StepMemory``: those sizes and ``peak``, the step's device memory while it runs (the
  arguments, the outputs that do not reuse a donated argument's buffer, the temporaries).
* ``of_compiled(compiled)``: a compiled step's, or None where the backend does not say.
* ``encoder_step(config, batch_size)``: the encoders' step of a config, compiled for the
  default backend from shapes alone (no parameters allocated, no data read): how
  ``benchmarks/memory.py`` tells which batch of a config fits a 16, 40 or 80 GB GPU.

The training loop logs the step's ``describe()`` before its first step (``piaug.train.fit``).
The figures are the program XLA compiled for this backend: a CPU's and a GPU's programs fuse
differently, so a CPU figure for a GPU run is an estimate (docs/performance.md).
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

GB = 1e9


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes of a compiled step: ``arguments`` (state and batch), ``outputs``, ``aliased``
    (outputs written into donated arguments' buffers), ``temporaries`` (activations kept for
    the backward pass, gradients, workspace), ``code`` (the generated code, host memory)."""

    arguments: int
    outputs: int
    aliased: int
    temporaries: int
    code: int = 0

    @property
    def peak(self) -> int:
        """Device bytes while the step runs."""
        return self.arguments + self.outputs - self.aliased + self.temporaries

    def describe(self) -> str:
        return (
            f"{self.peak / GB:.2f} GB on the device (arguments {self.arguments / GB:.2f}, "
            f"outputs {self.outputs / GB:.2f} of which {self.aliased / GB:.2f} reuse donated "
            f"buffers, temporaries {self.temporaries / GB:.2f}; XLA's memory_analysis)"
        )

    def as_dict(self) -> dict:
        return {**dataclasses.asdict(self), "peak": self.peak}


def of_compiled(compiled) -> StepMemory | None:
    """The memory of ``compiled`` (a ``jax.stages.Compiled``), None where not reported."""
    try:
        stats = compiled.memory_analysis()
    except (NotImplementedError, jax.errors.JaxRuntimeError):
        return None
    if stats is None:
        return None
    return StepMemory(
        arguments=int(stats.argument_size_in_bytes),
        outputs=int(stats.output_size_in_bytes),
        aliased=int(stats.alias_size_in_bytes),
        temporaries=int(stats.temp_size_in_bytes),
        code=int(stats.generated_code_size_in_bytes),
    )


def encoder_batch(config, batch_size: int) -> dict:
    """The shapes of a host batch of the encoders' step (``piaug.train_step.BATCH_KEYS``) at
    ``config``'s sizes: ``batch_size`` images, ``augment.crops_per_image`` crops of each with
    ``augment.anchors_per_crop`` anchors."""
    size = tuple(int(s) for s in config.data.image_size)
    crop = (int(config.data.crop_size),) * len(size)
    m, a = int(config.augment.crops_per_image), int(config.augment.anchors_per_crop)
    lead = (batch_size,) if m == 1 else (batch_size, m)
    points = (*lead, len(size)) if a == 1 else (*lead, a, len(size))
    return {
        "image": jax.ShapeDtypeStruct((batch_size, *size), jnp.uint8),
        "crop": jax.ShapeDtypeStruct((*lead, *crop), jnp.float32),
        "anchor": jax.ShapeDtypeStruct(points, jnp.int32),
        "crop_anchor": jax.ShapeDtypeStruct(points, jnp.int32),
    }


def encoder_program(config):
    """``(init, step, mesh)`` of ``config``'s encoder training: ``init(key)`` the state,
    ``step`` the step jitted over ``mesh`` (all devices) as the training loop runs it."""
    from piaug import configure, train  # noqa: PLC0415 (train imports this module)

    settings = configure.train_settings(config)
    nets = configure.model(config).encoders()
    txs = {name: train.optimizer(settings, 1.0) for name in train.ENCODERS}
    init = functools.partial(
        train.create_state,
        nets=nets,
        txs=txs,
        image_size=tuple(int(s) for s in config.data.image_size),
        crop_size=int(config.data.crop_size),
    )
    loss = dataclasses.asdict(configure.loss(config))
    mesh = train.make_mesh()
    return init, train.compile_step(mesh, nets=nets, txs=txs, **loss), mesh


def encoder_step(
    config, batch_size: int | None = None, compiler_options: dict | None = None
) -> StepMemory | None:
    """The memory of ``config``'s encoder training step at ``batch_size`` images (default
    ``config.train.batch_size``), on this process's devices, compiled from shapes alone with
    ``compiler_options`` (default: the training loop's, ``devices.step_compiler_options``)."""
    from piaug import devices, train  # noqa: PLC0415

    init, step, mesh = encoder_program(config)
    state = train.abstract_state(init, jax.random.key(0), mesh)
    sharded = NamedSharding(mesh, PartitionSpec("data"))
    batch = {
        k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=sharded)
        for k, v in encoder_batch(config, int(batch_size or config.train.batch_size)).items()
    }
    if compiler_options is None:
        compiler_options = devices.step_compiler_options()
    return of_compiled(step.lower(state, batch).compile(compiler_options))


def fits(memory: StepMemory, gigabytes: float, headroom: float = 0.75) -> bool:
    """Whether ``memory`` fits a device of ``gigabytes`` GB, of which ``headroom`` is usable
    (JAX on a GPU takes 75 % of its memory by default; XLA_PYTHON_CLIENT_MEM_FRACTION=.9
    raises it)."""
    return memory.peak <= headroom * gigabytes * GB
