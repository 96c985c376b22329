"""Experiment configs: one ml_collections file per family, each with a smoke argument."""
