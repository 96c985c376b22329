r"""HeadQA, English (items that need an image excluded) with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/headqa.py --workdir /tmp/evoselect_headqa
Smoke:
  python -m experiments.main --config configs/headqa.py:smoke --workdir /tmp/evoselect_headqa_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("headqa", arg, replay=("headqa", "train"), exclude=("needs_image",))
