"""Launches an experiment config.

  python -m experiments.main --config configs/quickstart.py --workdir /tmp/evoselect_quickstart

Override any field with ``--config.<path>=value``; the config is locked, so a
misspelt field fails at once. Rerunning the same command on a workdir resumes it at
its first unfinished stage (a workdir written by another config is refused, with the
fields that differ); to start over, use a new --workdir.
"""

import logging

from absl import app, flags
from ml_collections import config_flags

from evoselect_jax import experiment

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Experiment config file.", lock_config=True
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for metrics, selections and plots.")
flags.mark_flags_as_required(["config", "workdir"])


def _quiet_orbax(record: logging.LogRecord) -> bool:
  """Drops orbax's INFO lines (several per checkpoint saved); its warnings pass."""
  return record.levelno >= logging.WARNING or "/orbax/" not in record.pathname


def main(argv):
  """Runs the config in --config, writing under --workdir."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  logging.getLogger("absl").addFilter(_quiet_orbax)
  experiment.run(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main)
