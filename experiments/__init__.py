"""Launch scripts and benchmarks."""
