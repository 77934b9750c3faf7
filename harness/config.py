"""Suites: YAML → validated dataclasses → cells.

A suite names the variants (with options), model shapes, workloads, device, precision, seeds
and threads. Every mistake is a ConfigError whose one-line message names the key and, where there
is a fixed set, the allowed values.
"""
from __future__ import annotations

import dataclasses
import math
import re
import reprlib
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any, get_type_hints

import yaml

from . import compiling, executors, precision, variants, workloads
from .cells import BASELINE, Cell, VariantSpec  # noqa: F401 - re-exported: the suite's vocabulary
from .errors import ConfigError
from .model import ModelConfig
from .parallel.launch import Launch, parse_launch
from .variants.base import VariantError

DEVICES = ("cpu", "cuda", "auto")
PRECISIONS = tuple(precision.PRECISIONS)


@dataclass(frozen=True)
class Suite:
    name: str
    variants: tuple[VariantSpec, ...]
    shapes: tuple[tuple[str, ModelConfig], ...]
    workloads: dict[str, Any]
    device: str = "cpu"
    precisions: tuple[str, ...] = ("fp32",)  # an axis, like seeds
    compiles: tuple[str, ...] = ("none",)  # an axis too: eager and/or torch.compile modes
    seeds: tuple[int, ...] = (0,)
    threads: int = 0  # 0: leave torch's default
    timeout_s: float = 300.0
    # a worker whose RSS passes this is stopped and recorded `oom` (None: 90% of physical memory)
    memory_cap_gb: float | None = None
    shape_overrides: dict = field(default_factory=dict)  # shape -> {batch|warmup|repeats: value}
    kind: str = ""  # the study on top of the records ("" = none); see studies/
    study_keys: dict = field(default_factory=dict)  # that study's own keys, validated by it (overhead: targets)
    launch: Launch = Launch()  # where distributed workloads' cells run (harness/parallel/launch.py)
    # {shape: {label: {(cost key, compile mode): bound}}}: the ratios its study checks against a bound
    # (overhead: targets); adaptive rounds of a timed workload also stop once each one is settled
    bounds: dict = field(default_factory=dict)
    # where each job's worker runs (executors/): (name, its Params); not part of any cell
    executor: tuple = ("local", None)


# -- validation helpers ---------------------------------------------------------------------

# A bounded repr for messages: a suite value can be arbitrarily large (or an alias bomb's DAG)
def _bounded_repr() -> reprlib.Repr:
    r = reprlib.Repr()  # keyword arguments only from Python 3.12
    r.maxlevel, r.maxtuple, r.maxlist, r.maxdict, r.maxset = 2, 4, 4, 4, 4
    r.maxstring, r.maxother, r.maxlong = 60, 60, 40
    return r


short = _bounded_repr().repr
MAX_ALIASES = 32  # YAML aliases per suite: enough for sharing a shape, far from a billion laughs
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
# build_model draws the variant's init from seed + 1_000_003; torch seeds are < 2**64
MAX_SEED = 2**63 - 1


def check_name(where: str, name) -> str:
    """Names become file names (results/local/NAME.jsonl): letters, digits, '_', '.', '-', no path."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name) or ".." in name:
        raise ConfigError(f"{where} must be a plain name (letters, digits, _ . -; no '/' or '..'), got {short(name)}")
    return name


class _Loader(yaml.SafeLoader):
    """safe_load with a budget of aliases: a 'billion laughs' document is refused while loading."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases = getattr(self, "aliases", 0) + 1
            if self.aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases (*name): refused (an alias bomb?)")
        return super().compose_node(parent, index)


def read_yaml(path: Path) -> Any:
    """A suite file's YAML; every failure (unreadable, not UTF-8, malformed, alias bomb) is one line."""
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a UTF-8 text file (byte {exc.start}); a suite is YAML text") from None
    except OSError as exc:
        raise ConfigError(f"cannot read suite {path}: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_Loader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: YAML nested too deeply") from None


