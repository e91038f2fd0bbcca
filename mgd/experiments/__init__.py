"""Experiments: typed configs, run(config, out, resume) -> result, and their output files."""
