"""What a study declares. A study is a suite `kind:`; `resbench run SUITE` and `resbench report
RESULTS --suite SUITE` dispatch on it, so adding a study is adding one module to this package.

A study only analyses: its suite is a measurement suite (variants × shapes × workloads, run by
the runner in worker processes, one record per cell) plus the keys the study adds (`keys`,
checked by `parse_keys`); `analyse` turns the suite's records into its report.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from ..registry import Registry

REGISTRY = Registry("study")
register = REGISTRY.register  # class decorator: one instance of the study, as suite kind `name`


class Study:
    name: str = ""
    help: str = ""
    keys: tuple[str, ...] = ()  # the top-level suite keys it adds
    command: str | None = None  # a shortcut subcommand (`resbench scale` = `resbench run scaling`)
    default_suite: str | None = None  # the shipped suite the shortcut runs without an argument

    def parse_keys(self, raw: dict, shapes: list[str], labels: list[str]) -> dict[str, Any]:
        """This study's keys of a suite → their validated values (Suite.study_keys)."""
        return {}

    def bounds(self, values: dict) -> dict:
        """Suite.bounds from this study's validated keys: {shape: {label: {(cost key, compile
        mode): bound}}}, the ratios it checks against a bound (adaptive rounds settle them)."""
        return {}

    def check(self, suite) -> None:
        """Raise ConfigError if the parsed suite cannot give this study its report (a workload
        it joins is missing): at parse time, not as a silent exit 1 after the run."""

    def analyse(self, records: list[dict], suite, out: Path) -> tuple[str, bool]:
        """(report text, whether its checks pass) from the suite's records; files go under `out`."""
        raise NotImplementedError


def have_matplotlib() -> bool:
    """Plots need the [plot] extra; without it a study still writes its tables."""
    import sys

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print("resbench: warning: matplotlib is not installed (pip install 'resbench[plot]'): no plots", file=sys.stderr)
        return False
    return True
