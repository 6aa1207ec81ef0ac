"""The paper's ablations as named config presets, and the sweeps that group them.

A preset is a set of config overrides; a config file applies the presets named after its colon,
comma-separated, on top of its own (``--config=configs/ceph.py:cpu,gamma_0.1``). A sweep is an
ordered list of presets; ``launch/sweep.py`` runs one (every preset against one shared
baseline encoder, so the estimates and templates come from the same encoder) and gathers the
results into one table.

* ``table1_gamma``: exponential weight maps IIE^gamma, gamma 0 (uniform) to 1, with CC2D's
  default jitter (no estimate): the paper's Table 1, left.
* ``table1_d``: piecewise weight maps 1[IIE >= d], d 1 to 4.5, default jitter: Table 1, right.
* ``table3``: the baseline; the weight map alone; + the estimated ranges (medium's for every
  anchor); + adaptive (each anchor's group's ranges): the paper's Table 3.
* ``fig5_alpha``: alpha_hat of the MI target, 0.4 to 1.9 (Fig. 5).
* ``fig7_footprint``: IIE over disks of radius 10, 32 and 128 (Fig. 7).
* ``continuous``: the group-wise adaptive method against the per-pixel continuous variant
  (ranges interpolated in the anchor's IIE between the groups' centres), which the paper calls
  ideal but too slow; here it costs nothing extra.
* ``table2``: the baseline; the comparison methods of ``piaug.mixing`` (Zhu et al., MoCHi,
  Un-mix) on the baseline's uniform anchors with the ranges the estimate gives the high group
  for every anchor (the paper's starred rows: ``zhu_high`` is ``zhu,high_ranges``); piaug
  (``adaptive``): the paper's Table 2.

Every config also takes the from-scratch recipes of ``piaug.recipes``: ``cpu`` (a 2-core laptop)
and ``scratch`` (accelerators without ImageNet weights), e.g. ``configs/hand.py:cpu,gamma_0.1``.

Presets outside the sweeps: ``zhu``, ``mochi``, ``unmix`` (each method on the baseline's
crops: uniform anchors, CC2D's default jitter) and ``high_ranges`` (the estimate's high-group
ranges for every anchor), combinable (``--config=configs/ceph.py:cpu,mochi,high_ranges``).
"""

from __future__ import annotations

from piaug import recipes

_DEFAULT_JITTER = {"augment.estimated": False, "stages": "info,pretrain,train,evaluate,analyze"}

SWEEPS: dict[str, dict[str, dict]] = {
    "table1_gamma": {
        f"gamma_{g:g}": {**_DEFAULT_JITTER, "augment.anchors": "exponential", "augment.gamma": g}
        for g in (0.0, 0.01, 0.1, 0.3, 0.5, 1.0)
    },
    "table1_d": {
        f"d_{d:g}": {**_DEFAULT_JITTER, "augment.anchors": "piecewise", "augment.d": d}
        for d in (1.0, 2.0, 3.0, 3.7, 4.5)
    },
    "table3": {
        "baseline": {"stages": "info,pretrain,evaluate,analyze"},
        "weightmap": {**_DEFAULT_JITTER},
        "estimated": {"augment.adaptive": False},
        "adaptive": {},
    },
    "fig5_alpha": {
        f"alpha_{a:g}": {"estimate.alpha": a} for a in (0.4, 0.6, 0.8, 1.0, 1.2, 1.5, 1.7, 1.9)
    },
    "fig7_footprint": {f"footprint_{r}": {"info.footprint": f"disk({r})"} for r in (10, 32, 128)},
    "continuous": {"adaptive": {}, "continuous": {"augment.continuous": True}},
}

_BASELINE_CROPS = {**_DEFAULT_JITTER, "augment.anchors": "uniform", "augment.adaptive": False}
# MoCHi's warm-up: the unofficial code starts mixing at step 1024 of its run; the fraction of
# a run is not given, so 5% here.
COMPARISONS = {
    "zhu": {**_BASELINE_CROPS, "mixing.method": "zhu"},
    "mochi": {**_BASELINE_CROPS, "mixing.method": "mochi", "mixing.warmup": 0.05},
    "unmix": {**_BASELINE_CROPS, "mixing.method": "unmix"},
}
HIGH_RANGES = {
    "augment.estimated": True,
    "augment.adaptive": False,
    "augment.fixed_group": "high",
    "stages": "info,pretrain,estimate,train,evaluate,analyze",
}
SWEEPS["table2"] = {
    "baseline": SWEEPS["table3"]["baseline"],
    **{f"{name}_high": {**preset, **HIGH_RANGES} for name, preset in COMPARISONS.items()},
    "adaptive": {},
}

PRESETS: dict[str, dict] = {**COMPARISONS, "high_ranges": HIGH_RANGES}
for _sweep in SWEEPS.values():
    for _name, _overrides in _sweep.items():
        if PRESETS.setdefault(_name, _overrides) != _overrides:
            raise AssertionError(f"preset {_name!r} means two things")


def set_field(config, key: str, value) -> None:
    """``config.a.b = value`` for ``key`` 'a.b'; an int given to a float field becomes a float
    (any other type mismatch is ConfigDict's error)."""
    *parents, leaf = key.split(".")
    node = config
    for p in parents:
        node = node[p]
    if leaf not in node:
        raise KeyError(f"preset sets unknown config field {key!r}")
    if isinstance(node[leaf], float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    node[leaf] = value


def apply(config, arg: str | None, own: dict | None = None):
    """``config`` with the comma-separated presets of ``arg`` applied in order: the config
    file's ``own`` presets (name -> function of the config), the from-scratch recipes every
    config takes (``piaug.recipes``: ``cpu``, ``scratch``) or ``PRESETS``."""
    own = {**recipes.PRESETS, **(own or {})}
    for name in [a.strip() for a in (arg or "").split(",") if a.strip()]:
        if name in own:
            own[name](config)
        elif name in PRESETS:
            for key, value in PRESETS[name].items():
                set_field(config, key, value)
        else:
            known = ", ".join([*own, *PRESETS])
            raise ValueError(f"unknown preset {name!r}; presets: {known}")
    return config
