"""One colour per variant in every plot: the mission five fixed, the field's schemes next, any
other name (a label of your own, a variant of your own) a colour of its own by its name, so the
same variant has the same colour in the loss curves, the compute fit, the dynamics and the
scaling plots. Plain tick labels and legends outside the data, for every figure."""
from __future__ import annotations

import hashlib

# the mission five, then the field's schemes (matplotlib's tab10 / tab20, distinct in print)
FIXED = {
    "prenorm": "#222222", "highway": "#1f77b4", "densenet": "#2ca02c", "full-attnres": "#d62728",
    "block-attnres": "#ff7f0e", "rezero": "#9467bd", "layerscale": "#8c564b", "postnorm": "#e377c2",
    "deepnorm": "#7f7f7f", "laurel": "#bcbd22", "hc": "#17becf", "mhc": "#aec7e8", "mhc-lite": "#98df8a",
}
SPARE = ["#ffbb78", "#ff9896", "#c5b0d5", "#c49c94", "#f7b6d2", "#dbdb8d", "#9edae5", "#393b79", "#637939",
         "#8c6d31", "#843c39", "#7b4173"]


def variant_of(label: str) -> str:
    """The variant a row label names: `block-attnres(n_blocks=4)` → block-attnres; a label
    cells.label_of marked with its variant (`prenorm [highway]`) → that variant."""
    if label.endswith("]") and " [" in label:
        return label.rsplit(" [", 1)[1][:-1]
    return label.split("(", 1)[0].strip()


def colour(label: str) -> str:
    name = variant_of(label)
    if name in FIXED:
        return FIXED[name]
    return SPARE[int(hashlib.sha256(name.encode()).hexdigest(), 16) % len(SPARE)]


def dashes(label: str, labels: list[str]) -> str:
    """Solid for a variant's first label in `labels`, then dashed, dotted: two option sets of
    one variant share its colour and differ in line style."""
    same = [x for x in labels if variant_of(x) == variant_of(label)]
    return ["-", "--", ":", "-."][same.index(label) % 4] if label in same else "-"


def plain_ticks(ax, axis: str = "y") -> None:
    """Tick labels as plain numbers (2.43, not 2.43×10⁰), minor ones included (a log axis over a
    narrow range shows only minor ticks)."""
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    target = ax.yaxis if axis == "y" else ax.xaxis
    target.set_major_formatter(FormatStrFormatter("%.4g"))
    target.set_minor_formatter(FormatStrFormatter("%.4g") if len(target.get_majorticklocs()) < 3 else NullFormatter())


def legend_outside(ax, title: str | None = None, fontsize: int = 8) -> None:
    """A legend to the right of the axes, never over the data."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=fontsize, title=title,
              title_fontsize=fontsize)
