r"""A tiny synthetic config for tests: the whole run takes seconds.

python -m piaug.main --config=configs/test.py --workdir=/tmp/piaug_test
"""

from piaug import ablations, defaults


def get_config(arg=None):
    config = defaults.base_config("synthetic")
    config.data.options.num_images = 3
    config.data.options.size = (96, 80)
    config.data.options.num_landmarks = 5
    config.data.image_size = (64, 64)
    config.data.crop_size = 32
    config.data.workers = 0
    config.info.footprint = "disk(3)"
    config.info.num_figures = 2
    config.model.width = 0.0625  # 4 to 32 channels
    config.model.embedding = 8
    config.loss.window = 2
    config.train.batch_size = 2
    config.train.steps = 6
    config.train.checkpoint_every = 3
    config.train.log_every = 1
    config.eval.salient_points = 8
    config.eval.salient_distance = 4
    config.eval.num_overlays = 2
    config.eval.every = 3  # the probe at steps 0, 3 and 6
    config.eval.probe_images = 2
    config.analyze.footprints = ("disk(3)", "disk(8)")  # Fig. 7 at the tiny images' scale
    return ablations.apply(config, arg)
