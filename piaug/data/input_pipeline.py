"""The input pipeline: grain over a prepared dataset (docs/design.md 1, 2).

Each example goes through a per-example transform (``piaug.data.transforms``: ``AnchorCrop``,
an anchor, crop and jitter for the encoders; ``LandmarkAugment`` for the detector), whose names
are importable from here too.

Around the transform (``make_loader``): one seeded global stream of examples over endless
epochs, of which each host reads and transforms only its slice of every global batch, in
parallel worker processes. Every random draw is seeded from the seed and the example's global
position, so global batch ``j`` is the same whatever the number of hosts or workers, and a run
resumed at step ``t`` asks for ``start_batch=t``. The iterator's state is also checkpointable
(``get_state`` / ``set_state``). ``to_global`` assembles the host batches into arrays sharded
over a ``('data',)`` mesh.
"""

from __future__ import annotations

import sys

import grain.python as grain
from absl import flags

from piaug.data.transforms import (  # noqa: F401  (the transforms, importable from here too)
    ANCHORS,
    AnchorCrop,
    LandmarkAugment,
    check_crop,
    check_sampling,
    load_jitter,
    more_anchors,
    per_crop,
    sample_anchor,
    weights,
)
from piaug.errors import UserError


def check_batch(
    global_batch_size: int,
    num_examples: int,
    process_count: int = 1,
    *,
    field: str = "config.train.batch_size",
) -> None:
    """UserError unless ``num_examples`` fill global batches that split over the processes."""
    if global_batch_size < 1 or global_batch_size % process_count:
        raise UserError(
            f"{field}={global_batch_size}: must be a positive multiple of the "
            f"{process_count} processes"
        )
    if num_examples < global_batch_size:
        raise UserError(
            f"{field}={global_batch_size} is larger than the {num_examples} "
            "training images: use a smaller batch size or more images"
        )


class GlobalOrderSampler:
    """Host ``process_index``'s share of one global stream of examples.

    The global stream is a seeded shuffle of every record, epoch after epoch; global batch ``j``
    is its positions ``[j * G, (j + 1) * G)`` and host ``h`` takes the slice
    ``[h * G / P, (h + 1) * G / P)`` of each. An example's random draws are seeded by its global
    position, and the mapping below undoes grain's assignment of local positions to worker
    processes (worker ``w`` of ``W`` batches positions ``w, w + W, ...``), so the global batches
    do not depend on the number of hosts or of workers, and batch ``j`` is a function of the
    seed and ``j`` alone: a run resumed at step ``t`` starts at ``start_batch=t``.
    """

    def __init__(
        self,
        num_records: int,
        *,
        global_batch_size: int,
        process_index: int,
        process_count: int,
        workers: int,
        seed: int,
        shuffle: bool = True,
        start_batch: int = 0,
        num_batches: int | None = None,
    ):
        self._base = grain.IndexSampler(num_records, shuffle=shuffle, seed=int(seed))
        self._global = global_batch_size
        self._local = global_batch_size // process_count
        self._host = process_index
        self._workers = max(1, int(workers))
        self._start = int(start_batch)
        self._len = sys.maxsize if num_batches is None else num_batches * self._local
        self._repr = (
            f"GlobalOrderSampler(num_records={num_records}, global_batch_size="
            f"{global_batch_size}, process={process_index}/{process_count}, workers={workers}, "
            f"seed={seed}, shuffle={shuffle}, start_batch={start_batch})"
        )

    def __len__(self) -> int:
        return self._len

    def __repr__(self) -> str:
        return self._repr

    def global_position(self, index: int) -> int:
        """The position in the global stream of this host's ``index``-th record."""
        worker, m = index % self._workers, index // self._workers
        local_batch, i = divmod(m, self._local)
        batch = self._start + local_batch * self._workers + worker
        return batch * self._global + self._host * self._local + i

    def __getitem__(self, index: int) -> grain.RecordMetadata:
        if not 0 <= index < self._len:
            raise IndexError(f"sampler index {index} outside [0, {self._len})")
        meta = self._base[self.global_position(index)]
        return grain.RecordMetadata(index=index, record_key=meta.record_key, rng=meta.rng)


def make_loader(
    source,
    transform: AnchorCrop,
    *,
    global_batch_size: int,
    seed: int,
    workers: int = 0,
    shuffle: bool = True,
    num_epochs: int | None = None,
    start_batch: int = 0,
    process_index: int | None = None,
    process_count: int | None = None,
) -> grain.DataLoader:
    """A grain DataLoader of this host's slices (``global_batch_size / process_count`` examples)
    of the global batches ``start_batch, start_batch + 1, ...`` (``GlobalOrderSampler``).

    ``process_index`` and ``process_count`` default to JAX's. ``num_epochs`` ends the stream
    after the last global batch that those epochs fill (rounded down to a multiple of the
    workers); None streams forever.
    """
    if process_index is None or process_count is None:
        import jax

        process_index, process_count = jax.process_index(), jax.process_count()
    check_batch(global_batch_size, len(source), process_count)
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()  # grain reads its absl flags; outside absl.app use defaults
    num_batches = None
    if num_epochs is not None:
        num_batches = max(0, num_epochs * len(source) // global_batch_size - start_batch)
        num_batches -= num_batches % max(1, int(workers))  # whole rounds over the workers
    sampler = GlobalOrderSampler(
        len(source),
        global_batch_size=global_batch_size,
        process_index=process_index,
        process_count=process_count,
        workers=workers,
        seed=seed,
        shuffle=shuffle,
        start_batch=start_batch,
        num_batches=num_batches,
    )
    return grain.DataLoader(
        data_source=source,
        sampler=sampler,
        shard_options=grain.NoSharding(),  # the sampler already picks this host's share
        operations=[
            transform,
            grain.Batch(global_batch_size // process_count, drop_remainder=True),
        ],
        worker_count=int(workers),
        read_options=grain.ReadOptions(num_threads=2, prefetch_buffer_size=64),
    )


def to_global(batch: dict, sharding) -> dict:
    """This host's batch as global ``jax.Array``s laid out by ``sharding`` (batch axis first)."""
    import jax

    devices = len(sharding.addressable_devices)
    sizes = {len(x) for x in jax.tree.leaves(batch)}
    if any(n % devices for n in sizes):
        raise UserError(
            f"a host batch of {min(sizes)} examples cannot be split evenly over this host's "
            f"{devices} devices: make config.train.batch_size a multiple of the device count"
        )
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), batch)
