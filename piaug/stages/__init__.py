"""The bodies of the pipeline's stages, one module each (``piaug.pipeline`` runs them in order).

* ``info``: the prepared dataset's IIE statistics and figures;
* ``training``: ``pretrain`` (the baseline encoders) and ``train`` (piaug's), with the probe;
* ``estimate``: the augmentation ranges per information group (Eq. 10);
* ``detectors``: ``pseudo`` (one-shot pseudo-labels) and ``detector`` (CC2D's second stage);
* ``evaluate``: one-shot matching and the detectors, MRE/SDR into ``results.json``;
* ``analyze``: the paper's figures from a run's files.

Each stage reads the config through ``piaug.configure``, calls library functions and writes the
files named in ``piaug.layout``; ``common`` holds what several stages share.
"""
