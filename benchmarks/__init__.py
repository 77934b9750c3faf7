"""asv benchmarks for resbench (see asv.conf.json and README "History and regressions").

Flat modules, one concern each. `suites/` beside them holds `resbench run` YAML, not asv code:
it has no __init__.py, so asv's discovery never enters it.
"""
