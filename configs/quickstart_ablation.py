r"""Every selector on the quickstart task, 3 seeds: final accuracy mean ± std, and a plot.

Same task, generator, learner, budget and training as configs/quickstart.py; only the
selector differs between methods. Writes results.md (the table) and accuracy.png.

Launch (about 10 minutes on 2 CPU cores):
  python -m experiments.main --config configs/quickstart_ablation.py --workdir /tmp/evoselect_ablation
Smoke:
  python -m experiments.main --config configs/quickstart_ablation.py:smoke --workdir /tmp/ablation_smoke
"""

from configs import quickstart
from evoselect_jax.config import parse_arg

BASELINES = (
  "random",
  "all",
  "loss",
  "less",
  "embedding",
  "gotd",
  "tsds",
  "diversity_only",
  "evoselect_no_diversity",
  "evoselect_no_interleave",
  "evoselect_cosine",
)


def get_config(arg=None):
  arg = parse_arg(arg, smoke=False, seeds=3)
  c = quickstart.get_config("smoke" if arg.smoke else None)
  c.seeds = tuple(range(arg.seeds))
  c.baselines = BASELINES
  return c
