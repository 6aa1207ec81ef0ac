"""One step of the two CC2D encoders' contrastive pretraining, and its state (docs/design.md 1, 4).

* ``TrainState``: the step, both encoders' parameters and batch statistics, and the state of
  their two optimizers (Adam with PyTorch's L2 weight decay, the learning rate times
  ``lr_decay`` every ``lr_decay_epochs``: ``optimizer``, ``learning_rate``); ``TrainSettings``,
  the optimisation and bookkeeping of a run (the detector's too).
* ``train_step(state, batch, ...) -> (state, metrics)``: pure; ``piaug.train.compile_step``
  jits it once over a ``('data',)`` mesh with the batch sharded, the state replicated and
  donated. The step has no randomness of its own: the input pipeline draws every anchor and
  augmentation (a comparison method's draws come from ``mixing.step_key(seed, step)``).
  Its named steps: ``_flat_crops`` (M crops per image as one batch of crops),
  ``_unmix_views`` (Un-mix's mixed crops and partner points), ``_features`` (both encoders),
  ``_unmix_loss``, ``_apply_gradients`` (both optimizers).

The loop that runs it (checkpoints, metrics, resume) is ``piaug.train``.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax
import jax
import jax.numpy as jnp
import optax
from absl import logging

from piaug import losses, mixing, models
from piaug.errors import require

ENCODERS = models.ENCODERS
SCHEDULES = ("step", "cosine")  # the learning rate's: StepLR (the paper's) or a cosine to 0
BATCH_KEYS = ("image", "crop", "anchor", "crop_anchor")  # what the step reads of a batch
UNMIX_KEYS = ("angle", "scale")  # ... and with mixing.method unmix (each crop's rotation)


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
    image_size: tuple[int, ...],
    crop_size: int,
) -> TrainState:
    """The step-0 state of both encoders, for images of ``image_size`` ((H, W), or (D, H, W)
    for volumes) and square (cubic) crops of ``crop_size``."""
    params, stats = {}, {}
    shapes = {"image": (1, *image_size), "crop": (1, *(crop_size,) * len(image_size))}
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
    image encoder runs once per image and each crop is paired with its image's maps. Volumes
    (``nets`` with ``dims=3``): ``image`` ``(B, D, H, W)``, ``crop`` ``(B[, M], C, C, C)``,
    anchors ``(..., 3)`` (slice, row, col). Metrics:
    ``loss`` (the sum over scales of the means over crops), ``loss_s{stride}`` and
    ``psi_s{stride}`` per scale, the gradient norm of each encoder.

    ``mix`` (``piaug.mixing``): a comparison method, with the step's randomness drawn from
    ``mixing.step_key(seed, state.step)`` (MoCHi's negatives from step ``mix_start`` on).
    ``unmix`` also reads ``angle`` and ``scale``
    (``UNMIX_KEYS``), runs the crop encoder on the unmixed and the mixed crops, and its
    ``loss`` adds the mixed crops' weighted terms to the unmixed crops' loss (PSI: the unmixed).
    """
    mix = mixing.MixSettings() if mix is None else mix
    key = mixing.step_key(seed, state.step) if mix.method != "none" else None
    image = batch["image"].astype(jnp.float32) / 255.0
    crops, anchors, crop_anchors, per_image = _flat_crops(batch)
    count = crops.shape[0]
    unmixed = None
    if mix.method == "unmix":
        crops, unmixed = _unmix_views(key, mix, batch, crops, anchors, crop_anchors, image.shape)
    nce = functools.partial(
        losses.multiscale_info_nce,
        window=window,
        temperature=temperature,
        clamp=clamp,
        window_mode=window_mode,
    )

    def loss_fn(params):
        feats, crop_feats, stats = _features(nets, params, state, image, crops, per_image)
        if unmixed is not None:
            per_example, psi = _unmix_loss(
                nce, feats, crop_feats, count, anchors, crop_anchors, *unmixed
            )
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
        return per_scale.sum(), (per_scale, psi.mean(0), stats)

    grads, (per_scale, psi, batch_stats) = jax.grad(loss_fn, has_aux=True)(state.params)
    params, opt_state, grad_norms = _apply_gradients(state, grads, txs)
    metrics = {"loss": per_scale.sum(), **grad_norms}
    for i, stride in enumerate(models.STRIDES):
        metrics[f"loss_s{stride}"] = per_scale[i]
        metrics[f"psi_s{stride}"] = psi[i]
    new_state = state.replace(
        step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state
    )
    return new_state, metrics


