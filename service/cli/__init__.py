"""``rewardscope`` console script: thin subcommands that call the library.

Each subcommand is one module of this package (or, for the acquisition side, of
``rewardscope.clients`` / ``rewardscope.simulators``) and exposes ``add_arguments(parser)`` and
``run(args) -> int``; this file only wires them up, importing lazily so ``--help`` is instant.
"""

from __future__ import annotations

import argparse
import gc
import importlib
import logging
import os
import sys

# The analysis runs its own threads on small matrices: BLAS on one thread, decided before
# numpy loads OpenBLAS (see rewardscope.science.threadlimits; a user's setting wins).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

# name -> (module, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("rewardscope.cli.serve", "run the live analysis service"),
    "config": ("rewardscope.cli.serve:config", "print the effective configuration"),
    "demo": ("rewardscope.cli.demo", "simulator -> service -> watcher on loopback, in one go"),
    "experiment": ("rewardscope.cli.experiment",
                   "digital twin -> service -> controller: how fast a strategy discovers"),
    "simulate": ("rewardscope.simulators.publisher", "stream simulated STEM frames"),
    "watch": ("rewardscope.clients.watch", "print one line per result"),
    "ctl": ("rewardscope.clients.ctl", "send a control command to a running service"),
    "record": ("rewardscope.clients.recorder", "record a frame stream to a file"),
    "replay": ("rewardscope.simulators.replay", "re-publish a recorded session or images"),
    "import": ("rewardscope.cli.importer", "turn still images into a replayable session"),
    "analyze": ("rewardscope.cli.analyze", "reward-driven analysis of one image, offline"),
    "batch": ("rewardscope.cli.batch",
              "reprocess sessions, HDF5 exports and image folders (optionally on Dask)"),
    "bench": ("rewardscope.cli.bench", "run the benchmarks (ratios vs. baselines)"),
    "export": ("rewardscope.cli.export", "export a stored session to HDF5"),
    "keys": ("rewardscope.cli.keys", "write CURVE certificates"),
}


EXIT_AT_ONCE = frozenset({"analyze"})
"""Commands that end with every output written and closed by the time ``run`` returns (no
threads or servers still finishing): from the command line their process leaves at once."""


def _load(spec: str):
    mod_name, _, prefix = spec.partition(":")
    mod = importlib.import_module(mod_name)
    add = getattr(mod, f"add_{prefix}_arguments" if prefix else "add_arguments")
    run = getattr(mod, f"run_{prefix}" if prefix else "run")
    return add, run


def build_parser(argv_command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rewardscope",
        description="Live reward-driven analysis of atomically resolved microscope frames.")
    from rewardscope import __version__
    parser.add_argument("--version", action="version", version=f"rewardscope {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (spec, helptext) in SUBCOMMANDS.items():
        p = sub.add_parser(name, help=helptext, description=helptext)
        # Only the chosen subcommand's module is imported (keeps --help fast and robust).
        if name == argv_command:
            add, run = _load(spec)
            add(p)
            p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    entry_point = argv is None  # the console script / ``python -m``, not a caller in-process
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0 if not argv or "-h" in argv or "--help" in argv else 2
    try:
        code = int(args._run(args) or 0)
    except KeyboardInterrupt:
        code = 130
    finally:
        if entry_point:
            # The process is about to exit: spare it the final garbage collection over every
            # object the scientific stack allocated (~0.25 s of a cold ``analyze``). Objects
            # are still released by reference counting; only cycles are left to the OS.
            gc.freeze()
    if entry_point and command in EXIT_AT_ONCE:
        # everything is written and closed: skip the interpreter's tear-down of the whole
        # scientific stack (~50 ms of a cold ``analyze``, measured 46-96 vs 16-37 ms)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code

