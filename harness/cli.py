"""`resbench` command line: list | new-variant | run | report | compare | dashboard | scale | project.

Every user error (bad suite, bad option, unknown variant, unwritable path) is a one-line message
on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import json
import os
import signal
import sys
import threading
from pathlib import Path

import torch
from tabulate import tabulate

from . import __version__, variants
from .variants.base import VariantError

from .errors import UserError
from .model import ModelConfig, Transformer, count_params


def _fmt_opts(opts: dict, ablations: tuple = ()) -> str:
    """Options with their defaults; ablation options (docs/VARIANTS.md) counted, not spelled out."""
    shown = ", ".join(f"{k}={v}" for k, v in opts.items() if k not in ablations)
    more = sum(k in opts for k in ablations)
    return ", ".join(filter(None, [shown, f"+{more} ablations" if more else ""])) or "-"


def cmd_list(args) -> int:
    cfg = ModelConfig(d_model=args.d_model, depth=args.depth, n_heads=args.heads, seq_len=8)
    # meta device: the analytic costs need shapes, not storage (a 4096-wide Highway is 2 GB)
    with torch.device("meta"):
        base = count_params(Transformer(cfg, variants.build("prenorm", cfg.d_model, cfg.n_layers)))
    rows = []
    for name in variants.names():
        with torch.device("meta"):
            residual = variants.build(name, cfg.d_model, cfg.n_layers)
        rows.append({"variant": name, "options": type(residual).option_defaults(), "ablations": list(residual.ablations),
                     "extra_params": residual.declared_extra_params(),
                     "extra_params_vs_shared": residual.declared_extra_params() / base,
                     "state_vectors": residual.state_vectors(), "mixing_flops_per_token": residual.mixing_flops(),
                     "source": variants.source_of(name)})
    if args.json:
        print(json.dumps({"d_model": cfg.d_model, "depth": cfg.depth, "n_layers": cfg.n_layers,
                          "shared_params": base, "variants": rows}, indent=1), file=getattr(args, "stdout", sys.stdout))
        return 0
    print(f"shape: d_model={cfg.d_model}, {cfg.depth} blocks (L={cfg.n_layers} sublayers), "
          f"{base:,} shared params")
    table = [[r["variant"], _fmt_opts(r["options"], tuple(r["ablations"])), f"{r['extra_params']:,}", f"{r['extra_params_vs_shared']:.2%}",
              r["state_vectors"], f"{r['mixing_flops_per_token']:,}", r["source"].split(":")[0]] for r in rows]
    print(tabulate(table, headers=["variant", "options (defaults)", "extra params", "vs shared",
                                   "state d-vectors/token", "mixing FLOPs/token", "module"], disable_numparse=True))
    return 0


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def cmd_new_variant(args) -> int:
    from .results import results_root
    from .variant_template import MAX_NAME_LEN, NAME_RE, module_name, module_name_taken, render

    name = args.name
    if len(name) > MAX_NAME_LEN:
        raise UserError(f"invalid variant name {name[:MAX_NAME_LEN]!r}...: {len(name)} characters, "
                        f"at most {MAX_NAME_LEN}")
    if not NAME_RE.fullmatch(name):
        raise UserError(f"invalid variant name {name!r}: lowercase letters and digits in words joined by "
                        "single '-', starting with a letter (e.g. my-mix)")
    try:
        registered = variants.names()
    except Exception as exc:  # noqa: BLE001 - a half-edited module in variants/ must not give a traceback
        raise UserError(f"cannot list the registered variants ({type(exc).__name__}: {exc}); fix that module "
                        "first") from None
    if name in registered:
        raise UserError(f"variant {name!r} is already registered ({variants.source_of(name).split('@')[0]}); "
                        "pick another name")
    package_dir = Path(variants.__path__[0]).resolve()
    if args.out is None:
        # only the checkout the user stands in, and only if it is the code resbench runs (an
        # editable install): never into an installed package or another checkout
        if (results_root().parent / "variants").resolve() != package_dir:
            raise UserError(f"--out is needed outside the resbench checkout that resbench runs from "
                            f"({package_dir.parent}): pass --out PATH (a .py file, or a folder for the module)")
        out = package_dir / f"{module_name(name)}.py"
    else:
        out = Path(args.out).expanduser().resolve()
        if out.is_dir():
            out = out / f"{module_name(name)}.py"
        elif out.suffix != ".py":
            raise UserError(f"--out {args.out}: not a folder and not a .py file")
    taken = module_name_taken(out.stem, out)  # the module name the file is imported by
    if taken:
        raise UserError(f"variant name {name!r} cannot have the module {out.stem}.py: {taken}; pick another "
                        "name (or --out PATH with another file name)")
    if out.exists():
        if not args.force:
            raise UserError(f"{_shown(out)} exists (--force overwrites it)")
        imported = [m for m, mod in list(sys.modules.items())
                    if getattr(mod, "__file__", None) and Path(mod.__file__).resolve() == out]
        if imported:  # e.g. `new-variant attnres --force`: never replace code resbench runs
            raise UserError(f"{_shown(out)} is the module {imported[0]}, imported by resbench; not overwriting it")
    try:
        out.write_text(render(name))
    except OSError as exc:
        raise UserError(f"cannot write {_shown(out)}: {exc.strerror or exc}") from None
    if out.parent == package_dir:
        then = f"`resbench list` and `pytest tests/test_conformance.py -k {name}`"
    else:  # outside the package: found through the environment, by `resbench` and by pytest alike
        env = f"PYTHONPATH={out.parent} RESBENCH_VARIANTS={out.stem}"
        then = f"`{env} resbench list` and (in a resbench checkout) `{env} pytest tests/test_conformance.py -k {name}`"
    print(f"wrote {_shown(out)}: edit write() and its docstring equation; then {then}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"resbench {__version__}")
    p.add_argument("--variants-module", action="append", default=[], metavar="MOD",
                   help="import MOD (dotted path, on PYTHONPATH) to register variants living outside resbench")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="registered variants, their options and analytic costs at a shape",
                        description="Every registered variant (built in, --variants-module, RESBENCH_VARIANTS, entry "
                        "points) with its options and defaults and what it declares at the given shape: extra "
                        "parameters, residual-state d-vectors per token, mixing FLOPs per token, its module.")
    ls.add_argument("--d-model", type=int, default=1024, help="model width for the costs (default 1024)")
    ls.add_argument("--depth", type=int, default=16, help="transformer blocks (L = 2 x depth sublayers; default 16)")
    ls.add_argument("--heads", type=int, default=8, help="attention heads (default 8; must divide --d-model)")
    ls.add_argument("--json", action="store_true", help="print the rows as JSON")
    ls.set_defaults(func=cmd_list)

    nv = sub.add_parser("new-variant", help="write a new variant module to edit (a working skeleton: PreNorm "
                        "with a learned scalar per sublayer)",
                        description="Write a new variant module skeleton that registers NAME and passes the "
                        "conformance tests as written. Refuses (exit 2, nothing written) an invalid or "
                        "already registered name and an existing file.")
    nv.add_argument("name", metavar="NAME", help="variant name: lowercase letters and digits, words joined by '-', "
                    "starting with a letter (my-mix: module my_mix.py, class MyMix)")
    nv.add_argument("--out", metavar="PATH", help="the .py file to write, or a folder for <module>.py (default: "
                    "variants/<module>.py of the resbench checkout you are in; required elsewhere)")
    nv.add_argument("--force", action="store_true", help="overwrite an existing file (never one resbench imports)")
    nv.set_defaults(func=cmd_new_variant)

    from . import commands, history

    commands.add_subcommands(sub)  # run, report, and the studies' shortcuts (scale, project)
    history.add_subcommands(sub)  # compare, dashboard
    return p


class Terminated(BaseException):
    """SIGTERM, raised where the program is, so that cleanup runs as for Ctrl-C."""


def _terminate(signum, frame):  # noqa: ARG001
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if hasattr(faulthandler, "register") and threading.current_thread() is threading.main_thread():
        try:  # `kill -USR1 PID`: where is it stuck? (needs a real stderr: not under a capturing caller)
            faulthandler.register(signal.SIGUSR1, all_threads=True)
        except (AttributeError, ValueError, OSError):
            pass
    parser = build_parser()
    args = parser.parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate) if threading.current_thread() is threading.main_thread() \
        else None
    args.stdout = sys.stdout  # machine-readable output (--json) goes here and nowhere else
    quiet_plugins = contextlib.redirect_stdout(sys.stderr) if getattr(args, "json", False) else contextlib.nullcontext()
    try:
        with quiet_plugins:  # what a variant module prints (on import, or as it runs) must not corrupt JSON
            for mod in args.variants_module:
                variants.load_module(mod)
            return args.func(args)
    except BrokenPipeError:  # `resbench list | head -1`: the reader left; stop quietly, as cat does
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        except (OSError, ValueError, AttributeError):
            pass
        return 141
    except (UserError, VariantError) as exc:
        msg = " ".join(str(exc).split())  # one line, and a bounded one
        print(f"resbench: error: {msg if len(msg) <= 600 else msg[:597] + '...'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("resbench: interrupted", file=sys.stderr)
        return 130
    except Terminated:
        print("resbench: terminated", file=sys.stderr)
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


if __name__ == "__main__":
    sys.exit(main())
