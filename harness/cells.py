"""What one measurement is: a cell (its hash is the record key), the variant it names, and the
baseline every ratio is taken against. The bottom layer: config, workloads, runner and report
all speak in these types."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, TypedDict

BASELINE = "prenorm"  # the variant every ratio (× prenorm, overhead, targets) is taken against
# a launch's connection details: how ranks find each other, not what is measured (not in keys)
CONNECTION = ("rdzv_endpoint", "rdzv_id")


@dataclass(frozen=True)
class VariantSpec:
    name: str
    options: dict = field(default_factory=dict)
    label: str = ""

    def __post_init__(self):
        if not self.label:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
            object.__setattr__(self, "label", f"{self.name}({opts})" if opts else self.name)


@dataclass(frozen=True)
class Cell:
    """Everything that defines one measurement; its hash is the record key."""

    variant: str
    options: dict
    label: str
    shape_name: str
    shape: dict
    workload: str
    params: dict
    device: str
    precision: str
    seed: int
    threads: int
    variant_source: str = ""  # module:Class@sha of the registered class (variants.source_of)
    compile: str = "none"  # eager, or the torch.compile mode (harness/compiling.py)
    launch: dict = field(default_factory=dict)  # {} local; torchrun: harness/parallel/launch.py's Launch, resolved

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def key(self) -> str:
        d = self.to_dict()
        d.pop("label")  # cosmetic: renaming a label must not redo a measurement
        if d["compile"] == "none":  # eager cells keep the keys they had before the compile axis
            d.pop("compile")
        if not d["launch"]:  # so do local cells before the launcher axis
            d.pop("launch")
        else:  # how ranks find each other is not what is measured
            d["launch"] = {k: v for k, v in d["launch"].items() if k not in CONNECTION}
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha1(blob.encode()).hexdigest()[:16]


# Cell fields a record written before them may lack (they are then unknown, not wrong)
OPTIONAL_CELL_FIELDS = ("threads", "variant_source", "compile", "launch")


class Record(TypedDict, total=False):
    """One line of a results file (results.py reads and validates it): the cell, what became of
    it, its metrics (each workload's own names, declared in its module) and who measured it."""
    key: str           # Cell.key
    suite: str
    run: str           # one id per `resbench run`
    time: str
    cell: dict         # Cell.to_dict()
    status: str        # ok | oom | diverged | timeout | killed | error
    message: str | None
    metrics: dict[str, Any]
    env: dict[str, Any]  # provenance.environment()
    worker_stderr: list[str]