def _flat_crops(batch: dict) -> tuple[jax.Array, jax.Array, jax.Array, int]:
    """The batch's crops, anchors and crop anchors with M crops per image (``crop``
    ``(B, M, C, C)``; volumes ``(B, M, C, C, C)``) as ``B * M`` crops, and M (1 for
    ``(B, C, C)``)."""
    crops, anchors, crop_anchors = batch["crop"], batch["anchor"], batch["crop_anchor"]
    per_image = 1
    if crops.ndim == batch["image"].ndim + 1:  # (B, M, C, C): M crops of each image
        per_image = crops.shape[1]
        crops = crops.reshape(-1, *crops.shape[2:])
        anchors = anchors.reshape(-1, *anchors.shape[2:])
        crop_anchors = crop_anchors.reshape(-1, *crop_anchors.shape[2:])
    return crops, anchors, crop_anchors, per_image


def _unmix_views(key, mix, batch, crops, anchors, crop_anchors, image_shape):
    """Un-mix's inputs: the crops followed by their mixed copies, and ``(lam, partner,
    partner_ok)``: each mixed crop's weight of its own crop and its partner's anchors (the
    partner image's point under each anchor, ``mixing.partner_points``)."""
    draws = mixing.unmix_draws(key, crops.shape[-1], alpha=mix.alpha, mixup_prob=mix.mixup_prob)
    mixed, lam = mixing.unmix_crops(crops, draws)
    partner, partner_ok = mixing.partner_points(
        crop_anchors,
        anchors,
        batch["angle"].reshape(-1),
        batch["scale"].reshape(-1),
        image_shape[1:3],
    )
    return jnp.concatenate([crops, mixed]), (lam, partner, partner_ok)


def _features(nets, params, state: TrainState, image, crops, per_image: int):
    """Both encoders' multi-scale maps (in training mode): the image's, repeated for each of
    its ``per_image`` crops, the crops', and the new batch statistics."""
    net_image, net_crop = nets
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
    stats = {"image": new_image["batch_stats"], "crop": new_crop["batch_stats"]}
    return feats, crop_feats, stats


def _unmix_loss(nce, feats, crop_feats, count, anchors, crop_anchors, lam, partner, partner_ok):
    """Un-mix's per-example loss: the unmixed crops' (the first ``count`` of ``crop_feats``),
    plus ``lam`` times the mixed crops' against their own image and ``1 - lam`` times against
    their partner's (the batch reversed); PSI of the unmixed crops."""
    own = [g[:count] for g in crop_feats]
    mixed_feats = [g[count:] for g in crop_feats]
    per_example, psi = nce(feats, own, anchors, crop_anchors)
    self_term, _ = nce(feats, mixed_feats, anchors, crop_anchors)
    partner_term, _ = nce(
        [f[::-1] for f in feats], mixed_feats, partner, crop_anchors, weights=partner_ok
    )
    return per_example + lam * self_term + (1.0 - lam) * partner_term, psi


def _apply_gradients(state: TrainState, grads: dict, txs: dict):
    """Each encoder's optimizer step: the new params and optimizer states, and the gradient
    norms (``grad_norm_{encoder}``)."""
    params, opt_state, norms = {}, {}, {}
    for name in ENCODERS:
        updates, opt_state[name] = txs[name].update(
            grads[name], state.opt_state[name], state.params[name]
        )
        params[name] = optax.apply_updates(state.params[name], updates)
        norms[f"grad_norm_{name}"] = optax.tree_utils.tree_norm(grads[name])
    return params, opt_state, norms


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
