"""What the gray-value measures share (``piaug.info``'s IIE, ``piaug.mutual_info``'s MI): the
uint8 check of their inputs, the 256 gray values, and the running of their kernels: compiled once
for a shape, in blocks on several CPU threads."""

from __future__ import annotations

import concurrent.futures
import functools
import os

import jax
import numpy as np

NUM_BINS = 256


def positive_int(value, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or int(value) != value or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def is_traced(x) -> bool:
    """True for abstract values inside ``jit``/``vmap``, whose contents cannot be inspected."""
    return isinstance(x, jax.core.Tracer)


def check_uint8(image, name: str) -> None:
    dtype = np.dtype(image.dtype)
    if dtype == np.uint8:
        return
    what = f"{name} has dtype {dtype}"
    if dtype.kind == "f" and not is_traced(image):
        if not np.all(np.isfinite(np.asarray(image))):
            raise ValueError(f"{what} and contains NaN or inf: clean it, then convert to uint8")
    raise ValueError(
        f"{what}; gray-value measures need uint8 (256 gray values). Convert first, e.g. "
        "skimage.util.img_as_ubyte(x) for floats in [0, 1] or np.clip(x, 0, 255).astype(np.uint8)."
    )


@functools.lru_cache(maxsize=64)
def compiled(kernel, *specs, **static):
    """``kernel`` compiled once for arguments of ``specs`` (``(shape, dtype name)`` each), so
    that threads do not each compile it and repeated calls do not trace it again."""
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in specs]
    return kernel.lower(*args, **static).compile()


def num_threads(threads: int | None) -> int:
    if threads is None:
        return min(os.cpu_count() or 1, 8)
    return positive_int(threads, "threads", minimum=1)


def in_threads(fn, count: int) -> list:
    """``[fn(0), ..., fn(count - 1)]``, run concurrently: XLA's CPU executable runs on the calling
    thread and releases the GIL, so independent blocks use several cores."""
    if count == 1:
        return [fn(0)]
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        return list(pool.map(lambda i: fn(i).block_until_ready(), range(count)))
