"""piaug: information-guided pixel augmentation for pixel-wise contrastive learning, in JAX.

``piaug.load_encoder(run)`` and ``piaug.load_detector(run)`` give a trained run's models as
functions of images (``piaug.api``); the rest lives in the submodules.
"""

__all__ = ["load_detector", "load_encoder"]


def __getattr__(name):  # the API on first use: `import piaug` stays light
    if name in __all__:
        from piaug import api

        return getattr(api, name)
    raise AttributeError(f"module 'piaug' has no attribute {name!r}")
