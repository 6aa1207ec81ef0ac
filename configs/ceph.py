r"""ISBI 2015 cephalometric radiographs (19 landmarks, 0.1 mm per pixel), the paper's settings.

python -m piaug.main --config=configs/ceph.py --workdir=runs/ceph \
    --config.data.dir=/path/to/ISBI2015

The paper's settings, as the authors' code runs them: 384 x 384, 64 x 64 crops, batch 8,
400 epochs of 11 passes over the 150 training images (82,500 steps; their data loader lists
each image 11 times), the learning rate x0.8 every 50 epochs, the half-open loss window
[gt - 9, gt + 9) of their loss, exponential weight map gamma 0.3, groups at 2 and 4.5 bits,
alpha_hat 1, IIE over a disk of radius 10; one-shot matching with bilinear upsampling of the
similarity maps (their tester's), evaluated on Test1 + Test2 (``--config.eval.split=test``).

The folder holds the challenge release (RawImage/ + AnnotationsByMD/), the jpg + csv layout
(images/ + senior.csv, junior.csv) or the Kaggle mirror (cepha400/ + train_senior.csv, ...);
see piaug/data/ceph.py. Ground truth is the mean of the doctors present
(--config.data.options.annotation=senior|junior to pick one).

Presets (``--config=configs/ceph.py:NAME[,NAME...]``, applied in order):

* ``cpu``: the from-scratch recipe (``piaug.recipes``, which every config takes) on a 2-core
  CPU, no ImageNet weights: 192 x 192, encoders at a quarter of VGG19's width with batch norm
  in the backbone, 700 steps of 4 images with two 128 x 128 crops each and 64 anchors per crop,
  CC2D's later loss (temperature 0.1, no clamp, 64-d embedding), matching by the sum of the
  scales' cosines; about 12 minutes of steps per encoder (11.2 minutes an encoder as the whole
  preset ran, every stage from info to analyze in 24.5). docs/from_scratch.md records how it
  was found and what it reaches. The detector (CC2D's second stage) at the same size and
  width: 2000 steps of 4 images. CC2D-S2 (``detector.labels=pseudo``, the template added to
  every batch) within 30 minutes: ``--config.detector.batch_size=3
  --config.detector.steps=1900`` (3 images and the template a step, as the authors' batch: 25
  minutes as run).
* ``scratch``: the same recipe at 384 x 384 and full width, batch 8, the authors' 400 epochs,
  for a GPU without ImageNet weights (not yet run).
* the ablations of ``piaug.ablations`` (e.g. ``gamma_0.1``, ``d_3.7``, ``estimated``,
  ``alpha_1.5``, ``footprint_32``, ``continuous``); ``launch/sweep.py`` runs whole sweeps.
"""

from piaug import ablations, defaults


def get_config(arg=None):
    config = defaults.base_config("ceph")
    config.augment.gamma = 0.3
    config.train.epoch_passes = 11.0  # the authors' ceph_ssl datasets: num_repeat=10, 11 passes
    config.loss.window_mode = "half_open"
    config.eval.upsample = "bilinear"
    return ablations.apply(config, arg)
