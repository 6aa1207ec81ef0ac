r"""Digital Hand Atlas radiographs with Payer et al.'s 37 landmarks.

python -m piaug.main --config=configs/hand.py --workdir=runs/hand \
    --config.data.dir=/path/to/hand --config.data.split=train

Images ID.jpg or ID.png with Payer's all.csv; spacing from a 50 mm wrist width between landmarks
config.data.options.wrist (0-based, default (0, 4) as CC2D; Payer et al. use (1, 5)); splits by
config.data.options.protocol (see piaug/data/hand.py).
"""

from piaug import ablations, defaults


def get_config(arg=None):
    config = defaults.base_config("hand")
    config.augment.gamma = 0.2
    return ablations.apply(config, arg)
