r"""Entry point: ``python -m piaug.main --config=configs/NAME.py --workdir=DIR``.

Runs the stages named by ``--config.stages`` (comma-separated) of the pipeline in
``piaug/pipeline.py``; any field of the config can be overridden with ``--config.key=value``, and
a field the config does not define is an error. ``--distributed`` (or ``--coordinator``) joins a
multi-process run through ``jax.distributed.initialize`` (see ``launch/``).
"""

import logging as std_logging
import os
import re

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from piaug.errors import UserError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file, configs/NAME.py or configs/NAME.py:preset.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory for the run's outputs.")
flags.mark_flags_as_required(["config"])  # --workdir is checked in main (data_prep needs none)
flags.DEFINE_bool(
    "distributed",
    False,
    "Join a multi-process run: jax.distributed.initialize() with the values below, or those it "
    "detects (Slurm, TPU pods, Open MPI, JAX_COORDINATOR_ADDRESS).",
)
flags.DEFINE_string("coordinator", None, "host:port of process 0 (implies --distributed).")
flags.DEFINE_integer("num_processes", None, "Number of processes of a distributed run.")
flags.DEFINE_integer("process_id", None, "This process's index in a distributed run.")


class _QuietLibraries(std_logging.Filter):
    """Drops the INFO chatter of orbax, TFDS, grain and JAX's backend search (e.g. "Unable to
    initialize backend 'tpu'" on every machine without one; each stage's log names the devices
    in use instead); their warnings and errors still show."""

    def filter(self, record):
        noisy = ("/orbax/", "/tensorflow_datasets/", "/grain/", "/jax/_src/xla_bridge.py")
        return record.levelno > std_logging.INFO or not any(n in record.pathname for n in noisy)


def setup_runtime() -> None:
    """Logging, the persistent compilation cache (reruns and resumed runs skip compiling) and,
    when asked, the multi-process runtime."""
    logging.set_verbosity(logging.INFO)
    logging.get_absl_handler().addFilter(_QuietLibraries())
    if not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
        from piaug.data import prepare

        jax.config.update("jax_compilation_cache_dir", str(prepare.default_cache_dir() / "jax"))
    if FLAGS.distributed or FLAGS.coordinator:
        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
        logging.info(
            "process %d of %d, %d local of %d devices",
            jax.process_index(),
            jax.process_count(),
            jax.local_device_count(),
            jax.device_count(),
        )


def _unknown_field(error: Exception, argv) -> str:
    """The one-line error of an override of a field the config lacks: the override at fault
    (not the others), the field, the group it was looked for in, and ml_collections'
    suggestion, as plain text."""
    # A nested field's KeyError comes wrapped in an AttributeError, and a KeyError's str() is
    # its repr ('\'trian\'\nDid you mean ...'): the message itself, on one line.
    while isinstance(error, AttributeError) and error.args and isinstance(error.args[0], KeyError):
        error = error.args[0]
    text = str(error.args[0]) if isinstance(error, KeyError) and error.args else str(error)
    first, _, hint = text.partition("\n")
    overrides = [a.split("=")[0] for a in argv[1:] if a.startswith("--config.")]
    paths = {o: o.removeprefix("--").split(".") for o in overrides}  # ["config", ...]
    lookup = re.search(r"Attempting to lookup: (\S+)", first)  # a field under a plain value
    if lookup:
        wanted = ["config", *lookup.group(1).split(".")]
        bad = [o for o, p in paths.items() if p == wanted]
        value = re.search(r"<class '(\w+)'>\.(\w+) does not exist", first)
        at = wanted.index(value.group(2), 1) if value and value.group(2) in wanted else -1
        kind = f"a value ({value.group(1)})" if value else "a value"
        text = f"{'.'.join(wanted[:at])} is {kind}, not a group of fields"
    else:
        name = first.strip().strip(chr(39) + chr(34))
        bad = [o for o, p in paths.items() if name in p[1:]]
        groups = {".".join(p[: p.index(name, 1)]) for p in map(paths.get, bad)}
        text = f"no field '{name}'" + (f" in {groups.pop()}" if len(groups) == 1 else "")
    suggestion = re.search(r'Did you mean "([^"]+)"', hint)
    if suggestion:
        text += f"; did you mean '{suggestion.group(1)}'?"
    elif hint.strip():
        text += f"; {hint.strip()}"
    return (
        f"error: unknown config field in {' '.join(bad or overrides)} ({text}); "
        "see the config file for the fields it defines"
    )


def parse_flags(argv):
    """absl's parsing, with a one-line error for an override of a field the config lacks or
    a value of the wrong type."""
    try:
        return FLAGS(argv)
    except (AttributeError, KeyError) as e:
        raise SystemExit(_unknown_field(e, argv)) from None
    except (flags.IllegalFlagValueError, TypeError, ValueError) as e:
        raise SystemExit(
            f"error: {e}; give a value of the field's type (see the config file)"
        ) from None


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    if not FLAGS.workdir:
        raise app.UsageError("--workdir=DIR is required: the folder for the run's outputs")
    setup_runtime()
    from piaug import pipeline  # here: a bad flag is refused before the libraries load

    try:
        pipeline.run(FLAGS.config, FLAGS.workdir)
    except UserError as e:  # bad input: a clear message, once, no traceback
        raise SystemExit(f"error: {e}") from None


if __name__ == "__main__":
    app.run(main, flags_parser=parse_flags)
