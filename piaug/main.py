r"""Entry point: ``python -m piaug.main --config=configs/NAME.py --workdir=DIR``.

Runs the stages named by ``--config.stages`` (comma-separated) of the pipeline in
``piaug/pipeline.py``; any field of the config can be overridden with ``--config.key=value``, and
a field the config does not define is an error.
"""

from absl import app, flags, logging
from ml_collections import config_flags

from piaug import pipeline

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, configs/NAME.py or configs/NAME.py:preset.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for the run's outputs.")
flags.mark_flags_as_required(["config"])  # --workdir is checked in main (data_prep needs none)


def parse_flags(argv):
    """absl's parsing, with a one-line error for an override of a field the config lacks."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        bad = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
        raise SystemExit(
            f"error: unknown config field in {' '.join(bad)} ({e}); "
            "see the config file for the fields it defines"
        ) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir=DIR is required: the folder for the run's outputs")
    logging.set_verbosity(logging.INFO)
    try:
        pipeline.run(FLAGS.config, FLAGS.workdir)
    except pipeline.UserError as e:  # bad input: a clear message, no traceback
        logging.error("%s", e)
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
