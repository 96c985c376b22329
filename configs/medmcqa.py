r"""MedMCQA (target and test drawn from validation; replays HeadQA train) with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/medmcqa.py --workdir /tmp/evoselect_medmcqa
Smoke:
  python -m experiments.main --config configs/medmcqa.py:smoke --workdir /tmp/evoselect_medmcqa_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("medmcqa", arg, replay=("headqa", "train"))
