r"""ARC-Challenge with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/arc_challenge.py --workdir /tmp/evoselect_arc_challenge
Smoke:
  python -m experiments.main --config configs/arc_challenge.py:smoke --workdir /tmp/evoselect_arc_challenge_smoke
CPU size (pool 48, 2 rounds, 2 methods, 50 test questions; 31 min on 2 busy CPU cores):
  python -m experiments.main --config configs/arc_challenge.py:size=cpu,gen=weak --workdir /tmp/arc_weak
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("arc_challenge", arg, replay=("arc_challenge", "train"))