def apply_overrides(raw: Any, sets: list[str]) -> Any:
    """A suite's YAML with `KEY=VALUE` overrides merged in (`--set workloads.loss.steps=10`,
    `--set shapes[0].d_model=256`): KEY a dotted path, VALUE YAML; each replaces what is there.
    OmegaConf does the path walk; the result is validated like any suite file."""
    if not sets:
        return raw
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(raw, dict):
        raise ConfigError(f"--set needs a suite that is a mapping, got {type(raw).__name__}")
    try:
        cfg = OmegaConf.create(raw)
    except (OmegaConfBaseException, ValueError) as exc:
        raise ConfigError(f"--set: this suite cannot be edited key by key ({str(exc).splitlines()[0][:200]})") from None
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {short(item)}: give KEY=VALUE, e.g. workloads.loss.steps=10")
        try:
            value = yaml.load(text, Loader=_Loader) if text.strip() else ""  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError:
            raise ConfigError(f"--set {short(item)}: the value is not YAML") from None
        try:
            OmegaConf.update(cfg, key.strip(), value, merge=False)
        except (OmegaConfBaseException, ValueError, IndexError, KeyError) as exc:
            raise ConfigError(f"--set {key.strip()[:80]}: {str(exc).splitlines()[0][:200]}") from None
    return OmegaConf.to_container(cfg, resolve=False)

def _type_name(t) -> str:
    return getattr(t, "__name__", str(t))


def check_keys(where: str, got: dict, allowed) -> None:
    if not isinstance(got, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(got).__name__}")
    for key in got:
        if key not in allowed:
            raise ConfigError(f"{where}: unknown key {short(key)}; allowed: {', '.join(allowed)}")


def coerce(where: str, value: Any, typ) -> Any:
    """Check a scalar against a dataclass field type (ints accepted where floats are; floats must
    be finite: `.nan` or `.inf` would slip past every range check and break the JSON records)."""
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if typ in (int, float, str, bool) and (not isinstance(value, typ) or (typ is int and isinstance(value, bool))):
        raise ConfigError(f"{where} must be {_type_name(typ)}, got {short(value)}")
    if typ is float and not math.isfinite(value):
        raise ConfigError(f"{where} must be a finite number, got {short(value)}")
    return value


def _dataclass_from(where: str, cls, raw: dict):
    hints = get_type_hints(cls)
    names = [f.name for f in fields(cls)]
    check_keys(where, raw, names)
    return cls(**{k: coerce(f"{where}.{k}", v, hints[k]) for k, v in raw.items()})


def positive(where: str, value, typ=int, minimum=None):
    """The one range check: `value` coerced to `typ` and > 0 (or >= `minimum`)."""
    value = coerce(where, value, typ)
    if (value < minimum) if minimum is not None else (value <= 0):
        raise ConfigError(f"{where} must be {'>= ' + format(minimum) if minimum is not None else '> 0'}, "
                          f"got {short(value)}")
    return value


def check_builds(spec: VariantSpec, cfg: ModelConfig, where: str):
    """The one check of a variant's options: it builds at this shape (on meta, no storage), else a
    ConfigError naming the variant and where."""
    import torch

    try:
        with torch.device("meta"):
            return variants.build(spec.name, cfg.d_model, cfg.n_layers, spec.options)
    except VariantError as exc:
        raise ConfigError(f"variants[{spec.label}] at {where}: {exc}") from None


def model_config(where: str, fields_: dict) -> ModelConfig:
    """A ModelConfig from a suite mapping: types checked here, sizes by ModelConfig itself."""
    try:
        return _dataclass_from(where, ModelConfig, fields_)
    except ConfigError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None


# -- the suite ------------------------------------------------------------------------------

