r"""A tiny synthetic config of volumes for tests: every stage of the pipeline on volumes in
about a minute (configs/demo3d.py is the demo).

python -m piaug.main --config=configs/test3d.py --workdir=/tmp/piaug_test3d
"""

from piaug import ablations, defaults


def get_config(arg=None):
    config = defaults.base_config("synthetic3d")
    config.data.options.num_images = 4
    config.data.options.size = (40, 40, 40)
    config.data.image_size = (32, 32, 32)
    config.data.crop_size = 32
    config.data.workers = 0
    config.info.num_figures = 2
    config.model.width = 0.0625  # 4 to 32 channels
    config.model.embedding = 8
    config.loss.window = 2
    config.train.batch_size = 2
    config.train.steps = 4
    config.train.checkpoint_every = 2
    config.train.log_every = 1
    config.estimate.patch_size = 8
    config.estimate.num_points = 4
    config.eval.salient_points = 8
    config.eval.num_overlays = 2
    config.eval.every = 2  # the probe at steps 0, 2 and 4
    config.eval.probe_images = 2
    config.analyze.num_images = 2
    return ablations.apply(config, arg)
