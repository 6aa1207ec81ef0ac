"""What a training run reports (``piaug.train.fit``): ``metrics.jsonl`` (``MetricsWriter``),
TensorBoard's copy of its rows and images (``piaug.tb``), the progress bar, and the clock of
``samples_per_s`` (``RunLog``)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import optax
from tqdm import tqdm

from piaug import tb
from piaug.layout import METRICS_FILE
from piaug.train_step import TrainSettings


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


class RunLog:
    """Where a run reports (process 0): ``metrics.jsonl`` (``MetricsWriter``), TensorBoard
    (with ``tensorboard``), the progress bar; and the clock of ``samples_per_s``, which leaves
    the probe's time out."""

    def __init__(
        self,
        workdir: Path,
        *,
        start: int,
        total: int,
        desc: str,
        settings: TrainSettings,
        schedule: optax.Schedule,
        tensorboard: Path | None,
    ):
        self.writer = MetricsWriter(workdir / METRICS_FILE, start=start)
        self.board = tb.Writer(tensorboard, start=start) if tensorboard is not None else None
        self.bar = tqdm(
            total=total,
            initial=start,
            unit="step",
            desc=desc,
            disable=jax.process_index() != 0,
            dynamic_ncols=True,
        )
        self.desc, self.total, self.schedule = desc, total, schedule
        self.batch_size = int(settings.batch_size)  # its split over the devices: configure.check
        self.log_every = max(1, int(settings.log_every))
        self.tick, self.tick_step = time.perf_counter(), start

    def restart_clock(self) -> None:
        self.tick = time.perf_counter()

    def image(self, tag: str, make: Callable[[], np.ndarray], step: int) -> None:
        """``make()``'s image into TensorBoard (made only when there is one)."""
        if self.board is not None:
            self.board.image(tag, make(), step)

    def step(self, i: int, metrics: dict) -> None:
        """Step ``i`` done: the bar moves; every ``log_every`` steps and at the last, a row."""
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}")
        if i % self.log_every == 0 or i == self.total:
            now = time.perf_counter()
            rate = (i - self.tick_step) * self.batch_size / max(now - self.tick, 1e-9)
            self.tick, self.tick_step = now, i
            lr = float(self.schedule(i - 1))
            row = {"step": i, **metrics, "lr": lr, "samples_per_s": rate}
            self.writer.write(row | {"time": time.time()})
            if self.board is not None:
                self.board.scalars(row, i)

    def probe(self, step: int, probe: Callable[[dict, dict], dict], params, batch_stats) -> None:
        """Runs the probe on a model's ``params`` and ``batch_stats``; its row of its own."""
        begin = time.perf_counter()
        row = probe(params, batch_stats)
        self.writer.write({"step": step, **row, "time": time.time()})
        if self.board is not None:
            self.board.scalars(row, step)
            if hasattr(probe, "panel"):
                self.board.image("probe/matches", probe.panel(), step)
        self.bar.write(f"{self.desc}: step {step}, probe MRE {row['probe_mre_mm']:.2f} mm")
        self.tick += time.perf_counter() - begin  # samples_per_s leaves the probe's time out

    def close(self) -> None:
        self.bar.close()
        self.writer.close()
        if self.board is not None:
            self.board.close()
