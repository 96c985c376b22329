r"""ARC-Challenge with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/arc_challenge.py --workdir /tmp/evoselect_arc_challenge
Smoke:
  python -m experiments.main --config configs/arc_challenge.py:smoke --workdir /tmp/evoselect_arc_challenge_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("arc_challenge", arg, replay=("arc_challenge", "train"))