SUITE_KEYS = ("name", "variants", "shapes", "workloads", "device", "precision", "compile", "seeds", "threads", "timeout_s",
              "memory_cap_gb", "launcher", "executor")  # a study adds its own keys (overhead: targets)


def suites_dir() -> Path:
    """The shipped suites: package data `resbench.suites` (benchmarks/suites/ in a checkout)."""
    return Path(str(resources.files(__package__ + ".suites")))


def resolve_suite_path(spec: str) -> Path:
    """A path, or the name of a shipped suite (benchmarks/suites/NAME.yaml in the repository)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"suite file not found: {spec}")
        return path
    shipped = suites_dir() / f"{spec}.yaml"
    if shipped.is_file():
        return shipped
    known = ", ".join(sorted(p.stem for p in suites_dir().glob("*.yaml")))
    raise ConfigError(f"no suite {short(spec)}: not a file, and the shipped suites are: {known}")


def load_suite(spec: str) -> Suite:
    path = resolve_suite_path(spec)
    return parse_suite(read_yaml(path), default_name=path.stem)


def parse_suite(raw: Any, default_name: str = "suite", extra_keys: tuple[str, ...] = ()) -> Suite:
    """A measurement suite. `extra_keys` are a study's (studies.parse reads them); a `kind:` is
    only accepted that way: studies.parse is the entry point for every suite file."""
    if raw is None:
        raise ConfigError("suite is empty")
    if isinstance(raw, dict) and "kind" in raw and "kind" not in extra_keys:
        raise ConfigError(f"this is a `kind: {short(raw['kind'])}` suite: run it with `resbench run`")
    precs = parse_precision(raw, many=True) if isinstance(raw, dict) else ("fp32",)
    check_keys("suite", raw, SUITE_KEYS + tuple(extra_keys))
    for required in ("variants", "shapes", "workloads"):
        if required not in raw:
            raise ConfigError(f"suite: missing key {short(required)}")
    name = check_name("name", raw.get("name", default_name))
    device = raw.get("device", "cpu")
    if device not in DEVICES:
        raise ConfigError(f"device must be one of {', '.join(DEVICES)}; got {short(device)}")
    seeds = _seed_list("seeds", raw.get("seeds", [0]))
    threads = parse_threads(raw)
    compiles = parse_compile(raw)
    timeout = positive("timeout_s", raw.get("timeout_s", 300.0), float)
    cap = raw.get("memory_cap_gb")
    if cap is not None:
        cap = positive("memory_cap_gb", cap, float)

    shape_items, shape_overrides = _shape_overrides(raw["shapes"])
    shapes = parse_shapes(shape_items)
    origin = {name: str(item.get("name", f"shape{n}")) for n, item in enumerate(shape_items)
              for name, _ in swept(str(item.get("name", f"shape{n}")), {k: v for k, v in item.items() if k != "name"})}
    shape_overrides = {name: shape_overrides[base] for name, base in origin.items() if base in shape_overrides}
    specs = parse_variants(raw["variants"])
    names = [n for n, _ in shapes]
    for spec in specs:  # fail now, not in cell 37: every variant must build at every shape it runs at
        for bad in [s for s in spec.shapes if s not in names]:
            raise ConfigError(f"variants[{spec.label}].shapes: no shape {short(bad)}; shapes: {', '.join(names)}")
        for shape_name, cfg in shapes:
            if not spec.shapes or shape_name in spec.shapes:
                check_builds(spec, cfg, f"shape {short(shape_name)}")
    workloads_ = _parse_workloads(raw["workloads"])
    launch = parse_launch(raw.get("launcher"))
    executor = parse_executor(raw.get("executor"))
    for wl_name, params in workloads_.items():
        workloads.get(wl_name).check(params, [s.name for s in specs])
        if workloads.get(wl_name).distributed and launch.launcher == "local":
            raise ConfigError(f"workloads.{wl_name} runs on several ranks: set launcher: {{type: torchrun, nproc: N}}")
        workloads.get(wl_name).check_run(params, launch, [cfg for _, cfg in shapes], precs)
        if not workloads.get(wl_name).compiles and "none" not in compiles:
            raise ConfigError(f"workloads.{wl_name} runs eager only (compile: none), and this suite's compile lists "
                              f"{', '.join(compiles)}; add none to compile or drop {wl_name}")
    return Suite(name=name, variants=specs, shapes=shapes, workloads=workloads_, device=device, precisions=precs,
                 compiles=compiles, seeds=tuple(seeds), threads=threads, timeout_s=timeout, memory_cap_gb=cap,
                 shape_overrides=shape_overrides, launch=launch, executor=executor)


def parse_executor(raw, over: dict | None = None) -> tuple[str, Any]:
    """`executor:` local (the default), slurm, or a mapping {type: NAME, its keys...}; `over`: the
    command line's values on top (another type than the suite's starts from that type's
    defaults). Lists (devices, sbatch_args) become tuples of strings."""
    raw = {"type": raw} if isinstance(raw, str) else dict(raw or {})
    if not isinstance(raw, dict):
        raise ConfigError(f"executor must be a name or a mapping with type:, got {short(raw)}")
    over = {k: v for k, v in (over or {}).items() if v is not None}
    if over.get("type", raw.get("type", "local")) != raw.get("type", "local"):
        raw = {}
    raw.update(over)
    name = raw.pop("type", "local")
    if name not in executors.names():
        raise ConfigError(f"executor.type must be one of {', '.join(executors.names())}; got {short(name)}")
    cls = executors.get(name).Params
    for f in fields(cls):
        if isinstance(f.default, tuple) and f.name in raw:
            v = raw[f.name]
            v = [x.strip() for x in v.split(",") if x.strip()] if isinstance(v, str) else v
            v = list(v) if isinstance(v, tuple) else v
            if not isinstance(v, list) or not all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
                raise ConfigError(f"executor.{f.name} must be a list of names or numbers, got {short(raw[f.name])}")
            raw[f.name] = tuple(str(x) for x in v)
    params = _dataclass_from("executor", cls, raw)
    for f in fields(params):
        v = getattr(params, f.name)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            positive(f"executor.{f.name}", v, type(v), minimum=-1 if f.name == "gpus_per_task" else 0)
    if name == "local" and params.slots < 1:
        raise ConfigError("executor.slots must be >= 1")
    return name, params


def _seed_list(where: str, seeds) -> list[int]:
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{where} must be a non-empty list of integers, got {short(seeds)}")
    bad = [s for s in seeds if not 0 <= s <= MAX_SEED]
    if bad:
        raise ConfigError(f"{where} must be in 0 .. 2**63 - 1 (the generator's range), got {short(bad[0])}")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"{where} has duplicates: {short(seeds)}")
    return seeds


MAX_THREADS = 4096  # beyond any machine; torch.set_num_threads fails past its own int range


def parse_threads(raw: dict) -> int:
    threads = positive("threads", raw.get("threads", 0), int, minimum=0)
    if threads > MAX_THREADS:
        raise ConfigError(f"threads must be <= {MAX_THREADS}, got {short(threads)}")
    return threads


def parse_compile(raw: dict) -> tuple[str, ...]:
    """`compile:` none (eager, the default), default or max-autotune (torch.compile's modes), or a
    list of them: an axis like precision, applied to every variant alike."""
    value = raw.get("compile", "none")
    listed = value if isinstance(value, list) and value else [value]
    for mode in listed:
        if not isinstance(mode, str) or mode not in compiling.MODES:
            raise ConfigError(f"compile must be one of {', '.join(compiling.MODES)} (or a list of them); "
                              f"got {short(mode)}")
    if len(set(listed)) != len(listed):
        raise ConfigError(f"compile lists {short(listed)} twice")
    return tuple(listed)


def parse_precision(raw: dict, many: bool = False):
    """`precision:` (default fp32); with `many`, a list of them too (a tuple comes back). The
    old `dtype:` key names a tensor dtype, not how a model is trained: it is refused with the
    precision that replaces it."""
    if "dtype" in raw:
        old = {"float32": "fp32", "bfloat16": "bf16-pure (or bf16-autocast)", "float16": "fp16-autocast"}
        hint = old.get(raw["dtype"], " | ".join(PRECISIONS)) if isinstance(raw["dtype"], str) else " | ".join(PRECISIONS)
        raise ConfigError(f"dtype is replaced by precision ({' | '.join(PRECISIONS)}): write precision: {hint}")
    prec = raw.get("precision", "fp32")
    listed = prec if many and isinstance(prec, list) and prec else [prec]
    for p in listed:
        if not isinstance(p, str) or p not in PRECISIONS:
            raise ConfigError(f"precision must be one of {', '.join(PRECISIONS)}"
                              f"{' (or a list of them)' if many else ''}; got {short(p)}")
    if len(set(listed)) != len(listed):
        raise ConfigError(f"precision lists {short(listed)} twice")
    return tuple(listed) if many else prec


SHAPE_OVERRIDES = ("batch", "warmup", "repeats", "seeds")


def _shape_overrides(raw) -> tuple[Any, dict[str, dict[str, int]]]:
    """Split the optional per-shape workload settings (batch, warmup, repeats: tokens per step
    and affordable repeats differ by shape) from the model fields. They override every
    workload that has the field, at that shape only."""
    if isinstance(raw, dict):
        raw = [{"name": k, **(v or {})} for k, v in raw.items()]
    if not isinstance(raw, list):
        return raw, {}
    items, overrides = [], {}
    for n, item in enumerate(raw):
        if isinstance(item, dict) and any(k in item for k in SHAPE_OVERRIDES):
            item = dict(item)
            name = str(item.get("name", f"shape{n}"))
            if name in overrides:
                raise ConfigError(f"shapes: two shapes are named {short(name)}; their settings would collide")
            over = overrides[name] = {}
            for key in SHAPE_OVERRIDES:
                if key == "seeds" and key in item:  # more seeds where an effect is small (the largest size)
                    over[key] = _seed_list(f"shapes[{name}].seeds", item.pop(key))
                elif key in item:
                    over[key] = positive(f"shapes[{name}].{key}", item.pop(key), int,
                                         minimum=0 if key == "warmup" else None)
        items.append(item)
    return items, overrides


def parse_variants(raw) -> tuple[VariantSpec, ...]:
    """The suite's variants: names, {name, options, label, shapes}, or `all` (every registered
    variant not named elsewhere in the list, with default options, in its place). `shapes`: run
    this entry only at these shapes (an N sweep at one depth)."""
    if not isinstance(raw, list) or not raw:
        raise ConfigError("variants must be a non-empty list of names or {name, options, label, shapes}, or all")
    registered = variants.names()
    if "all" in raw:
        named = {x if isinstance(x, str) else x.get("name") for x in raw if x != "all" and isinstance(x, (str, dict))}
        at = raw.index("all")
        raw = raw[:at] + [n for n in registered if n not in named] + [x for x in raw[at + 1:] if x != "all"]
    specs = []
    for n, item in enumerate(raw):
        if isinstance(item, str):
            item = {"name": item}
        check_keys(f"variants[{n}]", item, ("name", "options", "label", "shapes"))
        name = item.get("name")
        if name not in registered:
            raise ConfigError(f"variants[{n}]: unknown variant {short(name)}; registered: {', '.join(registered)}")
        options = item.get("options") or {}
        if not isinstance(options, dict):
            raise ConfigError(f"variants[{n}].options must be a mapping, got {short(options)}")
        at = item.get("shapes", [])
        if not isinstance(at, list) or not all(isinstance(x, str) for x in at):
            raise ConfigError(f"variants[{n}].shapes must be a list of shape names, got {short(at)}")
        spec = VariantSpec(name, dict(options), coerce(f"variants[{n}].label", item.get("label", ""), str), tuple(at))
        _check_label(n, spec, registered)
        specs.append(spec)
    labels = [s.label for s in specs]
    dup = {x for x in labels if labels.count(x) > 1}
    if dup:
        raise ConfigError(f"variants: duplicate label(s) {', '.join(sorted(dup))}; give each a distinct label")
    return tuple(specs)


def _check_label(n: int, spec: VariantSpec, registered: list[str]) -> None:
    """A label names one variant in every table and study: it may not be another variant's name
    (or its options-form, `name(...)`), so `{name: highway, label: prenorm}` cannot pose as the
    baseline. Its own name is allowed (`{name: block-attnres, options: ..., label: block-attnres}`)."""
    stem = spec.label.split("(", 1)[0]
    if stem == spec.name:
        return
    if spec.label in registered or (spec.label.endswith(")") and stem in registered):
        raise ConfigError(f"variants[{n}].label {short(spec.label)} names the registered variant {stem!r}; "
                          f"give {spec.name} a label of its own")


def parse_shapes(raw) -> tuple[tuple[str, ModelConfig], ...]:
    """The suite's shapes. A field given as a list sweeps it: one shape per value, named
    NAME-VALUE (`depth: [8, 16]` in shape `d` gives d-8 and d-16)."""
    if isinstance(raw, dict):  # {name: {...}} is accepted as well as a list
        raw = [{"name": k, **(v or {})} for k, v in raw.items()]
    if not isinstance(raw, list) or not raw:
        raise ConfigError("shapes must be a non-empty list of model shapes")
    allowed = ["name"] + [f.name for f in fields(ModelConfig)]
    out = []
    for n, item in enumerate(raw):
        if isinstance(item, dict) and "n_blocks" in item:  # the shape field's old name; n_blocks is AttnRes's N
            raise ConfigError(f"shapes[{n}]: n_blocks is now depth (transformer blocks; Block AttnRes's option "
                              "n_blocks is its N): write depth")
        check_keys(f"shapes[{n}]", item, allowed)
        item = dict(item)
        base = check_name(f"shapes[{n}].name", item.pop("name", f"shape{n}"))
        for name, values in swept(base, item):
            if name in [x for x, _ in out]:
                raise ConfigError(f"shapes: two shapes are named {name!r}; their settings would collide")
            out.append((check_name(f"shapes[{n}].name", name), model_config(f"shapes[{name}]", values)))
    return tuple(out)


def swept(name: str, item: dict) -> list[tuple[str, dict]]:
    """(name, fields) per combination of the list-valued fields of one shape, in list order."""
    out = [(name, dict(item))]
    for key, values in item.items():
        if isinstance(values, list):
            if not values or len(set(map(repr, values))) != len(values):
                raise ConfigError(f"shapes[{name}].{key} must be a value or a non-empty list of distinct values, "
                                  f"got {short(values)}")
            out = [(f"{n}-{v}", {**f, key: v}) for n, f in out for v in values]
    return out


def _parse_workloads(raw) -> dict[str, Any]:
    """{name: that workload's Params}, each checked against what the workload declares."""
    names = workloads.names()
    check_keys("workloads", raw, names)
    if not raw:
        raise ConfigError(f"workloads must name at least one of {', '.join(names)}")
    out = {}
    for wl_name, params in raw.items():
        spec = workloads.get(wl_name)
        params = dict(params or {})
        axes = {}  # a workload's axis fields take a list: one cell per value
        for key in spec.axes:
            if isinstance(params.get(key), list):
                values = params.pop(key)
                if not values or len(set(map(repr, values))) != len(values):
                    raise ConfigError(f"workloads.{wl_name}.{key} must be a non-empty list of distinct values, "
                                      f"got {short(values)}")
                axes[key] = values
        wl = _dataclass_from(f"workloads.{wl_name}", spec.Params, params)
        for key, values in axes.items():  # each value checked as the field's type, kept as a list
            for v in values:
                _dataclass_from(f"workloads.{wl_name}", spec.Params, {**params, key: v})
            for allowed in [spec.choices.get(key)] if key in spec.choices else []:
                bad = [v for v in values if v not in allowed]
                if bad:
                    raise ConfigError(f"workloads.{wl_name}.{key} must be one of {', '.join(allowed)}; got {short(bad[0])}")
            wl = dataclasses.replace(wl, **{key: tuple(values)})
        for f in fields(wl):
            v = getattr(wl, f.name)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                positive(f"workloads.{wl_name}.{f.name}", v, type(v), minimum=None if f.name in spec.positive else 0)
        for key, allowed in spec.choices.items():
            if key not in axes and getattr(wl, key) not in allowed:
                raise ConfigError(f"workloads.{wl_name}.{key} must be one of {', '.join(allowed)}; got {short(getattr(wl, key))}")
        out[wl_name] = wl
    return out


def expand_cells(suite: Suite, device: str) -> list[Cell]:
    """variant × shape × compile mode × precision × workload × seed, in a stable order (workload-major: cheap
    ones first)."""
    cells, seen = [], set()
    sources = {spec.name: variants.source_of(spec.name) for spec in suite.variants}
    for wl_name in workloads.names():
        if wl_name not in suite.workloads:
            continue
        wl = workloads.get(wl_name)
        launched = suite.launch.resolved(device) if wl.distributed else {}
        for shape_name, cfg in suite.shapes:
            base = dataclasses.asdict(suite.workloads[wl_name])
            base.update((k, v) for k, v in suite.shape_overrides.get(shape_name, {}).items() if k in base)
            modes = suite.compiles if wl.compiles else ("none",)
            for params in _axis_product(base, wl.axes):
                params = {k: v for k, v in wl.normalize(params).items()
                          if k not in wl.unkeyed_defaults or v != wl.unkeyed_defaults[k]}
                for mode in modes:
                    for prec in suite.precisions:
                        for seed in suite.shape_overrides.get(shape_name, {}).get("seeds", suite.seeds):
                            for spec in suite.variants:
                                if wl.skips(params, spec.name) or (spec.shapes and shape_name not in spec.shapes):
                                    continue
                                cell = Cell(variant=spec.name, options=spec.options, label=spec.label,
                                            shape_name=shape_name, shape=cfg.to_dict(), workload=wl_name,
                                            params=_bounded(params, wl, suite.bounds.get(shape_name, {}).get(spec.label), mode),
                                            device=device, precision=prec, seed=seed, threads=suite.threads,
                                            variant_source=sources[spec.name], compile=mode, launch=launched)
                                if cell.key not in seen:  # axes a value makes moot repeat a cell
                                    seen.add(cell.key)
                                    cells.append(cell)
    return cells


def _bounded(params: dict, wl, bounds: dict | None, mode: str) -> dict:
    """A timed cell with adaptive rounds carries the bounds its ratios are checked against
    (`bounds`: {cost key: bound}): when to stop depends on them, so they are part of its key."""
    if not (params.get("precision") and bounds and wl.timed and not wl.cost_exact):
        return params
    own = {key: b for (key, m), b in bounds.items() if m == mode and key in dict(wl.cost_columns)}
    return {**params, "bounds": own} if own else params


def _axis_product(params: dict, axes: tuple[str, ...]) -> list[dict]:
    """One params dict per combination of the axis fields given as lists (tuples once parsed)."""
    out = [dict(params)]
    for key in axes:
        if isinstance(params.get(key), (list, tuple)):
            out = [{**p, key: v} for p in out for v in params[key]]
    return out
