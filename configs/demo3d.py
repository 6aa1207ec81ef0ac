r"""The built-in synthetic volumes: CT-like head-and-neck phantoms, no download needed.

python -m piaug.main --config=configs/demo3d.py --workdir=runs/demo3d

The whole pipeline on volumes, sized for a laptop CPU (under 10 minutes on 2 cores): 16
synthetic 64^3 CT-like volumes (3.75 mm voxels, 12 landmarks, windowed at the paper's
[-200, 400] HU), the from-scratch recipe for volumes (``piaug.recipes``: batch norm, the
unclamped loss at temperature 0.1, ``CPU_VOLUMES``: one crop of each volume, the whole volume
rotated, scaled and jittered, with 64 anchors, matching by strides 8, 4 and 2) at an eighth of
VGG19's width, 200 steps of 2 volumes for the baseline and again for piaug (the estimate's
ranges, the weight map), both evaluated on 16 test volumes, then the figures.
docs/volumes.md has its results and how they were reached; configs/hn3d.py is the paper's H&N
setting.
"""

from piaug import ablations, defaults, recipes


def get_config(arg=None):
    config = defaults.base_config("synthetic3d")
    for key, value in {**recipes.FROM_SCRATCH, **recipes.CPU_VOLUMES}.items():
        ablations.set_field(config, key, value)
    config.data.crop_size = 64  # the whole volume (recipes.CPU_VOLUMES)
    config.augment.gamma = 0.2  # the paper's H&N setting
    config.train.steps = 200
    config.train.warmup_steps = 20
    config.train.checkpoint_every = 100
    config.eval.every = 100
    config.eval.probe_images = 4
    config.estimate.patch_size = 16
    return ablations.apply(config, arg)
