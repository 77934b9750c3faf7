"""resbench: a benchmark harness for residual connections in transformers.

Installed, this folder is the package `resbench`; the repository's `variants/` folder is
`resbench.variants` and `benchmarks/suites/` is `resbench.suites` (pyproject.toml maps them), so
an install claims one top-level name only.
"""
__version__ = "0.2.0"
