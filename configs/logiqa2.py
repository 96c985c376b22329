r"""LogiQA 2.0 (no train split here: replays LogiQA eval) with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/logiqa2.py --workdir /tmp/evoselect_logiqa2
Smoke:
  python -m experiments.main --config configs/logiqa2.py:smoke --workdir /tmp/evoselect_logiqa2_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("logiqa2", arg, replay=("logiqa", "eval"), max_len=768)
