r"""OpenBookQA with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/openbookqa.py --workdir /tmp/evoselect_openbookqa
Smoke:
  python -m experiments.main --config configs/openbookqa.py:smoke --workdir /tmp/evoselect_openbookqa_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("openbookqa", arg, replay=("openbookqa", "train"))
