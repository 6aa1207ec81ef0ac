r"""Builds the prepared (TFDS array_record) dataset of a config, without training anything.

python data_prep/build.py --config=configs/ceph.py --config.data.dir=/path/to/ISBI2015

Prints where the prepared copy lives. The pipeline builds it on first use anyway; this command
lets a cluster job, or a person, build it ahead of time (one host, before a multi-host run).
"""

import sys

from absl import app, logging

from piaug import configure
from piaug.errors import UserError
from piaug.main import FLAGS, parse_flags  # the same --config flag and override checks


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
    logging.set_verbosity(logging.INFO)
    config = FLAGS.config
    try:
        configure.check(config, stages=("info",))
        prepared = configure.prepare_data(config)
    except UserError as e:
        raise SystemExit(f"error: {e}") from None
    report = prepared.metadata.get("report", [])
    print(
        f"{len(prepared)} examples of {config.data.name} ({config.data.split}) at {prepared.path}"
    )
    for line in report:
        print(f"  note: {line}")


if __name__ == "__main__":
    sys.exit(app.run(main, flags_parser=parse_flags))
