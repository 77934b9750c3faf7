"""Memory projection (`kind: projection`; `resbench run projection`, or `resbench project`): the
scaling study's views under fake tensors, no storage, at shapes beyond this machine (the paper's
d 7168, 27 blocks, 128K tokens, bf16)."""
from __future__ import annotations

import sys

from ..config import check_builds, parse_shapes, positive, short
from ..measure import memory_views as V
from ..precision import get as get_precision
from ..provenance import environment
from .base import Study, register
from .scaling import MemorySuite, out_dir, parse_common, read_jsonl, write_jsonl

PROJECTION_KEYS = ("kind", "name", "precision", "batch", "shapes", "variants", "views", "checkpoint_every",
                   "pipeline_stages", "prefill_chunk")


def parse_projection(raw, default_name: str = "projection") -> MemorySuite:
    common = parse_common(raw, "projection", PROJECTION_KEYS, ("shapes", "variants"), default_name,
                          allowed_views=V.VIEWS + V.PREFILL_VIEWS)
    chunk = positive("prefill_chunk", raw.get("prefill_chunk", 16384))
    shapes = parse_shapes(raw["shapes"])
    for spec in common["variants"]:
        for name, cfg in shapes:
            check_builds(spec, cfg, f"shape {short(name)}")
    return MemorySuite(shapes=shapes, prefill_chunk=chunk, **common)


@register("projection")
class Projection(Study):
    help = "project peak memory at shapes beyond this machine (fake tensors)"
    own_schema = True
    command, default_suite = "project", "projection"

    def parse(self, raw, default_name):
        return parse_projection(raw, default_name)

    def run(self, study, out, progress):
        from ..measure.projection import project

        records, out = [], out_dir(out)
        env = environment("cpu")
        for shape_name, cfg in study.shapes:
            for spec in study.variants:
                r = project(cfg, spec.name, spec.options, study.batch, get_precision(study.precision), study.views,
                            study.checkpoint_every, study.pipeline_stages, study.prefill_chunk)
                records.append({"env": env, "shape": shape_name, "label": spec.label, **cfg.to_dict(),
                                "batch": study.batch, "precision": study.precision,
                                "checkpoint_every": study.checkpoint_every,
                                "pipeline_stages": study.pipeline_stages, "prefill_chunk": study.prefill_chunk, **r})
                if progress:
                    print(f"{shape_name} {spec.label}: projected in {r['seconds']:.1f} s", file=sys.stderr)
        write_jsonl(out / f"{study.name}.jsonl", records)
        print(f"records: {out / f'{study.name}.jsonl'}", file=sys.stderr)
        return self.report_records(records, study, out)

    def count_cells(self, study):
        return len(study.shapes) * len(study.variants)

    def report(self, paths, study, out):
        return self.report_records(read_jsonl(paths), study, out_dir(out))

    def report_records(self, records, study, out) -> int:
        from .scaling_report import render_projection

        table = render_projection(records, study)
        (out / f"{study.name}.md").write_text(table + "\n")
        print(table)
        print(f"table: {out / f'{study.name}.md'}", file=sys.stderr)
        return 0
