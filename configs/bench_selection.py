"""Selection throughput benchmark: each stage of EvoSelect against its peer, one run.

  python -m experiments.bench_selection --config configs/bench_selection.py --out /tmp/bench

Args (after ``:``): ``size=cpu`` (default: the sizes of issue #6, for a 2-core CPU),
``size=smoke`` or ``smoke`` (seconds; what tests run), ``size=gpu`` (one call on an H200, meant
to take < 8 min: README gives what it took);
``stages=grads+projection+ot+diversity+end_to_end`` picks stages (``+``-separated);
``precision=float32`` (default), ``tensorfloat32`` or ``bfloat16``: float32 matmuls, both sides.
Writes ``<out>/bench_selection.json`` and ``<out>/bench_selection.png``.
"""

import ml_collections

from evoselect_jax.config import parse_arg
from experiments.selection_bench.timing import MATMUL_PRECISIONS

STAGES = ("grads", "projection", "ot", "diversity", "end_to_end")


def get_config(arg=None):
  """The benchmark config; see the module docstring for ``arg``."""
  arg = parse_arg(arg, smoke=False, size="cpu", stages="+".join(STAGES), precision="float32")
  if arg.smoke:  # the shorthand every config has
    arg.size = "smoke"
  if arg.size not in ("smoke", "cpu", "gpu"):
    raise ValueError(f"size must be smoke, cpu or gpu, got {arg.size!r}")
  stages = tuple(arg.stages.split("+"))
  unknown = sorted(set(stages) - set(STAGES))
  if unknown:
    raise ValueError(f"unknown stages {unknown}; valid: {'+'.join(STAGES)}")
  if arg.precision not in MATMUL_PRECISIONS:
    raise ValueError(f"precision must be one of {list(MATMUL_PRECISIONS)}, got {arg.precision!r}")
  c = ml_collections.ConfigDict()
  c.size = arg.size
  c.stages = stages
  # Float32 matmuls of every stage, ours and the PyTorch peers alike: float32 (as numpy;
  # PyTorch's default), tensorfloat32 (JAX's default on a GPU) or bfloat16 (passes, JAX's
  # default on a TPU). On a CPU all compute in float32.
  c.matmul_precision = arg.precision
  c.seed = 0
  c.repeats = 1 if arg.size == "smoke" else 3  # timed calls after the first; median reported
  c.hardware = dict(  # copy buffer (MiB) and matmul size for the machine peaks
    copy_mb=16 if arg.size == "smoke" else 256, matmul_dim=512 if arg.size == "smoke" else 2048
  )

  # Stage sections: see each experiments/selection_bench/<stage>.py for the meaning of
  # its fields.
  c.grads = ml_collections.ConfigDict()
  g = c.grads
  # Decoders (the project's Llama; the torch peers get the same sizes and weights).
  # ~20M parameters, 4 layers: 4 x 3.4M in the blocks + 6.3M tied embedding.
  m20 = dict(
    name="20M",
    vocab_size=12_288,
    hidden_size=512,
    intermediate_size=1536,
    num_layers=4,
    num_heads=8,
    num_kv_heads=8,
    lora_rank=8,
    lora_targets=("q_proj", "k_proj", "v_proj", "o_proj"),  # LESS's LoRA targets
  )
  m5 = dict(m20, name="5M", vocab_size=8192, hidden_size=256, intermediate_size=704)
  m5.update(num_heads=4, num_kv_heads=4)
  g.lora_models = (m5, m20)  # LoRA features at a few sizes
  g.whole_model = m20  # whole-model features (issue #6: the ~20M 4-layer decoder)
  g.seq_len = 128  # tokens per example (a prompt of realistic length), all real
  g.answer_tokens = 8  # the last tokens carry the loss (the answer)
  # Ours: "answer" scores only the positions that predict answer tokens (the last block's
  # query side and MLP and the head run there only; losses.num_scored); "all" computes
  # logits everywhere, as the peers (transformers' forward) do.
  g.scored = "answer"
  g.num_examples = 8  # examples per timed call
  g.out_dim = 1024  # projected features: 32 x 32 Kronecker blocks per leaf
  g.micro_batch = 4  # ours: examples per vmap / batched forward-backward
  g.lora_paths = ("vmap", "factored")  # ours, both timed; the summary takes the faster
  # Gradient-then-project (projector kind, micro-batch b: [b, 20M] gradients alive at once).
  g.gtp = (("kronecker", 1), ("kronecker", 4), ("sjlt", 1))
  g.project_interval = 16  # LESS projects every 16 examples (its default)
  g.whole_project_interval = 1  # whole model: each example's 78 MB gradient at once
  g.torch_micro_batch = 4  # torch.func.vmap chunk_size
  g.torch_device = "cpu"
  # The peers run at each intra-op thread count (None: every core) and are reported at
  # their fastest: on a quiet 2-core machine 2 threads are 1.6x faster than 1, while
  # under other jobs torch's spinning OpenMP threads make 2 up to 3-10x slower (measured).
  g.torch_threads = (1, None)
  g.torch_attention = "sdpa"  # transformers' default, the LESS peer's attention
  g.torch_vmap_attention = "eager"  # sdpa has no vmap batching rule (a per-example loop)

  c.projection = ml_collections.ConfigDict()
  pr = c.projection
  pr.rows = 16  # gradient rows per call, a micro-batch of per-example gradients
  pr.structured_shape = (1024, 4096)  # a weight-gradient leaf: 4M floats, 16 MiB a row
  pr.dense_in_dim = 65_536  # dense kinds store [in_dim, out_dim]: 256 MiB at out_dim 1024
  pr.out_dim = 1024
  pr.cases = (
    dict(name="gaussian"),
    dict(name="rademacher"),
    dict(name="sjlt", options=dict(nonzeros=4)),
    dict(name="kronecker", options=dict(out_shape=(32, 32))),  # the loop's default shape
    dict(name="kronecker", options=dict(out_shape=(64, 16))),
    dict(name="kronecker", options=dict(out_shape=(128, 8))),
  )
  pr.check_rows = 2  # rows compared with numpy
  pr.dense_check_entries = 2**24  # up to this in_dim x out_dim, against the explicit matrix
  if arg.size == "smoke":
    tiny = dict(
      name="tiny",
      vocab_size=97,
      hidden_size=32,
      intermediate_size=48,
      num_layers=2,
      num_heads=4,
      num_kv_heads=2,
      lora_rank=4,
      lora_targets=("q_proj", "v_proj", "down_proj"),
    )
    g.update(lora_models=(tiny,), whole_model=tiny, seq_len=24, answer_tokens=4, num_examples=5)
    g.update(out_dim=64, micro_batch=2, gtp=(("kronecker", 2), ("sjlt", 1)), project_interval=3)
    g.torch_micro_batch = 2
    pr.update(rows=3, structured_shape=(24, 40), dense_in_dim=96, out_dim=16, check_rows=3)
    pr.cases = (
      dict(name="gaussian"),
      dict(name="sjlt", options=dict(nonzeros=4)),
      dict(name="kronecker", options=dict(out_shape=(4, 4))),
      dict(name="kronecker", options=dict(out_shape=(8, 2))),
    )
  elif arg.size == "gpu":
    # LoRA: SmolLM2-135M's shapes (30 layers: compiling larger ones would not fit the 8
    # minutes; the 20M decoder's LoRA case, 30 s of compiles, is the CPU config's);
    # whole-model features: the 20M decoder. On the H200 (2026-11-29) this stage took
    # 465 s with the 20M LoRA case, gradient-then-project at micro-batch 1 and the
    # model's init compiled (152 s our compiles, ~61 s timed calls).
    m135 = dict(
      m20,
      name="135M",
      vocab_size=49_152,
      hidden_size=576,
      intermediate_size=1536,
      num_layers=30,
      num_heads=9,
      num_kv_heads=3,
    )
    g.update(lora_models=(m135,), seq_len=256, num_examples=64, out_dim=4096)
    g.update(micro_batch=16, gtp=(("kronecker", 8),), torch_micro_batch=16)
    g.update(torch_device="cuda", torch_threads=(None,))
    pr.update(rows=64, dense_in_dim=262_144, out_dim=4096)
    pr.cases = (
      dict(name="gaussian"),
      dict(name="sjlt", options=dict(nonzeros=4)),
      dict(name="kronecker", options=dict(out_shape=(64, 64))),
      dict(name="kronecker", options=dict(out_shape=(256, 16))),
    )
  c.ot = ml_collections.ConfigDict()
  ot = c.ot
  # issue #6: n x m x d; features: 16 Gaussian clusters, targets from 8 of them,
  # within-cluster cosine about 1 / (1 + noise^2) = 0.5
  ot.cases = ((2_000, 200, 256), (10_000, 500, 1024), (50_000, 1_000, 1024))
  ot.clusters = 16
  ot.noise = 1.0
  ot.cost = "cosine"  # EvoSelect's default cost
  ot.epsilon = 0.05  # relative to the mean cost (our default); POT gets the same absolute
  ot.threshold = 1e-5  # POT's stopThr: L2 norm of P^T 1 - b (ours: norm_error=2)
  ot.max_iterations = 1000  # POT's numItermax
  ot.modes = ("kernel", "lse")  # ours; the first is the one the summary compares
  ot.lse_repeats = 1  # timed calls of our lse mode (about 10x slower than kernel on CPU)
  ot.pot_log_max_n = 50_000  # POT sinkhorn_log up to this n (~4 s/iteration at 50k)
  ot.pot_log_repeats = 0  # 0: one call, timed as is (numpy, nothing to compile)
  ot.pot_backend = "numpy"  # POT's backend: numpy, or torch on ot.pot_device
  ot.pot_device = "cpu"  # torch only: "cuda" runs POT on the GPU
  ot.online = (1_000_000, 1_000, 1024)  # n, m, d of the online solve, in a child process
  ot.online_batch_size = 2048  # candidate rows per cost block: 8 MB of cost at m = 1k
  ot.online_timeout_s = 3000  # ~2 TFLOP per pass over the cost, ~2.2 passes an iteration
  if arg.size == "smoke":
    ot.cases = ((301, 37, 16),)
    ot.threshold = 1e-7  # tight, so ours and POT agree to float32 precision
    ot.online = (2_001, 37, 16)
    ot.online_batch_size = 256  # 7 full blocks and a remainder
    ot.online_timeout_s = 300
  elif arg.size == "gpu":
    ot.pot_backend, ot.pot_device = "torch", "cuda"  # POT on the same GPU
    ot.pot_log_repeats = 1  # the first call on the GPU loads its kernels
    ot.online_batch_size = 16_384
    ot.online_timeout_s = 300
  c.diversity = ml_collections.ConfigDict()
  div = c.diversity
  # issue #6: n up to 1M, k up to 10k. A pick reads the [n, d] features once (MMR) or
  # the [n, m] similarities once (facility location), ~0.1 s at n = 1M, d = 256 on 2
  # cores, and the numpy peer costs as much: on CPU n * k <= 1e8 (10k x 10k, 100k x 1k,
  # 1M x 100; ~1-2 min per case with the peer), larger cases skipped (1M x 10k ~ 20 min)
  div.algos = ("mmr", "facility_location")
  div.ns = (10_000, 100_000, 1_000_000)
  div.ks = (100, 1_000, 10_000)
  div.max_nk = 100_000_000
  div.peer_max_nk = 100_000_000  # the numpy peer only up to this n * k
  div.d = 256  # projected-feature width
  div.num_targets = 256  # facility location covers m target points
  div.clusters = 16
  div.noise = 1.0
  div.lam = 0.5  # MMR trade-off
  div.repeats = 1  # timed calls after the first (compile / warm-up), ours and numpy
  if arg.size == "smoke":
    div.update(ns=(1_001, 2_003), ks=(33,), max_nk=100_000, d=24, num_targets=13)
  elif arg.size == "gpu":
    div.max_nk = 10_000_000_000  # the full grid: ~1 GB per pick at 1M from HBM
    # numpy on the host: facility location 3-11 s per case above 10k x 100 (H200 machine)
    div.peer_max_nk = 1_000_000
  c.end_to_end = ml_collections.ConfigDict()
  e2e = c.end_to_end
  e2e.model = dict(  # the project's decoder, small: selection cost, not model cost
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_layers=2,
    num_heads=4,
    num_kv_heads=2,
    lora_rank=8,
    lora_targets=("q_proj", "v_proj"),
  )
  e2e.seq_len = 32  # tokens per example, the last answer_tokens scored
  e2e.answer_tokens = 4
  e2e.micro_batch = 256  # examples per vmap in the features
  e2e.projector = dict(name="rademacher", out_dim=1024)
  e2e.selector = dict(name="evoselect")
  e2e.pool_sizes = (10_000, 100_000)  # issue #6: n = 10k and 100k
  e2e.num_targets = 500
  e2e.budget = 1000
  if arg.size == "smoke":
    e2e.update(pool_sizes=(61,), num_targets=7, budget=8, micro_batch=16)
    e2e.projector = dict(name="rademacher", out_dim=64)
  elif arg.size == "gpu":
    e2e.model.update(hidden_size=512, intermediate_size=1536, num_layers=4, num_heads=8)
    e2e.update(seq_len=128, pool_sizes=(10_000, 100_000), num_targets=1000, budget=5000)
  return c
