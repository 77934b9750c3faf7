"""`resbench` command line: list | run | report | compare | dashboard | scale | project.

Every user error (bad suite, bad option, unknown variant, unwritable path) is a one-line message
on stderr and exit code 2, never a traceback.
"""
from __future__ import annotations

import argparse
import faulthandler
import json
import signal
import sys
import threading

import torch
from tabulate import tabulate

from . import __version__, variants
from .variants.base import VariantError

from .errors import UserError
from .model import ModelConfig, Transformer, count_params


def _fmt_opts(opts: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in opts.items()) or "-"


def cmd_list(args) -> int:
    cfg = ModelConfig(d_model=args.d_model, n_blocks=args.blocks, n_heads=args.heads, seq_len=8)
    # meta device: the analytic costs need shapes, not storage (a 4096-wide Highway is 2 GB)
    with torch.device("meta"):
        base = count_params(Transformer(cfg, variants.build("prenorm", cfg.d_model, cfg.n_layers)))
    rows = []
    for name in variants.names():
        with torch.device("meta"):
            residual = variants.build(name, cfg.d_model, cfg.n_layers)
        rows.append({"variant": name, "options": type(residual).option_defaults(),
                     "extra_params": residual.declared_extra_params(),
                     "extra_params_vs_shared": residual.declared_extra_params() / base,
                     "state_vectors": residual.state_vectors(), "mixing_flops_per_token": residual.mixing_flops(),
                     "source": variants.source_of(name)})
    if args.json:
        print(json.dumps({"d_model": cfg.d_model, "n_blocks": cfg.n_blocks, "n_layers": cfg.n_layers,
                          "shared_params": base, "variants": rows}, indent=1))
        return 0
    print(f"shape: d_model={cfg.d_model}, {cfg.n_blocks} blocks (L={cfg.n_layers} sublayers), "
          f"{base:,} shared params")
    table = [[r["variant"], _fmt_opts(r["options"]), f"{r['extra_params']:,}", f"{r['extra_params_vs_shared']:.2%}",
              r["state_vectors"], f"{r['mixing_flops_per_token']:,}", r["source"].split(":")[0]] for r in rows]
    print(tabulate(table, headers=["variant", "options (defaults)", "extra params", "vs shared",
                                   "state d-vectors/token", "mixing FLOPs/token", "module"], disable_numparse=True))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="resbench", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"resbench {__version__}")
    p.add_argument("--variants-module", action="append", default=[], metavar="MOD",
                   help="import MOD (dotted path, on PYTHONPATH) to register variants living outside resbench")
    sub = p.add_subparsers(dest="command", required=True)

    ls = sub.add_parser("list", help="registered variants, their options and analytic costs at a shape")
    ls.add_argument("--d-model", type=int, default=1024)
    ls.add_argument("--blocks", type=int, default=16, help="transformer blocks (L = 2 x blocks sublayers)")
    ls.add_argument("--heads", type=int, default=8)
    ls.add_argument("--json", action="store_true", help="print the rows as JSON")
    ls.set_defaults(func=cmd_list)

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
    try:
        for mod in args.variants_module:
            variants.load_module(mod)
        return args.func(args)
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
