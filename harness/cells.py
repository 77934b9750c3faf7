"""What one measurement is: a cell (its hash is the record key), the variant it names, and the
baseline every ratio is taken against. The bottom layer: config, workloads, runner and report
all speak in these types."""
from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

BASELINE = "prenorm"  # the variant every ratio (× prenorm, overhead, targets) is taken against
# a launch's connection details: how ranks find each other, not what is measured (not in keys)
CONNECTION = ("rdzv_endpoint", "rdzv_id")


def is_baseline(cell) -> bool:
    """The one definition of the baseline cell: the BASELINE variant with no options (a Cell or a
    record's cell mapping). Every ratio, study and table finds it this way, never by label."""
    get = cell.get if isinstance(cell, dict) else lambda k: getattr(cell, k)
    return get("variant") == BASELINE and not get("options")


def label_of(cell: dict) -> str:
    """A record's row name where rows are compared with the baseline's (studies): BASELINE for
    the baseline cell whatever its label, and never BASELINE for any other (a crafted or old
    record labelled so is named with its variant)."""
    if is_baseline(cell):
        return BASELINE
    return cell["label"] if cell["label"] != BASELINE else f"{cell['label']} [{cell['variant']}]"


@dataclass(frozen=True)
class VariantSpec:
    name: str
    options: dict = field(default_factory=dict)
    label: str = ""
    shapes: tuple[str, ...] = ()  # only at these shapes of the suite (none: at every shape)

    def __post_init__(self):
        if not self.label:
            opts = ",".join(f"{k}={v}" for k, v in sorted(self.options.items()))
            object.__setattr__(self, "label", f"{self.name}({opts})" if opts else self.name)


@dataclass(frozen=True, kw_only=True)
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
        return cell_key(self.to_dict())


def cell_key(cell: dict) -> str:
    """The record key of a cell as stored (Cell.to_dict(), or an older record's cell): reading a
    record recomputes it, so a line whose key is not its own cell's is never trusted."""
    d = dict(cell)
    d.pop("label", None)  # cosmetic: renaming a label must not redo a measurement
    if d.get("compile", "none") == "none":  # eager cells keep the keys they had before the compile axis
        d.pop("compile", None)
    if not d.get("launch"):  # so do local cells before the launcher axis
        d.pop("launch", None)
    else:  # how ranks find each other is not what is measured
        d["launch"] = {k: v for k, v in d["launch"].items() if k not in CONNECTION}
    blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(blob.encode()).hexdigest()[:16]


# Cell fields a record written before them may lack (they are then unknown, not wrong)
OPTIONAL_CELL_FIELDS = ("threads", "variant_source", "compile", "launch")
