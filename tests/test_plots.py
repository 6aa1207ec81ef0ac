"""The figures, looked at through matplotlib's objects before they are saved: proportions,
legends, labels and what each draws (more than a file's size)."""

import numpy as np
import pytest
from conftest import assert_drawn
from matplotlib.backends.backend_agg import FigureCanvasAgg

from piaug import plots


def test_the_info_panel_keeps_the_radiographs_proportions_and_names_the_groups(tmp_path):
    grid = np.zeros((64, 64), np.uint8)  # a square training copy of a 2400 x 1935 radiograph
    groups = np.repeat(np.arange(3), 22)[:64][None].repeat(64, 0)
    fig = plots.info_panel(
        grid,
        np.ones((64, 64)),
        groups,
        np.array([[10.0, 20.0]]),
        (2.0, 4.5),
        tmp_path / "info.png",
        original_size=(2400, 1935),
    )
    assert fig.axes[0].get_aspect() == pytest.approx(2400 / 1935)  # drawn tall, not square
    legend = next(ax.get_legend() for ax in fig.axes if ax.get_legend() is not None)
    labels = [t.get_text() for t in legend.get_texts()]
    assert labels == ["low (< 2 bits)", "medium (2-4.5)", "high (>= 4.5)"]
    assert_drawn(tmp_path / "info.png", np.round(fig.get_size_inches() * 90))  # at dpi 90


def test_an_overlay_is_drawn_at_the_images_own_size_numbered_in_mm(tmp_path):
    image = np.zeros((240, 120), np.uint8)  # twice as tall as wide
    true = np.array([[10.0, 20.0], [60.0, 200.0], [100.0, 100.0]])
    fig = plots.overlay(image, true, true + 3, tmp_path / "o.png", title="a: mean error 0.42 mm")
    w, h = fig.get_size_inches()
    assert h / w == pytest.approx((240 * 7 / 240 + 0.5) / (120 * 7 / 240))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["1", "2", "3"]  # every landmark numbered
    assert "mm" in ax.get_title()


def test_the_sampling_figure_keeps_its_legend_clear_of_the_plot(tmp_path):
    centers = np.linspace(0.05, 7.95, 80)
    density = np.exp(-((centers - 4) ** 2))
    weights = {f"IIE^{g}": centers**g for g in (0.0, 0.3, 1.0)} | {"1[IIE >= 2]": centers >= 2}
    fig = plots.sampling_probability(
        centers, density, weights, [3.0, 5.0], (2.0, 4.5), tmp_path / "s.png"
    )
    ax = fig.axes[0]
    legend = ax.get_legend()
    renderer = FigureCanvasAgg(fig).get_renderer()
    fig.draw(renderer)
    assert legend.get_window_extent(renderer).x0 >= ax.get_window_extent(renderer).x1
    names = [t for t in ax.texts if t.get_text() in ("low", "medium", "high")]
    assert len(names) == 3
    styles = {line.get_linestyle() for line in ax.get_lines()[:4]}
    assert len(styles) == 4  # the weight maps' curves differ in style where they overlap
    assert [t.get_text() for t in legend.get_texts()][-1] == "landmarks"


def test_loss_curves_draw_every_logged_step_and_a_moving_average(tmp_path):
    steps = np.arange(10, 2010, 10)
    loss = 20 - np.log(steps) + np.random.default_rng(0).normal(0, 0.3, len(steps))
    fig = plots.loss_curves({"baseline": (steps, loss)}, tmp_path / "l.png")
    raw, smooth = fig.axes[0].get_lines()[:2]
    assert len(raw.get_xdata()) == 200  # every logged step
    assert np.std(np.diff(smooth.get_ydata())) < np.std(np.diff(loss))  # smoother
    assert smooth.get_label() == "baseline (mean of 10)"
