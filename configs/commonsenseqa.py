r"""CommonsenseQA (evaluated on dev: its test split is unlabeled) with SmolLM2-135M-Instruct as the learner.

Launch (strong generator: replay; `:gen=weak` for the local SmolLM2 generator):
  python -m experiments.main --config configs/commonsenseqa.py --workdir /tmp/evoselect_commonsenseqa
Smoke:
  python -m experiments.main --config configs/commonsenseqa.py:smoke --workdir /tmp/evoselect_commonsenseqa_smoke
"""

from configs._benchmark import benchmark_config


def get_config(arg=None):
  return benchmark_config("commonsenseqa", arg, replay=("commonsenseqa", "train"))
