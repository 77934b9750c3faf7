"""Memory projection (`kind: projection`; `resbench run projection`, or `resbench project`): the
`memory_views` records of a suite run with `tensors: fake` — the scaling study's views with no
storage, at shapes beyond this machine (the paper's d 7168, 27 blocks, 128K tokens, bf16) — as one
table per shape."""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError
from .base import Study, register


@register("projection")
class Projection(Study):
    help = "project peak memory at shapes beyond this machine (fake tensors)"
    command, default_suite = "project", "projection"

    def check(self, suite) -> None:
        if "memory_views" not in suite.workloads:
            raise ConfigError("a kind: projection suite measures workloads.memory_views (tensors: fake): add it")

    def analyse(self, records: list[dict], suite, out: Path) -> tuple[str, bool]:
        from .scaling_report import render_projection

        mine = [r for r in records if r["cell"]["workload"] == "memory_views"]
        ok = [r for r in mine if r["status"] == "ok"]
        table = render_projection(ok)
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{suite.name}.md").write_text(table + "\n")
        failed = [f"{r['cell']['shape_name']} {r['cell']['label']}: {r['status']}" for r in mine if r["status"] != "ok"]
        return table + (f"\n\nNot projected: {'; '.join(failed)}" if failed else "") \
            + f"\n\ntable: {out / f'{suite.name}.md'}", not failed
