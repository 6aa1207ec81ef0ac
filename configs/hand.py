r"""Digital Hand Atlas radiographs with Payer et al.'s 37 landmarks.

python -m piaug.main --config=configs/hand.py --workdir=runs/hand \
    --config.data.dir=/path/to/hand --config.data.split=train

Images ID.jpg or ID.png with Payer's all.csv; spacing from a 50 mm wrist width between landmarks
config.data.options.wrist (0-based, default (0, 4) as CC2D; Payer et al. use (1, 5)); splits by
config.data.options.protocol (see piaug/data/hand.py).

The authors' hand settings (IGU's ``ssl_hand``): gamma 0.2, a loss window of 6 cells
(half-open, as their loss), 450 epochs with the learning rate x0.8 every 200, bilinear
matching. One epoch is 6 passes over the training images: the repetition of CC2D's hand
loader (``num_repeat=5``); the repetition of IGU's own hand loader is not on record.
"""

from piaug import ablations, defaults


def get_config(arg=None):
    config = defaults.base_config("hand")
    config.augment.gamma = 0.2
    config.loss.window = 6
    config.loss.window_mode = "half_open"
    config.train.epochs = 450
    config.train.lr_decay_epochs = 200
    config.train.epoch_passes = 6.0
    config.eval.upsample = "bilinear"
    return ablations.apply(config, arg)
