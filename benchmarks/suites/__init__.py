"""The shipped suites (YAML). Installed as the package data `resbench.suites`; see README "Suites"."""
