r"""The built-in synthetic default: X-ray-like images, no download needed.

python -m piaug.main --config=configs/demo.py --workdir=runs/demo

The whole pipeline, sized for a laptop CPU (under 10 minutes on 2 cores): 32 synthetic
768 x 768 images trained at 192 x 192 with 64 x 64 crops, encoders at a quarter of VGG19's
width, 200 steps of batch 8 for the baseline and again for piaug (the estimate's ranges, the
weight map), both evaluated on the 32 test images, then the figures. The paper's setting is
configs/ceph.py.
"""

from piaug import ablations, defaults


def get_config(arg=None):
    config = defaults.base_config("synthetic")
    config.data.image_size = (192, 192)
    config.model.width = 0.25
    config.train.steps = 200
    config.train.checkpoint_every = 100
    return ablations.apply(config, arg)
