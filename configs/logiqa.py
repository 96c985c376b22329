r"""LogiQA (no train split here: replays LogiQA 2.0 dev) with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/logiqa.py --workdir /tmp/evoselect_logiqa
Smoke:
  python -m experiments.main --config configs/logiqa.py:smoke --workdir /tmp/evoselect_logiqa_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("logiqa", arg, replay=("logiqa2", "dev"), max_len=768)
