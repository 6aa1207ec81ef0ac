r"""Head-and-neck CT volumes (the paper's H&N 3-D setting) from a folder of NIfTI files or
DICOM series with landmarks.

python -m piaug.main --config=configs/hn3d.py --workdir=runs/hn3d --config.data.dir=DIR
python -m piaug.main --config=configs/hn3d.py:cpu --workdir=runs/hn3d_cpu --config.data.dir=DIR

DIR holds ``images/`` (NIfTI files, or one folder per DICOM series) and ``landmarks.csv``
(``image,1_x,1_y,1_z,...`` in voxel indices; ``--config.data.options.coordinates=world`` for
millimetres), the ``folder3d`` layout of docs/volumes.md. The paper's settings for its H&N set:
CT values clipped to [-200, 400] HU, IIE over a 5-voxel patch (a ball of radius 2), weight-map
gamma 0.2, alpha_hat 1. The volumes are resampled to a 128^3 grid with 64^3 crops, batch 4,
trained from random weights with the from-scratch recipe (``piaug.recipes``: batch norm, the
unclamped loss at temperature 0.1, two crops of each volume with 64 anchors each) at full width,
for one 80 GB GPU: 48.8 GB at batch 4 by XLA's memory analysis (benchmarks/memory.py,
docs/performance.md; 94 GB at batch 8 would not fit).

Presets (``--config=configs/hn3d.py:NAME[,NAME...]``):

* ``cpu``: the recipe on a 2-core CPU (``recipes.CPU_VOLUMES``): a 64^3 grid, crops of the
  whole grid (one a volume), an eighth of VGG19's width, 700 steps of 2 volumes with 64 anchors
  a crop, matching by strides 8, 4 and 2 (about 11 minutes an encoder; the whole pipeline
  24 minutes on the MNI case, docs/volumes.md).
* ``structseg``: landmarks from organ masks, the way Lei et al. made the paper's H&N landmarks
  (``masks/ID.nii.gz`` beside ``images/``, the six extreme points of each organ; StructSeg
  2019's layout, docs/volumes.md).
* ``mri``: MR volumes, gray values by percentiles instead of the CT window (the MNI/AFIDs case
  of ``data_prep/mni_afids.py``).
* the ablations of ``piaug.ablations``.
"""

from piaug import ablations, defaults, recipes


def _mri(config) -> None:
    config.data.options.window = "percentile"  # MR: no fixed scale; (0.5, 99.5) by default
    config.data.options.limits = None


def _structseg(config) -> None:
    config.data.options.landmarks_from = "mask"
    config.data.options.mask_points = "extremes"


def get_config(arg=None):
    config = defaults.base_config("folder3d")
    config.data.options.window = "fixed"
    config.data.options.limits = (-200.0, 400.0)  # HU, the paper's clipping
    config.data.image_size = (128, 128, 128)
    config.data.crop_size = 64
    config.info.footprint = "ball(2)"  # the paper's 5-voxel IIE patch
    config.augment.gamma = 0.2
    config.estimate.alpha = 1.0
    for key, value in recipes.FROM_SCRATCH.items():
        ablations.set_field(config, key, value)
    config.model.width = 1.0
    config.train.batch_size = 4
    config.train.steps = 20000
    config.train.warmup_steps = 1000
    config.train.checkpoint_every = 1000
    config.eval.every = 1000
    return ablations.apply(config, arg, own={"structseg": _structseg, "mri": _mri})
