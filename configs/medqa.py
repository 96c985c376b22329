r"""MedQA, 4 options (no train split here: replays MedMCQA validation) with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/medqa.py --workdir /tmp/evoselect_medqa
Smoke:
  python -m experiments.main --config configs/medqa.py:smoke --workdir /tmp/evoselect_medqa_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("medqa", arg, replay=("medmcqa", "validation"), max_len=512)
